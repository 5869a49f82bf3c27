"""Fault injectors for the reliability tests. Everything here is test-only and dormant unless a test arms it.

- :class:`MotoServer`: moto's S3 server as a subprocess on a fixed port.
- :class:`FlakyEndpoint`: a TCP relay in front of it (the endpoint the jobs use). It can go down (connections
  refused, open connections reset) when it sees the N-th request matching a pattern, and come back on the same
  port. moto keeps its objects in memory, so stopping the moto process itself would lose the bucket: that would
  test a store that loses data, not an outage. Stopping the endpoint models an outage of a durable store.
- :func:`install_worker_faults`: a Ray ``worker_process_setup_hook`` (Ray's own facility; nothing in ``jobs/``
  knows about it) that wraps ``GPAStage.__call__`` in every worker of the test's Ray runtime. It logs every model
  call and, when a test has armed it, makes the actor process ``os._exit`` on a chosen call.
- :class:`RssSampler`: peak resident memory of a process tree (the driver and its Ray workers), polled.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from jobs_helpers import free_port, wait_until_serving

FAULTS_ENV = "GPA_RELIABILITY_FAULTS_DIR"


def die_with_parent() -> None:
    """In a child process: get SIGTERM when the process that started it dies, even by SIGKILL (Linux), so a
    killed test run leaves no server behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# --- S3 ----------------------------------------------------------------------------------------------------------


class MotoServer:
    """``moto_server`` on 127.0.0.1:``port``; the objects live in its memory for as long as it runs."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> MotoServer:
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=die_with_parent)
        try:
            wait_until_serving(f"{self.url}/moto-api/", self.process, "moto server", timeout_s=60)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


_REQUEST_LINE = re.compile(rb"^(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/1\.[01]\r\n")


class FlakyEndpoint:
    """A TCP relay on a fixed port in front of an S3 server, which the tests take down and bring back.

    ``arm(method, pattern, nth, down_s)``: when the relay sees the ``nth`` request whose method is ``method`` and
    whose path matches ``pattern``, it goes down before forwarding it: the listening socket closes (new
    connections are refused) and every open connection is reset, that request's included. After ``down_s``
    seconds (``None``: when :meth:`up` is called) it listens again on the same port.

    ``arm(..., drop=k)``: a flapping endpoint instead: that request and the next ``k - 1`` matching ones have their
    connection reset, then requests pass again (deterministic, unlike a timed blip against randomised backoff).
    """

    def __init__(self, upstream_port: int, port: int | None = None):
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[float, str, str]] = []  # (time, method, path) of every request seen
        self.outages: list[dict] = []  # {"start", "end", "request"}
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._triggers: list[dict] = []
        self.dropped: list[str] = []

    # --- control ---

    def up(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            deadline = time.time() + 30
            while True:
                try:
                    listener.bind(("127.0.0.1", self.port))
                    break
                except OSError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.1)
            listener.listen(128)
            self._listener = listener
            if self.outages and self.outages[-1]["end"] is None:
                self.outages[-1]["end"] = time.time()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self, request: str = "") -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, set()
            if listener is not None:
                self.outages.append({"start": time.time(), "end": None, "request": request})
        if listener is not None:
            listener.close()
        for conn in connections:
            _reset(conn)

    def arm(self, method: str, pattern: str, nth: int = 1, down_s: float | None = None, drop: int = 0) -> None:
        with self._lock:
            self._triggers.append({"method": method, "pattern": re.compile(pattern), "left": nth, "down_s": down_s,
                                   "drop": drop})

    def disarm(self) -> None:
        with self._lock:
            self._triggers = []

    @contextlib.contextmanager
    def faults(self):
        """A block in which armed triggers fire; after it (however it ends) they are disarmed and the endpoint is
        up again."""
        try:
            yield self
        finally:
            self.disarm()
            self.up()

    @property
    def armed(self) -> int:
        """Triggers that have not fired yet."""
        return len(self._triggers)

    def close(self) -> None:
        self.disarm()
        self.down()

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    # --- relaying ---

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed: the endpoint is down
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    _reset(client)
                    _reset(server)
                    continue
                self._connections.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if from_client and self._inspect(data):
                    return  # the endpoint went down on this request: it is never forwarded
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for conn in (source, sink):
                with self._lock:
                    self._connections.discard(conn)
                _reset(conn)

    def _inspect(self, data: bytes) -> bool:
        match = _REQUEST_LINE.match(data)
        if not match:
            return False
        method, path = match.group(1).decode(), match.group(2).decode("latin-1")
        fire = None
        with self._lock:
            self.requests.append((time.time(), method, path))
            for t in self._triggers:
                if method == t["method"] and t["pattern"].search(path):
                    t["left"] -= 1
                    if t["left"] <= 0:
                        fire = t
                        break
            if fire is not None and fire["drop"]:
                fire["drop"] -= 1
                if not fire["drop"]:
                    self._triggers.remove(fire)
                self.dropped.append(f"{method} {path}")
                return True  # the caller resets this connection; the endpoint stays up
            if fire is not None:
                self._triggers.remove(fire)
        if fire is None:
            return False
        self.down(f"{method} {path}")
        if fire["down_s"] is not None:
            timer = threading.Timer(fire["down_s"], self.up)
            timer.daemon = True
            timer.start()
        return True


def _reset(conn: socket.socket) -> None:
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass


# --- the GPA actor dies mid-batch --------------------------------------------------------------------------------


def install_worker_faults() -> None:
    """Ray ``worker_process_setup_hook`` of the reliability tests' runtime (runs in each of its workers).

    Wraps ``GPAStage.__call__``: each call is logged to ``<faults dir>/calls.jsonl`` (pid and row ids); when
    ``<faults dir>/crash.json`` (``{"nth": N}``) exists, the N-th call of an actor process runs the model on its
    batch and then kills the process before returning anything (``os._exit``: no cleanup, as a segfault or an
    OOM kill would). The crash happens once per plan: the first process to claim it writes ``crashed.json``.
    """
    directory = os.environ.get(FAULTS_ENV)
    if not directory:
        return
    from jobs import stages

    original = stages.GPAStage.__call__
    if getattr(original, "_reliability_wrapped", False):
        return
    calls = {"n": 0}

    def call(self, batch):
        calls["n"] += 1
        out = original(self, batch)
        ids = out.column("id").to_pylist()
        _append(Path(directory) / "calls.jsonl", {"pid": os.getpid(), "n": calls["n"], "ids": ids})
        plan = _read_json(Path(directory) / "crash.json")
        if plan and calls["n"] >= plan["nth"] and _claim(Path(directory) / "crashed.json",
                                                        {"pid": os.getpid(), "ids": ids}):
            os._exit(17)
        return out

    call._reliability_wrapped = True  # type: ignore[attr-defined]
    stages.GPAStage.__call__ = call


def arm_actor_crash(directory: Path, nth: int) -> None:
    for name in ("calls.jsonl", "crashed.json"):
        (directory / name).unlink(missing_ok=True)
    (directory / "crash.json").write_text(json.dumps({"nth": nth}))


def disarm_actor_crash(directory: Path) -> tuple[dict | None, list[dict]]:
    """Disarm; returns (the crash record or None, every logged model call)."""
    (directory / "crash.json").unlink(missing_ok=True)
    crashed = _read_json(directory / "crashed.json")
    log = directory / "calls.jsonl"
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return crashed, calls


def model_calls(directory: Path, reset: bool = False) -> list[dict]:
    """The model calls logged so far (pid, call number, row ids); ``reset`` empties the log."""
    log = directory / "calls.jsonl"
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if reset:
        log.unlink(missing_ok=True)
    return calls


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _claim(path: Path, record: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record))
        f.flush()
    return True


# --- memory ------------------------------------------------------------------------------------------------------


class RssSampler:
    """Polls ``/proc`` for the resident memory of ``root`` (default: this process) and all its descendants: the
    peak of each process (with its name: Ray's process title, e.g. ``ray::MapWorker(MapBatches(GPAStage))``) and
    the peak of their sum. Ray's object store is shared memory and counts in the RSS of every process that touched
    it, so the sum over-counts; the per-process peaks are the useful figure. Linux only (reads /proc)."""

    def __init__(self, root: int | None = None, interval_s: float = 0.1):
        self.root = root or os.getpid()
        self.interval_s = interval_s
        self.peaks: dict[int, tuple[int, str]] = {}
        self.peak_total = 0
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
            children.setdefault(ppid, []).append(int(entry))
        tree, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        return tree

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self._tree():
                try:
                    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * self._page
                    name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                except (OSError, IndexError, ValueError):
                    continue
                total += rss
                if rss > self.peaks.get(pid, (0, ""))[0]:
                    self.peaks[pid] = (rss, name)
            self.peak_total = max(self.peak_total, total)
            self._stop.wait(self.interval_s)

    def peak(self, name_contains: str) -> int:
        """Peak RSS (bytes) of the processes whose name contained ``name_contains`` when they peaked."""
        return max([rss for rss, name in self.peaks.values() if name_contains in name], default=0)


def grep_tree(root: Path, needle: bytes) -> list[str]:
    """Files under ``root`` whose bytes contain ``needle``."""
    hits = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and needle in path.read_bytes():
                hits.append(str(path))
        except OSError:
            continue
    return hits
