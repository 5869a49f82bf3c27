"""Reference speakers, encoded once per actor and reused across batches."""

from __future__ import annotations

from typing import Any

from jobs.io.schema import SAMPLE_RATE
from jobs.tasks.base import mark_error


class SpeakerCache:
    """Speakers (global tokens + embedding) per reference, computed once per actor and reused across batches:
    a TTS corpus typically has thousands of rows per reference voice. The references a call has not seen yet are
    encoded together, up to ``batch_size`` of them or ``batch_seconds`` of their audio at a time (a VC manifest
    may give every row a voice of its own; a reference is decoded whole, and may be long)."""

    def __init__(self, capacity: int = 4096, max_duration_s: float | None = None, max_bytes: int | None = None,
                 batch_size: int = 16, batch_seconds: float = 600.0):
        self.capacity = capacity
        # a reference is decoded whole: the same guards as the job's audio
        self.max_duration_s = max_duration_s
        self.max_bytes = max_bytes
        self.batch_size = batch_size
        self.batch_samples = int(batch_seconds * SAMPLE_RATE)
        self._cache: dict[str, Any] = {}

    def resolve(self, model, rows: list[dict], field: str = "ref_audio") -> list:
        """The speaker of each live row's reference (None and an error row when it cannot be had)."""
        failed: dict[str, Exception] = {}  # failures are remembered for this call only (they may be transient)
        found: dict[str, Any] = {}
        pending: dict[str, Any] = {}  # decoded references waiting to be encoded together
        for key in dict.fromkeys(row[field] for row in rows if row["status"] == "ok"):
            if key in self._cache:
                continue
            try:
                pending[key] = self._load(key)
            except Exception as exc:  # an outage is retried next run
                failed[key] = exc
                continue
            if len(pending) >= self.batch_size or sum(len(a) for a in pending.values()) >= self.batch_samples:
                self._encode(model, pending, found, failed)
        self._encode(model, pending, found, failed)
        out = []
        for row in rows:
            key = row[field] if row["status"] == "ok" else None
            if key in failed:
                mark_error(row, failed[key], prefix="reference audio: ")
            out.append(None if key is None or key in failed else found[key] if key in found else self._cache[key])
        self._cache.update(found)
        while len(self._cache) > self.capacity:  # oldest first
            self._cache.pop(next(iter(self._cache)))
        return out

    @staticmethod
    def _encode(model, pending: dict, found: dict, failed: dict) -> None:
        """Speakers of the ``pending`` references in one model call (a failing one alone errs), then empty it."""
        from gpa.inference import isolated

        keys = list(pending)
        speakers = isolated(lambda batch: model.speakers([(pending[k], SAMPLE_RATE) for k in batch]), keys, len(keys))
        for key, speaker in zip(keys, speakers, strict=True):
            (failed if isinstance(speaker, Exception) else found)[key] = speaker
        pending.clear()

    def _load(self, key: str):
        from gpa.audio import load_audio
        from gpa.errors import GPAError, UnreadableAudio

        try:
            return load_audio(key, max_duration_s=self.max_duration_s, max_bytes=self.max_bytes)
        except GPAError:
            raise
        except Exception as exc:
            raise UnreadableAudio(f"{type(exc).__name__}: {exc}") from exc
