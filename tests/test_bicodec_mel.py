"""The BiCodec mel front end: Slaney filterbank and linear-magnitude STFT, checked against plain numpy."""

import numpy as np
import pytest
import torch

from gpa.bicodec.config import MelConfig
from gpa.bicodec.mel import MelSpectrogram, hz_to_mel, slaney_filterbank

SR, N_FFT, WIN, HOP = 16000, 1024, 640, 320


def numpy_slaney_filterbank(sr, n_fft, n_mels, fmin, fmax):
    """Textbook Slaney (Auditory Toolbox) mel filters, float64."""

    def to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f < 1000, f * 3 / 200, 15 + np.log(np.maximum(f, 1e-9) / 1000) / (np.log(6.4) / 27))

    def to_hz(m):
        return np.where(m < 15, m * 200 / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))

    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = to_hz(np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2))
    fb = np.zeros((freqs.size, n_mels))
    for m in range(n_mels):
        lo, centre, hi = edges[m : m + 3]
        rising = (freqs - lo) / (centre - lo)
        falling = (hi - freqs) / (hi - centre)
        fb[:, m] = np.maximum(0, np.minimum(rising, falling)) * 2 / (hi - lo)
    return fb


def numpy_mel(wav, fb):
    """Centred reflect-padded STFT with a periodic Hann window of WIN samples centred in N_FFT."""
    padded = np.pad(wav.astype(np.float64), N_FFT // 2, mode="reflect")
    window = np.zeros(N_FFT)
    start = (N_FFT - WIN) // 2
    window[start : start + WIN] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN) / WIN)
    frames = [padded[i : i + N_FFT] * window for i in range(0, len(padded) - N_FFT + 1, HOP)]
    spec = np.abs(np.fft.rfft(np.stack(frames), axis=-1))  # (frames, freqs)
    return (spec @ fb).T


@pytest.mark.parametrize("n_mels,fmax", [(128, None), (24, 7600.0)])
def test_filterbank_matches_textbook_slaney_formula(n_mels, fmax):
    ours = slaney_filterbank(N_FFT // 2 + 1, 10.0, fmax or SR / 2, n_mels, SR).numpy()
    expected = numpy_slaney_filterbank(SR, N_FFT, n_mels, 10.0, fmax or SR / 2)
    assert ours.dtype == np.float32 and ours.shape == (N_FFT // 2 + 1, n_mels)
    # float32 cancellation near a triangle foot leaves ~1e-7 absolute noise
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)


def test_filterbank_properties():
    fb = slaney_filterbank(N_FFT // 2 + 1, 10.0, SR / 2, 128, SR).numpy()
    assert (fb >= 0).all()
    assert (fb.max(axis=0) > 0).all(), "every filter sees at least one frequency bin"
    peaks = fb.argmax(axis=0)
    assert (np.diff(peaks) >= 0).all() and peaks[-1] > peaks[0]
    # Slaney normalisation makes each triangle integrate to 1 over Hz; wide (upper) filters sample it well.
    bin_hz = SR / N_FFT
    areas = fb.sum(axis=0) * bin_hz
    np.testing.assert_allclose(areas[64:], 1.0, rtol=0.03)
    # The scale: linear below 1 kHz, logarithmic above, continuous at the knee.
    assert hz_to_mel(600.0) == pytest.approx(9.0)
    assert hz_to_mel(1000.0) == pytest.approx(15.0)
    assert hz_to_mel(6400.0) == pytest.approx(42.0)


def test_mel_spectrogram_matches_numpy_stft():
    rng = np.random.default_rng(0)
    wav = (0.3 * rng.standard_normal(SR // 2 + 123)).astype(np.float32)
    mel = MelSpectrogram(MelConfig(num_mels=64))
    ours = mel(torch.from_numpy(wav)[None])[0].numpy()
    expected = numpy_mel(wav, mel.fb.double().numpy())
    assert ours.shape == (64, len(wav) // HOP + 1) == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * expected.max())


def test_mel_is_linear_magnitude_and_finds_a_tone():
    t = np.arange(SR) / SR
    tone = (0.5 * np.sin(2 * np.pi * 2000 * t)).astype(np.float32)
    mel = MelSpectrogram(MelConfig(num_mels=128))
    spec = mel(torch.from_numpy(np.stack([tone, 2 * tone, np.zeros_like(tone)])))
    torch.testing.assert_close(spec[1], 2 * spec[0], rtol=1e-5, atol=1e-6)  # power=1: amplitude, not energy
    assert spec[2].abs().max() == 0
    band = int(spec[0].mean(dim=1).argmax())
    assert mel.fb[round(2000 / (SR / N_FFT)), band] == mel.fb[round(2000 / (SR / N_FFT))].max()
