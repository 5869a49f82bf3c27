"""The tokenizer network, ``WhisperVQEncoder``: log-mel -> conv stem -> block-causal layers -> pooling -> nearest
codebook entry. Parameter names are the checkpoint's keys (the reference state dict, unprefixed)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import TooLongAudio
from ..inference import full_precision
from .config import ACTIVATIONS, CONV_STRIDE, GLMTokenizerConfig


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
        self.activation = ACTIVATIONS[config.activation_function]

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
