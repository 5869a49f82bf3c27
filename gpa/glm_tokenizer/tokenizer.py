"""``GLMSpeechTokenizer``: batched, batch-invariant tokenization of 16 kHz mono audio with a loaded encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import find_safetensors, load_module
from ..errors import AudioError, EmptyAudio, NonFiniteAudio, TooLongAudio
from ..inference import Precision, check_precision, encoder_precision, inference_mode, length_batches
from .config import SAMPLE_RATE, GLMTokenizerConfig
from .encoder import WhisperVQEncoder
from .mel import log_mel_spectrogram, mel_filters


class GLMSpeechTokenizer:
    """Batched, batch-invariant GLM-4-Voice tokenization of 16 kHz mono float32 audio."""

    sample_rate: int = SAMPLE_RATE

    def __init__(self, encoder: WhisperVQEncoder, *, batch_size: int = 32, precision: Precision = "float32"):
        self.encoder = encoder.eval()
        self.config = encoder.config
        self.batch_size = batch_size
        self.device = encoder.conv1.weight.device
        # "bfloat16": the encoder under bf16 autocast (the log-mel and the codebook search stay float32)
        self.precision = check_precision(precision, self.device)
        self.dtype = encoder.conv1.weight.dtype
        self.filters = mel_filters(self.config.num_mel_bins, self.config.n_fft, self.sample_rate).to(self.device)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, batch_size: int = 32,
                        precision: Precision = "float32") -> GLMSpeechTokenizer:
        """``directory``: the ``glm-4-voice-tokenizer`` folder (config.json, preprocessor_config.json,
        model.safetensors)."""
        config = GLMTokenizerConfig.from_dir(directory)
        encoder = load_module(lambda: WhisperVQEncoder(config), find_safetensors(directory))
        return cls(encoder.to(device=device, dtype=dtype), batch_size=batch_size, precision=precision)

    @property
    def samples_per_token(self) -> int:
        return self.config.samples_per_token

    @property
    def max_samples(self) -> int:
        return self.config.max_samples

    @property
    def codebook_size(self) -> int:
        return self.config.quantize_vocab_size

    def num_tokens(self, num_samples: int) -> int:
        return -(-num_samples // self.samples_per_token)

    def _check(self, audio: np.ndarray, index: int) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise AudioError(f"audio {index}: expected 1-D mono samples, got shape {audio.shape}")
        if audio.size == 0:
            raise EmptyAudio(f"audio {index}: no samples")
        if audio.size > self.max_samples:
            raise TooLongAudio(
                f"audio {index}: {audio.size} samples ({audio.size / self.sample_rate:.2f} s) exceed the GLM "
                f"tokenizer's {self.max_samples} ({self.max_samples / self.sample_rate:.2f} s); chunk it first")
        if not np.isfinite(audio).all():
            raise NonFiniteAudio(f"audio {index}: non-finite samples")
        return audio

    def _batches(self, audios: list[np.ndarray]) -> list[list[int]]:
        # Longest first, so each batch pads little; results do not depend on the grouping.
        return length_batches([a.size for a in audios], self.batch_size)

    def _features(self, audios: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched features: log-mel ``[B, n_mels, frames]`` and frame validity ``[B, frames]``."""
        step = self.samples_per_token
        sizes = torch.tensor([a.size for a in audios], dtype=torch.long)
        padded = (sizes + step - 1) // step * step  # each item's own padding: a whole number of tokens
        wave = torch.zeros(len(audios), int(padded.max()), dtype=torch.float32)
        for row, audio in enumerate(audios):
            wave[row, : audio.size] = torch.from_numpy(audio)
        wave, sizes = wave.to(self.device), sizes.to(self.device)
        config = self.config
        mel = log_mel_spectrogram(wave, config.num_mel_bins, n_fft=config.n_fft, hop_length=config.hop_length,
                                  lengths=padded, filters=self.filters)
        frames = torch.arange(mel.shape[-1], device=self.device) * config.hop_length
        return mel, frames[None, :] < sizes[:, None]

    @inference_mode()
    def features(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """Per-item log-mel ``[n_mels, frames]`` as WhisperFeatureExtractor gives for the item alone
        (``padding="longest"``, ``pad_to_multiple_of=samples_per_token``)."""
        audios = [self._check(a, i) for i, a in enumerate(audios)]
        out: list[np.ndarray] = [np.empty(0)] * len(audios)
        for batch in self._batches(audios):
            mel, _ = self._features([audios[i] for i in batch])
            for row, i in enumerate(batch):
                frames = self.num_tokens(audios[i].size) * self.samples_per_token // self.config.hop_length
                out[i] = mel[row, :, :frames].float().cpu().numpy()
        return out

    @inference_mode()
    def tokenize(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """Token ids (int64, ``ceil(samples / samples_per_token)`` each) for every 16 kHz mono float32 input."""
        audios = [self._check(a, i) for i, a in enumerate(audios)]
        out: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(audios)
        for batch in self._batches(audios):
            mel, frame_mask = self._features([audios[i] for i in batch])
            with encoder_precision(self.precision, self.device):
                tokens = self.encoder(mel.to(self.dtype), frame_mask)
            tokens = tokens.cpu().numpy().astype(np.int64)
            for row, i in enumerate(batch):
                out[i] = tokens[row, : self.num_tokens(audios[i].size)].copy()
        return out
