"""What a checkpoint in the official layout holds, read without loading it: its configuration files and the headers
of its safetensors weights, from a local directory or an ``s3://`` prefix (ranged reads), in seconds; and its
identity, a sha256 over its files.

Imports neither torch nor transformers, so a job's driver can check a model, and tell which model made an
output's rows, before it starts any worker.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import CheckpointError
from .storage import is_uri, redact_uri

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HF_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# component -> its folder in the checkpoint
CHECKPOINT_COMPONENTS = {"LLM": ".", "GLM speech tokenizer": "glm-4-voice-tokenizer", "BiCodec": "BiCodec",
                         "wav2vec2": "BiCodec/wav2vec2-large-xlsr-53"}
# the configuration file each component's loader reads first
COMPONENT_CONFIGS = {"LLM": "config.json", "GLM speech tokenizer": "config.json", "BiCodec": "config.yaml",
                     "wav2vec2": "config.json"}
SHARD_INDEX = "model.safetensors.index.json"  # transformers' sharded weights (the LLM only)
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on a header
MAX_CONFIG_BYTES = 16 * 2**20

# (relative path, start, length) -> bytes
ReadRange = Callable[[str, int, int], bytes]

# Written last into a checkpoint copied from an object store: the copy is whole, and it lists each file's sha256
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


@dataclass
class CheckpointSummary:
    source: str  # redacted
    parameters: dict[str, int] = field(default_factory=dict)  # per component, from the headers
    weight_bytes: int = 0


def inspect_files(source: str, sizes: dict[str, int], read_range: ReadRange) -> CheckpointSummary:
    """Check a checkpoint given as its files (relative path -> size) and a way to read a byte range of one:
    every component has its configuration (parsed) and safetensors weights whose headers parse and match the file
    sizes. Raises :class:`CheckpointError` naming the first problem."""
    where = redact_uri(source)
    summary = CheckpointSummary(source=where)
    for name, folder in CHECKPOINT_COMPONENTS.items():
        prefix = "" if folder == "." else folder + "/"
        config = prefix + COMPONENT_CONFIGS[name]
        if config not in sizes:
            raise CheckpointError(f"{where}: no {config} ({name}); a GPA checkpoint in the official layout has "
                                  f"{', '.join(_config_paths())}")
        _parse_config(where, config, read_range(config, 0, min(sizes[config], MAX_CONFIG_BYTES)))
        here = [p for p in sizes if p.startswith(prefix) and "/" not in p[len(prefix):]]
        weights = sorted(p for p in here if p.endswith(".safetensors"))
        if not weights:
            unsafe = sorted(p for p in here if PurePosixPath(p).suffix in PICKLE_SUFFIXES)
            hint = (f"; it has pickle weights ({unsafe[0]}): convert them once with `gpa convert-weights FILE`"
                    if unsafe else "")
            raise CheckpointError(f"{where}: no .safetensors weights in {folder} ({name}){hint}")
        if len(weights) > 1 and not (folder == "." and prefix + SHARD_INDEX in sizes):
            raise CheckpointError(f"{where}: several .safetensors files in {folder} ({name}): {weights}")
        for path in weights:
            summary.parameters[name] = summary.parameters.get(name, 0) + _check_header(where, path, sizes[path],
                                                                                        read_range)
            summary.weight_bytes += sizes[path]
    return summary


def _config_paths() -> list[str]:
    return [("" if f == "." else f + "/") + COMPONENT_CONFIGS[n] for n, f in CHECKPOINT_COMPONENTS.items()]


def _parse_config(where: str, path: str, data: bytes) -> None:
    try:
        if path.endswith(".json"):
            value = json.loads(data)
        else:
            import yaml

            value = yaml.safe_load(data)
    except Exception as exc:  # json's, yaml's and decoding errors alike
        raise CheckpointError(f"{where}: {path} cannot be parsed ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{where}: {path} is not a mapping")


def _check_header(where: str, path: str, size: int, read_range: ReadRange) -> int:
    """The parameter count the safetensors header of ``path`` declares, once the header parses and its tensors
    end exactly where the file does (a truncated upload fails here, not in an actor minutes later)."""
    if size < 8:
        raise CheckpointError(f"{where}: {path} is not a safetensors file ({size} bytes)")
    (length,) = struct.unpack("<Q", read_range(path, 0, 8))
    if length > MAX_HEADER_BYTES or 8 + length > size:
        raise CheckpointError(f"{where}: {path} is not a safetensors file (header of {length} bytes in a file of "
                              f"{size})")
    try:
        header = json.loads(read_range(path, 8, length))
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
        parameters = sum(math.prod(int(d) for d in v["shape"]) for v in tensors.values())
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        raise CheckpointError(f"{where}: {path} has an unreadable safetensors header") from None
    if 8 + length + end != size:
        raise CheckpointError(f"{where}: {path} is {size} bytes but its header describes {8 + length + end} "
                              "(a truncated or corrupt file)")
    return parameters


def inspect_local(directory: str) -> CheckpointSummary:
    """:func:`inspect_files` for a local directory."""
    root = os.path.abspath(os.path.expanduser(directory.removeprefix("file://")))
    if not os.path.isdir(root):
        what = "a file, not a directory" if os.path.exists(root) else "no such directory"
        raise CheckpointError(f"{directory}: {what}")
    sizes = {}
    for folder in CHECKPOINT_COMPONENTS.values():  # only the component folders: a checkpoint is not walked
        base = os.path.join(root, folder)
        try:
            entries = list(os.scandir(base))
        except OSError:
            continue
        prefix = "" if folder == "." else folder + "/"
        sizes.update({prefix + e.name: e.stat().st_size for e in entries if e.is_file()})

    def read_range(path: str, start: int, length: int) -> bytes:
        with open(os.path.join(root, path), "rb") as f:
            f.seek(start)
            return f.read(length)

    return inspect_files(directory, sizes, read_range)


def inspect_s3(uri: str, client) -> CheckpointSummary:
    """:func:`inspect_files` for an ``s3://bucket/prefix``, through a botocore S3 ``client`` (whose timeouts and
    retries the caller chooses): one listing, then ranged GETs of the configurations and headers."""
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    prefix = key.strip("/") + "/" if key.strip("/") else ""
    sizes = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            sizes[item["Key"][len(prefix):]] = int(item["Size"])
    if not sizes:
        raise CheckpointError(f"{redact_uri(uri)}: no objects under this prefix")

    def read_range(path: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        body = client.get_object(Bucket=bucket, Key=prefix + path, Range=f"bytes={start}-{start + length - 1}")
        return body["Body"].read()

    return inspect_files(uri, sizes, read_range)


def is_hf_repo_id(source: str) -> bool:
    """A Hugging Face repo id (``owner/name``) that is not a local path."""
    return not is_uri(source) and bool(HF_REPO_ID.match(source)) and not os.path.exists(source)
