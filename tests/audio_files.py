"""Audio files that soundfile cannot write, for the tests: AAC in MP4 (M4A) or ADTS, and a scrambled M4A."""

from __future__ import annotations

import io

import av
import numpy as np


def aac_bytes(samples: np.ndarray, rate: int, container_format: str = "mp4") -> bytes:
    """AAC (a codec libsndfile cannot read) of ``(n,)`` or ``(n, channels)`` samples, in MP4 (M4A) or as a raw
    ADTS stream (no index: FFmpeg can only estimate its length)."""
    samples = samples[:, None] if samples.ndim == 1 else samples
    layout = "stereo" if samples.shape[1] == 2 else "mono"
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        stream = container.add_stream("aac", rate=rate, layout=layout)
        for i in range(0, len(samples), rate):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[i:i + rate].T), format="fltp",
                                               layout=layout)
            frame.rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def scrambled_m4a(seconds: float = 30.0, seed: int = 0) -> bytes:
    """An M4A of a stereo tone whose audio data after its first packets is random bytes, its index intact. Fed
    this, FFmpeg's AAC decoder gives frames "of 30 channels", whose planes PyAV 18.1 miscounts: reading them as
    planes crashed the process."""
    rate = 44100
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    m4a = aac_bytes(np.stack([wave, wave], axis=1), rate)
    kept, index_at = m4a.index(b"mdat") + 2_000, m4a.index(b"moov") - 4
    noise = np.random.default_rng(seed).integers(0, 256, index_at - kept, dtype=np.uint8).tobytes()
    return m4a[:kept] + noise + m4a[index_at:]
