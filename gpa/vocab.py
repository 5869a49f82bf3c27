"""Where GPA's control and audio tokens live in the LLM vocabulary.

GPA extends a Qwen tokenizer with control markers (``<|start_content|>``, ...) and three blocks of audio tokens:
GLM-4-Voice speech tokens, BiCodec global (speaker) tokens and BiCodec semantic tokens. Prompts place the audio
codes at ``offset + code``, so each block must be contiguous. The released checkpoint has them at 151727 / 168111 /
172207; :class:`TokenLayout` never assumes those numbers but reads every id from the tokenizer by name and checks
that the blocks are contiguous, so a tokenizer that differs from the one the weights were trained with fails
loudly instead of producing garbage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import CheckpointError

if TYPE_CHECKING:
    import torch

# Names of the BiCodec blocks in the released tokenizer.
GLOBAL_TOKEN_FORMAT = "<|bicodec_global_{}|>"
SEMANTIC_TOKEN_FORMAT = "<|bicodec_semantic_{}|>"
# The GLM block's name is not spelled out anywhere in the reference code (it only uses the numeric offset), so
# every plausible spelling is accepted; the first one found in the tokenizer wins. ``<|glm_semantic_N|>`` follows
# the reference's own naming (``glm_semantic_token_offset``) and is what our random checkpoints use;
# ``<|audio_N|>`` is GLM-4-Voice's own name for the same codebook.
GLM_TOKEN_FORMATS = (
    "<|glm_semantic_{}|>",
    "<|glm_{}|>",
    "<|glm_token_{}|>",
    "<|glm_semantic_token_{}|>",
    "<|audio_{}|>",
    "<|speech_{}|>",
)

IM_END = "<|im_end|>"
START_GLM, END_GLM = "<|start_glm_token|>", "<|end_glm_token|>"
START_SEMANTIC, END_SEMANTIC = "<|start_semantic_token|>", "<|end_semantic_token|>"
START_GLOBAL, END_GLOBAL = "<|start_global_token|>", "<|end_global_token|>"
START_CONTENT, END_CONTENT = "<|start_content|>", "<|end_content|>"

MARKERS = {
    "im_end": IM_END,
    "start_glm": START_GLM,
    "end_glm": END_GLM,
    "start_semantic": START_SEMANTIC,
    "end_semantic": END_SEMANTIC,
    "start_global": START_GLOBAL,
    "end_global": END_GLOBAL,
    "start_content": START_CONTENT,
    "end_content": END_CONTENT,
}

TASKS = ("stt", "tts", "vc")


def normalize_task(task: str) -> str:
    """``"tts-a"`` (the reference's name) is accepted for ``"tts"``."""
    task = "tts" if task == "tts-a" else task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return task


@dataclass(frozen=True)
class TokenLayout:
    """Token ids of GPA's markers and audio blocks, read from (and validated against) a tokenizer."""

    im_end: int
    start_glm: int
    end_glm: int
    start_semantic: int
    end_semantic: int
    start_global: int
    end_global: int
    start_content: int
    end_content: int
    glm_offset: int
    glm_count: int
    global_offset: int
    global_count: int
    semantic_offset: int
    semantic_count: int
    tokenizer_size: int  # len(tokenizer); the model's embedding may be larger (padded)
    pad_id: int  # fills left padding in batches (masked out, so any id works); the tokenizer's pad token
    glm_token_format: str = GLM_TOKEN_FORMATS[0]
    # Ids of all tokens added on top of the byte-level BPE vocabulary (Qwen specials, GPA markers, audio tokens):
    # everything else is ordinary text.
    added_ids: frozenset[int] = field(default_factory=frozenset, repr=False)

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer,
        *,
        glm_codebook_size: int,
        global_codebook_size: int,
        semantic_codebook_size: int,
    ) -> TokenLayout:
        """Read the layout from a transformers tokenizer; :class:`CheckpointError` if anything is missing or
        inconsistent (a marker that is not one token, a block that is not contiguous or smaller than its codebook).
        """
        vocab = tokenizer.get_vocab()
        markers = {}
        for attr, name in MARKERS.items():
            markers[attr] = _single_token_id(tokenizer, vocab, name)

        glm_format = next((f for f in GLM_TOKEN_FORMATS if f.format(0) in vocab), None)
        if glm_format is None:
            raise CheckpointError(
                "tokenizer has no GLM speech tokens: none of "
                + ", ".join(f.format(0) for f in GLM_TOKEN_FORMATS)
                + " is in its vocabulary"
            )
        blocks = {}
        for kind, fmt, needed in (
            ("glm", glm_format, glm_codebook_size),
            ("global", GLOBAL_TOKEN_FORMAT, global_codebook_size),
            ("semantic", SEMANTIC_TOKEN_FORMAT, semantic_codebook_size),
        ):
            blocks[kind] = _contiguous_block(tokenizer, vocab, fmt, needed)

        ranges = sorted((off, off + n, kind) for kind, (off, n) in blocks.items())
        for (_, end_a, kind_a), (start_b, _, kind_b) in zip(ranges[:-1], ranges[1:], strict=True):
            if start_b < end_a:
                raise CheckpointError(f"tokenizer's {kind_a} and {kind_b} token blocks overlap")
        for off, end, kind in ranges:
            if any(off <= i < end for i in markers.values()):
                raise CheckpointError(f"a control marker id falls inside the {kind} token block")

        added = frozenset(int(i) for i in tokenizer.added_tokens_decoder)
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = vocab.get("<|endoftext|>", markers["im_end"])
        return cls(
            **markers,
            glm_offset=blocks["glm"][0],
            glm_count=blocks["glm"][1],
            global_offset=blocks["global"][0],
            global_count=blocks["global"][1],
            semantic_offset=blocks["semantic"][0],
            semantic_count=blocks["semantic"][1],
            tokenizer_size=len(tokenizer),
            pad_id=int(pad_id),
            glm_token_format=glm_format,
            added_ids=added,
        )

    # ---- id classification -------------------------------------------------------------------------------------
    def is_glm(self, token_id: int) -> bool:
        return self.glm_offset <= token_id < self.glm_offset + self.glm_count

    def is_global(self, token_id: int) -> bool:
        return self.global_offset <= token_id < self.global_offset + self.global_count

    def is_semantic(self, token_id: int) -> bool:
        return self.semantic_offset <= token_id < self.semantic_offset + self.semantic_count

    def is_audio(self, token_id: int) -> bool:
        return self.is_glm(token_id) or self.is_global(token_id) or self.is_semantic(token_id)

    def is_text(self, token_id: int) -> bool:
        """An ordinary text token: in the tokenizer's vocabulary and not an added (special/control/audio) token."""
        return 0 <= token_id < self.tokenizer_size and token_id not in self.added_ids

    # ---- masks for constrained decoding ------------------------------------------------------------------------
    def text_mask(self, vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Boolean ``(vocab_size,)`` mask of ordinary text tokens (padding ids past the tokenizer are excluded)."""
        import torch  # here, not at the top: a job's driver reads task names and options without loading torch

        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[: min(self.tokenizer_size, vocab_size)] = True
        added = [i for i in self.added_ids if i < vocab_size]
        if added:
            mask[torch.tensor(added, dtype=torch.long)] = False
        return mask.to(device)

    def allowed_mask(self, task: str, vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Tokens a task may emit under constrained decoding, as a boolean ``(vocab_size,)`` mask.

        tts/vc: semantic tokens and ``<|im_end|>``. stt: text tokens, ``<|end_content|>`` and ``<|im_end|>``
        (the model was trained to end a transcript with ``<|end_content|><|im_end|>``).
        """
        import torch

        task = normalize_task(task)
        if task == "stt":
            mask = self.text_mask(vocab_size)
            stops = [self.end_content, self.im_end]
        else:
            mask = torch.zeros(vocab_size, dtype=torch.bool)
            mask[self.semantic_offset : self.semantic_offset + self.semantic_count] = True
            stops = [self.im_end]
        for token_id in stops:
            if token_id < vocab_size:
                mask[token_id] = True
        return mask.to(device)


def _single_token_id(tokenizer, vocab: dict[str, int], name: str) -> int:
    if name not in vocab:
        raise CheckpointError(f"tokenizer has no {name} token")
    token_id = int(vocab[name])
    encoded = tokenizer.encode(name, add_special_tokens=False)
    if encoded != [token_id]:
        raise CheckpointError(f"tokenizer does not encode {name} as the single token {token_id} (got {encoded})")
    return token_id


def _contiguous_block(tokenizer, vocab: dict[str, int], fmt: str, needed: int) -> tuple[int, int]:
    """(offset, count) of the tokens ``fmt.format(0)``, ``fmt.format(1)``, ... which must have consecutive ids."""
    offset = _single_token_id(tokenizer, vocab, fmt.format(0))
    count = 1
    while (name := fmt.format(count)) in vocab:
        if vocab[name] != offset + count:
            raise CheckpointError(
                f"tokenizer's {fmt.format('N')} tokens are not contiguous: {name} has id {vocab[name]}, "
                f"expected {offset + count}"
            )
        count += 1
    if count < needed:
        raise CheckpointError(
            f"tokenizer has {count} {fmt.format('N')} tokens but the audio codebook has {needed} codes"
        )
    last = fmt.format(count - 1)
    if tokenizer.encode(last, add_special_tokens=False) != [offset + count - 1]:
        raise CheckpointError(f"tokenizer does not encode {last} as a single token")
    return offset, count
