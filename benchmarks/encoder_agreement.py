"""Token agreement and speed of the batched encoders against per-item float32 encoding, as one JSON object.

    python benchmarks/encoder_agreement.py                                   # tiny random checkpoint on the CPU
    python benchmarks/encoder_agreement.py --size real --clips 256 --precision bfloat16    # on a GPU
    python benchmarks/encoder_agreement.py --model DIR --clips 256 --precision bfloat16    # any checkpoint

Every clip (speech-like, --min-s..--max-s seconds, any sample count) is first encoded alone in float32: the
reference, what the CPU default gives. Then all clips are encoded in batches of --batch-size (longest first, so
each batch mixes lengths) at --precision. For each token stream -- GLM (ASR input), BiCodec semantic and BiCodec
global (speaker) -- the result gives the fraction of tokens that agree with the reference, the fraction of clips
whose tokens all agree, and the seconds of both passes. In float32 the batched tokens must agree 100%; in
bfloat16 the quantizers still pick nearest codes in float32, but from rounded features, so agreement is what this
measures (bfloat16 needs a CUDA device). Clips longer than the GLM tokenizer's window are cut to it for the GLM
stream only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpa.bicodec import BiCodec  # noqa: E402
from gpa.glm_tokenizer import GLMSpeechTokenizer  # noqa: E402
from gpa.inference import PRECISIONS, check_precision  # noqa: E402
from gpa.testing import speech_like_clips  # noqa: E402
from gpa.testing.bicodec import write_random_checkpoint as write_random_bicodec  # noqa: E402
from gpa.testing.glm import write_random_checkpoint as write_random_glm  # noqa: E402


def _timed(fn: Callable[[], list[np.ndarray]], device: torch.device, repeats: int) -> tuple[list[np.ndarray], float]:
    """``fn``'s result and its best time of ``repeats`` runs (the least disturbed on a shared machine)."""
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return out, best


def agreement(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> dict:
    """Fraction of agreeing tokens (a length mismatch counts every token of the longer one as disagreeing) and
    fraction of clips that agree entirely."""
    same = total = whole = 0
    for ref, cand in zip(reference, candidate, strict=True):
        n = min(len(ref), len(cand))
        same += int((np.asarray(ref[:n]) == np.asarray(cand[:n])).sum())
        total += max(len(ref), len(cand))
        whole += int(np.array_equal(ref, cand))
    return {"token_agreement": same / total if total else 1.0, "clip_agreement": whole / max(1, len(reference)),
            "tokens": total}


def measure(glm: GLMSpeechTokenizer, bicodec: BiCodec, clips: Sequence[np.ndarray], *, precision: str,
            batch_size: int, repeats: int = 1) -> dict:
    """Per-item float32 reference vs batched ``precision`` for the three streams; restores the components'
    precision and batch size afterwards."""
    device = bicodec.device
    glm_clips = [c[: glm.max_samples] for c in clips]
    streams = {
        "glm": (glm.tokenize, glm_clips),
        "semantic": (bicodec.semantic_tokens, clips),
        "global": (bicodec.global_tokens, clips),
    }
    saved = [(c, c.precision, c.batch_size) for c in (glm, bicodec)]
    result: dict = {}
    try:
        for name, (encode, items) in streams.items():
            encode(list(items[:2]))  # warm-up: first-call allocations and kernel choices stay out of the timings
            glm.precision = bicodec.precision = "float32"
            reference, alone_s = _timed(lambda encode=encode, items=items: [encode([x])[0] for x in items], device,
                                        repeats)
            glm.precision = bicodec.precision = precision
            glm.batch_size = bicodec.batch_size = batch_size
            batched, batched_s = _timed(lambda encode=encode, items=items: encode(list(items)), device, repeats)
            result[name] = {**agreement(reference, batched), "seconds_one_by_one_float32": round(alone_s, 4),
                            f"seconds_batched_{precision}": round(batched_s, 4),
                            "speed_up": round(alone_s / batched_s, 2) if batched_s else None}
    finally:
        for component, p, b in saved:
            component.precision, component.batch_size = p, b
    return result


def _random_encoders(directory: Path, size: str) -> Path:
    """The two encoders of ``make_tiny_checkpoint(directory, seed=0, size=size)``, without its LLM."""
    write_random_glm(directory / "glm-4-voice-tokenizer", seed=1, size=size)
    write_random_bicodec(directory / "BiCodec", seed=2, size=size)
    return directory


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: a random one of --size)")
    parser.add_argument("--size", default="tiny", choices=["tiny", "tiny-alt", "real"])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--min-s", type=float, default=2.0)
    parser.add_argument("--max-s", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", choices=PRECISIONS, help="bfloat16 on CUDA (the default there), else float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU")
    parser.add_argument("--repeats", type=int, default=1, help="time each pass this many times, report the best")
    args = parser.parse_args(argv)
    args.precision = args.precision or ("bfloat16" if torch.device(args.device).type == "cuda" else "float32")
    try:
        check_precision(args.precision, args.device)
    except ValueError as exc:
        parser.error(str(exc))
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(args.model) if args.model else _random_encoders(Path(tmp), args.size)
        glm = GLMSpeechTokenizer.from_pretrained(source / "glm-4-voice-tokenizer", device=args.device)
        bicodec = BiCodec.from_pretrained(source / "BiCodec", device=args.device)
    clips = speech_like_clips(args.clips, args.seed, min_s=args.min_s, max_s=args.max_s)
    device = bicodec.device
    report = {
        "checkpoint": str(args.model) if args.model else f"random {args.size}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "batch_size": args.batch_size,
        "clips": len(clips),
        "audio_seconds": round(sum(len(c) for c in clips) / bicodec.sample_rate, 2),
        "repeats": args.repeats,
        **measure(glm, bicodec, clips, precision=args.precision, batch_size=args.batch_size, repeats=args.repeats),
    }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
