"""Decoding with FFmpeg (PyAV): compressed formats (MP3, Ogg Vorbis and Opus, AAC/M4A, video containers, ...),
packet by packet, skipping packets that do not decode as the ``ffmpeg`` tool does."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator

import numpy as np

from ..errors import EmptyAudio, UnreadableAudio
from .resample import mix_blocks


def decode_with_pyav(data: bytes, sample_rate: int | None,
                      max_duration_s: float | None = None) -> tuple[np.ndarray, int]:
    with audio_stream(data) as (container, stream):
        seconds = pyav_duration(container)
        # the declared length, with room for codec priming and rounding (a wild one is not trusted: no estimate)
        estimate = int(seconds * 1.01 * stream.rate) + stream.rate if seconds and seconds < 24 * 3600 else None
        samples, rate = mix_blocks(pyav_blocks(container, stream, int(stream.rate)), int(stream.rate), sample_rate,
                             frames=estimate, max_duration_s=max_duration_s)
    if samples.size == 0:
        raise EmptyAudio("audio stream has no samples")
    return samples, rate


class PacketTally:
    """Packets demuxed and packets that did not decode, so far: over 2/3 undecodable, it is not audio (the limit of
    the ``ffmpeg`` tool)."""

    def __init__(self):
        self.packets, self.failed, self.first_error = 0, 0, None

    def fail(self, exc: Exception) -> None:
        self.first_error, self.failed = self.first_error or exc, self.failed + 1

    def passes(self) -> bool:
        return self.failed <= 2 / 3 * self.packets

    def check(self, decoded_any: bool) -> None:
        if self.failed and (not decoded_any or not self.passes()):
            raise UnreadableAudio(f"{self.failed} of {self.packets} packets do not decode "
                                  f"({short_reason(self.first_error)})")


def pyav_blocks(container, stream, rate: int, tally: PacketTally | None = None) -> Iterator[np.ndarray]:
    """The stream's frames as ``(frames, channels)`` float32 at ``rate``.

    A frame whose format, channels or rate differ from the last one's gets a converter of its own (FFmpeg's
    resampler brings a changed rate to ``rate``): an AAC stream can change its rate midway, and one converter
    passed the new rate's samples on as the old (sped up). A packet that does not decode is skipped, as the
    ``ffmpeg`` tool does (a damaged frame, the header of a second MP3 joined to the first), unless most of them do
    not (its default limit, 2/3: then it is not audio); data that cannot be read after decodable audio ends it
    (junk appended, a cut file).
    """
    import av

    converter, source, channels = None, None, 0
    tally = PacketTally() if tally is None else tally

    def convert(frames) -> Iterator[np.ndarray]:
        nonlocal converter, source, channels
        for frame in frames:
            kind = (frame.format.name, frame.layout.name, frame.sample_rate)
            if kind != source:
                if converter is not None:
                    yield from _arrays(converter.resample(None), channels)
                channels = len(frame.layout.channels)
                planar = channels <= _MAX_PLANES  # as most decoders give it: no conversion
                converter = av.AudioResampler(format="fltp" if planar else "flt", layout=frame.layout, rate=rate)
                source = kind
            yield from _arrays(converter.resample(frame), channels)

    demuxed = container.demux(stream)
    while True:
        try:
            packet = next(demuxed)
        except StopIteration:
            break
        except av.error.InvalidDataError:  # junk after the audio, a cut file: what decoded is kept
            if converter is None:
                raise
            with contextlib.suppress(av.error.FFmpegError):
                yield from convert(stream.codec_context.decode(None))  # what the decoder still holds
            break
        tally.packets += packet.size > 0
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:  # invalid data, or a decoder that refuses what garbage left it in
            tally.fail(exc)
            continue
        yield from convert(frames)
    tally.check(decoded_any=converter is not None)
    if converter is not None:
        yield from _arrays(converter.resample(None), channels)


# PyAV counts a planar frame's planes by reading its 8 data pointers up to a NULL: past them from 8 channels on
# (a 7.1 frame read 9 planes; a garbage AAC frame "of 38 channels" crashed the process). Wider frames go packed.
_MAX_PLANES = 7


def _arrays(frames, channels: int) -> Iterator[np.ndarray]:
    """float32 frames (planar up to ``_MAX_PLANES`` channels, else packed) as ``(frames, channels)`` arrays."""
    for frame in frames:
        samples = frame.to_ndarray()
        yield samples.T if channels <= _MAX_PLANES else samples.reshape(-1, channels)


def count_packets(data: bytes) -> None:
    """Decode every packet of a file FFmpeg reads, keeping nothing: :class:`UnreadableAudio` if more than 2/3 do
    not decode (the verdict :func:`decode` reaches)."""
    with audio_stream(data) as (container, stream):
        for _ in pyav_blocks(container, stream, int(stream.rate)):
            pass


@contextlib.contextmanager
def audio_stream(data: bytes):
    """``(container, its first audio stream)`` of a file FFmpeg opens; :class:`UnreadableAudio` without one."""
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.audio:
            raise UnreadableAudio("no audio stream")
        yield container, container.streams.audio[0]


def pyav_duration(container) -> float | None:
    """The seconds a PyAV container declares for its first audio stream (or as a whole), if it does."""
    import av

    if container.streams.audio:
        stream = container.streams.audio[0]
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def short_reason(exc: Exception, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # drop object reprs and errno prefixes that say nothing to a user
    text = re.sub(r"Error opening <[^>]*>: |\[Errno -?\d+\] |: '<none>'|: '\w+\(\)'", "", text)
    return text[:limit]
