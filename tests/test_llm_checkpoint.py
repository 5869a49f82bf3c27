"""The random LLM checkpoint writer (official layout, deterministic) and the strict, pickle-free loader."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpa.errors import CheckpointError
from gpa.llm import load_llm
from gpa.testing.llm import TOKENIZER_FILES, write_random_checkpoint
from gpa.vocab import TokenLayout

SIZES = dict(glm_codebook_size=40, global_codebook_size=24, semantic_codebook_size=56)
FILES = {"config.json", "generation_config.json", "model.safetensors", *TOKENIZER_FILES}


def _digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llm_ckpt") / "tiny"
    write_random_checkpoint(directory, seed=0, **SIZES)
    return directory


def _copy(checkpoint, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(checkpoint, target)
    return target


def test_writer_is_deterministic_and_complete(checkpoint, tmp_path):
    assert {p.name for p in checkpoint.iterdir()} == FILES
    write_random_checkpoint(tmp_path / "again", seed=0, **SIZES)
    assert _digests(tmp_path / "again") == _digests(checkpoint)
    write_random_checkpoint(tmp_path / "other", seed=1, **SIZES)
    other = _digests(tmp_path / "other")
    assert other["model.safetensors"] != _digests(checkpoint)["model.safetensors"]
    assert other["tokenizer.json"] == _digests(checkpoint)["tokenizer.json"]  # the tokenizer does not depend on seed


@pytest.mark.parametrize(("arch", "size"), [("qwen3", "tiny"), ("qwen2", "tiny"), ("qwen3", "tiny-alt")])
def test_checkpoints_load_with_the_released_layout(checkpoint, tmp_path, arch, size):
    directory = checkpoint if (arch, size) == ("qwen3", "tiny") else tmp_path / f"{arch}-{size}"
    if directory != checkpoint:
        write_random_checkpoint(directory, seed=0, arch=arch, size=size, **SIZES)
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == arch and config["rope_theta"] == 1e6  # transformers-4.x layout of the release
    model, tokenizer = load_llm(directory)
    assert type(model).__name__ == f"{arch.capitalize()}ForCausalLM" and not model.training
    assert model.dtype == torch.float32 and model.config.vocab_size >= len(tokenizer)
    layout = TokenLayout.from_tokenizer(tokenizer, **SIZES)
    assert layout.glm_offset < layout.global_offset < layout.semantic_offset
    assert tokenizer.decode(tokenizer("Grüße, 世界! 123")["input_ids"]) == "Grüße, 世界! 123"
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert json.loads((directory / "generation_config.json").read_text())["eos_token_id"] == layout.im_end


def test_load_in_another_dtype(checkpoint):
    model, _ = load_llm(checkpoint, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16


def test_tiny_and_tiny_alt_differ(checkpoint, tmp_path):
    write_random_checkpoint(tmp_path / "alt", seed=0, size="tiny-alt", **SIZES)
    tiny = json.loads((checkpoint / "config.json").read_text())
    alt = json.loads((tmp_path / "alt" / "config.json").read_text())
    assert (tiny["hidden_size"], tiny["num_hidden_layers"]) != (alt["hidden_size"], alt["num_hidden_layers"])
    assert sum(p.stat().st_size for p in checkpoint.iterdir()) < 5_000_000


def test_missing_weight_is_named(checkpoint, tmp_path):
    directory = _copy(checkpoint, tmp_path)
    state = load_file(directory / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing keys \[model\.layers\.1\.mlp\.up_proj\.weight\]"):
        load_llm(directory)


def test_missing_output_head_is_an_error_unless_tied(checkpoint, tmp_path):
    directory = _copy(checkpoint, tmp_path)
    state = load_file(directory / "model.safetensors")
    del state["lm_head.weight"]
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"lm_head\.weight"):
        load_llm(directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    model, _ = load_llm(directory)  # a tied output head is the input embedding, not a missing weight
    assert torch.equal(model.lm_head.weight, state["model.embed_tokens.weight"])


def test_unexpected_weight_is_named(checkpoint, tmp_path):
    directory = _copy(checkpoint, tmp_path)
    state = load_file(directory / "model.safetensors")
    state["model.layers.7.extra.weight"] = torch.zeros(3)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"unexpected keys \[model\.layers\.7\.extra\.weight\]"):
        load_llm(directory)


def test_mis_shaped_weight_is_named(checkpoint, tmp_path):
    directory = _copy(checkpoint, tmp_path)
    state = load_file(directory / "model.safetensors")
    state["model.norm.weight"] = torch.ones(7)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight"):
        load_llm(directory)


def test_pickle_weights_are_refused_unopened(checkpoint, tmp_path):
    directory = _copy(checkpoint, tmp_path)
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(b"not even a pickle: it must never be opened")
    with pytest.raises(CheckpointError, match=r"refusing to load pytorch_model\.bin"):
        load_llm(directory)
    (directory / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match=r"no \.safetensors weights"):
        load_llm(directory)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_llm(tmp_path / "nowhere")


def test_remote_code_stays_off(checkpoint, tmp_path):
    directory = _copy(checkpoint, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="gpa_custom", auto_map={"AutoModelForCausalLM": "modeling_gpa.GPAForCausalLM"})
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "modeling_gpa.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(CheckpointError, match="cannot load the LLM"):
        load_llm(directory)


def test_writer_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        write_random_checkpoint(tmp_path, seed=0, size="huge", **SIZES)
    with pytest.raises(ValueError, match="arch"):
        write_random_checkpoint(tmp_path, seed=0, arch="llama", **SIZES)
