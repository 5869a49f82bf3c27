"""What a job prints while it runs: our own lines at info, Ray's and MLflow's internals at warning, and no
tracebacks unless ``--verbose`` (the run's log under the output keeps them, see :func:`run_log_uri`).

Verbosity is ``default``, ``quiet`` (warnings and errors only) or ``verbose`` (everything, as Ray and MLflow print
it). Environment settings the user made (``RAY_DATA_LOG_LEVEL``, ``MLFLOW_LOGGING_LEVEL``) win.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from jobs.io import storage

VERBOSITIES = ("default", "quiet", "verbose")

# worker lines that open a traceback; the block runs to the exception's own line
_TRACEBACK_STARTS = ("Traceback (most recent call last)", "Exception raised in creation task",
                     "The above exception was the direct cause", "During handling of the above exception")


def configure_logging(verbosity: str) -> int:
    """Set the levels before Ray or MLflow are imported; returns the level for ``ray.init``."""
    ours = logging.WARNING if verbosity == "quiet" else logging.DEBUG if verbosity == "verbose" else logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.name = "gpa-batch"
    for name in ("jobs", "gpa"):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.name == "gpa-batch"]:  # a second main() in one process
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(ours)
    if verbosity == "verbose":
        return logging.INFO
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")  # "Starting execution", its plan, "finished"
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # "Creating initial MLflow database tables..."
    # a local Ray says on every start that it enabled token authentication
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    return logging.WARNING


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a test's capture, since replaced, included)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def quiet_ray_console(verbosity: str) -> None:
    """Once Ray is up: keep Ray Data's error records (a failing job's stack traces, "please open an issue on the
    Ray project") and the workers' tracebacks off the console, unless ``verbose``. The job's own fatal line says
    what failed; Ray Data's records go to the run's log, everything to Ray's log files."""
    if verbosity == "verbose":
        return
    import ray.data  # noqa: F401  (configures Ray Data's loggers)

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.addFilter(_below_error)  # added once however often this runs
    try:
        import ray._private.worker as ray_worker
    except ImportError:  # another Ray version: its lines stay as they are
        return
    # the workers' output, and the errors the cluster reports for the job's tasks ("... will be retried. Error:
    # Traceback ...", printed by a function of their own)
    dispatcher = getattr(ray_worker, "global_worker_stdstream_dispatcher", None)
    for name, handle in list(getattr(dispatcher, "handlers", [])):
        if name == "ray_print_logs" and not getattr(handle, "without_tracebacks", False):
            dispatcher.remove_handler(name)
            dispatcher.add_handler(name, _without_tracebacks(handle))
    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is not None and not getattr(printer, "without_tracebacks", False):
        ray_worker.print_to_stdstream = _without_tracebacks(printer)


def _without_tracebacks(handle):
    """A worker-output handler that passes on every line but those of tracebacks (a message of several lines that
    holds one is left out whole)."""
    inside: dict = {}  # worker pid -> inside a traceback

    def emit(data: dict, *args, **kwargs) -> None:
        pid, kept = data.get("pid"), []
        within = inside.get(pid, False)
        for line in data.get("lines", []):
            if "\n" in line.strip():
                if "Traceback (most recent call last)" not in line:
                    kept.append(line)
            elif line.startswith(_TRACEBACK_STARTS) or "Traceback (most recent call last)" in line:
                within = True  # also a notice that quotes one ("... will be retried. Error: Traceback ...")
            elif within and (not line.strip() or line.startswith((" ", "\t", "^"))):
                pass
            elif within:
                within = False  # the exception's own line, which the job's fatal line restates
            else:
                kept.append(line)
        inside[pid] = within
        if kept:
            handle({**data, "lines": kept}, *args, **kwargs)

    emit.without_tracebacks = True
    return emit


def _below_error(record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR


def run_log_uri(output: str, run_id: str) -> str:
    """Where a run's log goes: its lines, and the traceback of what ended it."""
    return storage.join(storage.normalize(output), "_gpa_batch", "logs", f"{run_id}.log")


class _LinesHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def run_log(output: str, run_id: str):
    """Keep what this run logs (our loggers, Ray Data's) and, when it fails, the full traceback, in
    :func:`run_log_uri`: written once when the run ends, as an object store cannot append; credentials scrubbed."""
    import traceback

    handler = _LinesHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("jobs", "gpa", "ray.data")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    except BaseException as exc:
        handler.lines.append("".join(traceback.format_exception(exc)).rstrip())
        raise
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        uri = run_log_uri(output, run_id)
        try:
            storage.write_bytes(uri, "".join(storage.scrub(line, 1 << 20) + "\n" for line in handler.lines).encode())
        except Exception as exc:  # the store failing now must not hide why the run ended
            logging.getLogger(__name__).warning("could not write the run's log %s (%s)", storage.redact_uri(uri),
                                                type(exc).__name__)
