"""Paths and objects for the jobs: local paths and object-store URIs (``s3://...``) behind one small API.

The S3 endpoint and credentials come from the standard AWS environment (see :mod:`gpa.storage`). Object stores
have no atomic rename, so every "commit" here is a single small object written last (see :mod:`jobs.io.output`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import uuid
from pathlib import PurePosixPath

from gpa.errors import StorageUnavailable
from gpa.storage import exclusive_lock, filesystem, is_transient, is_uri, read_bytes, redact_uri, scrub

__all__ = [
    "is_uri", "redact_uri", "scrub", "join", "parent", "basename", "resolve_relative", "normalize",
    "read_bytes", "write_bytes", "read_versioned", "write_if", "remove_if", "Conflict", "exists", "listdir", "remove",
    "move", "makedirs", "safe_name", "id_hash",
    "is_transient", "StorageUnavailable", "TRANSIENT_KINDS",
]

log = logging.getLogger(__name__)

# error kinds that say "the store was down", not "this row is bad": a plain rerun redoes such rows
TRANSIENT_KINDS = frozenset({StorageUnavailable.kind})


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


class Conflict(Exception):
    """A conditional write lost: the object was created or changed by someone else since it was read."""


def read_versioned(uri: str) -> tuple[bytes, str]:
    """The object's bytes and its version for :func:`write_if`: the store's ETag, or a hash of the bytes where there
    is none (a local file). Raises FileNotFoundError."""
    if is_uri(uri):
        fs, path = filesystem(uri)
        with fs.open(path, "rb") as f:
            data = f.read()
            etag = (getattr(f, "details", None) or {}).get("ETag")
        return data, etag or _digest(data)
    data = read_bytes(uri)
    return data, _digest(data)


def write_if(uri: str, data: bytes, version: str | None) -> str:
    """Write ``data`` only while the object is still at ``version`` (from :func:`read_versioned`; ``None``: only
    while there is none), as one step no other writer can come between. Returns the new version; raises
    :class:`Conflict` when the object changed. S3 does it with a conditional PUT (``If-Match`` /
    ``If-None-Match``), a local disk under a lock file; an S3-compatible store that does not implement conditional
    writes, or another scheme, gets a plain write (what a check before the write gives, no more)."""
    if not is_uri(uri):
        os.makedirs(os.path.dirname(uri) or ".", exist_ok=True)
        with exclusive_lock(f"{uri}.lock"):
            if _local_version(uri) != version:
                raise Conflict(redact_uri(uri))
            write_bytes(uri, data)
        return _digest(data)
    if uri.startswith(("s3://", "s3a://")):
        fs, path = filesystem(uri)
        try:
            reply = fs.pipe_file(path, data, **({"IfNoneMatch": "*"} if version is None else {"IfMatch": version}))
        except FileExistsError:  # s3fs' name for a failed If-None-Match
            raise Conflict(redact_uri(uri)) from None
        except OSError as exc:
            code = _error_code(exc)
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise Conflict(redact_uri(uri)) from None
            if code != "NotImplemented":
                raise
            _warn_unconditional(redact_uri(uri))
        else:
            etag = reply.get("ETag") if isinstance(reply, dict) else None
            return etag or read_versioned(uri)[1]
    write_bytes(uri, data)
    return read_versioned(uri)[1]


def remove_if(uri: str, version: str) -> None:
    """Delete the object only while it is still at ``version`` (from :func:`read_versioned` or :func:`write_if`):
    raises :class:`Conflict` when it changed, so a writer that lost the object does not delete its new owner's
    copy. Gone already: nothing to do. A local disk checks and deletes under the lock file of :func:`write_if`;
    S3 checks, then deletes with ``If-Match`` (one step where the store honours it, as AWS does; MinIO ignores it
    on deletes, so the check comes first)."""
    if not is_uri(uri):
        if not os.path.isdir(os.path.dirname(uri) or "."):
            return
        with exclusive_lock(f"{uri}.lock"):
            current = _local_version(uri)
            if current is None:
                return
            if current != version:
                raise Conflict(redact_uri(uri))
            os.remove(uri)
        return
    try:
        current = read_versioned(uri)[1]
    except FileNotFoundError:
        return
    if current != version:
        raise Conflict(redact_uri(uri))
    if not uri.startswith(("s3://", "s3a://")):
        remove(uri)
        return
    fs, path = filesystem(uri)
    bucket, key, _ = fs.split_path(path)
    try:
        fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=version)
    except Exception as exc:
        code = _error_code(exc)
        if code in ("PreconditionFailed", "ConditionalRequestConflict"):
            raise Conflict(redact_uri(uri)) from None
        if code == "NotImplemented":  # checked above: what a store without conditional requests allows
            _warn_unconditional(redact_uri(uri))
            remove(uri)
        elif code not in ("NoSuchKey", "404"):
            raise
    finally:
        fs.invalidate_cache(path)


@functools.cache
def _warn_unconditional(uri: str) -> None:
    """Once per object and process (a lease is renewed every 20 s)."""
    log.warning("the object store does not implement conditional requests: %s is changed without them", uri)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _local_version(path: str) -> str | None:
    """A local file's version (a hash of its bytes; None: absent), read under its lock file."""
    try:
        return _digest(read_bytes(path))
    except FileNotFoundError:
        return None


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code behind an s3fs error (botocore's ClientError is its cause or context)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        response = getattr(exc, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code"):
            return response["Error"]["Code"]
        exc = exc.__cause__ or exc.__context__
    return None


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
