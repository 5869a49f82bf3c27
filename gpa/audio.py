"""Audio input: decode any common format to 16 kHz mono float32, and encode results as FLAC.

libsndfile (soundfile) decodes PCM containers and FLAC, whose lengths it reads exactly; compressed formats (MP3,
Ogg Vorbis and Opus, AAC/M4A, video containers, ...) go through FFmpeg (PyAV), libsndfile being the fallback:
libsndfile stops at the length it estimates for an MP3 without a length header, for two MP3s joined and for
chained Ogg streams (a 20 s file came back as 4.3 s, without an error). Channels are mixed by their mean and the
rate is converted with soxr, the same for every model component (the reference used two different loaders for
its two tokenizers; see docs/fidelity.md).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from collections.abc import Iterable, Iterator
from typing import Union

import numpy as np
import soundfile as sf
import soxr

from .errors import EmptyAudio, InvalidSegment, NonFiniteAudio, StorageUnavailable, TooLongAudio, UnreadableAudio
from .storage import FileTooLarge, NotARegularFile, is_transient, read_bytes, redact_uri, scrub

SAMPLE_RATE = 16000
# the most bytes read for one audio input (a 10-hour 16 kHz 16-bit mono WAV is 1.15 GB): a stray huge file, or a
# device that never ends, is refused rather than read into memory
MAX_INPUT_BYTES = 2 * 2**30

AudioInput = Union[str, os.PathLike, bytes, tuple]  # noqa: UP007 (a runtime alias)
"""A path or URI, the encoded bytes of a file, or ``(samples, sample_rate)`` with samples shaped (n,) or (n, ch)."""

# formats whose length libsndfile reads from the header, exactly, and in which it seeks sample-exactly
EXACT_FORMATS = frozenset({"WAV", "WAVEX", "W64", "RF64", "AIFF", "AU", "CAF", "FLAC"})


def load_audio(
    src: AudioInput,
    *,
    sample_rate: int = SAMPLE_RATE,
    start_s: float | None = None,
    end_s: float | None = None,
    max_duration_s: float | None = None,
    max_bytes: int | None = MAX_INPUT_BYTES,
) -> np.ndarray:
    """Decode ``src`` to a 1-D float32 array at ``sample_rate``, optionally cut to ``[start_s, end_s)`` seconds.

    ``max_duration_s`` refuses longer audio with :class:`TooLongAudio` (its ``duration_s`` says how long): a
    whole WAV or FLAC file before it is decoded, by its header (a 10-hour stereo WAV decodes to ~12 GB of floats),
    other formats as they decode (what is past the limit is counted, not kept), a segment once cut. Raises
    :class:`UnreadableAudio`, :class:`EmptyAudio` or :class:`NonFiniteAudio` too (all with a ``kind``), and
    :class:`InvalidSegment` for a start or end that is not a finite number. A path or URI is read only up to
    ``max_bytes`` and only when it is a regular file (:func:`read_audio_file`).
    """
    _check_times(start_s, end_s)
    name = "audio"
    if isinstance(src, tuple):
        if len(src) != 2:
            raise UnreadableAudio("an audio tuple must be (samples, sample_rate)")
        samples, source_rate = np.asarray(src[0]), int(src[1])
        if samples.ndim == 2 and samples.shape[0] < samples.shape[1] and samples.shape[0] <= 8:
            samples = samples.T  # accept (channels, n) as torch/torchaudio users pass it
    else:
        data, name = _read(src, max_bytes)
        if start_s is not None or end_s is not None:  # sought, or decoded only as far as it ends
            samples, source_rate = EncodedAudio(data, name=name, sample_rate=sample_rate).segment(
                start_s, end_s, max_duration_s)
            start_s = end_s = None  # cut
        else:
            if max_duration_s is not None:
                declared = header_duration(data)
                if declared is not None and declared > max_duration_s + 1.0:  # headers may round: refuse clear ones
                    raise TooLongAudio.over_limit("audio (by its header)", declared, max_duration_s)
            # resampled as it decodes: the same samples as resampling it at once, in less memory
            samples, source_rate = decode(data, name=name, sample_rate=sample_rate, max_duration_s=max_duration_s)
    if source_rate <= 0:
        raise UnreadableAudio(f"invalid sample rate {source_rate}")
    samples = to_mono(samples)
    if start_s is not None or end_s is not None:  # an array given with a segment
        first = int(round(max(start_s or 0.0, 0.0) * source_rate))
        last = None if end_s is None or end_s < 0 else int(round(end_s * source_rate))
        samples = samples[first:last]
    if samples.size == 0:
        raise EmptyAudio(f"{name}: no samples" + (" in the requested segment" if start_s or end_s else ""))
    if not np.isfinite(samples).all():
        raise NonFiniteAudio(f"{name}: NaN or infinite samples")
    if max_duration_s is not None and samples.size / source_rate > max_duration_s:
        raise TooLongAudio.over_limit("the segment" if start_s or end_s else "audio", samples.size / source_rate,
                                      max_duration_s)
    if source_rate != sample_rate:
        samples = soxr.resample(samples, source_rate, sample_rate, quality="VHQ")  # as the reference BiCodec path
    return np.ascontiguousarray(samples, dtype=np.float32)


def to_mono(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.dtype.kind in "iu":  # integer PCM given as an array: scale to [-1, 1)
        samples = samples.astype(np.float64) / float(np.iinfo(samples.dtype).max + 1)
    samples = samples.astype(np.float32, copy=False)
    if samples.ndim == 2 and samples.shape[1] == 1:
        samples = samples[:, 0]  # mono as (n, 1): no float64 copy of the whole file (2 h at 8 kHz: 460 MB)
    elif samples.ndim == 2:
        # the mean, channel by channel (along a packed block's short rows numpy's mean is ~4x slower)
        mono = samples[:, 0].astype(np.float64)
        for channel in range(1, samples.shape[1]):
            mono += samples[:, channel]
        samples = (mono / samples.shape[1]).astype(np.float32)
    elif samples.ndim != 1:
        raise UnreadableAudio(f"audio array must be 1-D or 2-D, got shape {samples.shape}")
    return samples


def decode(data: bytes, *, name: str = "<bytes>", sample_rate: int | None = None,
           max_duration_s: float | None = None) -> tuple[np.ndarray, int]:
    """Decode encoded audio bytes to ``(mono samples float32, sample_rate)``: at the file's own rate, or resampled
    to ``sample_rate``. Longer than ``max_duration_s``: :class:`TooLongAudio` (the rest is counted, not kept).

    Blocks are mixed to mono (and resampled) as they are decoded, so a long multi-channel file never exists whole:
    30 minutes of 44.1 kHz stereo took 1.5–2.2 GB to decode at once, against its 110 MB at 16 kHz
    (``benchmarks/audio_decode.py``).
    """
    if not data:
        raise EmptyAudio(f"{name}: file is empty (0 bytes)")
    exact = _exact_info(data) is not None
    decoders = (_decode_with_soundfile, _decode_with_pyav) if exact else (_decode_with_pyav, _decode_with_soundfile)
    errors: list[Exception] = []
    empty = None
    for decoder in decoders:
        try:
            decoded = decoder(data, sample_rate, max_duration_s)
        except TooLongAudio:
            raise
        except NonFiniteAudio as exc:
            raise NonFiniteAudio(f"{name}: {exc}") from None
        except Exception as exc:  # the other decoder may read it
            errors.append(exc)
            continue
        if decoded[0].size:
            return decoded
        empty = empty or decoded  # a WAV whose data size reads 0 (a recorder that crashed): FFmpeg reads on
    if empty is not None:
        return empty
    if any(isinstance(e, EmptyAudio) for e in errors):
        raise EmptyAudio(f"{name}: {next(e for e in errors if isinstance(e, EmptyAudio))}")
    raise UnreadableAudio(f"{name}: not decodable audio ({'; '.join(_short(e) for e in errors)})")


_BLOCK_FRAMES = 1 << 16


def _mix(blocks: Iterable[np.ndarray], rate: int, sample_rate: int | None, frames: int | None = None,
         max_duration_s: float | None = None) -> tuple[np.ndarray, int]:
    """Concatenate ``(frames, channels)`` blocks as mono, resampled block by block when ``sample_rate`` differs
    (soxr's stream gives the same samples as one call over the whole signal). ``frames``, the decoder's count or an
    estimate on the high side, lets the result be filled in place and the buffer shrunk to it, instead of
    concatenated from pieces (half the peak memory). Past ``max_duration_s`` blocks are only counted."""
    if rate <= 0:
        raise UnreadableAudio(f"invalid sample rate {rate}")
    out_rate = sample_rate or rate
    expected = frames or 0
    if max_duration_s is not None:
        expected = min(expected, int(max_duration_s * rate) + rate)
    if out_rate != rate:
        expected = (expected * out_rate * 2 + rate) // (2 * rate)  # soxr's length, rounded half up
    out, filled, overflow, decoded = np.empty(expected, np.float32), 0, [], 0

    def within_limit() -> Iterator[np.ndarray]:
        nonlocal decoded
        for block in blocks:
            decoded += len(block)
            if max_duration_s is None or decoded / rate <= max_duration_s:
                yield block  # too long: counted to the end (the row reports how long), never held or mixed

    for chunk in _mono_chunks(within_limit(), rate, out_rate):
        if not overflow and filled + len(chunk) <= len(out):
            out[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
        else:  # more than expected: collect the rest (a copy: decoders reuse their buffers)
            overflow.append(np.array(chunk))
    if max_duration_s is not None and decoded / rate > max_duration_s:
        raise TooLongAudio.over_limit("audio", decoded / rate, max_duration_s)
    if overflow:
        return np.concatenate([out[:filled], *overflow]), out_rate
    out.resize(filled, refcheck=False)  # in place (the buffer is ours alone): an estimate's spare end is freed
    return out, out_rate


def _mono_chunks(blocks: Iterable[np.ndarray], rate: int, sample_rate: int) -> Iterator[np.ndarray]:
    """``(frames, channels)`` blocks at ``rate`` as mono float32 chunks at ``sample_rate`` (one soxr stream: the
    same samples as resampling the whole signal at once). A chunk may be a decoder's buffer: copy to keep it."""
    if rate <= 0:
        raise UnreadableAudio(f"invalid sample rate {rate}")
    stream = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality="VHQ") if sample_rate != rate else None
    for block in blocks:
        mono = to_mono(block)
        if not np.isfinite(mono).all():  # before resampling, which would spread it (and empty a 1-sample file)
            raise NonFiniteAudio("NaN or infinite samples")
        yield stream.resample_chunk(np.ascontiguousarray(mono)) if stream else mono
    if stream:
        yield stream.resample_chunk(np.zeros(0, np.float32), last=True)


def _decode_with_soundfile(data: bytes, sample_rate: int | None,
                           max_duration_s: float | None = None) -> tuple[np.ndarray, int]:
    with sf.SoundFile(io.BytesIO(data)) as f:
        return _mix(_soundfile_blocks(f), int(f.samplerate), sample_rate, frames=_known_frames(f),
                    max_duration_s=max_duration_s)


def _known_frames(info) -> int | None:
    """libsndfile's frame count, unless it is its "unknown" (2**63 - 1: a FLAC written to a pipe says 0 samples)."""
    return info.frames if 0 <= info.frames < 2**62 else None


def _soundfile_blocks(f: sf.SoundFile) -> Iterator[np.ndarray]:
    """The file's frames in blocks, the same samples as one ``sf.read``: from the start (it seeks there too, and
    libsndfile's MP3 decoder gives samples ~1e-7 apart without that seek), and with soundfile's own seek after each
    read turned off: that seek goes to where soundfile thinks the read ended, which libsndfile's MP3 seeking and a
    damaged Vorbis stream miss (block reads of an MP3 were off by up to 0.6)."""
    f.seek(0)
    f.seekable = lambda: False  # soundfile's read() checks this before its seek
    left = f.frames  # (its "unknown" too: the reads stop at the end)
    while left > 0:
        block = f.read(min(_BLOCK_FRAMES, left), dtype="float32", always_2d=True)
        if not len(block):
            return
        left -= len(block)
        yield block


def _decode_with_pyav(data: bytes, sample_rate: int | None,
                      max_duration_s: float | None = None) -> tuple[np.ndarray, int]:
    with _audio_stream(data) as (container, stream):
        seconds = _pyav_duration(container)
        # the declared length, with room for codec priming and rounding (a wild one is not trusted: no estimate)
        estimate = int(seconds * 1.01 * stream.rate) + stream.rate if seconds and seconds < 24 * 3600 else None
        samples, rate = _mix(_pyav_blocks(container, stream, int(stream.rate)), int(stream.rate), sample_rate,
                             frames=estimate, max_duration_s=max_duration_s)
    if samples.size == 0:
        raise EmptyAudio("audio stream has no samples")
    return samples, rate


class _PacketTally:
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
                                  f"({_short(self.first_error)})")


def _pyav_blocks(container, stream, rate: int, tally: _PacketTally | None = None) -> Iterator[np.ndarray]:
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
    tally = _PacketTally() if tally is None else tally

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
        info = _exact_info(data)
        self.exact = info is not None  # libsndfile decodes it first (else FFmpeg)
        # a length of 0 may be a recorder that crashed before writing it: decoded (FFmpeg reads on)
        self.sought = self.exact and bool(_known_frames(info))
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
                _count_packets(self.data)
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
        self.tally = _PacketTally()
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


def _forward_chunks(data: bytes, rate: int, exact: bool, tally: _PacketTally) -> Iterator[np.ndarray]:
    """The file as mono chunks at ``rate``, decoded as :func:`decode` would first try (libsndfile if ``exact``)."""
    if exact:
        with sf.SoundFile(io.BytesIO(data)) as f:
            yield from _mono_chunks(_soundfile_blocks(f), int(f.samplerate), rate)
        return
    with _audio_stream(data) as (container, stream):
        yield from _mono_chunks(_pyav_blocks(container, stream, int(stream.rate), tally), int(stream.rate), rate)


def _count_packets(data: bytes) -> None:
    """Decode every packet of a file FFmpeg reads, keeping nothing: :class:`UnreadableAudio` if more than 2/3 do
    not decode (the verdict :func:`decode` reaches)."""
    with _audio_stream(data) as (container, stream):
        for _ in _pyav_blocks(container, stream, int(stream.rate)):
            pass


def _segment_frames(start_s: float | None, end_s: float | None, rate: int,
                    frames: int | None) -> tuple[int, int | None]:
    """A segment's first and last frame, within ``frames`` when known (``last`` None: to the end, unknown)."""
    _check_times(start_s, end_s)
    first = int(round(max(start_s or 0.0, 0.0) * rate))
    last = None if end_s is None or end_s < 0 else int(round(end_s * rate))
    if frames is not None:
        first, last = min(frames, first), frames if last is None else min(frames, last)
    return first, None if last is None else max(first, last)


def _check_times(start_s: float | None, end_s: float | None) -> None:
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


def header_duration(data: bytes) -> float | None:
    """The duration in seconds that a WAV or FLAC file's header declares, without decoding it (None for other
    formats: the length FFmpeg gives an MP3 or AAC stream without an index is an estimate from its first bit rate,
    and one 405 s file was declared 3862 s long; those are measured as they decode).

    Lets a caller refuse an over-long file before decoding it: a 10-hour stereo WAV decodes to ~12 GB of floats.
    """
    info = _exact_info(data)
    if info is not None and _known_frames(info) and info.samplerate > 0:
        return info.frames / info.samplerate
    return None


def _exact_info(data: bytes):
    """libsndfile's header of a file in one of the ``EXACT_FORMATS``, else None."""
    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # not a libsndfile format
        return None
    return info if info.format in EXACT_FORMATS else None


@contextlib.contextmanager
def _audio_stream(data: bytes):
    """``(container, its first audio stream)`` of a file FFmpeg opens; :class:`UnreadableAudio` without one."""
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.audio:
            raise UnreadableAudio("no audio stream")
        yield container, container.streams.audio[0]


def _pyav_duration(container) -> float | None:
    """The seconds a PyAV container declares for its first audio stream (or as a whole), if it does."""
    import av

    if container.streams.audio:
        stream = container.streams.audio[0]
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def read_audio_file(uri: str | os.PathLike, max_bytes: int | None = MAX_INPUT_BYTES) -> bytes:
    """The bytes of an audio file (local path or URI), at most ``max_bytes`` of them. Raises
    :class:`UnreadableAudio` when it cannot be read (missing, a directory, a FIFO, device or socket, larger than
    ``max_bytes``, forbidden, an invalid name) and :class:`StorageUnavailable`, its transient subclass, when its
    store cannot be reached: a batch job retries those rows on its next run."""
    name = redact_uri(os.fspath(uri))
    try:
        return read_bytes(uri, max_bytes)
    except FileTooLarge:
        raise UnreadableAudio(f"{name}: larger than the input size limit ({max_bytes} bytes)") from None
    except NotARegularFile as exc:  # never opened for reading: a FIFO would block, a device never end
        raise UnreadableAudio(f"{name}: {exc.strerror}") from None
    except Exception as exc:
        if is_transient(exc):  # first: an unreachable HTTP server is reported as "not found" (see is_transient)
            raise StorageUnavailable(f"{name}: storage unavailable ({type(exc).__name__}); try again later") from None
        if isinstance(exc, FileNotFoundError):
            raise UnreadableAudio(f"{name}: file not found") from None
        if isinstance(exc, (IsADirectoryError, NotADirectoryError)):
            raise UnreadableAudio(f"{name}: is a directory") from None
        if isinstance(exc, PermissionError):
            raise UnreadableAudio(f"{name}: permission denied") from None
        raise UnreadableAudio(f"{name}: cannot read ({type(exc).__name__}: {scrub(str(exc), 200)})") from None


def _read(src, max_bytes: int | None) -> tuple[bytes, str]:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src), "<bytes>"
    if isinstance(src, (str, os.PathLike)):
        return read_audio_file(src, max_bytes), redact_uri(os.fspath(src))
    raise UnreadableAudio(f"unsupported audio input of type {type(src).__name__}")


def _short(exc: Exception, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # drop object reprs and errno prefixes that say nothing to a user
    text = re.sub(r"Error opening <[^>]*>: |\[Errno -?\d+\] |: '<none>'|: '\w+\(\)'", "", text)
    return text[:limit]


def encode_flac(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit FLAC bytes of a mono float waveform (clipped to [-1, 1])."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0), sample_rate, format="FLAC",
             subtype="PCM_16")
    return buffer.getvalue()
