"""Decoding with libsndfile (soundfile): PCM containers and FLAC, whose lengths it reads exactly from the header and
in which it seeks sample-exactly."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import soundfile as sf

from .resample import mix_blocks

# formats whose length libsndfile reads from the header, exactly, and in which it seeks sample-exactly
EXACT_FORMATS = frozenset({"WAV", "WAVEX", "W64", "RF64", "AIFF", "AU", "CAF", "FLAC"})
_BLOCK_FRAMES = 1 << 16


def decode_with_soundfile(data: bytes, sample_rate: int | None,
                           max_duration_s: float | None = None) -> tuple[np.ndarray, int]:
    with sf.SoundFile(io.BytesIO(data)) as f:
        return mix_blocks(soundfile_blocks(f), int(f.samplerate), sample_rate, frames=known_frames(f),
                    max_duration_s=max_duration_s)


def known_frames(info) -> int | None:
    """libsndfile's frame count, unless it is its "unknown" (2**63 - 1: a FLAC written to a pipe says 0 samples)."""
    return info.frames if 0 <= info.frames < 2**62 else None


def soundfile_blocks(f: sf.SoundFile) -> Iterator[np.ndarray]:
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


def header_duration(data: bytes) -> float | None:
    """The duration in seconds that a WAV or FLAC file's header declares, without decoding it (None for other
    formats: the length FFmpeg gives an MP3 or AAC stream without an index is an estimate from its first bit rate,
    and one 405 s file was declared 3862 s long; those are measured as they decode).

    Lets a caller refuse an over-long file before decoding it: a 10-hour stereo WAV decodes to ~12 GB of floats.
    """
    info = exact_info(data)
    if info is not None and known_frames(info) and info.samplerate > 0:
        return info.frames / info.samplerate
    return None


def exact_info(data: bytes):
    """libsndfile's header of a file in one of the ``EXACT_FORMATS``, else None."""
    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # not a libsndfile format
        return None
    return info if info.format in EXACT_FORMATS else None
