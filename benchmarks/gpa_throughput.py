"""Throughput of the three GPA tasks through the library, by the protocol of docs/performance.md.

    python benchmarks/gpa_throughput.py                       # CPU: tiny checkpoint, batched vs one at a time
    python benchmarks/gpa_throughput.py --size real --items 1000 --batch-size 256 --dtype bfloat16   # a GPU
    python benchmarks/gpa_throughput.py --model DIR           # any checkpoint

Clips are speech-like (gpa.testing.speech_like: voiced harmonics with a wandering pitch, a syllable-rate envelope,
fricative bursts and pauses) with LibriSpeech-like durations (2-35 s, mean ~7 s). Random weights never stop on
their own, so lengths are forced: ASR generates ceil(3.5 x audio seconds) tokens, TTS 50 semantic tokens per second
of target speech for texts of 10-30 words (at 20 text units a second: ~3-9 s), VC as many tokens as its source has
semantic tokens (<|im_end|> blocked, a limit per window).

Prints per task: audio seconds per second (the realtime factor; for TTS, of generated speech), items/s, seconds per
stage, peak GPU memory, the engine and whether the static engine's decoding ran as CUDA graphs (``cuda_graphs``:
null for the reference engine; false on the CPU or after a failed capture, which falls back to eager steps);
``--sequential`` also runs the items one at a time for the batched/sequential ratio. ``--out`` writes the figures
as JSON (benchmarks/results/<date>-<device>.json by default on a GPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpa import profiling  # noqa: E402
from gpa.generation import resolve_engine  # noqa: E402
from gpa.model import GPA  # noqa: E402
from gpa.options import ConvertOptions, SynthesizeOptions, TranscribeOptions  # noqa: E402
from gpa.static_generation import static_engine  # noqa: E402
from gpa.testing import make_tiny_checkpoint, speech_like  # noqa: E402

SAMPLE_RATE = 16000
ASR_TOKENS_PER_SECOND = 3.5
SEMANTIC_PER_SECOND = 50
TEXT_UNITS_PER_SECOND = 20  # speaking rate in gpa.chunking.text_units: 10-30 words of WORDS -> ~3-9 s of speech
WORDS = ("the morning train left the station while rain fell on quiet streets and people hurried home after a "
         "long day of work numbers like seven twelve and forty appeared on the old board near the gate").split()


def durations(n: int, rng: np.random.Generator, low: float = 2.0, high: float = 35.0) -> np.ndarray:
    """LibriSpeech-like: a gamma distribution of mean ~7 s, clipped to [low, high]."""
    return np.clip(rng.gamma(2.2, 3.2, size=n), low, high)


def clips(seconds: Sequence[float], seeds: Sequence[int]) -> list[np.ndarray]:
    """:func:`gpa.testing.speech_like` clips of these durations, made in threads (numpy's ufuncs release the GIL:
    1,000 clips of ~7 s take ~20 s on one core)."""
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        return list(pool.map(lambda s, seed: speech_like(int(s * SAMPLE_RATE), int(seed)), seconds, seeds))


def workload(items: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    asr_s, vc_s = durations(items, rng), durations(items, rng, high=10.0)  # VC: one window each
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(10, 31)))).capitalize() + "." for _ in range(items)]
    made = clips([*asr_s, *vc_s, 6.0], rng.integers(0, 2**31, size=2 * items + 1))
    return {"asr": made[:items], "vc": made[items : 2 * items], "texts": texts, "reference": made[-1]}


def cpu_name() -> str:
    """The CPU's model and the cores this process may use ("AMD EPYC, 2 cores"): CPU figures move with both."""
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model or 'cpu'}, {cores} cores"


def run_task(name, fn, batches, seconds_of, synchronize, budget_s: float | None = None) -> dict:
    """Run ``batches`` through ``fn``; with ``budget_s``, no batch starts after that many seconds (the figures are
    then those of the batches done, marked ``cut``)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    produced, count, cut = 0.0, 0, False
    with profiling.record(synchronize=synchronize) as stages:
        for batch in batches:
            if budget_s is not None and count and time.perf_counter() - start > budget_s:
                cut = True
                break
            results = fn(batch)
            failed = [r.error for r in results if not r.ok]
            if failed:
                raise RuntimeError(f"{name}: {failed[0]!r}")
            produced += sum(seconds_of(item, r) for item, r in zip(batch, results, strict=True))
            count += len(batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "items": count, "seconds": round(elapsed, 3), "items_per_s": round(count / elapsed, 3),
        "audio_seconds": round(produced, 1), "realtime_factor": round(produced / elapsed, 1),
        "stages_s": {k: round(v, 3) for k, v in sorted(stages.items())},
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None,
        "cut": cut,
    }


def median_run(runs: list[dict]) -> dict:
    """The run of median items/s (the faster of the middle two for an even count), with every run's seconds."""
    median = sorted(runs, key=lambda r: r["items_per_s"])[len(runs) // 2]
    return {**median, "runs_s": [r["seconds"] for r in runs]} if len(runs) > 1 else median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint (default: a random one of --size)")
    parser.add_argument("--size", default="tiny", choices=["tiny", "tiny-alt", "real"])
    parser.add_argument("--items", type=int, default=24, help="items per task")
    parser.add_argument("--batch-size", type=int, default=8, help="items per library call")
    parser.add_argument("--tasks", default="transcribe,synthesize,convert")
    parser.add_argument("--engine", default="auto", choices=["auto", "reference", "static"])
    parser.add_argument("--sequential", action="store_true", help="also run one item at a time (the ratio)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each mode, interleaved; the figures are the median run's (a shared CPU's "
                             "timings move by tens of percent from run to run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--encoder-precision", default="float32", choices=["float32", "bfloat16"],
                        help="the GLM, wav2vec2 and BiCodec encoders' arithmetic (bfloat16: CUDA only)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU")
    parser.add_argument("--no-stage-sync", dest="stage_sync", action="store_false",
                        help="do not synchronise the GPU around stages (stage times then blur, totals are exact)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="per task and mode: start no batch after this many seconds (a run that must fit a "
                             "time slot still reports every task, on the items done)")
    parser.add_argument("--out", help="write the figures as JSON here (after each task, so a run cut short keeps "
                                      "the tasks it finished); a folder: <date>-<device>.json in it (the default "
                                      "on a GPU: benchmarks/results/)")
    args = parser.parse_args()
    if args.encoder_precision == "bfloat16" and not args.device.startswith("cuda"):
        parser.error("--encoder-precision bfloat16 needs a CUDA device (bf16 convolutions are wrong on CPUs)")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    torch.set_num_threads(args.threads)
    tasks = args.tasks.split(",")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        source = args.model or make_tiny_checkpoint(Path(tmp) / "ckpt", seed=0, size=args.size)
        generated_s = time.perf_counter() - start
        dtype = getattr(torch, args.dtype) if args.dtype else None
        start = time.perf_counter()
        model = GPA.from_pretrained(source, device=args.device, dtype=dtype, encoder_precision=args.encoder_precision)
        load_s = time.perf_counter() - start
        data = workload(args.items)
        speaker = model.speaker((data["reference"], SAMPLE_RATE))
        engine = resolve_engine(model.llm, args.engine)
        forced = {"engine": args.engine, "batch_size": args.batch_size}
        asr_options = TranscribeOptions(max_new_tokens=512, min_new_tokens=512,
                                        max_new_tokens_per_second=ASR_TOKENS_PER_SECOND, **forced)
        vc_options = ConvertOptions(max_new_tokens=512, min_new_tokens=512, constrained=True,
                                    max_new_tokens_per_second=SEMANTIC_PER_SECOND, **forced)
        tts_options = SynthesizeOptions(max_new_tokens=512, min_new_tokens=512, constrained=True,
                                        max_new_tokens_per_unit=SEMANTIC_PER_SECOND / TEXT_UNITS_PER_SECOND, **forced)
        runs = {
            "transcribe": (lambda b: model.transcribe([(a, SAMPLE_RATE) for a in b], asr_options), data["asr"],
                           lambda item, r: len(item) / SAMPLE_RATE),
            "synthesize": (lambda b: model.synthesize(b, [speaker] * len(b), tts_options), data["texts"],
                           lambda item, r: len(r.audio) / r.sample_rate),
            "convert": (lambda b: model.convert([(a, SAMPLE_RATE) for a in b], [speaker] * len(b), vc_options),
                        data["vc"], lambda item, r: len(r.audio) / r.sample_rate),
        }
        device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_name()
        report = {
            "date": datetime.date.today().isoformat(), "device": device_name, "torch": torch.__version__,
            "repeat": args.repeat,
            "dtype": str(dtype or torch.float32), "encoder_precision": args.encoder_precision, "engine": engine,
            "checkpoint": args.model or f"random {args.size}",
            "items_per_task": args.items, "batch_size": args.batch_size,
            "checkpoint_generation_s": round(generated_s, 1), "model_load_s": round(load_s, 1), "tasks": {},
        }
        out = args.out
        if (out is None and args.device.startswith("cuda")) or (out and (out.endswith("/") or Path(out).is_dir())):
            slug = "-".join("".join(c if c.isalnum() else " " for c in device_name).lower().split())
            out = str(Path(out or "benchmarks/results") / f"{report['date']}-{slug}.json")
        print(f"device={device_name} dtype={report['dtype']} encoders={args.encoder_precision} engine={engine} "
              f"checkpoint={report['checkpoint']} items={args.items} batch={args.batch_size}")
        print(f"{'task':<10} {'mode':<11} {'items/s':>9} {'RTFx':>9} {'speed-up':>9} {'cuda MB':>9}  stages (s)")
        for name in tasks:
            fn, items, seconds_of = runs[name]
            # warm-up on the longest items: kernels, and an arena sized for every later call with the graphs of a
            # full batch's buckets (a long-running job builds them once too)
            fn(sorted(items, key=len, reverse=True)[: args.batch_size])
            modes = {"batched": [items[i : i + args.batch_size] for i in range(0, len(items), args.batch_size)]}
            if args.sequential:
                modes["sequential"] = [[x] for x in items]
            timed: dict[str, list[dict]] = {mode: [] for mode in modes}
            for _ in range(args.repeat):
                for mode, batches in modes.items():
                    timed[mode].append(run_task(name, fn, batches, seconds_of, args.stage_sync, args.budget_s))
            figures = {mode: median_run(mode_runs) for mode, mode_runs in timed.items()}
            if args.sequential:
                figures["speed_up"] = round(figures["batched"]["items_per_s"] / figures["sequential"]["items_per_s"], 2)
            report["tasks"][name] = figures
            for mode in ("sequential", "batched"):
                if mode not in figures:
                    continue
                r = figures[mode]
                speed = f"{figures['speed_up']:.2f}x" if mode == "batched" and "speed_up" in figures else ""
                stages = " ".join(f"{k}={v:.2f}" for k, v in r["stages_s"].items())
                cuda = r["peak_cuda_mb"] if r["peak_cuda_mb"] is not None else "-"
                cut = f" (cut at the budget: {r['items']} of {len(items)} items)" if r["cut"] else ""
                print(f"{name:<10} {mode:<11} {r['items_per_s']:>9.2f} {r['realtime_factor']:>9.1f} {speed:>9} "
                      f"{cuda:>9}  {stages}{cut}")
            # read after each task: a failed capture turns the engine's graphs off mid-run
            report["cuda_graphs"] = static_engine(model.llm).cuda_graphs if engine == "static" else None
            report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            if out:
                write_report(report, Path(out))
        print(f"cuda_graphs={report.get('cuda_graphs')}")
        if out:
            print(f"wrote {out}")


def write_report(report: dict, path: Path) -> None:
    """Replace ``path`` whole (written beside it, then renamed): a run killed while writing leaves the last one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=1) + "\n")
    partial.replace(path)


if __name__ == "__main__":
    main()
