"""Audio input of any kind (a path or URI, encoded bytes, or samples) as 16 kHz mono float32: ``load_audio``, and
bounded reads of audio files."""

from __future__ import annotations

import os
from typing import Union

import numpy as np
import soxr

from ..errors import EmptyAudio, NonFiniteAudio, StorageUnavailable, TooLongAudio, UnreadableAudio
from ..storage import FileTooLarge, NotARegularFile, is_transient, read_bytes, redact_uri, scrub
from .decoders import decode
from .libsndfile import header_duration
from .resample import SAMPLE_RATE, to_mono
from .segments import EncodedAudio, check_times

# the most bytes read for one audio input (a 10-hour 16 kHz 16-bit mono WAV is 1.15 GB): a stray huge file, or a
# device that never ends, is refused rather than read into memory
MAX_INPUT_BYTES = 2 * 2**30

AudioInput = Union[str, os.PathLike, bytes, tuple]  # noqa: UP007 (a runtime alias)
"""A path or URI, the encoded bytes of a file, or ``(samples, sample_rate)`` with samples shaped (n,) or (n, ch)."""


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
    check_times(start_s, end_s)
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
