"""What ends a job, and the one line that says why (never a traceback, never a credential)."""

from __future__ import annotations

import contextlib

from jobs.io import storage
from jobs.io.output import OutputRefused


class JobError(RuntimeError):
    """The job as a whole cannot run (unreadable input, output of another job, inconsistent write)."""


def root_cause(exc: BaseException) -> str:
    """The line that says what went wrong (``gpa.errors.CheckpointError: ...``), without credentials.

    Ray wraps what a worker raised: a task's error keeps it as ``RayTaskError.cause``; an actor whose creation
    failed keeps only the creation task's traceback text (``ActorDiedError``), whose last line names the error.
    """
    if isinstance(exc, KeyboardInterrupt):  # whatever it interrupted (a retry, Ray's own code) is not the reason
        return "KeyboardInterrupt: interrupted (Ctrl-C or SIGINT); rerunning the same command resumes the job"
    chain = _chain(exc)
    for error in chain:
        cause = getattr(error, "cause", None)
        if _wraps_user_code(cause):
            # Ray Data raises UserCodeException "from" what a map function raised, and only the traceback text
            # crosses to the driver: the error raised inside our code is the one named before Ray's wrapper
            line = _direct_cause_line(str(error))
            if line:
                return storage.scrub(line, 500)
        if isinstance(cause, BaseException):
            return root_cause(cause) if cause is not error else _line(cause)
    for error in chain:
        lines = [line for line in str(error).splitlines() if line.strip()]
        if type(error).__module__.startswith("ray.") and len(lines) > 1:
            return storage.scrub(lines[-1].strip(), 500)
    return _line(chain[0])


def _wraps_user_code(error: object) -> bool:
    try:
        from ray.exceptions import UserCodeException
    except ImportError:
        return False
    return isinstance(error, UserCodeException)


_DIRECT_CAUSE = "The above exception was the direct cause of the following exception:"


def _direct_cause_line(traceback_text: str) -> str | None:
    """The first line of the exception that the last one of a traceback text was raised from (the line after that
    exception's frames), or None when the text names no cause."""
    if _DIRECT_CAUSE not in traceback_text:
        return None
    lines = [line for line in traceback_text.rsplit(_DIRECT_CAUSE, 1)[0].splitlines() if line.strip()]
    frames = [i for i, line in enumerate(lines) if line.startswith(" ")]  # "  File ...", code, carets
    start = frames[-1] + 1 if frames else 0
    return lines[start].strip() if start < len(lines) else None


def _chain(exc: BaseException | None) -> list[BaseException]:
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _line(error: BaseException) -> str:
    """``module.Type: first line of its message``, as a traceback's last line names an error."""
    kind = type(error)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return storage.scrub(f"{name}: {lines[0]}" if lines else name, 500)


@contextlib.contextmanager
def storage_failures(what: str, advice: str = "finished parts are kept: rerun the same command"):
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
        raise JobError(f"{what} ({root_cause(exc)}); {advice}") from exc
