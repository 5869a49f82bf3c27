"""Vocos-style ConvNeXt backbone (optionally speaker-conditioned via adaptive LayerNorm) and the
up/down-sampling block used between backbones.

``mask`` (batch, 1, time), 1 on an item's own frames and 0 on padding: padded frames are zeroed before every
convolution over time, which then sees exactly the zero padding it sees for the item alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine parameters whose scale and shift are predicted from a condition vector."""

    def __init__(self, condition_dim: int, dim: int):
        super().__init__()
        self.dim = dim
        self.scale = nn.Linear(condition_dim, dim)
        self.shift = nn.Linear(condition_dim, dim)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        # x: (batch, time, dim); condition: (batch, condition_dim)
        x = F.layer_norm(x, (self.dim,), eps=LN_EPS)
        return x * self.scale(condition).unsqueeze(1) + self.shift(condition).unsqueeze(1)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, intermediate_dim: int, layer_scale: float, condition_dim: int | None = None):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = AdaLayerNorm(condition_dim, dim) if condition_dim else nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (batch, dim, time)
        residual = x
        x = self.dwconv(x if mask is None else x * mask).transpose(1, 2)
        x = self.norm(x, condition) if isinstance(self.norm, AdaLayerNorm) else self.norm(x)
        x = self.pwconv2(self.act(self.pwconv1(x)))
        return residual + (self.gamma * x).transpose(1, 2)


class VocosBackbone(nn.Module):
    """(batch, input_channels, time) -> (batch, time, dim). Keeps the time resolution."""

    def __init__(self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int,
                 condition_dim: int | None = None):
        super().__init__()
        self.embed = nn.Conv1d(input_channels, dim, kernel_size=7, padding=3)
        self.norm = AdaLayerNorm(condition_dim, dim) if condition_dim else nn.LayerNorm(dim, eps=LN_EPS)
        self.convnext = nn.ModuleList(
            ConvNeXtBlock(dim, intermediate_dim, 1.0 / num_layers, condition_dim) for _ in range(num_layers)
        )
        self.final_layer_norm = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(x if mask is None else x * mask).transpose(1, 2)
        x = self.norm(x, condition) if isinstance(self.norm, AdaLayerNorm) else self.norm(x)
        x = x.transpose(1, 2)
        for block in self.convnext:
            x = block(x, condition, mask)
        return self.final_layer_norm(x.transpose(1, 2))


class SamplingBlock(nn.Module):
    """(batch, time, dim) -> (batch, dim, time'): learned resampling plus parameter-free skip paths.

    With both scales 1 this is exactly ``3 * x`` (the three branches coincide), as in the released model.
    """

    def __init__(self, dim: int, groups: int = 1, upsample_scale: int = 1, downsample_scale: int = 1):
        super().__init__()
        self.upsample_scale = upsample_scale
        self.downsample_scale = downsample_scale
        if upsample_scale > 1:
            r = upsample_scale
            self.de_conv_upsampler = nn.Sequential(
                nn.LeakyReLU(0.2),
                nn.ConvTranspose1d(dim, dim, kernel_size=2 * r, stride=r, padding=r // 2 + r % 2,
                                   output_padding=r % 2, groups=groups),
            )
        if downsample_scale > 1:
            r = downsample_scale
            self.conv_downsampler = nn.Sequential(
                nn.LeakyReLU(0.2),
                nn.Conv1d(dim, dim, kernel_size=2 * r, stride=r, padding=r // 2 + r % 2, groups=groups),
            )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x.transpose(1, 2) if mask is None else x.transpose(1, 2) * mask
        if self.upsample_scale > 1:
            repeated = x.repeat_interleave(self.upsample_scale, dim=2)
            merged = repeated + self.de_conv_upsampler(x)
        else:
            repeated = merged = x
        if self.downsample_scale > 1:
            r = self.downsample_scale
            return (self.conv_downsampler(merged) + F.avg_pool1d(repeated, r, r) + F.avg_pool1d(merged, r, r))
        return merged + repeated + merged
