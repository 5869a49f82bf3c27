"""Encoded bytes to samples: which decoder reads a file first, and falling back to the other.

libsndfile decodes PCM containers and FLAC, whose lengths it reads exactly; compressed formats go through FFmpeg,
libsndfile being the fallback: libsndfile stops at the length it estimates for an MP3 without a length header, for
two MP3s joined and for chained Ogg streams (a 20 s file came back as 4.3 s, without an error).
"""

from __future__ import annotations

import numpy as np

from ..errors import EmptyAudio, NonFiniteAudio, TooLongAudio, UnreadableAudio
from .ffmpeg import decode_with_pyav, short_reason
from .libsndfile import decode_with_soundfile, exact_info


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
    exact = exact_info(data) is not None
    decoders = (decode_with_soundfile, decode_with_pyav) if exact else (decode_with_pyav, decode_with_soundfile)
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
    raise UnreadableAudio(f"{name}: not decodable audio ({'; '.join(short_reason(e) for e in errors)})")
