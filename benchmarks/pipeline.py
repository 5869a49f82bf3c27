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


def in_process(model_path: str, manifest: Path, batch_size: int, max_new_tokens: int, device: str) -> float:
    from gpa import GPA, TranscribeOptions
    from gpa.audio import load_audio

    model = GPA.from_pretrained(model_path, device=device)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    options = TranscribeOptions(batch_size=batch_size, max_new_tokens=max_new_tokens)
    model.transcribe([(np.zeros(16000, np.float32), 16000)], options)  # warm-up, as an actor's first batch is
    start = time.perf_counter()
    audio = [(load_audio(str(manifest.parent / r["audio"])), 16000) for r in rows]
    results = model.transcribe(audio, options)
    elapsed = time.perf_counter() - start
    assert len(results) == len(rows)
    return elapsed


def pipeline(model_path: str, manifest: Path, output: Path, actors: int, args) -> tuple[float, dict]:
    from jobs.config import JobConfig
    from jobs.pipeline import run_job

    config = JobConfig(job="transcribe", input=str(manifest), output=str(output), model=model_path,
                       actors=(actors, actors), batch_size=args.batch_size, bucket_batches=args.bucket_batches,
                       gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
                       options={"max_new_tokens": args.max_new_tokens},
                       mlflow_uri=f"sqlite:///{output.parent / 'bench-mlflow.db'}", device=args.device)
    result = run_job(config, progress=False)
    assert result.committed_rows == args.n, result.committed_rows
    return result.wall_s, result.metrics


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
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--min-s", type=float, default=1.0)
    parser.add_argument("--max-s", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import ray

    from jobs.pipeline import ensure_ray

    work = Path(tempfile.mkdtemp(prefix="gpa-batch-bench-"))
    model = args.model
    if model is None:
        from gpa.testing import make_tiny_checkpoint

        model = str(make_tiny_checkpoint(work / "tiny", seed=0))
    (work / "clips").mkdir()
    manifest, seconds = make_clips(work / "clips", args.n, args.seed, args.min_s, args.max_s)
    device = args.device or "cpu"
    baseline = in_process(model, manifest, args.batch_size, args.max_new_tokens, device)
    rows = [("in-process GPA", "-", baseline, args.n / baseline, seconds / baseline, 1.0)]
    started = ensure_ray()
    try:
        for actors in [int(a) for a in args.actors.split(",")]:
            wall, metrics = pipeline(model, manifest, work / f"out-{actors}", actors, args)
            rows.append(("pipeline", str(actors), wall, args.n / wall, seconds / wall, baseline / wall))
    finally:
        if started:
            ray.shutdown()
    print(f"\n{args.n} clips, {seconds:.0f} s of audio, batch {args.batch_size}, model {model}")
    print(f"{'mode':<16} {'actors':>6} {'wall s':>8} {'rows/s':>8} {'audio s/s':>10} {'vs in-process':>14}")
    for mode, actors, wall, rps, aps, ratio in rows:
        print(f"{mode:<16} {actors:>6} {wall:>8.1f} {rps:>8.2f} {aps:>10.2f} {ratio:>14.2f}")
    if len(rows) > 2:
        print(f"2 vs 1 actors: {rows[1][2] / rows[2][2]:.2f}x")


if __name__ == "__main__":
    main()
