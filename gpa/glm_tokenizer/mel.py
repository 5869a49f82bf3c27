"""Whisper log-mel features (the computation of ``transformers.WhisperFeatureExtractor``), batched."""

from __future__ import annotations

import numpy as np
import torch

from .config import SAMPLE_RATE


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    # Slaney scale: linear below 1 kHz (3 bins per 200 Hz), logarithmic above.
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz * 3.0 / 200.0
    log_step = np.log(6.4) / 27.0
    above = hz >= 1000.0
    mel[above] = 15.0 + np.log(hz[above] / 1000.0) / log_step
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * 200.0 / 3.0
    log_step = np.log(6.4) / 27.0
    above = mel >= 15.0
    hz[above] = 1000.0 * np.exp(log_step * (mel[above] - 15.0))
    return hz


def mel_filters(n_mels: int, n_fft: int = 400, sampling_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Slaney-normalised triangular filters on the Slaney mel scale, 0..sr/2, shape ``[n_fft // 2 + 1, n_mels]``."""
    fft_freqs = np.linspace(0.0, sampling_rate / 2, n_fft // 2 + 1)
    mel_edges = np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([sampling_rate / 2]))[0], n_mels + 2)
    edges = _mel_to_hz(mel_edges)
    widths = np.diff(edges)
    offsets = edges[None, :] - fft_freqs[:, None]
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    bank = np.maximum(0.0, np.minimum(rising, falling))
    bank *= 2.0 / (edges[2:] - edges[:-2])  # equal area per filter
    return torch.from_numpy(bank).to(torch.float32)


def log_mel_spectrogram(
    audio: torch.Tensor,
    n_mels: int,
    *,
    n_fft: int = 400,
    hop_length: int = 160,
    sampling_rate: int = SAMPLE_RATE,
    lengths: torch.Tensor | None = None,
    filters: torch.Tensor | None = None,
) -> torch.Tensor:
    """Whisper log-mel features of already padded audio: ``[T]`` -> ``[n_mels, T // hop]`` or ``[B, T]`` ->
    ``[B, n_mels, T // hop]``, equal to ``WhisperFeatureExtractor`` on the same padded input.

    ``lengths`` (``[B]``, multiples of ``hop_length``) treats item ``b`` as a signal of ``lengths[b]`` samples on
    its own: reflection at its own end, dynamic-range clamp over its own frames, zeros in the frames after.
    """
    single = audio.dim() == 1
    audio = audio.reshape(1, -1) if single else audio
    audio = audio.to(torch.float32)
    batch, total = audio.shape
    if total % hop_length:
        raise ValueError(f"audio length {total} is not a multiple of hop_length {hop_length}")
    n_frames = total // hop_length
    half = n_fft // 2
    if lengths is None:
        lengths = torch.full((batch,), total, dtype=torch.long)
    if int(lengths.min()) <= half:  # lengths on the host (the tokenizer's are): no wait for the device
        raise ValueError(f"every item needs more than n_fft // 2 = {half} samples to be reflect-padded")
    if int(lengths.max()) > total:
        raise ValueError(f"an item's length exceeds the {total} samples given")
    lengths = lengths.to(device=audio.device, dtype=torch.long, non_blocking=True)
    # Centre each item on its own: reflect-pad by n_fft // 2 at both of its ends (torch.stft(center=True)). Only
    # the 2 x n_fft // 2 reflected samples per item are gathered; the rest is one copy of the (own) samples.
    own_samples = torch.arange(total, device=audio.device)[None, :] < lengths[:, None]
    framed = audio.new_zeros(batch, total + 2 * half)
    framed[:, half : half + total] = audio.masked_fill(~own_samples, 0.0)  # whatever lies past an item's end
    framed[:, :half] = audio[:, 1 : half + 1].flip(1)
    edge = torch.arange(half, device=audio.device)[None, :]
    # item b's samples past its end: audio[b, end - 2], audio[b, end - 3], ...
    framed.scatter_(1, half + lengths[:, None] + edge, torch.gather(audio, 1, lengths[:, None] - 2 - edge))
    window = torch.hann_window(n_fft, device=audio.device)
    spec = torch.stft(framed, n_fft, hop_length, window=window, center=False, return_complex=True)
    power = (spec[..., :n_frames].abs() ** 2).contiguous()
    if filters is None:
        filters = mel_filters(n_mels, n_fft, sampling_rate)
    mel = filters.to(audio.device).T @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    own = torch.arange(n_frames, device=audio.device)[None, :] < (lengths // hop_length)[:, None]
    peak = log_spec.masked_fill(~own[:, None, :], -torch.inf).amax(dim=(1, 2), keepdim=True)
    log_spec = (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0
    log_spec = log_spec * own[:, None, :]
    return log_spec[0] if single else log_spec
