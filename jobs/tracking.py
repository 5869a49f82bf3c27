"""MLflow: one run per job, opened as the job starts and finished at its end. Tracking is never allowed to lose
data: any failure here is reported and the metrics stay in the JSON file the job writes beside its output."""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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
    if uri.startswith("sqlite:///"):  # sqlite:///mlflow.db is relative to the working directory, as for MLflow
        return (Path(uri[len("sqlite:///"):]).absolute().parent / "artifacts").as_uri()
    return None


class JobTracking:
    """The MLflow run of one job.

    It is opened in a background thread as the job starts: opening a new sqlite store runs its schema migrations and
    a server takes round trips, seconds that would otherwise be added to every job. The run shows RUNNING while the
    job works and FINISHED or FAILED at its end. Every MLflow call happens on that one thread (an sqlite connection
    must not change threads).
    """

    def __init__(self, *, tracking_uri: str | None, output: str, experiment: str, run_name: str,
                 tags: dict[str, str]):
        self.experiment = experiment
        self.shown = "(default)"
        self.result: Tracking | None = None  # once finished
        # fail in seconds, not minutes, when a tracking server is unreachable (set here: the environment must not
        # change from another thread while C code may read it)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="gpa-batch-mlflow")
        self._opened = self._thread.submit(self._open, tracking_uri, output, run_name, tags)

    def finish(self, *, params: dict[str, object], metrics: dict[str, float], artifacts: dict[str, bytes],
               tags: dict[str, str] | None = None, failure: str | None = None) -> Tracking:
        """Log the job's params, metrics and artifacts and end the run (FAILED, with ``failure``, when given).
        Returns where it went, or the (credential-free) reason it did not. Only the first call logs anything."""
        if self.result is None:
            try:
                self.result = self._thread.submit(self._finish, params, metrics, artifacts, tags or {},
                                                  failure).result()
            finally:
                self._thread.shutdown()
        return self.result

    def _open(self, tracking_uri: str | None, output: str, run_name: str, tags: dict[str, str]):
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            artifact_location = artifact_location_for(uri)
        else:
            uri, artifact_location = default_tracking_uri(output)
        self.shown = uri if uri.startswith("sqlite:") else storage.redact_uri(uri)
        from mlflow.entities import RunTag
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(self.experiment)
        experiment_id = (found.experiment_id if found is not None
                         else client.create_experiment(self.experiment, artifact_location=artifact_location))
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        client.log_batch(run.info.run_id, tags=[RunTag("gpa_batch.output", storage.redact_uri(output))])
        return client, run.info.run_id

    def _finish(self, params, metrics, artifacts, tags, failure) -> Tracking:
        try:
            client, run_id = self._opened.result()
        except Exception as exc:
            return Tracking(uri=self.shown, experiment=self.experiment,
                            error=storage.scrub(f"{type(exc).__name__}: {exc}", 500))
        try:
            from mlflow.entities import Metric, Param, RunTag

            now = int(time.time() * 1000)
            client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None],
                params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                tags=[RunTag(k, str(v)) for k, v in tags.items()]
                + ([RunTag("gpa_batch.failure", storage.scrub(failure, 5000))] if failure else []),
            )
            with tempfile.TemporaryDirectory(prefix="gpa-batch-artifacts-") as tmp:
                for name, data in artifacts.items():
                    path = Path(tmp) / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
                if artifacts:
                    client.log_artifacts(run_id, tmp)
            client.set_terminated(run_id, "FAILED" if failure else "FINISHED")
            return Tracking(uri=self.shown, experiment=self.experiment, run_id=run_id)
        except Exception as exc:
            return Tracking(uri=self.shown, experiment=self.experiment,
                            error=storage.scrub(f"{type(exc).__name__}: {exc}", 500))
