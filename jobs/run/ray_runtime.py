"""Starting (or joining) Ray for a job, and leaving nothing of it behind."""

from __future__ import annotations

import logging
import os
import tempfile

from jobs.io import storage
from jobs.run.errors import JobError, root_cause


class _NoBothResourcesWarning(logging.Filter):
    """Ray Data warns that giving a map both CPUs and GPUs is "experimental"; it is how a GPU actor keeps a CPU
    reserved on every Ray version (only recent ones reserve one CPU for GPU work by themselves)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Specifying both num_cpus and num_gpus" not in record.getMessage()


logging.getLogger("ray.data._internal.execution.operators.map_operator").addFilter(_NoBothResourcesWarning())


_LOCAL_RAY_DIR: list[str] = []
_RAY_DIR_PREFIX = "gpa-batch-ray-"
_OWNER_FILE = "gpa-batch-owner.pid"


def ensure_ray(num_cpus: int | None = None, *, logging_level: int = logging.INFO) -> bool:
    """Connect to ``RAY_ADDRESS`` when set, else start a local Ray in a temporary directory of its own (removed by
    :func:`shutdown_ray`, at exit too; one left by a killed run is removed by the next start). Returns True when
    this call started it; a failure to start or connect is a :class:`JobError` of one line. ``logging_level``: of
    Ray's own driver-side messages (see :mod:`jobs.run.logs`)."""
    import atexit

    import ray

    if ray.is_initialized():
        return False
    try:
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True, logging_level=logging_level)
        else:
            _remove_orphaned_ray_dirs()
            temp = tempfile.mkdtemp(prefix=_RAY_DIR_PREFIX)
            _LOCAL_RAY_DIR.append(temp)
            with open(os.path.join(temp, _OWNER_FILE), "w") as f:
                f.write(str(os.getpid()))
            atexit.register(shutdown_ray)  # an exit that skips the caller's finally (sys.exit in a library, ...)
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, _temp_dir=temp,
                     logging_level=logging_level)
    except Exception as exc:
        shutdown_ray()
        where = os.environ.get("RAY_ADDRESS") or "a local Ray"
        hint = "" if os.environ.get("RAY_ADDRESS") else (
            f"; Ray's socket paths under {tempfile.gettempdir()} must stay short (set TMPDIR to a short path)"
            if len(tempfile.gettempdir()) > 40 else "")
        raise JobError(f"could not start or connect to {storage.redact_uri(where)} ({root_cause(exc)}){hint}") \
            from None
    return True


def shutdown_ray() -> None:
    """Stop the Ray that :func:`ensure_ray` started (and remove its temporary directory)."""
    import shutil

    import ray

    ray.shutdown()
    while _LOCAL_RAY_DIR:
        shutil.rmtree(_LOCAL_RAY_DIR.pop(), ignore_errors=True)


def _remove_orphaned_ray_dirs() -> None:
    """Remove the temporary directories of local Rays whose owner process is gone (a run killed with SIGKILL, which
    no handler sees). A directory without an owner file is left alone: it may be another run's, just made."""
    import glob
    import shutil

    for path in glob.glob(os.path.join(tempfile.gettempdir(), _RAY_DIR_PREFIX + "*")):
        try:
            with open(os.path.join(path, _OWNER_FILE)) as f:
                owner = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if owner != os.getpid() and not os.path.exists(f"/proc/{owner}"):
            shutil.rmtree(path, ignore_errors=True)
