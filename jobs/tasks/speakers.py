"""Reference speakers, encoded once per actor and reused across batches."""

from __future__ import annotations

from typing import Any

from jobs.io.schema import SAMPLE_RATE
from jobs.tasks.base import mark_error


class SpeakerCache:
    """Speakers (global tokens + embedding) per reference, computed once per actor and reused across batches:
    a TTS corpus typically has thousands of rows per reference voice."""

    def __init__(self, capacity: int = 4096, max_duration_s: float | None = None, max_bytes: int | None = None):
        self.capacity = capacity
        # a reference is decoded whole: the same guards as the job's audio
        self.max_duration_s = max_duration_s
        self.max_bytes = max_bytes
        self._cache: dict[str, Any] = {}

    def resolve(self, model, rows: list[dict], field: str = "ref_audio") -> list:
        """The speaker of each live row's reference (None and an error row when it cannot be had)."""
        from gpa.audio import load_audio
        from gpa.errors import GPAError, UnreadableAudio

        failed: dict[str, Exception] = {}  # failures are remembered for this call only (they may be transient)
        speakers = []
        for row in rows:
            if row["status"] != "ok":
                speakers.append(None)
                continue
            key = row[field]
            if key not in self._cache and key not in failed:
                try:
                    # an outage is retried next run
                    samples = load_audio(key, max_duration_s=self.max_duration_s, max_bytes=self.max_bytes)
                    self._cache[key] = model.speaker((samples, SAMPLE_RATE))
                except GPAError as exc:
                    failed[key] = exc
                except Exception as exc:
                    failed[key] = UnreadableAudio(f"{type(exc).__name__}: {exc}")
                if len(self._cache) > self.capacity:
                    self._cache.pop(next(iter(self._cache)))
            if key in failed:
                mark_error(row, failed[key], prefix="reference audio: ")
                speakers.append(None)
            else:
                speakers.append(self._cache[key])
        return speakers
