"""Typed errors. Each carries a stable ``kind`` that batch jobs write into error rows."""

from __future__ import annotations


class GPAError(Exception):
    """Base class of every error raised by :mod:`gpa`."""

    kind = "model_error"


class AudioError(GPAError):
    kind = "audio_error"


class UnreadableAudio(AudioError):
    """The bytes could not be fetched or decoded as audio."""

    kind = "unreadable_audio"


class StorageUnavailable(UnreadableAudio):
    """The store holding the audio could not be reached (refused or reset connection, timeout, 5xx, throttling)
    even after the client's own retries. Transient: the same read may succeed later."""

    kind = "storage_unavailable"


class EmptyAudio(AudioError):
    """The audio decoded to zero samples."""

    kind = "empty_audio"


class NonFiniteAudio(AudioError):
    """The audio contains NaN or infinite samples."""

    kind = "non_finite_audio"


class TooShortAudio(AudioError):
    """The audio is shorter than the model can tokenize."""

    kind = "too_short_audio"


class TooLongAudio(AudioError, ValueError):
    """The audio is longer than a model component accepts in one pass (the caller must chunk it), or longer than
    the caller allows (``load_audio(max_duration_s=)``)."""

    kind = "too_long_audio"

    def __init__(self, message: str, duration_s: float | None = None):
        super().__init__(message)
        self.duration_s = duration_s  # how long it is, when known

    @classmethod
    def over_limit(cls, what: str, seconds: float, limit_s: float) -> TooLongAudio:
        return cls(f"{what} is {seconds:.1f} s; the limit is {limit_s:g} s", duration_s=seconds)


class InvalidSegment(AudioError, ValueError):
    """A segment's start or end is not a finite number of seconds (NaN, infinite, not a number)."""

    kind = "invalid_segment"


class InvalidText(GPAError):
    """Text input is empty or cannot be tokenized."""

    kind = "invalid_text"


class EmptyGeneration(GPAError):
    """The model produced no usable tokens (e.g. no semantic tokens for TTS)."""

    kind = "empty_generation"


class CheckpointError(GPAError):
    """A checkpoint is missing, incomplete, unsafe or does not match the model."""

    kind = "checkpoint_error"
