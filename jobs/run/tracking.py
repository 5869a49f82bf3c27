"""MLflow: one run per job, opened as the job starts and finished at its end. Tracking is never allowed to lose
data: any failure here is reported and the metrics stay in the JSON file the job writes beside its output."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from jobs.io import storage


@dataclass
class Tracking:
    uri: str  # redacted, for display
    experiment: str
    run_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class EmbeddedStore:
    """The MLflow store of a job run without ``--mlflow-uri``: an sqlite database and its artifacts under
    ``<output>/_mlflow/``.

    sqlite cannot work on an object store: for an ``s3://`` output MLflow opens a working copy of the database under
    ``~/.gpa-batch`` (``GPA_BATCH_HOME``) that is fetched from ``<output>/_mlflow/mlflow.db`` once the job holds
    the output's lease and put back before it gives the lease up (so two runs never interleave their copies), and a
    scheduled job on a fresh pod keeps the history of its output; artifacts are written to the output directly.
    """

    local_db: Path
    artifact_location: str
    remote_db: str | None = None  # an object-store output's copy of the database

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.local_db}"


def embedded_store(output: str, output_id: str | None = None) -> EmbeddedStore:
    """The default store of ``output``. An object-store output's working copy is kept per output
    (:attr:`OutputStore.output_id`): an output deleted and made again at the same URI starts a new history instead of
    taking on the old one's runs, which stay in their own folder; ``None``: a job that never owned the output."""
    meta = storage.join(output, "_mlflow")
    if storage.is_uri(output):
        home = Path(os.environ.get("GPA_BATCH_HOME", "~/.gpa-batch")).expanduser()
        folder = hashlib.sha256(output.encode()).hexdigest()[:16]
        owned = f"output-{hashlib.sha256(output_id.encode()).hexdigest()[:16]}" if output_id else "not-owned"
        local = home / "mlflow" / folder / owned / "mlflow.db"
        store = EmbeddedStore(local, storage.join(meta, "artifacts"), storage.join(meta, "mlflow.db"))
    else:
        store = EmbeddedStore(Path(meta).absolute() / "mlflow.db", (Path(meta).absolute() / "artifacts").as_uri())
    store.local_db.parent.mkdir(parents=True, exist_ok=True)
    return store


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

    An object-store output's own store (:class:`EmbeddedStore`) is fetched only once the job owns the output (its
    lease, :meth:`own_output`) and put back only while it still does. :meth:`finish` must end every instance: the
    background thread waits for ownership or the end.
    """

    def __init__(self, *, tracking_uri: str | None, output: str, experiment: str, run_name: str,
                 tags: dict[str, str]):
        self.experiment = experiment
        self.shown = "(default)"
        self.result: Tracking | None = None  # once finished
        self._embedded: EmbeddedStore | None = None  # the default store, when it has a remote copy
        self._owner: Callable[[], bool] | None = None  # whether the job still owns the output
        self._output_id: str | None = None
        self._settled = threading.Event()  # set when the job owns the output, or ends without ever owning it
        # fail in seconds, not minutes, when a tracking server is unreachable (set here: the environment must not
        # change from another thread while C code may read it)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="gpa-batch-mlflow")
        self._opened = self._thread.submit(self._open, tracking_uri, output, run_name, tags)

    def own_output(self, still_owner: Callable[[], bool], output_id: str) -> None:
        """The job holds the lease of the output ``output_id`` (:meth:`OutputStore.start`): its store may be fetched
        now and put back while ``still_owner()``."""
        self._owner, self._output_id = still_owner, output_id
        self._settled.set()

    def finish(self, *, params: dict[str, object], metrics: dict[str, float], artifacts: dict[str, bytes],
               tags: dict[str, str] | None = None, failure: str | None = None) -> Tracking:
        """Log the job's params, metrics and artifacts and end the run (FAILED, with ``failure``, when given).
        Returns where it went, or the (credential-free) reason it did not. Only the first call logs anything."""
        self._settled.set()
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
            self.shown = uri if uri.startswith("sqlite:") else storage.redact_uri(uri)
        else:
            if storage.is_uri(output):
                self.shown = storage.redact_uri(storage.join(output, "_mlflow", "mlflow.db"))
                self._settled.wait()  # the working copy depends on which output the job owns, if any
                owned = self._owner is not None
                store = self._embedded = embedded_store(output, self._output_id if owned else None)
                if owned and storage.exists(store.remote_db):  # the output's history wins over this machine's
                    _restore(store.local_db, storage.read_bytes(store.remote_db))
            else:
                store = embedded_store(output)
                self.shown = store.uri
            uri, artifact_location = store.uri, store.artifact_location
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
            return Tracking(uri=self.shown, experiment=self.experiment, error=_reason(exc))
        error = None
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
            _log_artifacts(client, run_id, artifacts)
            client.set_terminated(run_id, "FAILED" if failure else "FINISHED")
        except Exception as exc:
            error = _reason(exc)
        if self._embedded is not None:  # what was logged goes back to the output, even after an error above
            kept = f"the run is only in {self._embedded.uri}"
            problem = None
            try:
                if self._owner is None or not self._owner():
                    problem = f"{kept}: the job did not own the output when it ended"
                else:
                    storage.write_bytes(self._embedded.remote_db, _snapshot(self._embedded.local_db))
            except Exception as exc:
                problem = f"{kept}: it could not be saved to the output ({_reason(exc)})"
            error = "; ".join(e for e in (error, problem) if e) or None
        if error is not None:
            return Tracking(uri=self.shown, experiment=self.experiment, error=storage.scrub(error, 700))
        return Tracking(uri=self.shown, experiment=self.experiment, run_id=run_id)


def _reason(exc: BaseException) -> str:
    return storage.scrub(f"{type(exc).__name__}: {exc}", 500)


def _log_artifacts(client, run_id: str, artifacts: dict[str, bytes]) -> None:
    """Artifacts on an object store are written with the job's own storage layer (the AWS environment everything
    else uses; MLflow would need boto3); anywhere else MLflow writes them."""
    if not artifacts:
        return
    root = client.get_run(run_id).info.artifact_uri
    if urlsplit(root).scheme in ("s3", "s3a"):
        for name, data in artifacts.items():
            storage.write_bytes(storage.join(root, name), data)
        return
    with tempfile.TemporaryDirectory(prefix="gpa-batch-artifacts-") as tmp:
        for name, data in artifacts.items():
            path = Path(tmp) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        client.log_artifacts(run_id, tmp)


def _sqlite_copy(source: Path, destination: Path) -> None:
    """sqlite's online backup: a consistent copy whatever the source's journal holds, written into the destination
    file in place (connections MLflow keeps open to it stay valid, unlike after a file replace)."""
    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(destination)) as dst:
        src.backup(dst)


def _snapshot(db: Path) -> bytes:
    with tempfile.TemporaryDirectory(prefix="gpa-batch-mlflow-") as tmp:
        copy = Path(tmp) / "mlflow.db"
        _sqlite_copy(db, copy)
        return copy.read_bytes()


def _restore(db: Path, data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="gpa-batch-mlflow-") as tmp:
        fetched = Path(tmp) / "mlflow.db"
        fetched.write_bytes(data)
        _sqlite_copy(fetched, db)
