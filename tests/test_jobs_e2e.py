"""Each job end to end on a real local Ray runtime and the tiny random checkpoint, bad rows included; resume after a
killed run; S3 in and out (moto server); Parquet read back with pyarrow and ``datasets``."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from jobs_helpers import committed, migrated_mlflow_db, write_jsonl

from jobs.config import JobConfig
from jobs.io.output import OutputStore
from jobs.pipeline import run_job

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "manifests" / "examples"
AUDIO = EXAMPLES / "audio"


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    return f"sqlite:///{migrated_mlflow_db(tmp_path_factory.mktemp('mlflow') / 'mlflow.db')}"


def small_config(job: str, manifest: Path | str, output: Path | str, model, mlflow_uri, **overrides) -> JobConfig:
    values = dict(job=job, input=str(manifest), output=str(output), model=str(model), mlflow_uri=mlflow_uri,
                  batch_size=2, bucket_batches=2, rows_per_part=3, options={"max_new_tokens": 24})
    values.update(overrides)
    return JobConfig(**values)


def bad_audio_files(directory: Path) -> dict[str, Path]:
    files = {"not_audio": directory / "notes.wav", "empty": directory / "empty.flac", "short": directory / "short.flac",
             "long": directory / "long.flac"}
    files["not_audio"].write_text("this is not audio")
    files["empty"].write_bytes(b"")
    sf.write(files["short"], np.zeros(400, np.float32), 16000)  # 25 ms: too short to tokenize
    sf.write(files["long"], np.zeros(13 * 16000, np.float32), 16000)  # over the test's 12 s limit
    return files


def test_transcribe_end_to_end_with_bad_rows_and_rerun(ray_address, tiny_checkpoint, mlflow_uri, tmp_path):
    bad = bad_audio_files(tmp_path)
    rows = [json.loads(line) for line in (EXAMPLES / "transcribe.jsonl").read_text().splitlines()]
    for row in rows:
        row["audio"] = str(EXAMPLES / row["audio"])
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        *rows,
        {"id": "not-audio", "audio": str(bad["not_audio"])},
        {"id": "empty", "audio": str(bad["empty"])},
        {"id": "too-short", "audio": str(bad["short"])},
        {"id": "too-long", "audio": str(bad["long"])},
        {"id": "segment", "audio": str(AUDIO / "jfk.flac"), "begin_time": 1.0, "end_time": 3.0, "text": "my fellow"},
        "{broken json",
        {"id": "jfk", "audio": str(AUDIO / "espeak_short.flac")},
        {"audio": str(AUDIO / "espeak_short.flac")},
    ])
    config = small_config("transcribe", manifest, tmp_path / "out", tiny_checkpoint, mlflow_uri, max_duration_s=12.0)
    result = run_job(config)

    out = committed(tmp_path / "out")
    assert Counter(r["id"] for r in out) == Counter(
        ["jfk", "weather", "numbers", "library", "hello", "missing-file", "not-audio", "empty", "too-short",
         "too-long", "segment", "line:12", "jfk", str(AUDIO / "espeak_short.flac")])  # one row per input row
    kinds = {(r["id"], r["error_kind"]) for r in out if r["status"] == "error"}
    assert kinds == {("missing-file", "unreadable_audio"), ("not-audio", "unreadable_audio"),
                     ("empty", "empty_audio"), ("too-short", "too_short_audio"), ("too-long", "too_long_audio"),
                     ("line:12", "invalid_manifest_row"), ("jfk", "duplicate_id")}
    ok = {r["id"]: r for r in out if r["status"] == "ok"}
    assert set(ok) == {"jfk", "weather", "numbers", "library", "hello", "segment", str(AUDIO / "espeak_short.flac")}
    jfk = ok["jfk"]
    assert jfk["duration_s"] == pytest.approx(11.0, abs=0.01) and jfk["model_hash"] and jfk["model_source"]
    assert jfk["segments"] and jfk["num_glm_tokens"] > 0 and jfk["num_semantic_tokens"] > 0
    assert jfk["reference"].startswith("And so") and 0 <= jfk["cer"] and jfk["wer"] >= 0
    assert ok["segment"]["duration_s"] == pytest.approx(2.0, abs=0.01)
    assert ok["segment"]["segments"][0]["start"] >= 1.0  # segment times are in the source file's timeline
    assert json.loads(jfk["params"])["seed"] == jfk["seed"]
    assert all(r["timings"]["latency_s"] > 0 for r in ok.values())
    assert result.counts["ok"] == 7 and result.counts["error"] == 7 and result.complete
    assert (tmp_path / "out" / "_SUCCESS").exists()
    assert len(result.files) >= 3  # rows_per_part=3: several parts

    # the run is in MLflow, with metrics by error kind, and in the local metrics file
    from mlflow.tracking import MlflowClient

    assert result.tracking.error is None
    run = MlflowClient(tracking_uri=mlflow_uri).get_run(result.tracking.run_id)
    assert run.data.metrics["rows_ok"] == 7 and run.data.metrics["rows_error.unreadable_audio"] == 2
    assert run.data.metrics["wer_mean"] >= 0 and "latency_p95_s" in run.data.metrics
    assert run.data.params["model_hash"] == jfk["model_hash"] and run.data.params["job"] == "transcribe"
    assert json.loads(Path(result.metrics_path).read_text())["metrics"]["rows"] == 14

    # rerunning the same command does nothing; with --retry-errors only the failed rows run again
    again = run_job(config)
    assert again.processed == 0 and again.already_done == 14 and again.committed_rows == 14
    bad["empty"].write_bytes((AUDIO / "espeak_short.flac").read_bytes())
    retried = run_job(small_config("transcribe", manifest, tmp_path / "out", tiny_checkpoint, mlflow_uri,
                                   max_duration_s=12.0, retry_errors=True))
    assert retried.processed == 7 - 1  # the error rows, less the duplicate (which stays a duplicate)
    out = committed(tmp_path / "out")
    assert len(out) == 14 and Counter(r["id"] for r in out)["jfk"] == 2
    assert next(r for r in out if r["id"] == "empty")["status"] == "ok"

    # a manifest that lost rows since: nothing to do, and the summary says which output rows it does not have
    from jobs.run.summary import format_summary, summary_dict

    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("".join(line + "\n" for line in manifest.read_text().splitlines()[:-1]))  # less the id-less
    shrunk = run_job(small_config("transcribe", fewer, tmp_path / "out", tiny_checkpoint, mlflow_uri,
                                  max_duration_s=12.0))
    assert shrunk.processed == 0 and shrunk.input_rows == 13 and shrunk.committed_rows == 14 and shrunk.complete
    assert summary_dict(shrunk)["rows_not_in_input"] == 1 and shrunk.metrics["rows_not_in_input"] == 1
    assert "1 of ids not in this input" in format_summary(shrunk)
    assert summary_dict(again)["rows_not_in_input"] == 0 and "not in this input" not in format_summary(again)

    # the Parquet reads with pyarrow and datasets
    assert pq.read_table(OutputStore(str(tmp_path / "out")).files()).num_rows == 14
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "out" / "data" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 14 and set(ds.column_names) >= {"id", "status", "text", "segments", "wer", "cer"}


def decode(audio: dict) -> tuple[np.ndarray, int]:
    data = audio["bytes"] if audio["bytes"] is not None else Path(audio["path"]).read_bytes()
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    return samples, rate


def test_synthesize_end_to_end_audio_objects_and_hostile_ids(ray_address, tiny_checkpoint, tmp_path):
    hostile = ["../../escape", "/etc/passwd", "nul\u0000id", "x" * 10_000]
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        *[{"id": i, "text": "Hello there.", "ref_audio": str(AUDIO / "espeak_short.flac")} for i in hostile],
        {"id": "jfk-voice", "text": "A longer sentence, spoken in the voice of the reference.",
         "ref_audio": str(AUDIO / "jfk.flac"), "ref_id": "jfk", "seed": 11},
        {"id": "bad-ref", "text": "Hello.", "ref_audio": str(tmp_path / "nowhere.wav")},
        {"id": "empty-text", "text": "", "ref_audio": str(AUDIO / "jfk.flac")},
    ])
    out_dir = tmp_path / "out"
    result = run_job(small_config("synthesize", manifest, out_dir, tiny_checkpoint, None, audio_storage="objects",
                                  keep_max_cer=100.0, keep_min_similarity=-1.0,  # random weights: gate wide open
                                  memory_per_actor_mb=256))
    # the default tracking store: sqlite beside the output, artifacts (incl. samples) beside it
    assert result.tracking.error is None and (out_dir / "_mlflow" / "mlflow.db").exists()
    rows = {r["id"]: r for r in committed(out_dir)}
    assert set(rows) == {*hostile, "jfk-voice", "bad-ref", "empty-text"}
    assert rows["bad-ref"]["error_kind"] == "unreadable_audio" and "reference" in rows["bad-ref"]["error"]
    assert rows["empty-text"]["error_kind"] == "invalid_text"
    audio_root = (out_dir / "audio").resolve()
    files = [p for p in audio_root.rglob("*") if p.is_file()]
    for row_id in [*hostile, "jfk-voice"]:
        row = rows[row_id]
        assert row["status"] == "ok", row["error"]
        path = Path(row["audio"]["path"]).resolve()
        assert path.is_relative_to(audio_root) and path in files  # never outside the output prefix
        samples, rate = decode(row["audio"])
        assert rate == 16000 and len(samples) == pytest.approx(row["duration_s"] * 16000, abs=1)
        assert len(row["global_tokens"]) == 32 and len(row["semantic_tokens"]) > 0
        assert row["asr_text"] is not None and -1.0 <= row["speaker_similarity"] <= 1.0
        assert row["keep"] is True and row["sampling_rate"] == 16000
    assert len(files) == 5 and not list(tmp_path.glob("escape*")) and not Path("/etc/passwd.flac").exists()
    assert rows["jfk-voice"]["seed"] == 11 and rows["jfk-voice"]["ref_id"] == "jfk"
    # the MLflow samples carry the audio of the objects (not only the inline bytes of --audio-storage inline)
    sample_audio = sorted((out_dir / "_mlflow").rglob("samples/*.flac"))
    outputs = {path.read_bytes() for path in files}
    assert len(sample_audio) == 3 and all(p.read_bytes() in outputs for p in sample_audio)
    logged = json.loads(next((out_dir / "_mlflow").rglob("samples/samples.json")).read_text())
    assert sorted(s["audio_file"] for s in logged) == sorted(p.name for p in sample_audio)
    assert 0 <= result.metrics["quality_pass_rate"] <= 1 and result.metrics["audio_hours_out"] > 0

    # inline audio reads back through datasets (Audio feature, decoded here from its bytes)
    inline = run_job(small_config("synthesize", manifest, tmp_path / "inline", tiny_checkpoint, None, quality=False,
                                  limit=2))
    assert inline.processed == 2 + 1 and not inline.complete  # 2 rows run, the invalid row written as an error
    import datasets

    ds = datasets.load_dataset("parquet", data_files=inline.files, split="train", cache_dir=str(tmp_path / "hf"))
    assert isinstance(ds.features["audio"], datasets.Audio)
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    ok = [r for r in ds if r["status"] == "ok"]
    assert len(ok) == 2 and all(decode(r["audio"])[0].size > 0 for r in ok)


def test_convert_on_s3(ray_address, tiny_checkpoint, s3_bucket, tmp_path, monkeypatch):
    import boto3
    from jobs_helpers import free_port

    from jobs.io import storage

    s3 = boto3.client("s3")
    for name in ("espeak_weather.flac", "jfk.flac", "espeak_library.flac", "espeak_numbers.flac"):
        s3.upload_file(str(AUDIO / name), s3_bucket, f"in/audio/{name}")
    s3.upload_file(str(EXAMPLES / "convert.jsonl"), s3_bucket, "in/convert.jsonl")
    output = f"s3://{s3_bucket}/results/convert"
    dead_tracking = f"http://127.0.0.1:{free_port()}"  # nothing listens there: tracking fails, the data must not
    result = run_job(small_config("convert", f"s3://{s3_bucket}/in/convert.jsonl", output, tiny_checkpoint,
                                  dead_tracking))
    rows = {r["id"]: r for r in committed(output)}
    assert set(rows) == {"vc-weather-to-jfk", "vc-jfk-to-f3", "vc-missing-ref"}
    assert rows["vc-missing-ref"]["error_kind"] == "unreadable_audio"
    for row_id in ("vc-weather-to-jfk", "vc-jfk-to-f3"):
        row = rows[row_id]
        assert row["status"] == "ok", row["error"]
        assert row["source_audio_uri"].startswith(f"s3://{s3_bucket}/in/audio/")
        assert decode(row["audio"])[0].size > 0 and row["duration_s"] > 0
        assert len(row["global_tokens"]) == 32 and row["source_semantic_tokens"] and row["semantic_tokens"]
        assert row["speaker_similarity"] is not None and row["source_similarity"] is not None
    assert rows["vc-jfk-to-f3"]["source_duration_s"] == pytest.approx(4.0, abs=0.01)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="results/convert/")["Contents"]]
    assert "results/convert/_SUCCESS" in keys and "results/convert/_gpa_batch/commit.json" in keys
    assert not [k for k in keys if "/.staging/" in k]
    assert result.complete and result.tracking.error and result.tracking.run_id is None
    kept = json.loads(storage.read_bytes(result.metrics_path))
    assert kept["metrics"]["rows_ok"] == 2 and kept["mlflow"]["error"] == result.tracking.error

    # no manifest: list the archive, one reference voice for every row; no --mlflow-uri: the output keeps its own
    # MLflow store, which each run fetches and puts back
    from mlflow.tracking import MlflowClient

    from jobs.run.tracking import embedded_store

    listing = f"s3://{s3_bucket}/results/listing"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GPA_BATCH_HOME", str(tmp_path / "home"))
    # the output's id chooses this machine's working copy of its store: known here, so that copy can be given
    # tables made once per session (slow)
    storage.write_bytes(f"{listing}/_gpa_batch/output.json", b'{"format": "gpa-batch-output/1", "id": "listing"}')
    migrated_mlflow_db(embedded_store(listing, "listing").local_db)
    config = small_config("convert", f"s3://{s3_bucket}/in/audio/", listing, tiny_checkpoint, None,
                          glob="espeak_*.flac", reference=f"s3://{s3_bucket}/in/audio/jfk.flac", limit=2,
                          quality=False)
    listed = run_job(config)
    rows = committed(listing)
    assert listed.input_rows == 3 and not listed.complete and len(rows) == 2
    assert {r["id"] for r in rows} <= {"espeak_weather.flac", "espeak_library.flac", "espeak_numbers.flac"}
    assert all(r["status"] == "ok" and r["ref_id"] == "jfk.flac" for r in rows)
    monkeypatch.setenv("GPA_BATCH_HOME", str(tmp_path / "another-home"))  # the next run on another machine
    rest = run_job(config)
    assert rest.processed == 1 and rest.complete and len(committed(listing)) == 3
    assert listed.tracking.error is None and rest.tracking.error is None
    assert rest.tracking.uri == f"{listing}/_mlflow/mlflow.db"
    (tmp_path / "fetched.db").write_bytes(storage.read_bytes(rest.tracking.uri))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'fetched.db'}")
    runs = client.search_runs([client.get_experiment_by_name("gpa-batch-convert").experiment_id])
    assert {r.info.run_id for r in runs} == {listed.tracking.run_id, rest.tracking.run_id}
    assert {r.info.status for r in runs} == {"FINISHED"} and sorted(r.data.metrics["rows_ok"] for r in runs) == [1, 2]
    assert all(storage.exists(f"{r.info.artifact_uri}/config.yaml") for r in runs)  # artifacts in the bucket


def test_a_checkpoint_that_cannot_load_stops_the_job(ray_address, tmp_path):
    from mlflow.tracking import MlflowClient

    from jobs.pipeline import JobError

    mlflow_uri = f"sqlite:///{migrated_mlflow_db(tmp_path / 'mlflow.db')}"
    with pytest.raises(JobError, match="CheckpointError"):
        run_job(small_config("transcribe", EXAMPLES / "transcribe.jsonl", tmp_path / "out", tmp_path / "no-model",
                             mlflow_uri, experiment="failing"))
    assert committed(tmp_path / "out") == [] and not (tmp_path / "out" / "_SUCCESS").exists()
    # the MLflow run opened as the job started says it failed, and why
    client = MlflowClient(tracking_uri=mlflow_uri)
    [run] = client.search_runs([client.get_experiment_by_name("failing").experiment_id])
    assert run.info.status == "FAILED" and "CheckpointError" in run.data.tags["gpa_batch.failure"]
    assert run.data.params["job"] == "transcribe" and "rows_ok" not in run.data.metrics


def test_killed_run_resumes_to_the_exact_row_set(ray_address, tiny_checkpoint, tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": f"clip-{i:02d}", "audio": str(AUDIO / ("espeak_short.flac" if i % 3 else "espeak_weather.flac"))}
        for i in range(8)] + [{"id": "gone", "audio": str(tmp_path / "gone.wav")}])
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "jobs", "transcribe", "--input", str(manifest), "--output", str(out), "--model",
            str(tiny_checkpoint), "--batch-size", "1", "--bucket-batches", "1", "--rows-per-part", "1",
            "--max-new-tokens", "4", "--mlflow-uri", f"sqlite:///{tmp_path / 'ml.db'}", "--no-progress"]
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    process = subprocess.Popen([*argv, "--debug-delay-s", "0.5"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    store = OutputStore(str(out))
    deadline = time.time() + 240
    while len(store.staged_records()) < 2:
        assert process.poll() is None, "the job ended before it could be interrupted"
        assert time.time() < deadline, "the job wrote no parts"
        time.sleep(0.3)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    time.sleep(3)  # Ray ends the dead driver's tasks
    # what a reader sees now: the (empty) last commit, and no _SUCCESS
    assert committed(out) == [] and not (out / "_SUCCESS").exists()
    staged = len(store.staged_records())

    finished = subprocess.run([*argv, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    # on a cluster without GPUs at the start, the job says why its actors run on CPU (an autoscaled GPU group)
    assert "the Ray cluster has no GPU now" in finished.stderr and "--gpus-per-actor" in finished.stderr
    summary = json.loads(finished.stdout)
    assert summary["complete"] and summary["committed_rows"] == 9
    assert summary["already_done"] >= staged and summary["processed"] == 9 - summary["already_done"]
    rows = committed(out)
    assert sorted(r["id"] for r in rows) == sorted([f"clip-{i:02d}" for i in range(8)] + ["gone"])
    assert (out / "_SUCCESS").exists() and not (out / ".staging").exists()
    assert sorted(os.listdir(out / "data")) == sorted(os.path.basename(f) for f in OutputStore(str(out)).files())


def test_ctrl_c_ends_the_run_cleanly_and_the_rerun_finishes_it(ray_address, tiny_checkpoint, tmp_path):
    """Ctrl-C: one line saying how to go on (no traceback), exit 130, the output given up (no lease left), the
    MLflow run FAILED with that reason; the same command then finishes the job."""
    from mlflow.tracking import MlflowClient

    # 12 s of model work at least (1 s per row) after the run takes the output: the interrupt, 3 s after that, lands
    # mid-run even on a loaded machine (waiting for a first staged part did not: Ray Data can hold every part back
    # until the end, and the signal then arrived after the job had finished)
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": f"clip-{i:02d}", "audio": str(AUDIO / "espeak_short.flac")}
                                                  for i in range(12)])
    out, db = tmp_path / "out", tmp_path / "ml.db"
    migrated_mlflow_db(db)
    # as from a terminal, whatever the test runner inherited: a job started in the background by a shell without
    # job control ignores SIGINT (and Python then keeps ignoring it)
    as_from_a_terminal = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                          "runpy.run_module('jobs', run_name='__main__', alter_sys=True)")
    argv = [sys.executable, "-c", as_from_a_terminal, "transcribe", "--input", str(manifest), "--output", str(out),
            "--model", str(tiny_checkpoint), "--batch-size", "1", "--bucket-batches", "1", "--rows-per-part", "1",
            "--max-new-tokens", "4", "--mlflow-uri", f"sqlite:///{db}", "--experiment", "ctrl-c", "--no-progress"]
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    process = subprocess.Popen([*argv, "--debug-delay-s", "1.0"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    store = OutputStore(str(out))
    deadline = time.time() + 240
    while store.lease() is None:
        assert process.poll() is None, "the job ended before it could be interrupted"
        assert time.time() < deadline, "the job never took the output"
        time.sleep(0.3)
    time.sleep(3)
    assert process.poll() is None, "the job ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "gpa-batch transcribe: interrupted; finished parts are kept and rerunning the same command resumes" in stderr
    assert store.lease() is None and committed(out) == []
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    [run] = client.search_runs([client.get_experiment_by_name("ctrl-c").experiment_id])
    assert run.info.status == "FAILED" and "interrupted" in run.data.tags["gpa_batch.failure"]

    finished = subprocess.run([*argv, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert json.loads(finished.stdout)["complete"]
    assert sorted(r["id"] for r in committed(out)) == [f"clip-{i:02d}" for i in range(12)]


def test_demo_prints_counts_matching_the_example_manifest(ray_address, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    done = subprocess.run([sys.executable, "-m", "jobs", "demo", "--output", str(tmp_path / "demo")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    rows = (EXAMPLES / "transcribe.jsonl").read_text().splitlines()
    assert f"input rows      {len(rows)}" in out and f"output rows     {len(rows)}: {len(rows) - 1} ok, 1 error" in out
    assert "RANDOM weights" in out and "--model AutoArk-AI/GPA" in out
    assert (tmp_path / "demo" / "transcribe" / "_SUCCESS").exists()
    assert "mlflow          sqlite:///" in out

    # a second demo resumes the complete output: nothing recomputed, and it says so (README, quick start)
    again = subprocess.run([sys.executable, "-m", "jobs", "demo", "--output", str(tmp_path / "demo")], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"this run        0 rows: 0 ok, 0 error; {len(rows)} already done" in again.stdout
    assert f"transcribe: already done, {len(rows)} rows in {tmp_path / 'demo' / 'transcribe'}" in again.stdout


def test_demo_with_a_wrong_model_says_so_in_one_line_before_ray_starts(tmp_path):
    done = subprocess.run([sys.executable, "-m", "jobs", "demo", "--model", str(tmp_path / "no-such-checkpoint"),
                           "--output", str(tmp_path / "demo"), "--jobs", "all"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"})
    assert done.returncode == 1, done.stderr[-3000:]
    # RAY_ADDRESS points nowhere: joining Ray would have failed differently, so the check ran before it
    assert done.stderr.strip().splitlines() == [f"gpa-batch demo: --model {tmp_path / 'no-such-checkpoint'}: no "
                                                "such directory (nor an s3:// prefix or a Hugging Face repo id "
                                                "owner/name)"]
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_listed_file_rewritten_in_place_is_redone(where, ray_address, tiny_checkpoint, mlflow_uri, tmp_path,
                                                     s3_bucket):
    """--glob runs compare each file's listed version (size and ETag or mtime) with the one its row was made
    from: a file overwritten under the same name is transcribed again, the others are not."""
    names = ("espeak_weather.flac", "espeak_numbers.flac")
    if where == "local":
        archive = tmp_path / "archive"
        archive.mkdir()
        for name in names:
            shutil.copy(AUDIO / name, archive / name)
        prefix = str(archive)

        def rewrite(name: str, source: str) -> None:
            shutil.copy(AUDIO / source, archive / name)
            os.utime(archive / name, (time.time() + 5, time.time() + 5))  # a coarse clock still sees a change
    else:
        import boto3

        s3 = boto3.client("s3")
        for name in names:
            s3.put_object(Bucket=s3_bucket, Key=f"archive/{name}", Body=(AUDIO / name).read_bytes())
        prefix = f"s3://{s3_bucket}/archive/"

        def rewrite(name: str, source: str) -> None:
            s3.put_object(Bucket=s3_bucket, Key=f"archive/{name}", Body=(AUDIO / source).read_bytes())
    config = small_config("transcribe", prefix, tmp_path / "out", tiny_checkpoint, mlflow_uri, glob="*.flac")
    first = run_job(config)
    assert first.processed == 2 and first.complete
    versions = {r["id"]: r["input_version"] for r in committed(tmp_path / "out")}
    assert all(v and v.startswith("size=") for v in versions.values())
    assert run_job(config).processed == 0  # nothing changed: nothing redone
    rewrite("espeak_numbers.flac", "espeak_short.flac")
    again = run_job(config)
    assert again.processed == 1 and again.already_done == 1 and again.complete
    rows = {r["id"]: r for r in committed(tmp_path / "out")}
    assert len(rows) == 2 and rows["espeak_weather.flac"]["input_version"] == versions["espeak_weather.flac"]
    assert rows["espeak_numbers.flac"]["input_version"] != versions["espeak_numbers.flac"]
    assert rows["espeak_numbers.flac"]["duration_s"] == pytest.approx(sf.info(AUDIO / "espeak_short.flac").duration,
                                                                      abs=0.01)
