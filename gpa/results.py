"""What the GPA batch methods return: one result per input item, carrying its error instead of raising."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import GPAError


@dataclass
class Speaker:
    """A voice: its 32 BiCodec global tokens (what the LLM is prompted with) and its speaker embedding."""

    global_tokens: np.ndarray
    embedding: np.ndarray


@dataclass
class SpeechTokens:
    """What transcription's tokenize stage makes of one window of speech: the two token streams of its prompt."""

    glm: np.ndarray  # GLM-4-Voice tokens, 12.5 per second
    semantic: np.ndarray  # BiCodec semantic tokens, 50 per second


@dataclass
class Segment:
    start: float
    end: float
    text: str


@dataclass
class _Result:
    error: GPAError | None = None
    truncated: bool = False  # some generation stopped at max_new_tokens before <|im_end|>

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Transcription(_Result):
    text: str = ""
    segments: list[Segment] = field(default_factory=list)
    glm_tokens: list[int] = field(default_factory=list)
    semantic_tokens: list[int] = field(default_factory=list)
    generated_ids: list[int] = field(default_factory=list)
    duration_s: float = 0.0


@dataclass
class Synthesis(_Result):
    text: str = ""
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    sample_rate: int = 16000
    global_tokens: list[int] = field(default_factory=list)
    semantic_tokens: list[int] = field(default_factory=list)
    generated_ids: list[int] = field(default_factory=list)
    chunks: int = 0


@dataclass
class Conversion(_Result):
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    sample_rate: int = 16000
    global_tokens: list[int] = field(default_factory=list)
    source_semantic_tokens: list[int] = field(default_factory=list)
    semantic_tokens: list[int] = field(default_factory=list)
    generated_ids: list[int] = field(default_factory=list)
    chunks: int = 0
