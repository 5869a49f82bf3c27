"""GPA's language model: a Qwen3 (or Qwen2) causal LM with GPA's extended tokenizer, loaded strictly.

``load_llm`` reads a checkpoint root (config.json, model.safetensors, tokenizer files) with transformers. Only
safetensors weights are read: pickle files (``*.bin``, ``*.pt``) can run code when unpickled and are refused.
Random checkpoints in the same layout, for tests and benchmarks, are written by :mod:`gpa.testing.llm`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .checkpoint import abbreviate, check_loading_info, find_safetensors, quiet_transformers
from .errors import CheckpointError


def load_tokenizer(directory: str | os.PathLike, *, trust_remote_code: bool = False):
    """The checkpoint's text tokenizer (its vocabulary holds the speech tokens too)."""
    try:
        return AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code, local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load the tokenizer from {directory}: {exc}") from exc


def load_llm(
    directory: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
):
    """``(model, tokenizer)`` from a checkpoint root, in eval mode on ``device``.

    Strict: a missing, unexpected or mis-shaped weight is a :class:`CheckpointError` naming the key (an output
    embedding tied to the input embedding is not missing). ``trust_remote_code`` stays off unless asked for.
    """
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"no config.json in {directory}")
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        find_safetensors(directory)  # raises the refusal (pickle) or "no weights" error
    try:
        config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code, local_files_only=True)
        _check_shapes(config, weights, trust_remote_code)
        with quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(
                directory,
                config=config,
                dtype=dtype,
                use_safetensors=True,
                output_loading_info=True,
                trust_remote_code=trust_remote_code,
                local_files_only=True,
            )
    except CheckpointError:
        raise
    except Exception as exc:  # transformers raises many types (OSError, ValueError, RuntimeError ...)
        raise CheckpointError(f"cannot load the LLM from {directory}: {exc}") from exc
    check_loading_info(str(directory), info)
    tokenizer = load_tokenizer(directory, trust_remote_code=trust_remote_code)
    model.eval().to(device)
    return model, tokenizer


def _check_shapes(config, weights: list[Path], trust_remote_code: bool) -> None:
    """Compare the weight shapes in the safetensors headers with the model's (built on the meta device, no
    memory): transformers refuses a mis-shaped weight without naming it."""
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    mismatched = []
    for path in weights:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                shape = tuple(f.get_slice(name).get_shape())
                if name in expected and shape != expected[name]:
                    mismatched.append(f"{name}: checkpoint {shape} vs model {expected[name]}")
    if mismatched:
        raise CheckpointError(f"{weights[0].parent}: shape mismatches {abbreviate(sorted(mismatched))}")
