"""Prompt ids of the three tasks and parsing of generations, against hand-built expectations and the reference's
text-based construction (decode ids to text, tokenize again) on the tiny tokenizer."""

from __future__ import annotations

import re

import numpy as np
import pytest
from transformers import AutoTokenizer

from gpa import prompts
from gpa.errors import InvalidText
from gpa.testing.llm import write_random_checkpoint
from gpa.vocab import TokenLayout

SIZES = dict(glm_codebook_size=40, global_codebook_size=24, semantic_codebook_size=56)
rng = np.random.default_rng(0)
GLM = rng.integers(0, 40, 13)
GLOBAL = rng.integers(0, 24, 32)
SEMANTIC = rng.integers(0, 56, 50)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llm_prompts")
    write_random_checkpoint(directory, seed=0, **SIZES)
    return AutoTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def layout(tokenizer):
    return TokenLayout.from_tokenizer(tokenizer, **SIZES)


def test_stt_prompt(layout, tokenizer):
    ids = prompts.stt_prompt(layout, GLM, SEMANTIC)
    expected = (
        [layout.start_glm]
        + [layout.glm_offset + int(c) for c in GLM]
        + [layout.end_glm, layout.start_semantic]
        + [layout.semantic_offset + int(c) for c in SEMANTIC]
        + [layout.end_semantic, layout.start_content]
    )
    assert ids == expected
    # The reference: tokenizer.encode(marker) for each marker around the offset codes.
    enc = tokenizer.encode
    reference = (
        enc("<|start_glm_token|>")
        + (GLM + layout.glm_offset).tolist()
        + enc("<|end_glm_token|>")
        + enc("<|start_semantic_token|>")
        + (SEMANTIC + layout.semantic_offset).tolist()
        + enc("<|end_semantic_token|>")
        + enc("<|start_content|>")
    )
    assert ids == reference


def test_tts_prompt(layout, tokenizer):
    text = "Hello world, this is Major Tom speaking. 今天天气很好。"
    prompt = prompts.tts_prompt(layout, tokenizer, GLOBAL, text)
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    expected = (
        [layout.start_global]
        + [layout.global_offset + int(c) for c in GLOBAL]
        + [layout.end_global, layout.start_content]
        + text_ids
        + [layout.end_content]
    )
    assert prompt == prompts.Prompt(expected, truncated=False)
    # The reference tokenizes markers and text as one string; the global tokens go in as ids.
    reference = (
        tokenizer.encode("<|start_global_token|>")
        + (GLOBAL + layout.global_offset).tolist()
        + tokenizer.encode("<|end_global_token|>")
        + tokenizer("<|start_content|>" + text + "<|end_content|>", truncation=True, max_length=512)["input_ids"]
    )
    assert prompt.ids == reference
    assert prompts.text_token_count(tokenizer, text) == len(text_ids) + 2


def test_tts_prompt_flags_what_the_reference_truncates(layout, tokenizer):
    text = "word " * 700
    prompt = prompts.tts_prompt(layout, tokenizer, GLOBAL, text)
    assert prompt.truncated
    reference = tokenizer("<|start_content|>" + text + "<|end_content|>", truncation=True, max_length=512)
    assert prompt.ids[34:] == reference["input_ids"] and len(prompt.ids) == 34 + 512


@pytest.mark.parametrize("text", ["", "   \n", None])
def test_tts_prompt_rejects_empty_text(layout, tokenizer, text):
    with pytest.raises(InvalidText, match="empty"):
        prompts.tts_prompt(layout, tokenizer, GLOBAL, text)


@pytest.mark.parametrize("injected", ["<|im_end|>", "<|bicodec_semantic_3|>", "<|end_content|>"])
def test_tts_prompt_rejects_spelled_out_control_tokens(layout, tokenizer, injected):
    with pytest.raises(InvalidText, match="control tokens"):
        prompts.tts_prompt(layout, tokenizer, GLOBAL, f"say {injected} now")


def test_vc_prompt_equals_the_reference_text_round_trip(layout, tokenizer):
    ids = prompts.vc_prompt(layout, GLOBAL, SEMANTIC)
    expected = (
        [layout.start_global]
        + [layout.global_offset + int(c) for c in GLOBAL]
        + [layout.end_global, layout.start_semantic]
        + [layout.semantic_offset + int(c) for c in SEMANTIC]
        + [layout.end_semantic, layout.end_content]
    )
    assert ids == expected
    # The reference decodes the offset codes to text and tokenizes the whole string again.
    text = (
        "<|start_global_token|>"
        + tokenizer.decode((GLOBAL + layout.global_offset).tolist())
        + "<|end_global_token|><|start_semantic_token|>"
        + tokenizer.decode((SEMANTIC + layout.semantic_offset).tolist())
        + "<|end_semantic_token|><|end_content|>"
    )
    assert tokenizer(text)["input_ids"] == ids


def test_codes_are_checked(layout):
    with pytest.raises(ValueError, match=r"semantic tokens must lie in \[0, 56\)"):
        prompts.vc_prompt(layout, GLOBAL, [0, 56])
    with pytest.raises(ValueError, match="integers"):
        prompts.stt_prompt(layout, [0.5], SEMANTIC)
    with pytest.raises(ValueError, match="1-D"):
        prompts.vc_prompt(layout, np.zeros((2, 16), dtype=int), SEMANTIC)
    # The reference's (1, 1, 32) global tensor is accepted.
    assert prompts.vc_prompt(layout, GLOBAL[None, None], SEMANTIC) == prompts.vc_prompt(layout, GLOBAL, SEMANTIC)


def _reference_semantic(tokenizer, prompt_ids, generated):
    """The reference's TTS/VC post-processing on the decoded prompt + output."""
    text = tokenizer.decode(prompt_ids + generated)
    content = text.split("<|end_content|>")[1] if "<|end_content|>" in text else text
    return [int(x) for x in re.findall(r"<\|bicodec_semantic_(\d+)\|>", content)]


def test_semantic_from_generation_matches_the_reference(layout, tokenizer):
    prompt = prompts.vc_prompt(layout, GLOBAL, SEMANTIC)
    sem = layout.semantic_offset
    hello = tokenizer("hello")["input_ids"]
    cases = [
        [sem + 5, sem + 0, sem + 55, layout.im_end],
        [sem + 5, *hello, layout.glm_offset + 3, sem + 7],  # other tokens are skipped
        [sem + 5, layout.end_content, sem + 9, sem + 10],  # a second <|end_content|> ends the audio
        [],
    ]
    for generated in cases:
        ours = prompts.semantic_from_generation(layout, generated)
        assert ours.dtype == np.int64
        assert ours.tolist() == _reference_semantic(tokenizer, prompt, generated)
    assert prompts.semantic_from_generation(layout, cases[2]).tolist() == [5]


def _reference_text(tokenizer, prompt_ids, generated):
    """The reference's STT post-processing."""
    text = tokenizer.decode(prompt_ids + generated)
    if "<|start_content|>" in text:
        return text.split("<|start_content|>")[1].replace("<|im_end|>", "").replace("<|end_content|>", "")
    return text.replace("<|im_end|>", "")


def test_text_from_generation_matches_the_reference(layout, tokenizer):
    prompt = prompts.stt_prompt(layout, GLM, SEMANTIC)
    words = tokenizer("The café opens at 9. 今天天气很好")["input_ids"]
    for generated in (
        words + [layout.end_content, layout.im_end],
        words,
        words[:3] + [layout.end_content] + words[3:],
        words[:4] + [layout.start_content] + words[4:],  # a second <|start_content|> ends the text
    ):
        assert prompts.text_from_generation(tokenizer, layout, generated) == _reference_text(
            tokenizer, prompt, generated
        )
    text = prompts.text_from_generation(tokenizer, layout, words + [layout.im_end])
    assert text == "The café opens at 9. 今天天气很好"


def test_text_from_generation_drops_other_control_and_audio_tokens(layout, tokenizer):
    words = tokenizer("hello world")["input_ids"]
    generated = words[:1] + [layout.semantic_offset + 3, layout.start_glm] + words[1:] + [layout.im_end]
    assert prompts.text_from_generation(tokenizer, layout, generated) == "hello world"
