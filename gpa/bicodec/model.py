"""The BiCodec front: 16 kHz waveforms <-> (global, semantic) tokens.

Batching never changes an item's result. Tokenizing batches waveforms of any length (longest first, a batch cut
where its padding would pass a quarter of it): wav2vec2 and the feature encoder take each item's own length and
keep padding out of every convolution, normalisation and attention (see their modules); speaker reference clips
all have the same length. Decoding batches semantic sequences of any length the same way: the prenet and the
waveform generator keep padding out of every convolution (see their modules).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_module
from ..errors import EmptyAudio, NonFiniteAudio, TooShortAudio
from ..inference import Precision, check_precision, encoder_precision, inference_mode, length_batches
from .codec import BiCodecModel
from .config import BiCodecConfig, load_config
from .mel import MelSpectrogram
from .preprocess import Normalization, normalize, reference_clip
from .wav2vec2 import Wav2Vec2Features

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
WAV2VEC2_DIR = "wav2vec2-large-xlsr-53"


class BiCodec:
    sample_rate: int = 16000

    def __init__(
        self,
        config: BiCodecConfig,
        codec: BiCodecModel,
        wav2vec2: Wav2Vec2Features,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        normalization: Normalization | None = None,
        batch_size: int = 16,
        precision: Precision = "float32",
    ):
        self.config = config
        self.codec = codec
        self.wav2vec2 = wav2vec2
        self.device = torch.device(device)
        self.dtype = dtype
        # The mel is computed in float32 whatever the model dtype (its filterbank must stay exact).
        self.mel_transform = MelSpectrogram(config.mel_params).to(self.device)
        # Loudness normalisation before tokenizing (config flag volume_normalize). The reference normalises
        # by loud percentiles when it reads a file itself -- its offline inference and training data path,
        # hence the default -- and peak-normalises tensors handed to it (its server path): "peak".
        self.normalization: Normalization = normalization or ("percentile" if config.volume_normalize else "none")
        self.batch_size = batch_size
        # "bfloat16": wav2vec2 and the encoders under bf16 autocast (mel and nearest-code searches stay float32)
        self.precision = check_precision(precision, self.device)
        self.sample_rate = config.sample_rate
        self.samples_per_semantic_token = config.samples_per_semantic_token
        self.semantic_codebook_size = config.quantizer.codebook_size
        self.global_codebook_size = codec.speaker_encoder.quantizer.codebook_size
        speaker = config.speaker_encoder
        self.num_global_tokens = speaker.token_num * speaker.fsq_num_quantizers
        self.speaker_embedding_dim = speaker.out_dim

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        normalization: Normalization | None = None,
        batch_size: int = 16,
        precision: Precision = "float32",
    ) -> BiCodec:
        """Load ``directory`` (the ``BiCodec`` folder: config.yaml, model.safetensors, wav2vec2-large-xlsr-53/)."""
        directory = Path(directory)
        config = load_config(directory / CONFIG_FILE)
        # A state dict saved from the reference's BiCodec also holds its torchaudio mel buffers: checked, then dropped.
        mel_buffers = MelSpectrogram(config.mel_params).torchaudio_buffers("mel_transformer.")
        codec = load_module(lambda: BiCodecModel(config), directory / WEIGHTS_FILE, derived=mel_buffers)
        codec = codec.to(device=device, dtype=dtype).eval()
        wav2vec2 = Wav2Vec2Features.from_pretrained(directory / WAV2VEC2_DIR, device=device, dtype=dtype)
        return cls(config, codec, wav2vec2, device=device, dtype=dtype, normalization=normalization,
                   batch_size=batch_size, precision=precision)

    # ----------------------------------------------------------------- preprocessing

    def _prepare(self, audio: np.ndarray) -> np.ndarray:
        wav = np.asarray(audio)
        if wav.ndim != 1:
            raise ValueError(f"BiCodec expects 1-D mono audio, got shape {wav.shape}")
        if wav.size == 0:
            raise EmptyAudio("BiCodec got empty audio")
        wav = wav.astype(np.float32, copy=False)
        if not np.isfinite(wav).all():
            raise NonFiniteAudio("BiCodec got audio with NaN or infinite samples")
        return normalize(wav, self.normalization)

    def _reference_clip(self, wav: np.ndarray) -> np.ndarray:
        return reference_clip(wav, self.config.ref_segment_length)

    # ----------------------------------------------------------------- semantic stream

    def _check_semantic_length(self, wav: np.ndarray) -> None:
        if self.wav2vec2.num_frames(wav.shape[0]) < 1:
            n = wav.shape[0]
            raise TooShortAudio(
                f"audio of {n} samples ({n / self.sample_rate:.4f} s) is too short for one BiCodec semantic "
                f"token ({self.min_semantic_samples} samples needed)"
            )

    @property
    def min_semantic_samples(self) -> int:
        """Fewest samples that yield a semantic token (the wav2vec2 front end's receptive field; 400 as released)."""
        n = 1
        while self.wav2vec2.num_frames(n) < 1:
            n += 1
        return n

    def _wav2vec2_batches(self, wavs: list[np.ndarray]) -> Iterator[tuple[list[int], torch.Tensor, list[int]]]:
        """wav2vec2 features of prepared waveforms, batch by batch: (input indices, (batch, frames, hidden)
        features, each item's own number of frames)."""
        for idx in length_batches([w.shape[0] for w in wavs], self.batch_size):
            lengths = [wavs[i].shape[0] for i in idx]
            batch = torch.zeros(len(idx), max(lengths), dtype=torch.float32)
            for row, i in enumerate(idx):
                batch[row, : lengths[row]] = torch.from_numpy(self.wav2vec2.normalize(wavs[i]))
            with encoder_precision(self.precision, self.device):
                features = self.wav2vec2(batch.to(self.device), lengths)
            yield idx, features, [self.wav2vec2.num_frames(n) for n in lengths]

    @inference_mode()
    def _semantic(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        for wav in wavs:
            self._check_semantic_length(wav)
        tokens: list[np.ndarray] = [np.zeros(0, np.int64)] * len(wavs)
        for idx, features, frames in self._wav2vec2_batches(wavs):
            with encoder_precision(self.precision, self.device):
                batch_tokens = self.codec.semantic_tokens(features.to(self.dtype), frames)
            for row, i in enumerate(idx):
                tokens[i] = batch_tokens[row, : self.codec.encoder.output_length(frames[row])].long().cpu().numpy()
        for wav, t in zip(wavs, tokens, strict=True):
            if t.shape[0] == 0:
                raise TooShortAudio(f"audio of {wav.shape[0]} samples yields no BiCodec semantic token")
        return tokens

    # ----------------------------------------------------------------- speaker stream

    @inference_mode()
    def _speaker(self, wavs: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """Global tokens (flattened (num_quantizers * token_num,)) and ECAPA embeddings of the reference clips."""
        clips = [self._reference_clip(w) for w in wavs]
        tokens: list[np.ndarray] = []
        embeddings: list[np.ndarray] = []
        for start in range(0, len(clips), self.batch_size):
            batch = torch.from_numpy(np.stack(clips[start : start + self.batch_size])).to(self.device)
            mel = self.mel_transform(batch).to(self.dtype)
            with encoder_precision(self.precision, self.device):
                tok, emb = self.codec.speaker_encoder.tokenize_and_embed(mel)
            tokens += [t.reshape(-1).long().cpu().numpy() for t in tok]
            embeddings.append(emb.float().cpu().numpy())
        dim = self.speaker_embedding_dim
        return tokens, np.concatenate(embeddings) if embeddings else np.zeros((0, dim), np.float32)

    # ----------------------------------------------------------------- public API

    def semantic_tokens(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """int64 semantic tokens (50 per second) per waveform."""
        return self._semantic([self._prepare(a) for a in audios])

    def global_tokens(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """int64 global (speaker) tokens, shape (num_global_tokens,) = (32,), from each reference clip."""
        return self._speaker([self._prepare(a) for a in audios])[0]

    def tokenize(self, audios: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(global, semantic) tokens per waveform; preprocessing is shared by both streams."""
        wavs = [self._prepare(a) for a in audios]
        semantic = self._semantic(wavs)
        global_tokens, _ = self._speaker(wavs)
        return list(zip(global_tokens, semantic, strict=True))

    def speaker_embedding(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        """(n, out_dim) float32 ECAPA-TDNN utterance embeddings of the reference clips (for speaker similarity)."""
        return self._speaker([self._prepare(a) for a in audios])[1]

    def speakers(self, audios: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """:meth:`global_tokens` and :meth:`speaker_embedding` of the reference clips from one pass of the speaker
        encoder (both come out of it)."""
        return self._speaker([self._prepare(a) for a in audios])

    def wav2vec2_features(self, audios: Sequence[np.ndarray], *, preprocess: bool = True) -> list[torch.Tensor]:
        """(frames, hidden_size) float32 mixed wav2vec2 hidden states per waveform (CPU).

        ``preprocess`` applies the loudness normalisation used for tokenizing; the per-utterance
        zero-mean/unit-variance normalisation of the feature extractor is always applied.
        """
        wavs = [self._prepare(a) if preprocess else np.asarray(a, np.float32) for a in audios]
        for wav in wavs:
            self._check_semantic_length(wav)
        out: list[torch.Tensor] = [torch.zeros(0)] * len(wavs)
        with inference_mode():
            for idx, features, frames in self._wav2vec2_batches(wavs):
                for row, i in enumerate(idx):
                    out[i] = features[row, : frames[row]].float().cpu()
        return out

    def mel(self, audios: Sequence[np.ndarray], *, preprocess: bool = True) -> list[torch.Tensor]:
        """(num_mels, frames) float32 linear-magnitude mel per waveform (CPU).

        With ``preprocess`` (default) this is the speaker encoder's input: the normalised reference clip.
        Without, the mel of the waveform exactly as given.
        """
        out = []
        with inference_mode():
            for a in audios:
                wav = self._reference_clip(self._prepare(a)) if preprocess else np.asarray(a, np.float32)
                if wav.shape[0] <= self.config.mel_params.n_fft // 2:
                    # centred frames are reflect-padded by n_fft / 2, which needs more samples than that
                    raise TooShortAudio(f"{wav.shape[0]} samples are too few for a mel spectrogram")
                out.append(self.mel_transform(torch.from_numpy(np.ascontiguousarray(wav)).to(self.device)).cpu())
        return out

    @inference_mode()
    def decode(self, global_tokens: Sequence[np.ndarray], semantic_tokens: Sequence[np.ndarray]) -> list[np.ndarray]:
        """float32 16 kHz waveforms, ``samples_per_semantic_token`` samples per semantic token.

        Returns the generator output as is (no DC removal or clipping; the reference scripts do that after).
        """
        if len(global_tokens) != len(semantic_tokens):
            raise ValueError(f"{len(global_tokens)} global token sets for {len(semantic_tokens)} semantic sequences")
        speaker = self.config.speaker_encoder
        globals_ = [self._check_tokens(g, self.global_codebook_size, "global") for g in global_tokens]
        for g in globals_:
            if g.shape[0] != self.num_global_tokens:
                raise ValueError(f"expected {self.num_global_tokens} global tokens, got {g.shape[0]}")
        semantics = [self._check_tokens(s, self.semantic_codebook_size, "semantic") for s in semantic_tokens]
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(semantics)
        lengths = [s.shape[0] for s in semantics]
        decodable = [i for i, n in enumerate(lengths) if n]
        for batch in length_batches([lengths[i] for i in decodable], self.batch_size):
            idx = [decodable[b] for b in batch]
            longest = lengths[idx[0]]
            sem = torch.zeros(len(idx), longest, dtype=torch.long)
            for row, i in enumerate(idx):
                sem[row, : lengths[i]] = torch.from_numpy(semantics[i])
            glob = torch.from_numpy(np.stack([globals_[i] for i in idx])).to(self.device)
            glob = glob.reshape(len(idx), speaker.fsq_num_quantizers, speaker.token_num)
            own = [lengths[i] for i in idx]
            wav = self.codec.decode(sem.to(self.device), glob, None if min(own) == longest else own)
            wav = wav.float().cpu().numpy()
            for row, i in enumerate(idx):
                out[i] = wav[row, : lengths[i] * self.samples_per_semantic_token].copy()
        return out

    @staticmethod
    def _check_tokens(tokens: np.ndarray, size: int, kind: str) -> np.ndarray:
        t = np.asarray(tokens)
        if t.ndim != 1 or (t.size and not np.issubdtype(t.dtype, np.integer)):
            raise ValueError(f"{kind} tokens must be a 1-D integer array, got {t.dtype} {t.shape}")
        t = t.astype(np.int64)
        if t.size and (t.min() < 0 or t.max() >= size):
            raise ValueError(f"{kind} tokens out of range [0, {size}): min {t.min()}, max {t.max()}")
        return t
