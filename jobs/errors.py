"""What ends a job, and the one line that says why (never a traceback, never a credential)."""

from __future__ import annotations

import contextlib

from . import storage
from .output import OutputRefused


class JobError(RuntimeError):
    """The job as a whole cannot run (unreadable input, output of another job, inconsistent write)."""


def root_cause(exc: BaseException) -> str:
    """The line that says what went wrong (``gpa.errors.CheckpointError: ...``), without credentials: the exception
    a Ray worker raised (Ray wraps it, and ``RayTaskError.cause`` holds it), else ``exc`` itself."""
    if isinstance(exc, KeyboardInterrupt):  # whatever it interrupted (a retry, Ray's own code) is not the reason
        return "KeyboardInterrupt: interrupted (Ctrl-C or SIGINT); rerunning the same command resumes the job"
    error = _worker_exception(exc) or exc
    kind = type(error)
    # a RayTaskError made an instance of its cause's class keeps the cause's name after the parenthesis
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return storage.scrub(f"{name}: {lines[0] if lines else ''}".rstrip(": "), 500)


def _worker_exception(exc: BaseException | None) -> BaseException | None:
    """The innermost exception a Ray error wraps (``.cause``), following the chain of ``exc`` to the first one."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            return _worker_exception(cause) or cause
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def storage_failures(what: str):
    """A storage failure around the commit is a :class:`JobError` with a clear message, not a traceback. The commit
    protocol keeps the output consistent: readers see the previous commit (or this one, if its commit file was
    written), and the next run adopts every finished part."""
    try:
        yield
    except JobError:
        raise
    except OutputRefused as exc:
        raise JobError(str(exc)) from None
    except Exception as exc:
        raise JobError(f"{what} ({root_cause(exc)}); finished parts are kept: rerun the same command") from exc
