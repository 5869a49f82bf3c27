"""Finding checkpoints (local directory, ``s3://`` prefix, Hugging Face repo id) and loading weights strictly.

Weights are only ever read from safetensors: a pickle-based file (``.bin``, ``.pt``, ``.ckpt``) can execute code
when loaded, so it is refused rather than opened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file
from torch import nn
from torch.overrides import TorchFunctionMode

from .checkpoint_files import CHECKPOINT_COMPONENTS, COMPLETE_MARKER, HF_REPO_ID, PICKLE_SUFFIXES, file_sha256
from .errors import CheckpointError
from .storage import exclusive_lock, filesystem, is_uri, redact_uri

log = logging.getLogger(__name__)

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def refuse_pickle(path: str | Path) -> None:
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"refusing to load {path.name}: pickle-based weights can run code when loaded; convert them once with "
            f"`gpa convert-weights {path}` (torch's weights-only unpickler) and load the .safetensors"
        )


def find_safetensors(directory: str | Path) -> Path:
    """The single ``*.safetensors`` weights file of a component directory."""
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if len(files) == 1:
        return files[0]
    if not files:
        if directory.is_dir():
            for unsafe in sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES):
                refuse_pickle(unsafe)
        raise CheckpointError(
            f"no .safetensors weights in {directory}; if the checkpoint ships pickle weights (.bin/.pt), convert "
            "them once with `gpa convert-weights FILE` and put the .safetensors beside them"
        )
    raise CheckpointError(f"several .safetensors files in {directory}: {[f.name for f in files]}")


# Stored buffers that follow from the config (see load_safetensors_strict) must equal the computed values to
# this absolute tolerance, after rounding the computed value to the stored dtype: torchaudio's float32 mel
# filterbank and window are bit-equal to ours, so this only lets last-bit differences of other builds through.
DERIVED_ATOL = 1e-6


def load_safetensors_strict(
    module: nn.Module, path: str | Path, *, derived: Mapping[str, torch.Tensor] | None = None
) -> None:
    """Load ``path`` into ``module``; every missing, unexpected or mis-shaped key is an error naming the key.

    ``derived``: keys that a checkpoint may carry although their values follow from the config (the reference's
    BiCodec saves torchaudio's mel filterbank and window), with the values computed here. When present, each is
    checked against its computed value (:data:`DERIVED_ATOL`) and then dropped; a disagreeing one is an error,
    since it means the weights were made for another configuration.
    """
    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"cannot read {path.name}: {exc}") from exc
    for key, computed in (derived or {}).items():
        if key in state:
            check_derived(str(path), key, state.pop(key), computed)
    expected = module.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    ]
    report = {"missing_keys": set(expected) - set(state), "unexpected_keys": set(state) - set(expected)}
    check_loading_info(str(path), report | {"mismatched_keys": mismatched})
    with torch.no_grad():
        module.load_state_dict(state, strict=True)


def check_derived(what: str, key: str, stored: torch.Tensor, computed: torch.Tensor) -> None:
    """:class:`CheckpointError` unless the stored value of a config-derived buffer equals the computed one."""
    if tuple(stored.shape) != tuple(computed.shape):
        raise CheckpointError(
            f"{what}: {key} has shape {tuple(stored.shape)}, but the config gives {tuple(computed.shape)}"
        )
    if not stored.is_floating_point():
        raise CheckpointError(f"{what}: {key} is stored as {stored.dtype}, expected floating point values")
    reference = computed.detach().cpu().to(stored.dtype).double()
    error = float((stored.double() - reference).abs().max()) if stored.numel() else 0.0
    if not error <= DERIVED_ATOL:  # also refuses NaN
        raise CheckpointError(
            f"{what}: {key} differs from the value computed from the config (max abs difference {error:.3g}, "
            f"tolerance {DERIVED_ATOL:g}): the weights were saved for another configuration"
        )


class _SkipRandomFill(TorchFunctionMode):
    """Random fills of parameters become no-ops: a module built to be loaded strictly has every parameter
    overwritten, so drawing their initial values is wasted (seconds on a CPU for the full-size encoders). Buffers
    are filled as usual (a non-persistent one is not in the file). Torch function modes are per thread, so other
    threads' modules are unaffected."""

    SKIPPED = frozenset({
        torch.Tensor.uniform_, torch.Tensor.normal_,
        nn.init.uniform_, nn.init.normal_, nn.init.kaiming_uniform_,
    })

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.SKIPPED:
            tensor = kwargs["tensor"] if "tensor" in kwargs else args[0]
            if isinstance(tensor, nn.Parameter):
                return tensor
        return func(*args, **kwargs)


def load_module(
    build: Callable[[], ModuleT], path: str | Path, *, derived: Mapping[str, torch.Tensor] | None = None
) -> ModuleT:
    """``build()`` (without drawing random initial weights), then :func:`load_safetensors_strict` from ``path``."""
    with _SkipRandomFill():
        module = build()
    load_safetensors_strict(module, path, derived=derived)
    return module


def check_loading_info(what: str, info: dict, *, ignore_unexpected: tuple[str, ...] = ()) -> None:
    """Raise :class:`CheckpointError` naming every missing, unexpected or mis-shaped key that transformers'
    ``from_pretrained(..., output_loading_info=True)`` reported (it would otherwise only warn)."""
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(k for k in info.get("unexpected_keys") or () if not k.startswith(ignore_unexpected))
    mismatched = sorted(str(m) for m in info.get("mismatched_keys") or ())
    problems = []
    if missing:
        problems.append(f"missing keys {abbreviate(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {abbreviate(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {abbreviate(mismatched)}")
    if info.get("error_msgs"):
        problems.append("; ".join(str(m) for m in info["error_msgs"]))
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bar for one load (we raise our own, precise errors)."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def abbreviate(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items) - limit} more)' if len(items) > limit else ''}]"


# --- where a checkpoint comes from -------------------------------------------------------------------------------



def default_cache_dir() -> Path:
    base = os.environ.get("GPA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "gpa-batch"
    )
    return Path(base) / "checkpoints"


def resolve_checkpoint(source: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local directory holding the checkpoint named by ``source``.

    ``source`` is a local directory, an object-store prefix (``s3://bucket/prefix``: copied into the cache once per
    version, atomically, sizes checked) or a Hugging Face repo id (downloaded when a network exists).
    """
    text = os.fspath(source)
    if is_uri(text):
        return _download_prefix(text, Path(cache_dir) if cache_dir else default_cache_dir())
    local = Path(text.removeprefix("file://")).expanduser()
    if local.is_dir():
        return local
    if HF_REPO_ID.match(text) and not local.exists():
        return _download_hf(text, cache_dir)
    raise CheckpointError(f"checkpoint not found: {redact_uri(text)} is not a directory, URI or Hugging Face repo id")


def _download_prefix(uri: str, cache_dir: Path) -> Path:
    """The local copy of the checkpoint under ``uri``: one folder per version of it (its objects' names, sizes and
    ETags), so a checkpoint replaced at the same prefix is fetched again rather than served stale. One process per
    machine downloads a version while the others wait for it (the actors of one node start together); it then
    removes older versions but the one before (which an actor that started earlier may still be reading)."""
    clean = redact_uri(uri).rstrip("/")
    name = hashlib.sha256(clean.encode()).hexdigest()[:24]
    fs, root = filesystem(uri)
    root = root.rstrip("/")
    try:
        listing = fs.find(root, detail=True)
    except Exception as exc:
        fetched = _fetched_versions(cache_dir, name)
        if fetched:  # the store cannot be reached now: the copy fetched last still loads
            log.warning("cannot list %s (%s); using the copy fetched before, %s", clean, type(exc).__name__,
                        fetched[-1])
            return fetched[-1]
        raise CheckpointError(f"cannot list {clean}: {type(exc).__name__}") from None
    files, found = {}, False
    for path, info in sorted(listing.items()):
        if info.get("type", "file") != "file":
            continue
        found = True
        relative = path[len(root):].lstrip("/")
        if not relative or relative.startswith("..") or "/../" in f"/{relative}/":
            raise CheckpointError(f"refusing object key outside the prefix: {relative!r}")
        if Path(relative).suffix not in PICKLE_SUFFIXES:  # never loaded, so never copied (see convert_to_safetensors)
            files[relative] = (path, info)
    if not found:
        raise CheckpointError(f"no files under {clean}")
    version = hashlib.sha256(json.dumps(
        [[relative, info.get("size"), str(_object_version(info))] for relative, (_, info) in files.items()]
    ).encode()).hexdigest()[:12]
    target = cache_dir / f"{name}-{version}"
    if (target / COMPLETE_MARKER).is_file():
        return target
    lock = cache_dir / f"{name}.lock"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock.touch()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CheckpointError(f"cannot write to the checkpoint cache {cache_dir} ({reason}); set GPA_CACHE_DIR to a "
                              f"writable directory") from None
    with exclusive_lock(lock):
        if not (target / COMPLETE_MARKER).is_file():  # else another process fetched it while this one waited
            _download_files(fs, clean, files, target)
            _remove_old_versions(cache_dir, name, keep=2)
    return target


def _fetched_versions(cache_dir: Path, name: str) -> list[Path]:
    """The complete copies of one prefix in the cache, oldest first (``<name>`` is this module's earlier layout)."""
    pattern = re.compile(rf"^{name}(-[0-9a-f]{{12}})?$")
    found = [d for d in cache_dir.glob(f"{name}*") if pattern.match(d.name) and (d / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda d: (d / COMPLETE_MARKER).stat().st_mtime)


def _remove_old_versions(cache_dir: Path, name: str, keep: int) -> None:
    """Called under the prefix's lock: every version but the newest ``keep``, and downloads of this prefix that a
    killed process left (hours old: a machine sharing the cache may still be writing a recent one)."""
    for old in _fetched_versions(cache_dir, name)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for partial in cache_dir.glob(f"{name}-*.partial"):
        if time.time() - partial.stat().st_mtime > 6 * 3600:
            shutil.rmtree(partial, ignore_errors=True)


def _object_version(info: dict) -> object:
    """What changes when an object is replaced: its ETag on object stores, else its modification time."""
    for key in ("ETag", "etag", "LastModified", "last_modified", "mtime", "updated"):
        if info.get(key) is not None:
            return info[key]
    return None


def _download_files(fs, clean: str, files: dict[str, tuple[str, dict]], target: Path) -> None:
    # into a private temporary directory beside the target, renamed into place: a crash never leaves a half-copied
    # checkpoint where a loader would take it
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", suffix=".partial", dir=target.parent))
    try:
        manifest = {}
        for relative, (path, info) in files.items():
            local = staging / relative
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(local))
            size = local.stat().st_size
            if info.get("size") is not None and size != int(info["size"]):
                raise CheckpointError(f"{clean}/{relative}: downloaded {size} bytes, expected {info['size']}")
            manifest[relative] = {"size": size, "sha256": file_sha256(local)}
        (staging / COMPLETE_MARKER).write_text(json.dumps({"source": clean, "files": manifest}, indent=1))
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / COMPLETE_MARKER).is_file():  # not another machine's copy on a shared cache
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _download_hf(repo_id: str, cache_dir: str | os.PathLike | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id,
                cache_dir=os.fspath(cache_dir) if cache_dir else None,
                ignore_patterns=[f"*{suffix}" for suffix in PICKLE_SUFFIXES],
            )
        )
    except Exception as exc:
        raise CheckpointError(
            f"cannot download {repo_id!r} from the Hugging Face Hub ({type(exc).__name__}); without a network, "
            "download it elsewhere and pass the local directory or an s3:// copy as the model source"
        ) from None


def parameter_counts(directory: str | os.PathLike) -> dict[str, int]:
    """Parameters of each component of a checkpoint in the official layout, read from the safetensors headers
    (nothing is loaded)."""
    from safetensors import safe_open

    counts = {}
    for name, sub in CHECKPOINT_COMPONENTS.items():
        total = 0
        for path in sorted((Path(directory) / sub).glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as f:
                total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
        counts[name] = total
    return counts


def _unpickling_reason(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, without PyTorch's advice to load it unsafely."""
    text = str(exc)
    if not text.startswith("Weights only load failed"):  # not a refusal: a damaged or foreign file
        return text.strip().split("\n")[0].split(". ")[0][:200] or type(exc).__name__
    if re.search(r"Unsupported operand \d+", text):  # an opcode its unpickler lacks: not a pickle it can read
        return "not a PyTorch checkpoint, or a damaged one"
    found = re.search(r"WeightsUnpickler error:[ \t]*(\S.*)", text)
    if found:
        reason = found.group(1)
    else:  # the reason is the paragraph between PyTorch's advice and its pointer to the documentation
        paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
        rest = [p for p in paragraphs if not p.startswith(("Weights only load failed", "Check the documentation"))]
        reason = rest[0] if rest else "it holds more than tensors"
    reason = " ".join(reason.split()).split(". Please")[0].rstrip(".")
    return f"the safe unpickler refused it ({reason[:200]})"


def convert_to_safetensors(path: str | os.PathLike) -> Path:
    """Convert a pickle-based weights file to ``<stem>.safetensors`` beside it, once, on the user's request.

    Uses ``torch.load(weights_only=True)``, whose unpickler only builds tensors and plain containers and refuses
    anything else (such as a payload that would run code). The loaders themselves never unpickle.
    """
    path = Path(path)
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path.name} is not a pickle weights file ({', '.join(PICKLE_SUFFIXES)})")
    try:
        with warnings.catch_warnings():  # its notes on pickle protocols: the refusal below says what matters
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:
        raise CheckpointError(f"{path.name} is not a plain tensor checkpoint: {_unpickling_reason(exc)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path.name} does not hold a flat mapping of names to tensors")
    # safetensors refuses shared storage: store independent, contiguous copies.
    tensors = {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}
    target = path.with_name(
        "model.safetensors" if path.stem in ("pytorch_model", "model") else path.stem + ".safetensors"
    )
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(target), metadata={"format": "pt", "converted_from": path.name})
    except Exception as exc:  # OSError, or safetensors' own error for an unwritable target
        raise CheckpointError(f"cannot write {target}: {str(exc).strip().splitlines()[0][:200]}") from None
    return target
