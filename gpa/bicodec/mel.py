"""Linear-magnitude mel spectrogram on the Slaney scale, the speaker encoder's input.

Numerically this is torchaudio's ``MelSpectrogram(power=1, norm="slaney", mel_scale="slaney")`` with its
defaults (centred frames, reflect padding, periodic Hann window of ``win_length`` zero-padded to ``n_fft``
by ``torch.stft``), written without torchaudio so the project does not depend on it. The filterbank is
built in float32 with the same operations in the same order, so the matrices agree to the last bit.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import MelConfig

# Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per factor 6.4).
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(freq: float) -> float:
    if freq < _MIN_LOG_HZ:
        return freq / _F_SP
    return _MIN_LOG_MEL + math.log(freq / _MIN_LOG_HZ) / _LOGSTEP


def mel_to_hz(mels: torch.Tensor) -> torch.Tensor:
    freqs = _F_SP * mels
    log_region = mels >= _MIN_LOG_MEL
    freqs[log_region] = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (mels[log_region] - _MIN_LOG_MEL))
    return freqs


def slaney_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """(n_freqs, n_mels) triangular filters with Slaney area normalisation (each filter integrates to ~1)."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    mel_points = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2)
    f_pts = mel_to_hz(mel_points)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    down = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = torch.max(torch.zeros(1), torch.min(down, up))
    enorm = 2.0 / (f_pts[2 : n_mels + 2] - f_pts[:n_mels])
    return fb * enorm.unsqueeze(0)


class MelSpectrogram(nn.Module):
    """(batch, samples) float waveform -> (batch, num_mels, frames), frames = samples // hop + 1."""

    def __init__(self, config: MelConfig):
        super().__init__()
        self.config = config
        f_max = config.mel_fmax if config.mel_fmax is not None else float(config.sample_rate // 2)
        # Derived from the config, so not part of the checkpoint (persistent=False).
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)
        fb = slaney_filterbank(config.n_fft // 2 + 1, config.mel_fmin, f_max, config.num_mels, config.sample_rate)
        self.register_buffer("fb", fb, persistent=False)

    def torchaudio_buffers(self, prefix: str) -> dict[str, torch.Tensor]:
        """The buffers under the names torchaudio's ``MelSpectrogram`` module at ``prefix`` stores (persistent
        there: the reference's BiCodec keeps them in its state dict), for checking a checkpoint that has them."""
        return {f"{prefix}spectrogram.window": self.window, f"{prefix}mel_scale.fb": self.fb}

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        wav = wav.float()
        spec = torch.stft(
            wav,
            n_fft=self.config.n_fft,
            hop_length=self.config.hop_length,
            win_length=self.config.win_length,
            window=self.window.float(),
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        ).abs()
        return torch.matmul(spec.transpose(-1, -2), self.fb.float()).transpose(-1, -2)
