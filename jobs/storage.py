"""Paths and objects for the jobs: local paths and object-store URIs (``s3://...``) behind one small API.

The S3 endpoint and credentials come from the standard AWS environment (see :mod:`gpa.storage`). Object stores
have no atomic rename, so every "commit" here is a single small object written last (see :mod:`jobs.output`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import uuid
from pathlib import PurePosixPath

from gpa.errors import UnreadableAudio
from gpa.storage import filesystem, is_uri, redact_uri

__all__ = [
    "is_uri", "redact_uri", "scrub", "join", "parent", "basename", "resolve_relative", "normalize",
    "read_bytes", "write_bytes", "exists", "listdir", "remove", "move", "makedirs", "safe_name", "id_hash",
    "fetch", "is_transient", "StorageUnavailable", "TRANSIENT_KINDS",
]


class StorageUnavailable(UnreadableAudio):
    """The store could not be reached (connection refused or reset, timeout, 5xx, throttling) even after the S3
    client's own retries with backoff. Transient: such a row is not done, the next run retries it."""

    kind = "storage_unavailable"


TRANSIENT_KINDS = frozenset({StorageUnavailable.kind})
_TRANSIENT_ERRNOS = {errno.EBUSY, errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                     errno.ECONNABORTED, errno.EPIPE, errno.ENETUNREACH, errno.EHOSTUNREACH,
                     getattr(errno, "EREMOTEIO", 121)}
_THROTTLING = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestLimitExceeded",
               "ServiceUnavailable", "InternalError"}


def is_transient(exc: BaseException) -> bool:
    """Whether a storage error says "try again later" (outage, timeout, throttling) rather than "this object cannot
    be read" (missing, forbidden, invalid name)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
            return False
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
            from aiohttp import ClientConnectionError, ClientPayloadError

            if isinstance(exc, (ClientConnectionError, ClientPayloadError)):
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def fetch(uri: str) -> bytes:
    """The bytes of an input file. Raises :class:`UnreadableAudio` when it cannot be read (missing, a directory,
    forbidden, an invalid name) and :class:`StorageUnavailable` when its store cannot be reached."""
    name = redact_uri(uri)
    try:
        return read_bytes(uri)
    except FileNotFoundError:
        raise UnreadableAudio(f"{name}: file not found") from None
    except (IsADirectoryError, NotADirectoryError):
        raise UnreadableAudio(f"{name}: is a directory") from None
    except PermissionError:
        raise UnreadableAudio(f"{name}: permission denied") from None
    except Exception as exc:
        if is_transient(exc):
            raise StorageUnavailable(f"{name}: storage unavailable ({type(exc).__name__}); the next run retries "
                                     "this row") from None
        raise UnreadableAudio(f"{name}: cannot read ({type(exc).__name__}: {scrub(str(exc), 200)})") from None

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


def normalize(uri: str) -> str:
    """Local paths become absolute (``file://`` stripped); URIs are kept, minus a trailing slash."""
    uri = os.fspath(uri)
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if is_uri(uri):
        return uri.rstrip("/") if not uri.endswith("://") else uri
    return os.path.abspath(os.path.expanduser(uri))


def join(base: str, *parts: str) -> str:
    if is_uri(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(base, *parts)


def parent(uri: str) -> str:
    if is_uri(uri):
        scheme, rest = uri.split("://", 1)
        head = rest.rstrip("/").rsplit("/", 1)[0] if "/" in rest.rstrip("/") else rest
        return f"{scheme}://{head}"
    return os.path.dirname(os.path.abspath(uri))


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def resolve_relative(path: str, base_dir: str) -> str:
    """``path`` from a manifest: URIs and absolute paths as they are, relative paths against ``base_dir``."""
    if is_uri(path) or path.startswith("file://"):
        return path
    if os.path.isabs(path):
        return path
    if is_uri(base_dir):
        joined = str(PurePosixPath(base_dir.split("://", 1)[1]) / path)
        # collapse "a/../b" the way a POSIX path would, without touching the bucket name
        bucket, _, key = joined.partition("/")
        key = os.path.normpath("/" + key).lstrip("/")
        return f"{base_dir.split('://', 1)[0]}://{bucket}/{key}"
    return os.path.normpath(os.path.join(base_dir, path))


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` so that a reader sees either the old object or the whole new one, never a torn file.

    Local files are written beside and renamed into place; an object-store PUT is atomic by itself.
    """
    if is_uri(uri):
        fs, path = filesystem(uri)
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(uri) or ".", exist_ok=True)
    tmp = f"{uri}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, uri)


def exists(uri: str) -> bool:
    if not is_uri(uri):
        return os.path.exists(uri)
    fs, path = filesystem(uri)
    return fs.exists(path)


def listdir(uri: str, *, recursive: bool = False) -> list[str]:
    """Full URIs/paths of the files under the prefix ``uri`` (empty when it does not exist)."""
    if not is_uri(uri):
        if not os.path.isdir(uri):
            return []
        if not recursive:
            return sorted(os.path.join(uri, n) for n in os.listdir(uri) if os.path.isfile(os.path.join(uri, n)))
        return sorted(os.path.join(d, n) for d, _, names in os.walk(uri) for n in names)
    fs, path = filesystem(uri)
    fs.invalidate_cache()
    scheme = uri.split("://", 1)[0]
    try:
        found = fs.find(path) if recursive else [p for p in fs.ls(path, detail=False) if fs.isfile(p)]
    except FileNotFoundError:
        return []
    return sorted(f"{scheme}://{p}" for p in found)


def remove(uri: str) -> None:
    if not is_uri(uri):
        if os.path.isdir(uri):
            import shutil

            shutil.rmtree(uri, ignore_errors=True)
        elif os.path.exists(uri):
            os.remove(uri)
        return
    fs, path = filesystem(uri)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass


def move(src: str, dst: str) -> None:
    """Atomic rename on a local disk; copy then delete on an object store (each object appears whole)."""
    if not is_uri(src):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)
        return
    fs, src_path = filesystem(src)
    _, dst_path = filesystem(dst)
    fs.copy(src_path, dst_path)
    fs.rm(src_path)


def makedirs(uri: str) -> None:
    if not is_uri(uri):
        os.makedirs(uri, exist_ok=True)


def id_hash(row_id: str) -> str:
    return hashlib.sha256(row_id.encode("utf-8", "surrogatepass")).hexdigest()


def safe_name(row_id: str, suffix: str = "") -> str:
    """A file name derived from an untrusted id that can never leave its directory.

    Readable where possible (``[A-Za-z0-9._-]``, at most 60 characters), and always unique through a hash of the
    full id: ``../x``, ``/etc/passwd``, NUL bytes or a 10 kB id all give a short, flat, harmless name.
    """
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", row_id)[:60].strip("._-") or "id"
    return f"{readable}-{id_hash(row_id)[:16]}{suffix}"
