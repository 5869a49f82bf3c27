"""Batched vs one-at-a-time throughput of the three GPA tasks, measured side by side in one run.

    python benchmarks/gpa_throughput.py                 # tiny random checkpoint on the CPU
    python benchmarks/gpa_throughput.py --size real     # real shapes (random weights) on a GPU when there is one
    python benchmarks/gpa_throughput.py --model DIR     # any checkpoint

Prints a table: items/s and audio-seconds/s for each mode, the batched/sequential speed-up, and peak memory
(process RSS, and CUDA when used). Each item's output does not depend on its batch mates (greedy ASR, per-item
seeds for sampling), so both modes generate exactly the same tokens and the ratio measures batching alone.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpa.model import GPA  # noqa: E402
from gpa.options import ConvertOptions, SynthesizeOptions, TranscribeOptions  # noqa: E402
from gpa.testing import make_tiny_checkpoint  # noqa: E402


def clips(n: int, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        seconds = rng.uniform(2.0, 8.0)
        t = np.arange(int(seconds * 16000)) / 16000
        wave = np.sin(2 * np.pi * rng.uniform(90, 220) * t) * np.clip(np.sin(2 * np.pi * 3 * t), 0, None)
        out.append(((0.3 * wave + 0.01 * rng.normal(size=t.shape)).astype(np.float32), 16000))
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(label, fn, items, batch_size, audio_seconds):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for first in range(0, len(items), batch_size):
        results = fn(items[first : first + batch_size])
        bad = [r.error for r in results if not r.ok]
        if bad:
            raise RuntimeError(f"{label}: {bad[0]!r}")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    cuda_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
    return {"items_s": len(items) / elapsed, "audio_s": audio_seconds / elapsed, "seconds": elapsed, "cuda_mb": cuda_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint (default: a random one of --size)")
    parser.add_argument("--size", default="tiny", choices=["tiny", "tiny-alt", "real"])
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads on the CPU (tiny models lose more to thread sync than they gain)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        source = args.model or make_tiny_checkpoint(Path(tmp) / "ckpt", seed=0, size=args.size)
        dtype = getattr(torch, args.dtype) if args.dtype else None
        model = GPA.from_pretrained(source, device=args.device, dtype=dtype)
        audios = clips(args.items)
        ref = audios[0]
        speaker = model.speaker(ref)
        seconds = sum(len(a) / 16000 for a, _ in audios)
        texts = [f"Sentence number {i} of the benchmark, long enough to matter." for i in range(args.items)]
        # each timed call gets at most --batch-size items; GPA must not split them into smaller batches itself
        common = {"max_new_tokens": args.new_tokens, "batch_size": args.batch_size}
        tasks = {
            "transcribe": (lambda b: model.transcribe(b, TranscribeOptions(**common)), audios, seconds),
            "synthesize": (lambda b: model.synthesize(b, [speaker] * len(b), SynthesizeOptions(**common)), texts,
                           None),
            "convert": (lambda b: model.convert(b, [speaker] * len(b), ConvertOptions(**common)), audios, seconds),
        }
        print(f"device={args.device} dtype={dtype or torch.float32} size={args.size if not args.model else 'given'} "
              f"items={args.items} batch={args.batch_size} new_tokens<={args.new_tokens} threads={args.threads}")
        print(f"{'task':<11} {'mode':<11} {'items/s':>9} {'audio s/s':>10} {'speed-up':>9} {'cuda MB':>9}")
        for name, (fn, items, audio_seconds) in tasks.items():
            fn(items[:2])  # warm-up
            seq = run(name, fn, items, 1, audio_seconds or 0.0)
            bat = run(name, fn, items, args.batch_size, audio_seconds or 0.0)
            for mode, r in (("sequential", seq), ("batched", bat)):
                speed = f"{bat['items_s'] / seq['items_s']:.2f}x" if mode == "batched" else ""
                audio = f"{r['audio_s']:.1f}" if audio_seconds else "-"
                cuda = f"{r['cuda_mb']:.0f}" if torch.cuda.is_available() else "-"
                print(f"{name:<11} {mode:<11} {r['items_s']:>9.2f} {audio:>10} {speed:>9} {cuda:>9}")
        print(f"peak process RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
