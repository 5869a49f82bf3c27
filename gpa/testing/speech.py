"""Deterministic speech-like test signals (for batching, agreement and throughput tests of the encoders)."""

from __future__ import annotations

import numpy as np


def speech_like(num_samples: int, seed: int, sample_rate: int = 16000) -> np.ndarray:
    """A deterministic speech-like float32 waveform: voiced syllables (a harmonic source with a wandering pitch and
    vowel-like spectral tilt) at about 4 per second, noisy "fricative" bursts and short pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / sample_rate
    f0 = rng.uniform(90, 240) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.3, 1.2) * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    tilt = rng.uniform(0.6, 1.4)
    voiced = sum(np.sin(k * phase + rng.uniform(0, 6)) / k**tilt for k in range(1, 16))
    syllables = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)), 0, None) ** 0.7
    fricative = rng.standard_normal(num_samples) * (np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t) > 0.85)
    pauses = np.sin(2 * np.pi * rng.uniform(0.15, 0.4) * t + rng.uniform(0, 6)) > -0.8
    wave = (voiced * syllables + 0.3 * fricative) * pauses + 0.003 * rng.standard_normal(num_samples)
    peak = np.abs(wave).max()
    return (rng.uniform(0.2, 0.8) * wave / (peak if peak > 0 else 1.0)).astype(np.float32)


def speech_like_clips(count: int, seed: int = 0, *, min_s: float = 2.0, max_s: float = 10.0,
                      sample_rate: int = 16000) -> list[np.ndarray]:
    """``count`` :func:`speech_like` clips with durations drawn uniformly in [min_s, max_s] (any sample count)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(int(min_s * sample_rate), int(max_s * sample_rate) + 1, size=count)
    return [speech_like(int(n), seed * 100_003 + i, sample_rate) for i, n in enumerate(lengths)]
