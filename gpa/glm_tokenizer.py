"""GLM-4-Voice speech tokenizer: 16 kHz audio -> discrete speech tokens at 12.5 tokens/s (GPA's ASR input).

Pipeline (the released ``glm-4-voice-tokenizer``): Whisper log-mel features (128 bins, 10 ms hop) -> two
(causal) convolutions, the second with stride 2 -> the first 16 Whisper-large encoder layers with
block-causal self-attention -> average pooling by 4 -> nearest codebook entry (16384 codes).
One token covers 2 * 4 * 160 = 1280 samples (80 ms).

Each input is featurised as if it were alone (padded with zeros to a whole number of tokens, exactly what the
reference does for a batch of one), so the result of an item never depends on what it is batched with:
 - mel frames past an item's own padded length are zeros (what a convolution's zero padding would see);
 - attention never looks at keys past an item's valid samples (block-causal mask ∧ key mask), or, in fully
   causal layers, at keys after the query; positions past an item's padded length thus never reach it;
 - an item's padded length is a whole number of pooling windows, so pooling never mixes items' padding.

Weights load strictly from the official ``model.safetensors`` (keys are the reference ``WhisperVQEncoder``
state dict, unprefixed, including the codebook's EMA buffers when ``quantize_ema_decay`` is set).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from .checkpoint import find_safetensors, load_module
from .errors import AudioError, CheckpointError, EmptyAudio, NonFiniteAudio, TooLongAudio
from .inference import (
    Precision,
    check_precision,
    encoder_precision,
    full_precision,
    inference_mode,
    length_batches,
)

SAMPLE_RATE = 16000
# conv1 has stride 1 and conv2 stride 2 in every Whisper encoder.
CONV_STRIDE = 2


# --------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class GLMTokenizerConfig:
    """Fields of ``config.json`` (a ``WhisperVQConfig``) and ``preprocessor_config.json`` that the tokenizer uses.

    Defaults are those of the reference config classes, so a file that omits a field behaves the same.
    """

    # config.json (transformers WhisperConfig fields)
    num_mel_bins: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536
    max_source_positions: int = 1500
    activation_function: str = "gelu"
    # config.json (WhisperVQConfig additions)
    encoder_causal_convolution: bool = False
    encoder_causal_attention: bool = False
    pooling_kernel_size: int | None = None
    pooling_type: str = "max"
    pooling_position: int = 0
    quantize_vocab_size: int | None = None
    quantize_position: int = 16
    quantize_encoder_only: bool = False
    quantize_causal_encoder: bool = False
    quantize_causal_block_size: int | None = None
    quantize_ema_decay: float | None = None  # training only, but it decides whether EMA buffers are stored
    # preprocessor_config.json (WhisperFeatureExtractor)
    feature_size: int = 80
    sampling_rate: int = SAMPLE_RATE
    hop_length: int = 160
    n_fft: int = 400
    chunk_length: int = 30
    padding_value: float = 0.0
    dither: float = 0.0

    @classmethod
    def from_dict(cls, model: dict, preprocessor: dict) -> GLMTokenizerConfig:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in {**model, **preprocessor}.items() if k in names}
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def from_dir(cls, directory: str | Path) -> GLMTokenizerConfig:
        directory = Path(directory)
        loaded = []
        for name in ("config.json", "preprocessor_config.json"):
            path = directory / name
            try:
                loaded.append(json.loads(path.read_text()))
            except FileNotFoundError as exc:
                raise CheckpointError(f"GLM tokenizer: {path} not found") from exc
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"GLM tokenizer: cannot parse {path}: {exc}") from exc
        return cls.from_dict(*loaded)

    # -- derived quantities
    @property
    def num_layers(self) -> int:
        """Encoder layers present in the checkpoint (the encoder is truncated at the quantizer or not)."""
        return self.quantize_position if self.quantize_encoder_only else self.encoder_layers

    @property
    def pool(self) -> int:
        return self.pooling_kernel_size or 1

    @property
    def samples_per_token(self) -> int:
        return CONV_STRIDE * self.pool * self.hop_length

    @property
    def max_samples(self) -> int:
        # The positional table bounds the post-conv length; the feature extractor would silently cut at
        # chunk_length seconds, so refuse beyond either (rounded down to whole tokens).
        limit = min(self.max_source_positions * CONV_STRIDE * self.hop_length, self.chunk_length * self.sampling_rate)
        return limit // self.samples_per_token * self.samples_per_token

    def layer_is_causal(self, index: int) -> bool:
        """Mirror of the reference: fully causal layers get no padding mask, only ``is_causal``."""
        if self.quantize_encoder_only:
            return self.encoder_causal_attention or self.quantize_causal_encoder
        return self.encoder_causal_attention or (self.quantize_causal_encoder and index < self.quantize_position)

    def validate(self) -> None:
        problems = []
        if self.quantize_vocab_size is None:
            problems.append("quantize_vocab_size is not set (not a VQ tokenizer)")
        if not 1 <= self.quantize_position <= self.num_layers:
            problems.append(f"quantize_position {self.quantize_position} outside 1..{self.num_layers}")
        if self.pooling_kernel_size is not None:
            if self.pooling_type not in ("avg", "max"):
                problems.append(f"pooling_type {self.pooling_type!r} not supported")
            if not 1 <= self.pooling_position <= self.quantize_position:
                problems.append(f"pooling_position {self.pooling_position} outside 1..{self.quantize_position}")
        block = self.quantize_causal_block_size
        if block is not None and block < self.pool:
            problems.append(f"quantize_causal_block_size {block} < pooling kernel {self.pool}")
        if self.d_model % self.encoder_attention_heads:
            problems.append("d_model not divisible by encoder_attention_heads")
        if self.feature_size != self.num_mel_bins:
            problems.append(f"feature_size {self.feature_size} != num_mel_bins {self.num_mel_bins}")
        if self.sampling_rate != SAMPLE_RATE:
            problems.append(f"sampling_rate {self.sampling_rate} != {SAMPLE_RATE}")
        if self.dither != 0.0 or self.padding_value != 0.0:
            problems.append("only dither=0 and padding_value=0 are supported")
        if self.activation_function not in _ACTIVATIONS:
            problems.append(f"activation_function {self.activation_function!r} not supported")
        if self.max_samples < self.samples_per_token:
            problems.append("max_source_positions too small for one token")
        if problems:
            raise CheckpointError("unsupported GLM tokenizer config: " + "; ".join(problems))


_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


# --------------------------------------------------------------------------------------------------------------
# Log-mel features (Whisper / transformers.WhisperFeatureExtractor)


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
        lengths = torch.full((batch,), total, dtype=torch.long, device=audio.device)
    lengths = lengths.to(device=audio.device, dtype=torch.long)
    # Centre each item on its own: reflect-pad by n_fft // 2 at both of its ends (torch.stft(center=True)),
    # done for the whole batch at once as one gather.
    source = torch.arange(-half, total + half, device=audio.device)[None, :].expand(batch, -1)
    end = lengths[:, None]
    index = source.abs()
    index = torch.where(index >= end, 2 * (end - 1) - index, index)
    inside = source < end + half
    framed = torch.gather(audio, 1, index.clamp(0, total - 1)) * inside
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


# --------------------------------------------------------------------------------------------------------------
# Encoder (parameter names = the checkpoint's keys)


class CausalConv1d(nn.Conv1d):
    """Conv1d padded on the left only, so an output frame never sees later input frames."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        self.left_padding = kernel_size - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left_padding, 0)))


class WhisperVQAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model)
        self.q_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mask``: boolean ``[B or 1, 1, T, T]``, True where a query may attend to a key."""
        batch, time, width = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, time, self.num_heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)),
                                             attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, time, width))


class WhisperVQEncoderLayer(nn.Module):
    """Pre-LayerNorm Whisper encoder block."""

    def __init__(self, config: GLMTokenizerConfig):
        super().__init__()
        self.self_attn = WhisperVQAttention(config.d_model, config.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.fc1 = nn.Linear(config.d_model, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model)
        self.activation = _ACTIVATIONS[config.activation_function]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask)
        return x + self.fc2(self.activation(self.fc1(self.final_layer_norm(x))))


def _attention_mask(valid: torch.Tensor, block: int | None) -> torch.Tensor:
    """Key-padding ∧ (block-causal | full) mask, ``[B, 1, T, T]``: query i sees key j iff j is valid and
    (j <= i or both lie in the same ``block``-frame block); no block -> every valid key."""
    pos = torch.arange(valid.shape[1], device=valid.device)
    if block is None:
        allowed = torch.ones(len(pos), len(pos), dtype=torch.bool, device=valid.device)
    else:
        allowed = (pos[None, :] <= pos[:, None]) | (pos[:, None] // block == pos[None, :] // block)
    return (allowed[None] & valid[:, None, :])[:, None]


def _causal_mask(length: int, device: torch.device) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]


class WhisperVQEncoder(nn.Module):
    """The tokenizer network: log-mel ``[B, n_mels, frames]`` + frame validity -> token ids ``[B, tokens]``."""

    def __init__(self, config: GLMTokenizerConfig):
        super().__init__()
        config.validate()
        self.config = config
        conv = CausalConv1d if config.encoder_causal_convolution else nn.Conv1d
        pad = {} if config.encoder_causal_convolution else {"padding": 1}
        self.conv1 = conv(config.num_mel_bins, config.d_model, kernel_size=3, **pad)
        self.conv2 = conv(config.d_model, config.d_model, kernel_size=3, stride=CONV_STRIDE, **pad)
        self.embed_positions = nn.Embedding(config.max_source_positions, config.d_model)
        self.layers = nn.ModuleList(WhisperVQEncoderLayer(config) for _ in range(config.num_layers))
        if not config.quantize_encoder_only:
            self.layer_norm = nn.LayerNorm(config.d_model)  # after the quantizer: stored, unused for tokens
        self.codebook = nn.Embedding(config.quantize_vocab_size, config.d_model)
        # Positions added after quantization (for the decoder side): stored, unused for tokens.
        self.embed_positions2 = nn.Embedding(math.ceil(config.max_source_positions / config.pool), config.d_model)
        if config.quantize_ema_decay is not None:
            # Codebook EMA statistics from training; present in the released checkpoint, unused here.
            self.register_buffer("ema_count", torch.ones(config.quantize_vocab_size))
            self.register_buffer("ema_weight", torch.zeros(config.quantize_vocab_size, config.d_model))

    def _masks(self, valid: torch.Tensor, block: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        return _attention_mask(valid, block), _causal_mask(valid.shape[1], valid.device)

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        config = self.config
        x = F.gelu(self.conv1(features.to(self.conv1.weight.dtype)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        length = x.shape[1]
        if length > config.max_source_positions:
            raise TooLongAudio(f"{length} encoder frames exceed max_source_positions {config.max_source_positions}")
        if length % config.pool:
            raise ValueError(f"{length} encoder frames are not a multiple of the pooling kernel {config.pool}")
        x = x + self.embed_positions.weight[:length]
        valid = frame_mask[:, ::CONV_STRIDE].bool()
        block = config.quantize_causal_block_size
        masks = self._masks(valid, block)
        for index in range(config.quantize_position):
            x = self.layers[index](x, masks[1] if config.layer_is_causal(index) else masks[0])
            if index + 1 == config.pooling_position and config.pooling_kernel_size is not None:
                pool = F.avg_pool1d if config.pooling_type == "avg" else F.max_pool1d
                x = pool(x.transpose(1, 2), config.pool).transpose(1, 2)
                valid = valid[:, :: config.pool]
                masks = self._masks(valid, None if block is None else block // config.pool)
        return self.quantize(x)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest codebook entry by squared Euclidean distance (raw codebook, no normalisation), in float32
        whatever the model dtype, with the reference's expression ``|c|^2 + |x|^2 - 2 x.c``."""
        flat = x.reshape(-1, x.shape[-1]).float()
        codebook = self.codebook.weight.float()
        with full_precision(x.device):
            distances = torch.addmm((codebook**2).sum(1) + (flat**2).sum(1, keepdim=True), flat, codebook.t(),
                                    beta=1.0, alpha=-2.0)
        return torch.min(distances, dim=1).indices.reshape(x.shape[:2])


# --------------------------------------------------------------------------------------------------------------
# Tokenizer front


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


# --------------------------------------------------------------------------------------------------------------
# Random checkpoints in the official layout (tests and benchmarks)

_SIZES: dict[str, dict] = {
    # The released glm-4-voice-tokenizer shapes.
    "real": dict(num_mel_bins=128, d_model=1280, encoder_layers=32, encoder_attention_heads=20,
                 encoder_ffn_dim=5120, max_source_positions=1500, encoder_causal_convolution=True,
                 pooling_kernel_size=4, pooling_type="avg", pooling_position=16, quantize_vocab_size=16384,
                 quantize_position=16, quantize_encoder_only=True, quantize_causal_block_size=200,
                 quantize_ema_decay=0.99, chunk_length=30),
    # Same layout, tiny: 128 mels, causal convs, EMA buffers, pooling right before the quantizer.
    "tiny": dict(num_mel_bins=128, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                 encoder_ffn_dim=64, max_source_positions=200, encoder_causal_convolution=True,
                 pooling_kernel_size=4, pooling_type="avg", pooling_position=2, quantize_vocab_size=64,
                 quantize_position=2, quantize_encoder_only=True, quantize_causal_block_size=8,
                 quantize_ema_decay=0.99, chunk_length=4),
    # A different layout: 80 mels, symmetric convs, a layer after pooling, a full (not truncated) encoder with
    # its final LayerNorm, no EMA buffers.
    "tiny-alt": dict(num_mel_bins=80, d_model=48, encoder_layers=4, encoder_attention_heads=4,
                     encoder_ffn_dim=96, max_source_positions=300, encoder_causal_convolution=False,
                     pooling_kernel_size=4, pooling_type="avg", pooling_position=2, quantize_vocab_size=128,
                     quantize_position=3, quantize_encoder_only=False, quantize_causal_block_size=12,
                     quantize_ema_decay=None, chunk_length=6),
}


def _config_files(size: str) -> tuple[dict, dict]:
    s = dict(_SIZES[size])
    chunk_length = s.pop("chunk_length")
    model = {
        "architectures": ["WhisperVQEncoder"],
        "model_type": "whisper",
        "activation_dropout": 0.0,
        "activation_function": "gelu",
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "decoder_attention_heads": s["encoder_attention_heads"],
        "decoder_ffn_dim": s["encoder_ffn_dim"],
        "decoder_layers": s["encoder_layers"],
        "max_target_positions": 448,
        "num_hidden_layers": s["encoder_layers"],
        "vocab_size": 51866,
        "pad_token_id": 50256,
        "bos_token_id": 50257,
        "eos_token_id": 50257,
        "decoder_start_token_id": 50258,
        "init_std": 0.02,
        "scale_embedding": False,
        "apply_spec_augment": False,
        "is_encoder_decoder": True,
        "use_cache": True,
        "encoder_causal_attention": False,
        "quantize_causal_encoder": False,
        "quantize_commit_coefficient": 0.25,
        "quantize_loss_scale": 10.0,
        "quantize_restart_interval": 100,
        "skip_language_detection": True,
        "torch_dtype": "float32",
        **s,
    }
    preprocessor = {
        "chunk_length": chunk_length,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": s["num_mel_bins"],
        "hop_length": 160,
        "n_fft": 400,
        "n_samples": chunk_length * SAMPLE_RATE,
        "nb_max_frames": chunk_length * SAMPLE_RATE // 160,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "WhisperProcessor",
        "return_attention_mask": False,
        "sampling_rate": SAMPLE_RATE,
    }
    return model, preprocessor


def _sinusoids(length: int, channels: int) -> torch.Tensor:
    # float64, rounded once: torch's float32 sin/cos/exp differ in the last bit between CPU kernels, and the random
    # checkpoints must be the same bytes on every machine (the parity goldens check their hashes)
    scales = np.exp(-math.log(10000) / (channels // 2 - 1) * np.arange(channels // 2, dtype=np.float64))
    angles = np.arange(length, dtype=np.float64)[:, None] * scales[None, :]
    return torch.from_numpy(np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32))


# ... except that the convolutions amplify the (small) log-mel variations and each layer adds little to the
# residual stream: otherwise a time-constant offset dominates the hidden states and every frame gets one token.
_GAINS = {"conv1": 3.0, "conv2": 2.0, "out_proj": 0.2, "fc2": 0.2}


def _random_state(config: GLMTokenizerConfig, seed: int) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WhisperVQEncoder(config).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std

    state: dict[str, torch.Tensor] = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if key in ("embed_positions.weight", "embed_positions2.weight", "ema_count", "ema_weight"):
            continue  # derived below
        if "layer_norm" in key:
            state[key] = 1.0 + normal(shape, 0.1) if key.endswith("weight") else normal(shape, 0.1)
        elif key.endswith("bias"):
            state[key] = normal(shape, 0.02)
        elif key == "codebook.weight":
            state[key] = normal(shape, 0.2)
        else:  # conv / linear weights: about unit gain, ...
            gain = _GAINS.get(key.split(".")[-2], 1.0)
            state[key] = normal(shape, gain / math.sqrt(math.prod(shape[1:])))
    # Whisper's sinusoidal positions (the reference's init), scaled down so the audio, not the position,
    # decides the tokens; the post-quantizer table starts as a copy, as in the reference.
    positions = 0.1 * _sinusoids(*shapes["embed_positions.weight"])
    state["embed_positions.weight"] = positions
    state["embed_positions2.weight"] = positions[: shapes["embed_positions2.weight"][0]].clone()
    if "ema_count" in shapes:
        state["ema_count"] = torch.ones(shapes["ema_count"])
        state["ema_weight"] = state["codebook.weight"].clone()
    return {k: v.to(torch.float32).contiguous() for k, v in state.items()}


def write_random_checkpoint(directory: str | Path, *, seed: int, size: str = "tiny") -> None:
    """Write ``config.json``, ``preprocessor_config.json`` and ``model.safetensors`` of a randomly initialised
    tokenizer, loadable by this module and by the reference ``WhisperVQEncoder.from_pretrained`` /
    ``WhisperFeatureExtractor.from_pretrained``. Same seed and size -> byte-identical files."""
    if size not in _SIZES:
        raise ValueError(f"size must be one of {sorted(_SIZES)}, got {size!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model, preprocessor = _config_files(size)
    config = GLMTokenizerConfig.from_dict(model, preprocessor)
    save_file(_random_state(config, seed), str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(model, indent=2, sort_keys=True) + "\n")
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2, sort_keys=True) + "\n")
