"""Segments of one encoded recording (GPA's ``begin_time``/``end_time``), each decoding only what it needs."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import numpy as np
import soundfile as sf

from ..errors import EmptyAudio, InvalidSegment, NonFiniteAudio, TooLongAudio, UnreadableAudio
from .decoders import decode
from .ffmpeg import PacketTally, audio_stream, count_packets, pyav_blocks
from .libsndfile import exact_info, known_frames, soundfile_blocks
from .resample import SAMPLE_RATE, mono_chunks, to_mono


class EncodedAudio:
    """An encoded file held in memory, from which segments are decoded (the segments of one long recording).

    PCM and FLAC are sought: a segment costs its own length in memory, not the recording's (10 hours of 44.1 kHz
    stereo decode to ~12 GB). Seeking other formats is not sample-exact (MP3 or Vorbis decoders start cold, and a
    variable bit rate MP3 has no exact index): they are decoded from the start, mixed and resampled to 16 kHz as
    they decode, as far as a segment needs and keeping only from its start on. Segments asked for in time order
    (a job's order) decode the file once and hold one segment at a time; one that starts earlier than the last
    decodes from the start again.
    """

    def __init__(self, data: bytes, *, name: str = "<bytes>", sample_rate: int = SAMPLE_RATE):
        if not data:
            raise EmptyAudio(f"{name}: file is empty (0 bytes)")
        self.data, self.name, self.sample_rate = data, name, sample_rate
        info = exact_info(data)
        self.exact = info is not None  # libsndfile decodes it first (else FFmpeg)
        # a length of 0 may be a recorder that crashed before writing it: decoded (FFmpeg reads on)
        self.sought = self.exact and bool(known_frames(info))
        self._forward: _ForwardDecoder | None = None
        self._verified = False  # the whole file's packets were judged (by a pass of their own, or as it ended)
        self._failure: Exception | None = None  # unreadable or non-finite: the file's, every segment's

    def segment(self, start_s: float | None, end_s: float | None,
                max_duration_s: float | None = None) -> tuple[np.ndarray, int]:
        """``[start_s, end_s)`` seconds (``None`` or a negative ``end_s``: to the end) as ``(mono samples float32,
        sample_rate)``: the file's own rate where it is sought, else ``self.sample_rate``. Over ``max_duration_s`` it
        is refused: before decoding where sought, else as it decodes (held up to the limit, counted past it)."""
        if self.sought:
            with sf.SoundFile(io.BytesIO(self.data)) as f:
                rate = int(f.samplerate)
                first, last = _segment_frames(start_s, end_s, rate, f.frames)
                _check_segment(self.name, first, last, rate, max_duration_s)
                f.seek(first)
                samples = to_mono(f.read(last - first, dtype="float32", always_2d=True))
            return samples, rate
        if self._failure is not None:
            raise self._failure
        first, last = _segment_frames(start_s, end_s, self.sample_rate, None)
        forward = self._forward
        if forward is None or forward.spent or first < forward.start:
            self.close()  # its file objects go before the next ones open
            self._forward = forward = _ForwardDecoder(self.data, self.name, self.sample_rate, self.exact)
        try:
            samples = forward.cut(first, last, max_duration_s)
            if not self._verified and forward.chunks is not None and not forward.tally.passes():
                # stopped early, and what was read is mostly undecodable: judge by the whole file, as decode() does
                count_packets(self.data)
                self._verified = True
            self._verified = self._verified or forward.chunks is None  # read to its end: judged as it ended
        except (UnreadableAudio, NonFiniteAudio, EmptyAudio) as exc:  # the file's: every segment fails
            self._failure = type(exc)(exc if str(exc).startswith(self.name) else f"{self.name}: {exc}")
            self.close()
            raise self._failure from None
        _check_segment(self.name, 0, len(samples), self.sample_rate, None)
        return samples, self.sample_rate

    def close(self) -> None:
        """Let go of the decoder (its file objects and held samples) now rather than when collected."""
        if self._forward is not None:
            self._forward.close()
            self._forward = None


class _ForwardDecoder:
    """Decodes a file from its start as mono at ``rate``, as far as it is asked, holding samples from the last cut's
    start on. The decoder is chosen as :func:`decode` chooses it; if it fails or finds nothing, the whole file is
    decoded by :func:`decode` (which tries the other one) and held."""

    def __init__(self, data: bytes, name: str, rate: int, exact: bool):
        self.data, self.name, self.rate = data, name, rate
        self.start, self.decoded, self.held = 0, 0, np.zeros(0, np.float32)  # held: samples [start, decoded)
        self.tally = PacketTally()
        # (a function, not a method: a generator holding its decoder would keep both alive until a collection)
        self.chunks: Iterator[np.ndarray] | None = _forward_chunks(data, rate, exact, self.tally)  # None: ended
        self.whole = False  # held is the whole file, from decode()
        self.spent = False  # an over-long cut was counted, not held: the next cut starts again

    def cut(self, first: int, last: int | None, max_duration_s: float | None) -> np.ndarray:
        """Samples ``[first, last)`` (``last`` None: to the end), for ``first >= self.start``; those before ``first``
        are let go. Past ``max_duration_s`` a cut is counted (to report its length), not held."""
        limit = None if max_duration_s is None else int(max_duration_s * self.rate)
        pieces = [self.held[first - self.start:]]
        while self.chunks is not None and (last is None or self.decoded < last):
            try:
                chunk = next(self.chunks)
            except StopIteration:
                self.chunks = None
                break
            except NonFiniteAudio:
                self.close()
                raise
            except Exception:  # the other decoder may read it
                return self._whole(first, last, max_duration_s)
            skip = max(0, first - self.decoded)
            self.decoded += len(chunk)
            if limit is not None and (self.decoded if last is None else min(self.decoded, last)) - first > limit:
                self.spent = True
            elif skip < len(chunk):
                pieces.append(np.array(chunk[skip:]))  # a copy: decoders reuse their buffers
        if self.decoded == 0 and self.chunks is None and not self.whole:  # found nothing: the other decoder may
            return self._whole(first, last, max_duration_s)
        end = self.decoded if last is None else min(last, self.decoded)
        if self.spent or (limit is not None and end - first > limit):
            self.spent = True
            raise TooLongAudio.over_limit("the segment", max(0, end - first) / self.rate, max_duration_s)
        self.start = min(first, self.decoded)
        self.held = np.concatenate(pieces) if len(pieces) > 1 else np.array(pieces[0])
        return self.held[:max(0, end - self.start)]

    def _whole(self, first: int, last: int | None, max_duration_s: float | None) -> np.ndarray:
        self.close()
        self.held, _ = decode(self.data, name=self.name, sample_rate=self.rate)
        self.start, self.decoded, self.whole = 0, len(self.held), True
        return self.cut(first, last, max_duration_s)

    def close(self) -> None:
        if self.chunks is not None:
            self.chunks.close()  # closes the file objects it has open
            self.chunks = None


def _forward_chunks(data: bytes, rate: int, exact: bool, tally: PacketTally) -> Iterator[np.ndarray]:
    """The file as mono chunks at ``rate``, decoded as :func:`decode` would first try (libsndfile if ``exact``)."""
    if exact:
        with sf.SoundFile(io.BytesIO(data)) as f:
            yield from mono_chunks(soundfile_blocks(f), int(f.samplerate), rate)
        return
    with audio_stream(data) as (container, stream):
        yield from mono_chunks(pyav_blocks(container, stream, int(stream.rate), tally), int(stream.rate), rate)


def _segment_frames(start_s: float | None, end_s: float | None, rate: int,
                    frames: int | None) -> tuple[int, int | None]:
    """A segment's first and last frame, within ``frames`` when known (``last`` None: to the end, unknown)."""
    check_times(start_s, end_s)
    first = int(round(max(start_s or 0.0, 0.0) * rate))
    last = None if end_s is None or end_s < 0 else int(round(end_s * rate))
    if frames is not None:
        first, last = min(frames, first), frames if last is None else min(frames, last)
    return first, None if last is None else max(first, last)


def check_times(start_s: float | None, end_s: float | None) -> None:
    for what, value in (("start_s", start_s), ("end_s", end_s)):
        if value is None:
            continue
        try:
            finite = math.isfinite(value) and not isinstance(value, bool)
        except TypeError:
            finite = False
        if not finite:
            raise InvalidSegment(f"{what} must be a finite number of seconds, got {str(value)[:40]!r}")


def _check_segment(name: str, first: int, last: int, rate: int, max_duration_s: float | None) -> None:
    if last == first:
        raise EmptyAudio(f"{name}: no samples in the requested segment")
    if max_duration_s is not None and (last - first) / rate > max_duration_s:
        raise TooLongAudio.over_limit("the segment", (last - first) / rate, max_duration_s)
