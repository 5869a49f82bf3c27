"""Waveform preprocessing applied before tokenizing: loudness normalisation and the speaker reference clip."""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..errors import EmptyAudio

Normalization = Literal["peak", "percentile", "none"]


def peak_normalize(wav: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Scale so that max |x| == ``peak`` (silence stays silence).

    What the reference tokenizer does to waveforms handed over as tensors (its server path).
    """
    wav = np.asarray(wav, dtype=np.float32)
    max_val = np.abs(wav).max()
    if max_val > 0:
        wav = wav / max_val * peak
    return wav.astype(np.float32, copy=False)


def percentile_normalize(wav: np.ndarray, coeff: float = 0.2) -> np.ndarray:
    """Loudness normalisation the reference applies when it reads audio from a file path itself (its offline
    inference and training-data path, so the default here).

    Quiet audio (peak < 0.1) is first lifted to peak 0.1; then the mean of the 90th..99th percentile of the
    samples above 0.01 is brought to ``coeff`` (gain clipped to [0.1, 10]), and the result is kept within
    [-1, 1]. Computed in float64 like the reference (soundfile yields float64), returned as float32.
    """
    audio = np.asarray(wav, dtype=np.float64)
    magnitudes = np.abs(audio)
    peak = magnitudes.max()
    if peak < 0.1:
        audio = audio / max(peak, 1e-3) * 0.1
    loud = magnitudes[magnitudes > 0.01]  # of the samples before that lift, as the reference does
    n = loud.shape[0]
    if n <= 10:
        return audio.astype(np.float32)
    low, high = int(0.9 * n), int(0.99 * n)
    # Only ranks low..high-1 are needed: a partition instead of a full sort, then that band sorted so that it is
    # summed in the reference's order (the same float64 mean, bit for bit).
    band = np.sort(np.partition(loud, (low, high - 1))[low:high])
    volume = np.mean(band)
    audio = audio * np.clip(coeff / volume, a_min=0.1, a_max=10)
    peak = np.max(np.abs(audio))
    if peak > 1:
        audio = audio / peak
    return audio.astype(np.float32)


def normalize(wav: np.ndarray, mode: Normalization) -> np.ndarray:
    if mode == "peak":
        return peak_normalize(wav)
    if mode == "percentile":
        return percentile_normalize(wav)
    if mode == "none":
        return np.asarray(wav, dtype=np.float32)
    raise ValueError(f"unknown normalization {mode!r}")


def reference_clip(wav: np.ndarray, length: int) -> np.ndarray:
    """The first ``length`` samples; a shorter clip is tiled (repeated whole) until it fills the window."""
    if wav.shape[0] == 0:
        raise EmptyAudio("cannot take a speaker reference clip from empty audio")
    if wav.shape[0] < length:
        wav = np.tile(wav, length // wav.shape[0] + 1)
    return wav[:length]
