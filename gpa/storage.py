"""Reading bytes from local paths and object-store URIs (``s3://``, ``gs://``, ...) through fsspec.

S3 endpoint and credentials come from the standard AWS environment (``AWS_ENDPOINT_URL``, keys, region), so the
same code runs against AWS, MinIO or a local test server.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import fsspec

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` strings other than ``file://``."""
    return bool(_SCHEME.match(path)) and not path.startswith("file://")


def nearest_existing(path: str | os.PathLike) -> str:
    """``path`` if it exists, else its nearest existing ancestor: what a folder to be made at ``path`` is made in
    (a file there means the folder cannot be made)."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    return existing


def redact_uri(uri: str) -> str:
    """``uri`` without user info, query or fragment, so it can go into logs, params and error messages."""
    text = str(uri)
    if not _SCHEME.match(text):
        return text
    parts = urlsplit(text)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _import_s3fs() -> None:
    """Import s3fs, afresh when an earlier import in this process was cut short.

    Ray cancels a task by raising KeyboardInterrupt in it (a failing job cancels its running tasks). One that lands
    while a worker imports s3fs (with aiobotocore and aiohttp: about a second on a small machine) leaves some
    submodules behind, and every later import in that worker fails with "module aiohttp has no attribute
    http_exceptions". Forgetting the half-imported packages lets the import run again from the start.
    """
    try:
        import s3fs  # noqa: F401
    except (ImportError, AttributeError):
        if "s3fs" in sys.modules:  # imported after all: the error is another one
            raise
        for name in [m for m in sys.modules if m.partition(".")[0] in ("s3fs", "aiobotocore", "aiohttp")]:
            del sys.modules[name]
        import s3fs  # noqa: F401


def s3_endpoint() -> str | None:
    """The S3 endpoint the AWS environment names (None: AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    if uri.startswith("s3://") or uri.startswith("s3a://"):
        _import_s3fs()
        endpoint = s3_endpoint()
        client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
        fs = fsspec.filesystem("s3", client_kwargs=client_kwargs)
        return fs, fs._strip_protocol(uri)
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock between processes, held on the file ``path`` (made if missing) while the block runs; the
    OS releases it if the holder dies."""
    import fcntl

    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class NotARegularFile(OSError):
    """A local path that names a FIFO, a device or a socket: reading one could block forever (a FIFO nobody
    writes to) or never end (``/dev/zero``), so nothing is read from it."""


class FileTooLarge(OSError):
    """A file or object larger than the reader's ``max_bytes``."""


def open_local(path: str | os.PathLike):
    """A local file opened for binary reading, only when it is a regular file (:class:`NotARegularFile`,
    ``IsADirectoryError`` otherwise). Opened without blocking and checked on the open descriptor: a FIFO neither
    blocks the open nor can take the file's place between a check and the open."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket (or a FIFO on a system that refuses it without a writer)
            raise NotARegularFile(errno.ENXIO, "not a regular file", path) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
            raise NotARegularFile(errno.EINVAL, f"not a regular file ({kind})", path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(uri: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of a local regular file (see :func:`open_local`) or of an object; with ``max_bytes``, at most
    that many are read and a larger one raises :class:`FileTooLarge` (an object's size is checked before any byte
    is fetched)."""
    uri = os.fspath(uri)
    if not is_uri(uri):
        with open_local(uri.removeprefix("file://")) as f:
            return _bounded_read(f, uri, max_bytes, None)
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return _bounded_read(f, uri, max_bytes, getattr(f, "size", None))


def _bounded_read(f, uri: str, max_bytes: int | None, size: int | None) -> bytes:
    if max_bytes is None:
        return f.read()
    if size is not None and size > max_bytes:
        raise FileTooLarge(errno.EFBIG, f"{size} bytes, over the limit of {max_bytes}", redact_uri(uri))
    data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLarge(errno.EFBIG, f"over the limit of {max_bytes} bytes", redact_uri(uri))
    return data


_TRANSIENT_ERRNOS = {errno.EBUSY, errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                     errno.ECONNABORTED, errno.EPIPE, errno.ENETUNREACH, errno.EHOSTUNREACH,
                     getattr(errno, "EREMOTEIO", 121)}
_THROTTLING = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestLimitExceeded",
               "ServiceUnavailable", "InternalError"}


def is_transient(exc: BaseException, _seen: set[int] | None = None) -> bool:
    """Whether a storage error says "try again later" (outage, timeout, throttling) rather than "this object cannot
    be read" (missing, forbidden, invalid name)."""
    seen = set() if _seen is None else _seen
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
            # fsspec's HTTP filesystem says "not found" for a server it could not reach, with the connection error
            # as the explicit cause; a cause only from the context (raised while handling another) is not one
            return exc.__cause__ is not None and is_transient(exc.__cause__, seen)
        if isinstance(exc, (ConnectionError, TimeoutError)):  # builtins: refused, reset, aborted, timed out
            return True
        if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:  # s3fs' translation of 5xx/throttling
            return True
        module = type(exc).__module__
        if module.startswith("botocore"):
            from botocore.exceptions import ClientError, HTTPClientError
            from botocore.exceptions import ConnectionError as BotoConnectionError

            if isinstance(exc, (BotoConnectionError, HTTPClientError)):
                return True
            if isinstance(exc, ClientError):
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
                return status >= 500 or status == 429 or exc.response.get("Error", {}).get("Code") in _THROTTLING
        if module.startswith("aiohttp"):
            from aiohttp import ClientConnectionError, ClientPayloadError, ClientResponseError

            if isinstance(exc, (ClientConnectionError, ClientPayloadError)):
                return True
            if isinstance(exc, ClientResponseError):  # an HTTP server's 5xx or 429
                return exc.status >= 500 or exc.status == 429
        exc = exc.__cause__ or exc.__context__
    return False


_URL_IN_TEXT = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)([^\s'\"<>]*)")
_USER_INFO = re.compile(r"[^\s\"'/@:]+:[^\s\"'/@]+@")


def scrub(message: str, limit: int = 1000) -> str:
    """``message`` safe to store or log: URLs lose user info and query strings (presigned URLs carry signatures)."""

    def clean(match: re.Match) -> str:
        return redact_uri(match.group(1) + match.group(2))

    text = _URL_IN_TEXT.sub(clean, str(message))
    text = re.sub(r"(?i)(aws_secret_access_key|aws_session_token|secret|password|token)=\S+", r"\1=***", text)
    text = _USER_INFO.sub("***@", text)  # user:password@host outside a URL (e.g. quoted back as a bucket name)
    return text if len(text) <= limit else text[: limit - 3] + "..."
