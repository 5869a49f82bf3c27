"""Feature encoder (wav2vec2 features -> latent to quantize) and feature decoder (prenet/postnet)."""

from __future__ import annotations

import torch
from torch import nn

from .config import EncoderConfig, FeatDecoderConfig
from .layers import frame_mask
from .vocos import SamplingBlock, VocosBackbone


class Encoder(nn.Module):
    """(batch, input_channels, frames) -> (batch, out_channels, frames / prod(sample_ratios))."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        dim, inner = config.vocos_dim, config.vocos_intermediate_dim
        self.encoder = VocosBackbone(config.input_channels, dim, inner, config.vocos_num_layers)
        self.downsample = nn.Sequential(
            *(
                nn.Sequential(
                    SamplingBlock(dim, groups=dim, downsample_scale=ratio),
                    VocosBackbone(dim, dim, inner, num_layers=2),
                )
                for ratio in config.sample_ratios
            )
        )
        self.project = nn.Linear(dim, config.out_channels)
        self.sample_ratios = tuple(config.sample_ratios)

    def output_length(self, frames: int) -> int:
        """Output frames for ``frames`` input frames (each downsampling block keeps whole windows)."""
        for ratio in self.sample_ratios:
            frames //= ratio
        return frames

    def forward(self, x: torch.Tensor, lengths: list[int] | None = None) -> torch.Tensor:
        """``lengths``: each item's own number of input frames (the rest is padding); None: every row is whole.
        Output frames past an item's ``output_length`` are padding."""
        if lengths is None:
            return self.project(self.downsample(self.encoder(x))).transpose(1, 2)
        lengths_t = torch.tensor(lengths).to(x.device, non_blocking=True)
        x = _resample(self.downsample, self.encoder(x, mask=frame_mask(lengths_t, x)), lengths_t)
        return self.project(x).transpose(1, 2)


def _resample(blocks: nn.Sequential, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(SamplingBlock, VocosBackbone) pairs over (batch, time, dim) ``x`` whose items have ``lengths`` frames (an
    integer tensor on ``x``'s device; the rest is padding, kept out of every convolution); returns
    (batch, time', dim)."""
    for sampling, backbone in blocks:
        x = sampling(x, frame_mask(lengths, x.transpose(1, 2)))
        lengths = lengths * sampling.upsample_scale // sampling.downsample_scale
        x = backbone(x, mask=frame_mask(lengths, x))
    return x


class Decoder(nn.Module):
    """(batch, input_channels, frames) [+ condition (batch, condition_dim)] -> (batch, out_channels, frames')."""

    def __init__(self, config: FeatDecoderConfig):
        super().__init__()
        dim, inner = config.vocos_dim, config.vocos_intermediate_dim
        self.linear_pre = nn.Linear(config.input_channels, dim)
        # Named "downsample" in the checkpoint although these blocks upsample.
        self.downsample = nn.Sequential(
            *(
                nn.Sequential(
                    SamplingBlock(dim, groups=dim, upsample_scale=ratio),
                    VocosBackbone(dim, dim, inner, num_layers=2),
                )
                for ratio in config.sample_ratios
            )
        )
        self.vocos_backbone = VocosBackbone(dim, dim, inner, config.vocos_num_layers, config.condition_dim)
        self.linear = nn.Linear(dim, config.out_channels)
        self.use_tanh_at_final = config.use_tanh_at_final

    def output_length(self, frames):
        """Output frames for ``frames`` input frames (an int, or an integer tensor of them)."""
        for sampling, _ in self.downsample:
            frames = frames * sampling.upsample_scale // sampling.downsample_scale
        return frames

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``lengths``: each item's own number of input frames (an integer tensor on ``x``'s device; the rest is
        padding); None: every row is whole. Output frames past an item's ``output_length`` are padding."""
        x = self.linear_pre(x.transpose(1, 2))
        if lengths is None:
            x = self.vocos_backbone(self.downsample(x).transpose(1, 2), condition)
        else:
            x = _resample(self.downsample, x, lengths).transpose(1, 2)
            x = self.vocos_backbone(x, condition, frame_mask(self.output_length(lengths), x))
        x = self.linear(x).transpose(1, 2)
        return torch.tanh(x) if self.use_tanh_at_final else x
