"""DAC-style waveform generator: transposed-conv upsampling stages with dilated Snake residual units.

``lengths`` (each item's own number of input frames) batches items of different lengths: every convolution's
input is multiplied by the frame mask of its resolution, so it sees the zero padding it sees for the item alone.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import WaveGeneratorConfig
from .layers import Snake1d, WNConv1d, WNConvTranspose1d, frame_mask


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=7, dilation=dilation, padding=3 * dilation),
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # "Same" padding: lengths always match. In-place steps touch only tensors made here (fewer fresh pages).
        snake, conv, snake_out, pointwise = self.block
        h = snake(x)
        if mask is not None:
            h = h.mul_(mask)
        return pointwise(snake_out(conv(h))).add_(x)


class DecoderBlock(nn.Module):
    """Upsample by ``stride`` (output length exactly ``stride * input``), then three residual units."""

    def __init__(self, input_dim: int, output_dim: int, kernel_size: int, stride: int):
        super().__init__()
        self.stride = stride
        self.block = nn.Sequential(
            Snake1d(input_dim),
            WNConvTranspose1d(input_dim, output_dim, kernel_size, stride=stride, padding=(kernel_size - stride) // 2),
            ResidualUnit(output_dim, dilation=1),
            ResidualUnit(output_dim, dilation=3),
            ResidualUnit(output_dim, dilation=9),
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None:
            return self.block(x)
        snake, upsample, *residual_units = self.block
        x = upsample(snake(x).mul_(frame_mask(lengths, x)))
        mask = frame_mask(lengths * self.stride, x)
        for unit in residual_units:
            x = unit(x, mask)
        return x


class WaveGenerator(nn.Module):
    """(batch, input_channel, frames) -> (batch, d_out, frames * prod(rates)), in [-1, 1]."""

    def __init__(self, config: WaveGeneratorConfig):
        super().__init__()
        channels = config.channels
        layers: list[nn.Module] = [WNConv1d(config.input_channel, channels, kernel_size=7, padding=3)]
        for i, (kernel_size, stride) in enumerate(zip(config.kernel_sizes, config.rates, strict=True)):
            layers.append(DecoderBlock(channels // 2**i, channels // 2 ** (i + 1), kernel_size, stride))
        last = channels // 2 ** len(config.rates)
        layers += [Snake1d(last), WNConv1d(last, config.d_out, kernel_size=7, padding=3), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``lengths``: each item's own number of input frames (an integer tensor on ``x``'s device; None: every
        row is whole); output samples past an item's ``lengths[i] * prod(rates)`` are padding."""
        if lengths is None:
            return self.model(x)
        for layer in self.model:
            if isinstance(layer, DecoderBlock):
                x = layer(x, lengths)
                lengths = lengths * layer.stride
            elif isinstance(layer, WNConv1d):
                x = layer(x * frame_mask(lengths, x))
            else:
                x = layer(x)
        return x
