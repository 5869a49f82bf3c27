"""Helpers shared by the jobs tests: real services (MLflow server, Ray) started once and stopped after."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

_MIGRATED: Path | None = None


def migrated_mlflow_db(dest: Path) -> Path:
    """Copy of an MLflow sqlite database whose tables already exist (creating them takes ~15 s on this machine;
    doing it once per session keeps the suite fast). Returns ``dest``."""
    global _MIGRATED
    if _MIGRATED is None or not _MIGRATED.exists():
        from mlflow.tracking import MlflowClient

        path = Path(tempfile.mkdtemp(prefix="gpa-batch-mlflow-")) / "mlflow.db"
        atexit.register(shutil.rmtree, path.parent, ignore_errors=True)
        MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
        _MIGRATED = path
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(_MIGRATED, dest)
    return dest


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` free ports, none handed out before in this session: the system may give a just-closed port out again,
    and two components of one server on the same port fail to start."""
    ports: list[int] = []
    with contextlib.ExitStack() as stack:
        while len(ports) < n:
            s = stack.enter_context(socket.socket())
            s.bind((host, 0))
            port = s.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                ports.append(port)
    return ports


_HANDED_OUT: set[int] = set()


def write_jsonl(path: Path, rows: list) -> Path:
    """A JSONL manifest of ``rows`` (dicts, or strings written as they are: bad lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def committed(output) -> list[dict]:
    """The rows a reader of the output sees, through the documented reader (the committed parts)."""
    from jobs.io.output import OutputStore

    table = OutputStore(str(output)).read()
    return table.to_pylist() if table is not None else []


def wait_until_serving(url: str, process: subprocess.Popen, what: str, timeout_s: float) -> None:
    """Poll ``url`` until it answers; RuntimeError when ``process`` exits first or ``timeout_s`` passes."""
    deadline = time.time() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.2)


class MlflowServer:
    """``mlflow server --workers 1`` on 127.0.0.1 with its own sqlite store and artifact directory."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        db = migrated_mlflow_db(root / "server.db")
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--workers", "1", "--host", "127.0.0.1", "--port",
             str(self.port), "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination",
             str(root / "artifacts")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root, env=env, start_new_session=True,
        )
        try:
            wait_until_serving(f"{self.url}/health", self.process, "mlflow server", timeout_s=120)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # the server and its uvicorn worker
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def output_part(job: str, rows: list[dict], without: tuple[str, ...] = ()):
    """A Parquet part of ``job``'s output schema holding ``rows`` (missing keys null); ``without``: columns to leave
    out, as in a part that an earlier version wrote."""
    from jobs.io import schema as S

    schema = S.output_schema(job)
    table = S.rows_to_table(rows, schema)
    return table.drop_columns(list(without)) if without else table


def write_output(uri: str, job: str, parts: list, complete: bool = True):
    """A committed output of ``job`` written through the output protocol as a run writes it (stage each part, then
    commit): ``parts`` are tables (:func:`output_part`). Returns its OutputStore."""
    from jobs.io.output import OutputStore

    store = OutputStore(uri)
    store.start()
    records = [store.stage("r1", f"part-r1-{n:05d}.parquet", table) for n, table in enumerate(parts)]
    store.commit(records, run={"run_id": "r1", "job": job}, complete=complete)
    store.finish_run("r1")
    return store


def uncommitted_leftovers(store, job: str, row_id: str) -> None:
    """What a killed run leaves: a staged part (never committed) and a part in ``data/`` that the commit file does
    not list. Readers must not see either."""
    from jobs.io import storage
    from jobs.io.output import parquet_bytes

    row = [{"id": row_id, "status": "ok", "text": "not committed"}]
    store.stage("killed", "part-killed-00000.parquet", output_part(job, row))
    storage.write_bytes(storage.join(store.data, "part-killed-00001.parquet"), parquet_bytes(output_part(job, row)))
