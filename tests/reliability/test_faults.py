"""Faults injected into real components while a job runs: the GPA actor dies mid-batch, the driver is killed,
a second run starts while one is going, the S3 endpoint goes down mid-read and mid-write, the MLflow server goes
away, a 2-hour file joins short ones.

In every case: one output row per input row, nothing partial presented as complete, and a rerun of the same
command completes exactly what is missing. The figures go to docs/reliability.md (see ``report.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest
from jobs_helpers import committed, write_jsonl

from jobs.cli import main as cli_main
from jobs.io.output import OutputStore
from jobs.pipeline import JobError, run_job
from jobs.run.summary import format_summary

from . import report
from .faults import RssSampler, arm_actor_crash, die_with_parent, disarm_actor_crash, free_port, model_calls
from .helpers import AUDIO, ROOT, small_config

CLIPS = ("espeak_short.flac", "espeak_weather.flac", "espeak_numbers.flac", "espeak_library.flac")


def clip_rows(n: int, prefix: str = "clip") -> list[dict]:
    return [{"id": f"{prefix}-{i:02d}", "audio": str(AUDIO / CLIPS[i % len(CLIPS)])} for i in range(n)]


def mlflow_db(tmp_path) -> str:
    from jobs_helpers import migrated_mlflow_db

    return f"sqlite:///{migrated_mlflow_db(tmp_path / 'mlflow' / 'mlflow.db')}"


def test_gpa_actor_dies_mid_batch(ray_runtime, faults_dir, tiny_checkpoint, mlflow_uri, tmp_path):
    rows = clip_rows(8)
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


def test_driver_killed_half_way(ray_runtime, tiny_checkpoint, tmp_path, capsys):
    """kill -9 of the CLI when about half the pending rows are staged; readers see only committed rows; the rerun
    does exactly the remainder (the killed run's finished parts are adopted, nothing twice)."""
    rows = clip_rows(16)
    manifest = write_jsonl(tmp_path / "m.jsonl", [*rows, {"id": "no-audio"}, "{not json"])
    out = tmp_path / "out"
    argv = ["transcribe", "--input", str(manifest), "--output", str(out), "--model", str(tiny_checkpoint),
            "--batch-size", "1", "--bucket-batches", "1", "--rows-per-part", "1", "--max-new-tokens", "4",
            "--mlflow-uri", mlflow_db(tmp_path), "--no-progress", "--json"]
    # an earlier run that processed nothing (--limit 0) but committed the 2 invalid rows as error rows
    assert cli_main([*argv, "--limit", "0"]) == 0
    capsys.readouterr()
    store = OutputStore(str(out))
    before = sorted(r["id"] for r in committed(out))
    assert before == ["line:18", "no-audio"]

    env = {**os.environ, "RAY_ADDRESS": ray_runtime.address}
    process = subprocess.Popen([sys.executable, "-m", "jobs", *argv, "--debug-delay-s", "0.2"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               preexec_fn=die_with_parent)
    try:
        deadline = time.time() + 240
        while len(store.staged_records()) < 8:  # half of the 16 pending rows
            assert process.poll() is None, "the job ended before it could be killed"
            assert time.time() < deadline, "the job staged nothing"
            time.sleep(0.1)
        killed_run = store.lease().run_id
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    staged = len(store.staged_records())

    # a reader now sees exactly the last commit (the 2 error rows), through the commit file or by listing data/
    assert sorted(r["id"] for r in committed(out)) == before
    assert sorted(pq.read_table(out / "data").column("id").to_pylist()) == before
    assert not (out / "_SUCCESS").exists() and staged >= 8

    assert cli_main(argv) == 0  # the same command again
    summary = json.loads(capsys.readouterr().out)
    final = committed(out)
    assert Counter(r["id"] for r in final) == Counter([*before, *(r["id"] for r in rows)])  # all, exactly once
    assert summary["complete"] and summary["committed_rows"] == 18 and (out / "_SUCCESS").exists()
    adopted = [r for r in final if r["run_id"] == killed_run]
    assert len(adopted) >= staged  # no finished work lost ...
    assert summary["already_done"] == 2 + len(adopted)  # ... and only the remainder redone
    assert summary["processed"] == 18 - summary["already_done"]
    assert sum(r["run_id"] == summary["run_id"] for r in final) == summary["processed"]
    assert not (out / ".staging").exists()
    report.check({"fault.driver_killed": report.Figures.of(len(rows) + 2, final)})


def test_a_second_run_while_the_first_is_live(ray_runtime, tiny_checkpoint, tmp_path, capsys):
    """The same command started again while a run is going (a schedule firing before the last run ended): the
    second run stops at once, touching nothing; the first one finishes undisturbed."""
    from mlflow.tracking import MlflowClient

    rows = clip_rows(8)
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out"
    tracking = mlflow_db(tmp_path)
    argv = ["transcribe", "--input", str(manifest), "--output", str(out), "--model", str(tiny_checkpoint),
            "--batch-size", "1", "--bucket-batches", "1", "--rows-per-part", "1", "--max-new-tokens", "4",
            "--mlflow-uri", tracking, "--no-progress", "--json"]
    env = {**os.environ, "RAY_ADDRESS": ray_runtime.address}
    first = subprocess.Popen([sys.executable, "-m", "jobs", *argv, "--debug-delay-s", "0.3"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                             preexec_fn=die_with_parent)
    store = OutputStore(str(out))
    try:
        deadline = time.time() + 240
        while not store.staged_records():  # the first run is under way
            assert first.poll() is None, "the first run ended before the second one started"
            assert time.time() < deadline, "the first run staged nothing"
            time.sleep(0.1)
        owner = store.lease()
        staged = sorted(r["part"] for r in store.staged_records())
        assert cli_main(argv) == 1
        message = capsys.readouterr().err
        assert f"run {owner.run_id} on " in message and "--takeover" in message
        assert store.lease().run_id == owner.run_id  # the first run still owns the output ...
        assert set(staged) <= {r["part"] for r in store.staged_records()}  # ... and all it had staged
        summary = json.loads(first.communicate(timeout=300)[0])
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
    assert first.returncode == 0 and summary["complete"] and summary["run_id"] == owner.run_id
    final = committed(out)
    assert Counter(r["id"] for r in final) == Counter(r["id"] for r in rows) and (out / "_SUCCESS").exists()
    assert store.lease() is None  # given up at the end: the next night's run starts at once
    client = MlflowClient(tracking_uri=tracking)  # not mlflow.set_tracking_uri: that would leak into later tests
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_name for r in runs] == [f"transcribe-{owner.run_id}"]  # the refused run logged nothing
    report.check({"fault.overlapping_run": report.Figures.of(len(rows), final)})


def s3_inputs(s3, bucket: str, n: int) -> str:
    """``n`` rows of short clips, manifest and audio on S3 (relative paths); returns the manifest URI."""
    client = s3.client()
    for name in CLIPS:
        client.upload_file(str(AUDIO / name), bucket, f"in/audio/{name}")
    rows = [{"id": f"s3-{i:02d}", "audio": f"audio/{CLIPS[i % len(CLIPS)]}"} for i in range(n)]
    client.put_object(Bucket=bucket, Key="in/m.jsonl", Body="".join(json.dumps(r) + "\n" for r in rows).encode())
    return f"s3://{bucket}/in/m.jsonl"


def test_s3_outage_mid_read(ray_runtime, s3, tiny_checkpoint, mlflow_uri, tmp_path, capsys):
    bucket = s3.bucket("outage-read")
    manifest = s3_inputs(s3, bucket, 6)
    config = small_config("transcribe", manifest, tmp_path / "out", tiny_checkpoint, mlflow_uri, batch_size=1,
                          bucket_batches=2)
    argv = ["transcribe", "--input", manifest, "--output", str(tmp_path / "out"), "--model", str(tiny_checkpoint),
            "--batch-size", "1", "--bucket-batches", "2", "--rows-per-part", "4", "--max-new-tokens", "4",
            "--mlflow-uri", mlflow_uri, "--no-progress", "--json"]
    # a flapping endpoint (3 resets in a row on the first audio read) is absorbed by the retries with backoff;
    # then the endpoint goes down on the 4th audio read and stays down until the run is over
    capsys.readouterr()
    with s3.endpoint.faults():
        s3.endpoint.arm("GET", f"/{bucket}/in/audio/", nth=1, drop=3)
        s3.endpoint.arm("GET", f"/{bucket}/in/audio/", nth=4)
        code = cli_main(argv)  # as a scheduled job runs it: the exit code asks the scheduler to retry
        first = json.loads(capsys.readouterr().out)
    assert len(s3.endpoint.dropped) == 3 and s3.endpoint.outages[-1]["request"]
    rows = committed(tmp_path / "out")
    kinds = Counter(r["error_kind"] for r in rows)
    unavailable = kinds.pop("storage_unavailable", 0)
    assert len(rows) == 6 and unavailable >= 1 and set(kinds) == {None}  # transient, not "unreadable"
    # ... never presented as complete
    assert code == 75 and not first["complete"] and not (tmp_path / "out" / "_SUCCESS").exists()
    again = run_job(config)  # the store is back: the same command redoes exactly those rows
    final = committed(tmp_path / "out")
    assert again.processed == unavailable and again.complete and (tmp_path / "out" / "_SUCCESS").exists()
    assert Counter(r["id"] for r in final) == Counter(f"s3-{i:02d}" for i in range(6))
    assert all(r["status"] == "ok" for r in final)
    report.check({"fault.s3_read_outage": report.Figures.of(6, final)})


def test_s3_outage_mid_write_and_mid_commit(ray_runtime, s3, tiny_checkpoint, mlflow_uri, tmp_path):
    bucket = s3.bucket("outage-write")
    manifest = write_jsonl(tmp_path / "m.jsonl", clip_rows(8))
    out = f"s3://{bucket}/out"
    config = small_config("transcribe", manifest, out, tiny_checkpoint, mlflow_uri, batch_size=1, bucket_batches=2,
                          rows_per_part=2)
    # 1. the endpoint goes down while the 2nd part is written, and stays down: the run fails cleanly
    with s3.endpoint.faults(), pytest.raises(JobError, match="nothing was committed"):
        s3.endpoint.arm("PUT", r"/out/\.staging/[^/]+/part-[^/]+\.parquet$", nth=2)
        run_job(config)
    assert committed(out) == [] and "out/_SUCCESS" not in s3.keys(bucket)
    first_run = next(k.split("/")[2] for k in s3.keys(bucket) if k.startswith("out/.staging/"))  # its staged part

    # 2. the rerun goes down in the middle of its commit (while moving its 2nd part into data/)
    commit_failed = "could not commit the run .*EndpointConnectionError.*rerun"
    with s3.endpoint.faults(), pytest.raises(JobError, match=commit_failed):
        s3.endpoint.arm("PUT", rf"/out/data/part-(?!{first_run})", nth=2)
        run_job(config)
    assert s3.endpoint.outages[-1]["request"].startswith("PUT")
    visible = committed(out)  # the commit file was not replaced: what a reader sees is an earlier commit
    assert "out/_SUCCESS" not in s3.keys(bucket)
    assert all(r["run_id"] == first_run for r in visible)  # at most run 1's finished parts, adopted by run 2

    # 3. the third run adopts everything run 2 finished; a flapping endpoint at its commit point (3 resets of the
    # commit file's PUT) is absorbed by the retries
    with s3.endpoint.faults():
        s3.endpoint.arm("PUT", r"/out/_gpa_batch/commit\.json$", nth=1, drop=3)
        result = run_job(config)
    final = committed(out)
    assert Counter(r["id"] for r in final) == Counter(f"clip-{i:02d}" for i in range(8))
    assert result.complete and result.processed == 0 and result.already_done == 8
    assert "out/_SUCCESS" in s3.keys(bucket) and not [k for k in s3.keys(bucket) if "/.staging/" in k]
    data = [k for k in s3.keys(bucket, "out/data/")]
    assert sorted(data) == sorted(f.split(f"s3://{bucket}/", 1)[1] for f in OutputStore(out).files())
    report.check({"fault.s3_write_outage": report.Figures.of(8, final)})


def test_s3_down_while_a_new_output_is_made(s3, tiny_checkpoint, mlflow_uri, tmp_path):
    """Nothing of the output exists yet, so no part is kept: the one line says so instead of promising a resume."""
    bucket = s3.bucket("outage-new")
    manifest = write_jsonl(tmp_path / "m.jsonl", clip_rows(2))
    config = small_config("transcribe", manifest, f"s3://{bucket}/out", tiny_checkpoint, mlflow_uri)
    made = r"could not create the output \(.*EndpointConnectionError.*\); no results were written: check that --output"
    with s3.endpoint.faults(), pytest.raises(JobError, match=made):
        s3.endpoint.arm("PUT", r"/out/", nth=1)
        run_job(config)
    assert not [k for k in s3.keys(bucket) if k.startswith("out/")]


def test_a_local_output_that_cannot_be_made(tiny_checkpoint, mlflow_uri, tmp_path):
    """A path that every check before the run accepts but the kernel refuses to make (under /proc): the same line,
    for a local output."""
    manifest = write_jsonl(tmp_path / "m.jsonl", clip_rows(2))
    config = small_config("transcribe", manifest, f"/proc/gpa-batch-{os.getpid()}", tiny_checkpoint, mlflow_uri)
    with pytest.raises(JobError, match=r"could not create the output \(\w*Error: .*\); no results were"):
        run_job(config)


def test_mlflow_unreachable(ray_runtime, tiny_checkpoint, tmp_path):
    """Tracking down: the job still completes, keeps its metrics beside the output and reports the failure."""
    uri = f"http://gpa:CANARY-mlflow-pw@127.0.0.1:{free_port()}"  # nothing listens there
    rows = clip_rows(4)
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    started = time.time()
    result = run_job(small_config("transcribe", manifest, tmp_path / "out", tiny_checkpoint, uri))
    wall = time.time() - started
    out = committed(tmp_path / "out")
    assert result.complete and len(out) == 4 and all(r["status"] == "ok" for r in out)
    assert result.tracking.run_id is None and "Connection" in result.tracking.error
    local = json.loads((tmp_path / "out" / "_gpa_batch" / "runs" / f"{result.run_id}.json").read_text())
    assert local["metrics"]["rows_ok"] == 4 and local["mlflow"]["error"] == result.tracking.error
    summary = format_summary(result)
    assert "mlflow          FAILED" in summary and "metrics kept" in summary
    assert "CANARY" not in summary + json.dumps(local) + result.tracking.error
    assert wall < 120
    report.check({"fault.mlflow_down": report.Figures.of(4, out)})


@pytest.mark.slow
def test_two_hour_file_among_short_ones(ray_runtime, faults_dir, long_flac, tiny_checkpoint, mlflow_uri,
                                        tmp_path):
    rows = [{"id": "two-hours", "audio": str(long_flac)}, *clip_rows(4)]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    model_calls(faults_dir, reset=True)
    with RssSampler() as memory:
        result = run_job(small_config("transcribe", manifest, tmp_path / "out", tiny_checkpoint, mlflow_uri,
                                      max_duration_s=7300.0, batch_size=32, bucket_batches=1, actors=(1, 2),
                                      options={"max_new_tokens": 1}))
    calls = model_calls(faults_dir)
    out = {r["id"]: r for r in committed(tmp_path / "out")}
    assert result.complete and set(out) == {r["id"] for r in rows}
    assert all(r["status"] == "ok" for r in out.values()), [r["error"] for r in out.values()]
    long = out["two-hours"]
    assert long["duration_s"] == pytest.approx(7200.0, abs=0.01)
    segments = long["segments"]  # chunked: windows cut at the pauses, covering the file in order
    assert len(segments) > 1000 and segments[0]["start"] == 0.0 and segments[-1]["end"] == pytest.approx(7200.0)
    assert all(a["end"] == pytest.approx(b["start"]) for a, b in zip(segments, segments[1:], strict=False))
    # the pool survived: every row went through the model exactly once (no actor died and redid a batch)
    assert sorted(i for c in calls for i in c["ids"]) == sorted(out)
    actor = memory.peak("GPAStage")
    decode = memory.peak("decode_batch")
    # bounded: the whole file at 16 kHz float32 is 0.46 GB; the actor holds the block it received, its own copy
    # and the model; the decode task the file, its decoded and resampled samples
    assert 0 < actor < 3 * 2**30 and 0 < decode < 2 * 2**30
    report.check({"fault.two_hour_file": report.Figures.of(len(rows), list(out.values()))})
    report.check_measurement("memory.two_hour_actor_peak_rss", actor / 2**20, "MiB")
    report.check_measurement("memory.two_hour_decode_peak_rss", decode / 2**20, "MiB")
