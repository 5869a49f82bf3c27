"""Finding checkpoints (local directory, ``s3://`` prefix, Hugging Face repo id) and loading weights strictly.

Weights are only ever read from safetensors: a pickle-based file (``.bin``, ``.pt``, ``.ckpt``) can execute code
when loaded, so it is refused rather than opened.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .errors import CheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_pickle(path: str | Path) -> None:
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"refusing to load {path.name}: pickle-based weights can run code when loaded; "
            "convert the checkpoint to safetensors"
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
        raise CheckpointError(f"no .safetensors weights in {directory}")
    raise CheckpointError(f"several .safetensors files in {directory}: {[f.name for f in files]}")


def load_safetensors_strict(module: nn.Module, path: str | Path) -> None:
    """Load ``path`` into ``module``; every missing, unexpected or mis-shaped key is an error naming the key."""
    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"cannot read {path.name}: {exc}") from exc
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys {_abbrev(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_abbrev(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_abbrev(mismatched)}")
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))
    with torch.no_grad():
        module.load_state_dict(state, strict=True)


def _abbrev(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items) - limit} more)' if len(items) > limit else ''}]"
