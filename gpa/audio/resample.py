"""Decoded blocks as mono float32 at the model's rate: channels mixed by their mean, the rate converted by one soxr
stream (the same samples as resampling the whole signal at once), block by block so that a long multi-channel file
never exists whole."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import soxr

from ..errors import NonFiniteAudio, TooLongAudio, UnreadableAudio

SAMPLE_RATE = 16000


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


def mix_blocks(blocks: Iterable[np.ndarray], rate: int, sample_rate: int | None, frames: int | None = None,
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

    for chunk in mono_chunks(within_limit(), rate, out_rate):
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


def mono_chunks(blocks: Iterable[np.ndarray], rate: int, sample_rate: int) -> Iterator[np.ndarray]:
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
