"""A checkpoint's identity: sha256 over its files' relative paths and contents. Free of torch, so a job's driver
can tell which model made an output's rows without loading the model's libraries."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# written last into a checkpoint copied from an object store: the copy is whole, and it lists each file's sha256
COMPLETE_MARKER = ".gpa-complete.json"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def content_hash(directory: str | os.PathLike) -> str:
    """sha256 over every file of a checkpoint (relative path and contents): a stable id of the weights."""
    directory = Path(directory)
    marker = directory / COMPLETE_MARKER
    if marker.is_file():
        files = {k: v["sha256"] for k, v in json.loads(marker.read_text())["files"].items()}
    else:
        files = {
            p.relative_to(directory).as_posix(): file_sha256(p)
            for p in sorted(directory.rglob("*"))
            if p.is_file() and not p.name.startswith(".")
        }
    digest = hashlib.sha256()
    for relative, sha in sorted(files.items()):
        digest.update(f"{relative}\0{sha}\n".encode())
    return digest.hexdigest()
