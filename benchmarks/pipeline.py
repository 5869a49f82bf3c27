"""End-to-end job throughput vs in-process batched GPA on the same clips, and 1 vs 2 actors.

    python benchmarks/pipeline.py                      # 200 clips, tiny random checkpoint, CPU
    python benchmarks/pipeline.py --model /models/gpa --n 1000 --gpus-per-actor 1 --actors 1,2

The ratio "pipeline / in-process" is the pipeline's overhead (reading, decoding in other processes, object store,
writing Parquet, committing, MLflow): the target is >= 0.9 once the model work dominates (a real checkpoint on a
GPU). The in-process baseline decodes every clip and runs ``GPA.transcribe`` in batches of the same size; its
model load is not timed, while the pipeline's wall time includes starting its actors (and their model load).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing it (Ray passes sys.path to its workers)
EXAMPLES = ROOT / "manifests" / "examples" / "audio"


def make_clips(directory: Path, n: int, seed: int, min_s: float, max_s: float) -> tuple[Path, float]:
    """``n`` clips of varying length cut from the example recordings, and a manifest listing them."""
    from gpa.audio import load_audio

    rng = np.random.default_rng(seed)
    sources = [load_audio(str(p)) for p in sorted(EXAMPLES.glob("*.flac"))]
    long = np.concatenate(sources)
    rows, total = [], 0.0
    for i in range(n):
        seconds = float(rng.uniform(min_s, max_s))
        start = int(rng.integers(0, max(1, len(long) - int(seconds * 16000))))
        clip = long[start: start + int(seconds * 16000)]
        path = directory / f"clip-{i:05d}.flac"
        sf.write(path, clip, 16000, format="FLAC", subtype="PCM_16")
        rows.append({"id": f"clip-{i:05d}", "audio": path.name})
        total += len(clip) / 16000
    manifest = directory / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, total


def padding_waste(lengths: list[int], batch: int, window: int) -> float:
    """Share of padded positions when consecutive ``window`` rows are sorted and cut into batches of ``batch``."""
    padded = 0
    for first in range(0, len(lengths), window):
        chunk = sorted(lengths[first: first + window])
        for b in range(0, len(chunk), batch):
            padded += len(chunk[b: b + batch]) * max(chunk[b: b + batch])
    return 1 - sum(lengths) / padded


def in_process(model_path: str, manifest: Path, batch_size: int, max_new_tokens: int, device: str,
               threads: int) -> tuple[float, list[int]]:
    import torch

    from gpa import GPA, TranscribeOptions
    from gpa.audio import load_audio

    torch.set_num_threads(threads)
    model = GPA.from_pretrained(model_path, device=device)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    options = TranscribeOptions(batch_size=batch_size, max_new_tokens=max_new_tokens)
    model.transcribe([(np.zeros(16000, np.float32), 16000)], options)  # warm-up, as an actor's first batch is
    start = time.perf_counter()
    audio = [(load_audio(str(manifest.parent / r["audio"])), 16000) for r in rows]
    results = model.transcribe(audio, options)
    elapsed = time.perf_counter() - start
    assert len(results) == len(rows)
    return elapsed, [len(a) for a, _ in audio]


def pipeline(model_path: str, manifest: Path, output: Path, actors: int, bucket_batches: int,
             args) -> tuple[float, dict]:
    from jobs.config import JobConfig
    from jobs.pipeline import run_job

    config = JobConfig(job="transcribe", input=str(manifest), output=str(output), model=model_path,
                       actors=(actors, actors), batch_size=args.batch_size, bucket_batches=bucket_batches,
                       torch_threads=args.torch_threads,
                       gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
                       options={"max_new_tokens": args.max_new_tokens},
                       mlflow_uri=f"sqlite:///{output.parent / 'bench-mlflow.db'}", device=args.device)
    result = run_job(config, progress=False)
    assert result.committed_rows == args.n, result.committed_rows
    import pyarrow.parquet as pq

    finished = sorted(t["finished_at"] for t in pq.read_table(result.files, columns=["timings"]).column(0).to_pylist())
    # steady state: rows per second after the first results (i.e. without Ray and actor start-up)
    first_batch = sum(1 for t in finished if t <= finished[0] + 1e-3)
    steady = (len(finished) - first_batch) / (finished[-1] - finished[0]) if finished[-1] > finished[0] else 0.0
    return result.wall_s, {"steady_rows_per_s": steady, "first_result_s": result.wall_s - (finished[-1] - finished[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--model", help="checkpoint (default: a generated tiny random one)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--bucket-batches", type=int, default=4)
    parser.add_argument("--actors", default="1,2", help="actor counts to compare")
    parser.add_argument("--gpus-per-actor", type=float, default=None)
    parser.add_argument("--cpus-per-actor", type=float, default=0.5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--torch-threads", type=int, default=1, help="per actor, and for the in-process baseline")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--min-s", type=float, default=1.0)
    parser.add_argument("--max-s", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from jobs.pipeline import ensure_ray, shutdown_ray

    work = Path(tempfile.mkdtemp(prefix="gpa-batch-bench-"))
    model = args.model
    if model is None:
        from gpa.testing import make_tiny_checkpoint

        model = str(make_tiny_checkpoint(work / "tiny", seed=0))
    (work / "clips").mkdir()
    manifest, seconds = make_clips(work / "clips", args.n, args.seed, args.min_s, args.max_s)
    device = args.device or "cpu"
    baseline, lengths = in_process(model, manifest, args.batch_size, args.max_new_tokens, device, args.torch_threads)
    rows = [("in-process GPA (sorted)", "-", "all", baseline, 1.0, args.n / baseline, 1.0, 0.0)]
    started = ensure_ray()
    try:
        runs = [(int(a), args.bucket_batches) for a in args.actors.split(",")]
        if args.bucket_batches != 1:
            runs.append((1, 1))  # the same job without bucketing windows: what sorting by length buys
        for actors, bucket in runs:
            wall, m = pipeline(model, manifest, work / f"out-{actors}-{bucket}", actors, bucket, args)
            steady = m["steady_rows_per_s"]
            rows.append(("pipeline", str(actors), str(bucket), wall, baseline / wall, steady,
                         steady / (args.n / baseline), m["first_result_s"]))
    finally:
        if started:
            shutdown_ray()
    print(f"\n{args.n} clips, {seconds:.0f} s of audio, batch {args.batch_size}, {args.torch_threads} torch "
          f"thread(s) per model, model {model}")
    print(f"{'mode':<24} {'actors':>6} {'bucket':>6} {'wall s':>7} {'rows/s':>7} {'audio s/s':>9} "
          f"{'ratio':>6} {'start s':>8} {'steady rows/s':>13} {'steady ratio':>12}")
    for mode, actors, bucket, wall, ratio, steady, steady_ratio, first in rows:
        print(f"{mode:<24} {actors:>6} {bucket:>6} {wall:>7.1f} {args.n / wall:>7.2f} {seconds / wall:>9.2f} "
              f"{ratio:>6.2f} {first:>8.1f} {steady:>13.2f} {steady_ratio:>12.2f}")
    print("ratio: end-to-end throughput vs in-process; start s: until the first results (Ray, actors, model load); "
          "steady: after it")
    one = next(r for r in rows if r[1] == "1" and r[2] == str(args.bucket_batches))
    two = next((r for r in rows if r[1] == "2"), None)
    if two is not None:
        print(f"2 vs 1 actors: {one[3] / two[3]:.2f}x")
    b = args.batch_size
    print(f"padding waste of these clips (share of padded samples): no bucketing {padding_waste(lengths, b, b):.1%}, "
          f"windows of {b * args.bucket_batches} sorted {padding_waste(lengths, b, b * args.bucket_batches):.1%}, "
          f"all sorted {padding_waste(lengths, b, len(lengths)):.1%}")


if __name__ == "__main__":
    main()
