"""Reading bytes from local paths and object-store URIs (``s3://``, ``gs://``, ...) through fsspec.

S3 endpoint and credentials come from the standard AWS environment (``AWS_ENDPOINT_URL``, keys, region), so the
same code runs against AWS, MinIO or a local test server.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

import fsspec

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` strings other than ``file://``."""
    return bool(_SCHEME.match(path)) and not path.startswith("file://")


def redact_uri(uri: str) -> str:
    """``uri`` without user info, query or fragment, so it can go into logs, params and error messages."""
    text = str(uri)
    if not _SCHEME.match(text):
        return text
    parts = urlsplit(text)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    if uri.startswith("s3://") or uri.startswith("s3a://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
        fs = fsspec.filesystem("s3", client_kwargs=client_kwargs)
        return fs, fs._strip_protocol(uri)
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def read_bytes(uri: str | os.PathLike) -> bytes:
    uri = os.fspath(uri)
    if not is_uri(uri):
        with open(uri.removeprefix("file://"), "rb") as f:
            return f.read()
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()
