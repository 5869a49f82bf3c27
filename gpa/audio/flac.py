"""Encoding results as FLAC."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from .resample import SAMPLE_RATE


def encode_flac(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit FLAC bytes of a mono float waveform (clipped to [-1, 1])."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0), sample_rate, format="FLAC",
             subtype="PCM_16")
    return buffer.getvalue()
