"""MLflow logging: embedded sqlite store beside the output, a real tracking server, and a tracking failure."""

from __future__ import annotations

import socket
import time

import pytest
from jobs_helpers import MlflowServer, migrated_mlflow_db

from jobs.run.tracking import JobTracking

PARAMS = {"job": "transcribe", "input": "s3://bucket/m.jsonl", "options.temperature": 0.2}
METRICS = {"rows": 3, "rows_ok": 2, "rows_error": 1, "rows_error.unreadable_audio": 1, "wer_mean": 0.25}


def log(output: str, uri: str | None):
    tracking = JobTracking(tracking_uri=uri, output=output, experiment="gpa-batch-test", run_name="t",
                           tags={"gpa_batch.job": "transcribe"})
    return tracking.finish(params=PARAMS, metrics=METRICS,
                           artifacts={"config.yaml": b"job: transcribe\n", "samples/a.json": b"[]"})


def test_embedded_sqlite_store_beside_output(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = migrated_mlflow_db(tmp_path / "out" / "_mlflow" / "mlflow.db")  # tables made once per session (slow)
    tracking = log(str(tmp_path / "out"), None)
    assert tracking.error is None and tracking.run_id
    assert tracking.uri == f"sqlite:///{db}" and db.exists()
    client = MlflowClient(tracking_uri=tracking.uri)
    experiment = client.get_experiment_by_name("gpa-batch-test")
    assert experiment.artifact_location == (tmp_path / "out" / "_mlflow" / "artifacts").as_uri()
    run = client.get_run(tracking.run_id)
    assert run.data.metrics["rows_error.unreadable_audio"] == 1
    assert run.data.params["input"] == "s3://bucket/m.jsonl"
    artifacts = {a.path for a in client.list_artifacts(tracking.run_id)}
    assert {"config.yaml", "samples"} <= artifacts
    assert (tmp_path / "out" / "_mlflow" / "artifacts").is_dir()
    again = log(str(tmp_path / "out"), None)  # a second run goes to the same experiment
    assert client.get_run(again.run_id).info.experiment_id == experiment.experiment_id


def test_relative_sqlite_uri(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    migrated_mlflow_db(tmp_path / "runs" / "mlflow.db")
    tracking = log(str(tmp_path / "out"), "sqlite:///runs/mlflow.db")  # MLflow's own example form
    assert tracking.error is None and tracking.run_id
    experiment = MlflowClient(tracking_uri=tracking.uri).get_experiment_by_name("gpa-batch-test")
    assert experiment.artifact_location == (tmp_path / "runs" / "artifacts").as_uri()


def test_unreachable_tracking_server_is_reported_not_raised(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.time()
    tracking = log(str(tmp_path), f"http://user:secret@127.0.0.1:{port}")
    assert tracking.run_id is None and tracking.error
    assert "secret" not in tracking.error and "secret" not in tracking.uri
    assert time.time() - started < 60


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server.url, server.root
    finally:
        server.stop()


def test_real_tracking_server(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    url, root = mlflow_server
    tracking = log(str(tmp_path), url)
    assert tracking.error is None, tracking.error
    client = MlflowClient(tracking_uri=url)
    run = client.get_run(tracking.run_id)
    assert run.data.metrics["rows_ok"] == 2 and run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(tracking.run_id)} >= {"config.yaml", "samples"}
    assert list((root / "artifacts").rglob("config.yaml"))  # artifacts went through the server


def log_owned(output: str, still_owner=lambda: True, output_id: str = "output-1"):
    """As a job logs: the tracking opens as the job starts, the job takes the output's lease, then finishes."""
    tracking = JobTracking(tracking_uri=None, output=output, experiment="gpa-batch-test", run_name="t",
                           tags={"gpa_batch.job": "transcribe"})
    tracking.own_output(still_owner, output_id)
    return tracking.finish(params=PARAMS, metrics=METRICS,
                           artifacts={"config.yaml": b"job: transcribe\n", "samples/a.json": b"[]"})


def runs_in_output(output: str, tmp_path):
    from mlflow.tracking import MlflowClient

    from jobs.io import storage

    fetched = tmp_path / f"fetched-{time.monotonic_ns()}.db"
    fetched.write_bytes(storage.read_bytes(f"{output}/_mlflow/mlflow.db"))
    client = MlflowClient(tracking_uri=f"sqlite:///{fetched}")
    experiment = client.get_experiment_by_name("gpa-batch-test")
    return experiment, {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}


def test_embedded_store_of_an_object_store_output_lives_in_the_output(s3_bucket, tmp_path, monkeypatch):
    """sqlite cannot run on S3: the default store of an s3:// output is a working copy that each run fetches from
    <output>/_mlflow/mlflow.db and puts back, so a scheduled job on a fresh pod (an empty home) keeps the output's
    MLflow history; artifacts go to the output itself."""
    from jobs.io import storage
    from jobs.run.tracking import embedded_store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    output = f"s3://{s3_bucket}/nightly/out"
    monkeypatch.setenv("GPA_BATCH_HOME", str(tmp_path / "pod-1"))
    migrated_mlflow_db(embedded_store(output, "output-1").local_db)  # tables made once per session (slow)
    first = log_owned(output)
    assert first.error is None and first.run_id and first.uri == f"{output}/_mlflow/mlflow.db"
    monkeypatch.setenv("GPA_BATCH_HOME", str(tmp_path / "pod-2"))  # the next night, on a new pod
    second = log_owned(output)
    third = log_owned(output)  # and a third job in the same process (MLflow keeps its database connections)
    assert second.error is None and third.error is None

    experiment, runs = runs_in_output(output, tmp_path)
    assert experiment.artifact_location == f"{output}/_mlflow/artifacts"
    assert set(runs) == {first.run_id, second.run_id, third.run_id}
    assert all(r.info.status == "FINISHED" and r.data.metrics["rows_error.unreadable_audio"] == 1
               for r in runs.values())
    for run in runs.values():  # the artifacts are in the bucket, where the run says
        assert storage.read_bytes(f"{run.info.artifact_uri}/config.yaml") == b"job: transcribe\n"
        assert storage.exists(f"{run.info.artifact_uri}/samples/a.json")


def test_a_new_output_at_an_old_uri_does_not_inherit_its_runs(s3_bucket, tmp_path, monkeypatch):
    """An s3:// output deleted and made again starts a new MLflow history, although this machine kept a working
    copy of the old one's database (it stays where it was); a copy the last run could not put back stays with its
    own output."""
    from mlflow.tracking import MlflowClient

    from jobs.io import storage
    from jobs.run.tracking import embedded_store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GPA_BATCH_HOME", str(tmp_path / "host"))
    output = f"s3://{s3_bucket}/recreated"
    migrated_mlflow_db(embedded_store(output, "old").local_db)
    migrated_mlflow_db(embedded_store(output, "new").local_db)  # empty, as a fresh store would be (faster)
    old = log_owned(output, output_id="old")
    storage.remove(f"{output}/_mlflow/mlflow.db")  # as if that run could not put it back: kept for that output
    kept = log_owned(output, output_id="old")
    assert set(runs_in_output(output, tmp_path)[1]) == {old.run_id, kept.run_id}

    storage.remove(output)  # the output is deleted, and a job writes a new one at the same URI
    new = log_owned(output, output_id="new")
    assert new.error is None
    assert set(runs_in_output(output, tmp_path)[1]) == {new.run_id}
    client = MlflowClient(tracking_uri=embedded_store(output, "old").uri)  # the old history, where it was
    experiment = client.get_experiment_by_name("gpa-batch-test")
    assert {r.info.run_id for r in client.search_runs([experiment.experiment_id])} == {old.run_id, kept.run_id}


def test_only_the_owner_of_the_output_saves_its_store(s3_bucket, tmp_path, monkeypatch):
    """A job that never got the output's lease (another run holds it) or lost it (--takeover) must not put back
    its copy: it would drop the runs the owner logged meanwhile. It says where its run stayed."""
    from jobs.run.tracking import embedded_store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GPA_BATCH_HOME", str(tmp_path / "pod"))
    output = f"s3://{s3_bucket}/out"
    migrated_mlflow_db(embedded_store(output, "output-1").local_db)
    owner = log_owned(output)
    refused = JobTracking(tracking_uri=None, output=output, experiment="gpa-batch-test", run_name="t", tags={})
    never = refused.finish(params=PARAMS, metrics=METRICS, artifacts={}, failure="OutputBusy: run x is writing")
    taken_over = log_owned(output, still_owner=lambda: False)
    for result in (never, taken_over):
        assert result.run_id is None and "did not own the output" in result.error and "mlflow.db" in result.error
    assert set(runs_in_output(output, tmp_path)[1]) == {owner.run_id}


def test_a_store_that_cannot_be_saved_to_the_output_is_reported(s3_bucket, tmp_path, monkeypatch):
    from jobs.run.tracking import embedded_store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GPA_BATCH_HOME", str(tmp_path / "pod"))
    output = f"s3://{s3_bucket}-gone/out"  # no such bucket: nothing can be written there
    migrated_mlflow_db(embedded_store(output, "output-1").local_db)
    result = log_owned(output)
    assert result.run_id is None and "could not be saved to the output" in result.error
