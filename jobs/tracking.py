"""MLflow: one run per job, logged at its end. Tracking is never allowed to lose data: any failure here is reported
and the metrics stay in the JSON file the job writes beside its output."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import storage


@dataclass
class Tracking:
    uri: str  # redacted, for display
    experiment: str
    run_id: str | None = None
    error: str | None = None


def default_tracking_uri(output: str) -> tuple[str, str | None]:
    """(tracking URI, artifact location): ``--mlflow-uri``/``MLFLOW_TRACKING_URI`` win; else an sqlite store
    beside a local output (or in ``~/.gpa-batch`` for an object-store output)."""
    if storage.is_uri(output):
        home = Path(os.environ.get("GPA_BATCH_HOME", "~/.gpa-batch")).expanduser()
    else:
        home = Path(output) / "_mlflow"
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}", (home / "artifacts").as_uri()


def artifact_location_for(uri: str) -> str | None:
    """Artifacts of an sqlite store go beside its database; a tracking server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
    return None


def log_run(
    *,
    tracking_uri: str | None,
    output: str,
    experiment: str,
    run_name: str,
    params: dict[str, object],
    metrics: dict[str, float],
    artifacts: dict[str, bytes],
    tags: dict[str, str],
) -> Tracking:
    """Log one finished job run. Returns where it went, or the (credential-free) reason it did not."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    artifact_location = None
    try:
        if uri:
            artifact_location = artifact_location_for(uri)
        else:
            uri, artifact_location = default_tracking_uri(output)
    except Exception as exc:
        return Tracking(uri="(default)", experiment=experiment, error=storage.scrub(f"{type(exc).__name__}: {exc}"))
    shown = uri if uri.startswith("sqlite:") else storage.redact_uri(uri)
    # fail in seconds, not minutes, when a tracking server is unreachable
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = (found.experiment_id if found is not None
                         else client.create_experiment(experiment, artifact_location=artifact_location))
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None],
            params=[Param(k, str(v)[:6000]) for k, v in params.items()],
            tags=[RunTag("gpa_batch.output", storage.redact_uri(output))],
        )
        with tempfile.TemporaryDirectory(prefix="gpa-batch-artifacts-") as tmp:
            for name, data in artifacts.items():
                path = Path(tmp) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            client.log_artifacts(run_id, tmp)
        client.set_terminated(run_id, "FINISHED")
        return Tracking(uri=shown, experiment=experiment, run_id=run_id)
    except Exception as exc:
        return Tracking(uri=shown, experiment=experiment, error=storage.scrub(f"{type(exc).__name__}: {exc}", 500))
