"""MLflow logging: embedded sqlite store beside the output, a real tracking server, and a tracking failure."""

from __future__ import annotations

import socket
import time

import pytest
from jobs_helpers import MlflowServer, migrated_mlflow_db

from jobs.tracking import JobTracking

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
