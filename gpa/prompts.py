"""Prompts of the three tasks, built directly from token ids, and parsing of what the model generates.

The reference builds some prompts by decoding audio token ids to text and tokenizing that text again; the
result is the same id sequence, which we build directly (no round trip through text). Layouts::

    stt  <|start_glm_token|> glm+off <|end_glm_token|><|start_semantic_token|> semantic+off <|end_semantic_token|>
         <|start_content|>
    tts  <|start_global_token|> global+off <|end_global_token|>
         tokenizer("<|start_content|>" + text + "<|end_content|>")
    vc   <|start_global_token|> global+off <|end_global_token|><|start_semantic_token|> semantic+off
         <|end_semantic_token|><|end_content|>

The model answers with text then ``<|end_content|><|im_end|>`` (stt) or semantic tokens then ``<|im_end|>``
(tts, vc).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InvalidText
from .vocab import END_CONTENT, START_CONTENT, TokenLayout

# The reference tokenizes "<|start_content|>" + text + "<|end_content|>" with truncation at 512 tokens.
MAX_TEXT_TOKENS = 512


@dataclass(frozen=True)
class Prompt:
    """A TTS prompt. ``truncated``: the text needed more than ``MAX_TEXT_TOKENS`` tokens and ``ids`` hold what
    the reference would have kept (its first 512 tokens, which loses ``<|end_content|>``): callers should split
    the text instead of using a truncated prompt."""

    ids: list[int]
    truncated: bool = False


def stt_prompt(layout: TokenLayout, glm_tokens, semantic_tokens) -> list[int]:
    """Speech-to-text prompt from the GLM and BiCodec semantic codes (0-based) of one audio."""
    glm = _codes(glm_tokens, layout.glm_count, "GLM")
    semantic = _codes(semantic_tokens, layout.semantic_count, "semantic")
    return [
        layout.start_glm,
        *(glm + layout.glm_offset).tolist(),
        layout.end_glm,
        layout.start_semantic,
        *(semantic + layout.semantic_offset).tolist(),
        layout.end_semantic,
        layout.start_content,
    ]


def tts_prompt(layout: TokenLayout, tokenizer, global_tokens, text: str) -> Prompt:
    """Text-to-speech prompt: the reference speaker's BiCodec global codes and the text to say.

    The text is tokenized exactly like the reference (together with its content markers), so ordinary text gets
    identical ids. :class:`InvalidText` if it is empty or contains one of the tokenizer's control or audio
    tokens spelled out (e.g. ``<|im_end|>``), which would otherwise be injected into the prompt as that token.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidText("text is empty")
    glob = _codes(global_tokens, layout.global_count, "global")
    encoded = list(tokenizer(START_CONTENT + text + END_CONTENT)["input_ids"])
    if layout.start_content not in encoded or layout.end_content not in encoded:
        raise InvalidText("the tokenizer did not keep the content markers around the text")
    first = encoded.index(layout.start_content)
    last = len(encoded) - 1 - encoded[::-1].index(layout.end_content)
    inner = [i for i in encoded[first + 1 : last] if i in layout.added_ids]
    if inner:
        raise InvalidText(f"text contains control tokens: {tokenizer.convert_ids_to_tokens(inner[:3])}")
    truncated = len(encoded) > MAX_TEXT_TOKENS
    ids = [
        layout.start_global,
        *(glob + layout.global_offset).tolist(),
        layout.end_global,
        *encoded[:MAX_TEXT_TOKENS],
    ]
    return Prompt(ids, truncated)


def text_token_count(tokenizer, text: str) -> int:
    """Tokens the TTS text part takes (markers included), to compare with ``MAX_TEXT_TOKENS``."""
    return len(tokenizer(START_CONTENT + text + END_CONTENT)["input_ids"])


def vc_prompt(layout: TokenLayout, global_tokens, semantic_tokens) -> list[int]:
    """Voice-conversion prompt: the reference speaker's global codes and the source audio's semantic codes."""
    glob = _codes(global_tokens, layout.global_count, "global")
    semantic = _codes(semantic_tokens, layout.semantic_count, "semantic")
    return [
        layout.start_global,
        *(glob + layout.global_offset).tolist(),
        layout.end_global,
        layout.start_semantic,
        *(semantic + layout.semantic_offset).tolist(),
        layout.end_semantic,
        layout.end_content,
    ]


def semantic_from_generation(layout: TokenLayout, generated_ids: Sequence[int]) -> np.ndarray:
    """BiCodec semantic codes (0-based, int64) in a TTS/VC generation.

    The reference decodes prompt + output to text, keeps what lies between the first ``<|end_content|>`` (the
    prompt's last marker) and the next one, and collects every ``<|bicodec_semantic_N|>``. On ids that is: the
    semantic tokens of the generation up to its first ``<|end_content|>``; anything else is skipped.
    """
    codes = []
    for token_id in generated_ids:
        token_id = int(token_id)
        if token_id == layout.end_content:
            break
        if layout.is_semantic(token_id):
            codes.append(token_id - layout.semantic_offset)
    return np.asarray(codes, dtype=np.int64)


def text_from_generation(tokenizer, layout: TokenLayout, generated_ids: Sequence[int]) -> str:
    """The transcript in an STT generation.

    Like the reference: the generation up to a ``<|start_content|>`` (the reference splits prompt + output on it
    and keeps the part after the prompt's), without ``<|im_end|>`` and ``<|end_content|>``. Departure: every
    other non-text token (other control tokens, audio tokens, ids past the tokenizer) is dropped too, where the
    reference would leave its spelled-out name (e.g. ``<|bicodec_semantic_12|>``) in the transcript. The text is
    not stripped.
    """
    kept = []
    for token_id in generated_ids:
        token_id = int(token_id)
        if token_id == layout.start_content:
            break
        if layout.is_text(token_id):
            kept.append(token_id)
    return tokenizer.decode(kept, skip_special_tokens=False)


def _codes(codes, count: int, name: str) -> np.ndarray:
    """Audio codes as a 1-D int64 array, checked to lie in ``[0, count)``."""
    array = np.asarray(codes)
    if array.ndim > 1 and all(d == 1 for d in array.shape[:-1]):
        array = array.reshape(-1)  # accept the reference's (1, N) / (1, 1, N) tensors
    if array.ndim != 1:
        raise ValueError(f"{name} tokens must be a 1-D sequence, got shape {array.shape}")
    if array.size == 0:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} tokens must be integers, got {array.dtype}")
    array = array.astype(np.int64)
    if array.min() < 0 or array.max() >= count:
        raise ValueError(f"{name} tokens must lie in [0, {count}), got [{array.min()}, {array.max()}]")
    return array
