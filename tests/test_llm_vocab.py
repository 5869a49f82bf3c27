"""TokenLayout: ids read from a real (tiny, random) GPA tokenizer, and clear errors when it does not fit."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from gpa.errors import CheckpointError
from gpa.testing.llm import write_random_checkpoint
from gpa.vocab import TokenLayout

SIZES = dict(glm_codebook_size=40, global_codebook_size=24, semantic_codebook_size=56)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llm_vocab")
    write_random_checkpoint(directory, seed=0, **SIZES)
    return directory


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return AutoTokenizer.from_pretrained(checkpoint)


def _layout(tokenizer, **sizes):
    return TokenLayout.from_tokenizer(tokenizer, **{**SIZES, **sizes})


def _rewrite_tokenizer(src, dst, edit):
    """Copy the tokenizer files of ``src`` to ``dst`` with ``edit(name) -> new name`` applied to added tokens."""
    dst.mkdir()
    data = json.loads((src / "tokenizer.json").read_text())
    for entry in data["added_tokens"]:
        entry["content"] = edit(entry["content"])
    (dst / "tokenizer.json").write_text(json.dumps(data))
    config = json.loads((src / "tokenizer_config.json").read_text())
    for entry in config["added_tokens_decoder"].values():
        entry["content"] = edit(entry["content"])
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return AutoTokenizer.from_pretrained(dst)


def test_layout_reads_offsets_and_markers(tokenizer):
    layout = _layout(tokenizer)
    vocab = tokenizer.get_vocab()
    assert layout.glm_offset == vocab["<|glm_semantic_0|>"]
    assert layout.global_offset == vocab["<|bicodec_global_0|>"]
    assert layout.semantic_offset == vocab["<|bicodec_semantic_0|>"]
    assert (layout.glm_count, layout.global_count, layout.semantic_count) == (40, 24, 56)
    # The released order: GLM < global < semantic, each contiguous.
    assert layout.glm_offset + 40 == layout.global_offset and layout.global_offset + 24 == layout.semantic_offset
    assert layout.im_end == vocab["<|im_end|>"] == tokenizer.eos_token_id
    assert layout.start_content == tokenizer.convert_tokens_to_ids("<|start_content|>")
    assert layout.end_glm == tokenizer.convert_tokens_to_ids("<|end_glm_token|>")
    assert layout.pad_id == tokenizer.pad_token_id == vocab["<|endoftext|>"]
    assert layout.tokenizer_size == len(tokenizer)


def test_layout_classifies_ids(tokenizer):
    layout = _layout(tokenizer)
    assert layout.is_semantic(layout.semantic_offset) and layout.is_semantic(layout.semantic_offset + 55)
    assert not layout.is_semantic(layout.semantic_offset + 56) and not layout.is_semantic(layout.global_offset)
    assert layout.is_global(layout.global_offset + 3) and layout.is_glm(layout.glm_offset)
    hello = tokenizer("hello")["input_ids"][0]
    assert layout.is_text(hello) and not layout.is_audio(hello)
    for token in (layout.im_end, layout.end_content, layout.semantic_offset, layout.glm_offset):
        assert not layout.is_text(token)


def test_allowed_masks(tokenizer):
    layout = _layout(tokenizer)
    vocab_size = len(tokenizer) + 10  # models pad their embedding past the tokenizer
    audio = layout.allowed_mask("tts", vocab_size)
    assert audio.shape == (vocab_size,) and audio.dtype == torch.bool
    assert set(audio.nonzero().squeeze(1).tolist()) == {layout.im_end} | set(
        range(layout.semantic_offset, layout.semantic_offset + 56)
    )
    assert torch.equal(layout.allowed_mask("vc", vocab_size), audio)
    text = layout.allowed_mask("stt", vocab_size)
    allowed = set(text.nonzero().squeeze(1).tolist())
    assert {layout.im_end, layout.end_content} <= allowed
    assert tokenizer("hello world")["input_ids"][0] in allowed
    assert not allowed & set(range(layout.glm_offset, layout.semantic_offset + 56))
    assert not allowed & set(range(len(tokenizer), vocab_size))
    assert layout.start_content not in allowed and layout.pad_id not in allowed


def test_codebook_larger_than_tokenizer_block_is_an_error(tokenizer):
    with pytest.raises(CheckpointError, match=r"has 56 <\|bicodec_semantic_N\|> tokens but the audio codebook has 57"):
        _layout(tokenizer, semantic_codebook_size=57)


def test_missing_marker_is_named(checkpoint, tmp_path, tokenizer):
    renamed = {"<|start_content|>": "<|begin_content|>"}
    broken = _rewrite_tokenizer(checkpoint, tmp_path / "t", lambda s: renamed.get(s, s))
    with pytest.raises(CheckpointError, match=r"no <\|start_content\|> token"):
        _layout(broken)


def test_missing_glm_block_lists_the_names_tried(checkpoint, tmp_path):
    broken = _rewrite_tokenizer(checkpoint, tmp_path / "t", lambda s: s.replace("glm_semantic_", "glmx_"))
    with pytest.raises(CheckpointError, match=r"no GLM speech tokens.*<\|audio_0\|>"):
        _layout(broken)


def test_other_glm_spelling_is_accepted(checkpoint, tmp_path):
    # GLM-4-Voice's own name for the codebook.
    other = _rewrite_tokenizer(checkpoint, tmp_path / "t", lambda s: s.replace("<|glm_semantic_", "<|audio_"))
    layout = _layout(other)
    assert layout.glm_token_format == "<|audio_{}|>"
    assert layout.glm_offset == other.convert_tokens_to_ids("<|audio_0|>")


def test_non_contiguous_block_is_an_error(checkpoint, tmp_path):
    def swap(name):
        return {"<|bicodec_global_3|>": "<|bicodec_global_4|>", "<|bicodec_global_4|>": "<|bicodec_global_3|>"}.get(
            name, name
        )

    broken = _rewrite_tokenizer(checkpoint, tmp_path / "t", swap)
    with pytest.raises(CheckpointError, match=r"bicodec_global_N.* not contiguous"):
        _layout(broken)
