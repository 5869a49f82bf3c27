"""The GLM-4-Voice tokenizer's settings: ``config.json`` (a ``WhisperVQConfig``) and ``preprocessor_config.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from torch.nn import functional as F

from ..errors import CheckpointError

SAMPLE_RATE = 16000
# conv1 has stride 1 and conv2 stride 2 in every Whisper encoder.
CONV_STRIDE = 2


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
        if self.activation_function not in ACTIVATIONS:
            problems.append(f"activation_function {self.activation_function!r} not supported")
        if self.max_samples < self.samples_per_token:
            problems.append("max_source_positions too small for one token")
        if problems:
            raise CheckpointError("unsupported GLM tokenizer config: " + "; ".join(problems))


ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}
