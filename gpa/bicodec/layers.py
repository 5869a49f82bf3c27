"""Small building blocks: weight-normalised convolutions (checkpoint keys ``weight_g``/``weight_v``), Snake, and
the frame mask that keeps a batch's padding out of convolutions over time."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _weight_from_norm(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    # weight = g * v / ||v||, the norm taken over every dim except 0 (torch's weight_norm with dim=0).
    norm = v.norm(2, dim=tuple(range(1, v.dim())), keepdim=True)
    return v * (g / norm)


class WNConv1d(nn.Module):
    """Conv1d whose weight is stored as direction ``weight_v`` and per-channel magnitude ``weight_g``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, dilation: int = 1):
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight_g = nn.Parameter(torch.ones(out_channels, 1, 1))
        self.weight_v = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _weight_from_norm(self.weight_v, self.weight_g)
        if weight.shape[-1] == 1 and self.stride == 1 and self.padding == 0 and x.dim() == 3:
            # A kernel-1 convolution is a product of matrices over channels. As one it costs what oneDNN's
            # convolution costs for wide layers, and far less for narrow ones over long batched inputs.
            return torch.baddbmm(self.bias[:, None], weight[:, :, 0].expand(x.shape[0], -1, -1), x)
        return F.conv1d(x, weight, self.bias, self.stride, self.padding, self.dilation)


class WNConvTranspose1d(nn.Module):
    """ConvTranspose1d with weight norm over dim 0, which for a transposed conv is the *input* channel."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, padding: int = 0):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.weight_g = nn.Parameter(torch.ones(in_channels, 1, 1))
        self.weight_v = nn.Parameter(torch.empty(in_channels, out_channels, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _weight_from_norm(self.weight_v, self.weight_g)
        return F.conv_transpose1d(x, weight, self.bias, self.stride, self.padding)


class Snake1d(nn.Module):
    """x + sin^2(alpha x) / alpha with a learned per-channel frequency ``alpha``."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)
        # Without autograd: one new tensor, worked on in place (the same values bit for bit outside autocast, where
        # the decoder runs). Over long batched inputs a CPU spends more on the fresh pages of the formula's four
        # temporaries than on its arithmetic.
        return torch.mul(self.alpha, x).sin_().square_().mul_((self.alpha + 1e-9).reciprocal()).add_(x)


def frame_mask(lengths: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(batch, 1, time) in ``x``'s dtype, 1 on each item's first ``lengths[i]`` frames; ``x`` is (batch, C, time).

    A convolution whose input is multiplied by it sees, for every item, exactly the zero padding it sees for the
    item alone, so an item's frames do not depend on its batch mates. ``lengths`` is an integer tensor on ``x``'s
    device (made once per batch: a copy from the host per mask would wait for the GPU each time)."""
    frames = torch.arange(x.shape[-1], device=x.device)
    return (frames[None, None, :] < lengths[:, None, None]).to(x.dtype)
