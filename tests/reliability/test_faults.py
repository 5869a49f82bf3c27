"""Faults injected into real components while a job runs: the GPA actor dies mid-batch, the driver is killed,
the S3 endpoint goes down mid-read and mid-write, the MLflow server goes away, a 2-hour file joins short ones.

In every case: one output row per input row, nothing partial presented as complete, and a rerun of the same
command completes exactly what is missing. The figures go to docs/reliability.md (see ``report.py``).
"""

from __future__ import annotations

from collections import Counter

from jobs.pipeline import run_job

from . import report
from .faults import arm_actor_crash, disarm_actor_crash
from .helpers import AUDIO, committed, small_config, write_jsonl

CLIPS = ("espeak_short.flac", "espeak_weather.flac", "espeak_numbers.flac", "espeak_library.flac")


def clip_rows(n: int, prefix: str = "clip") -> list[dict]:
    return [{"id": f"{prefix}-{i:02d}", "audio": str(AUDIO / CLIPS[i % len(CLIPS)])} for i in range(n)]


def test_gpa_actor_dies_mid_batch(ray_runtime, faults_dir, tiny_checkpoint, mlflow_uri, tmp_path):
    rows = clip_rows(10)
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    arm_actor_crash(faults_dir, nth=2)  # the actor computes its 2nd batch, then its process dies
    try:
        result = run_job(small_config("transcribe", manifest, tmp_path / "out", tiny_checkpoint, mlflow_uri,
                                      batch_size=1, bucket_batches=2))
    finally:
        crashed, calls = disarm_actor_crash(faults_dir)
    assert crashed is not None, "the fault was not injected"
    out = committed(tmp_path / "out")
    assert Counter(r["id"] for r in out) == Counter(r["id"] for r in rows)  # every row exactly once
    assert all(r["status"] == "ok" for r in out) and result.complete
    # the dead actor's batch was computed again by a new actor process, and written once
    redone = [c for c in calls if c["pid"] != crashed["pid"] and set(c["ids"]) & set(crashed["ids"])]
    assert redone and all(sum(r["id"] == i for r in out) == 1 for i in crashed["ids"])
    report.check({"fault.actor_dies": report.Figures.of(len(rows), out)})
