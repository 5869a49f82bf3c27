"""ECAPA-TDNN speaker encoder (512 channels, global-context attentive statistics pooling).

The released model fixes the trunk width at 512 channels and the frame-level output at 3 * 512, whatever the
other dimensions are; only the mel input size and the embedding size are configurable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS = 512
LATENT_CHANNELS = 3 * CHANNELS


class Conv1dReluBn(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=padding)
        self.bn = nn.BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(x)))


class Res2Conv1dReluBn(nn.Module):
    """Split channels into ``scale`` groups; each group (but the last, passed through) is convolved after
    adding the previous group's output, growing the receptive field within one layer."""

    def __init__(self, channels: int, kernel_size: int, padding: int, dilation: int, scale: int = 8):
        super().__init__()
        self.width = channels // scale
        self.nums = scale - 1
        self.convs = nn.ModuleList(
            nn.Conv1d(self.width, self.width, kernel_size, padding=padding, dilation=dilation)
            for _ in range(self.nums)
        )
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(self.nums))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        splits = torch.split(x, self.width, dim=1)
        out = []
        sp = splits[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            if i >= 1:
                sp = sp + splits[i]
            sp = bn(F.relu(conv(sp)))
            out.append(sp)
        out.append(splits[self.nums])
        return torch.cat(out, dim=1)


class SE_Connect(nn.Module):  # noqa: N801 - name matches the checkpoint's module path
    """Squeeze-and-excitation: channel gates from the time-averaged activations."""

    def __init__(self, channels: int, bottleneck: int = 128):
        super().__init__()
        self.linear1 = nn.Linear(channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = torch.sigmoid(self.linear2(F.relu(self.linear1(x.mean(dim=2)))))
        return x * gates.unsqueeze(2)


class SE_Res2Block(nn.Module):  # noqa: N801
    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.se_res2block = nn.Sequential(
            Conv1dReluBn(channels, channels),
            Res2Conv1dReluBn(channels, kernel_size=3, padding=dilation, dilation=dilation),
            Conv1dReluBn(channels, channels),
            SE_Connect(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se_res2block(x)


class ASTP(nn.Module):
    """Attentive statistics pooling with global context: attention weights see each frame together with the
    utterance mean and standard deviation; returns the attention-weighted mean and std."""

    def __init__(self, in_dim: int, bottleneck: int = 128):
        super().__init__()
        self.linear1 = nn.Conv1d(in_dim * 3, bottleneck, kernel_size=1)
        self.linear2 = nn.Conv1d(bottleneck, in_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True).expand_as(x)
        std = torch.sqrt(torch.var(x, dim=-1, keepdim=True) + 1e-7).expand_as(x)
        alpha = torch.softmax(self.linear2(torch.tanh(self.linear1(torch.cat((x, mean, std), dim=1)))), dim=2)
        w_mean = torch.sum(alpha * x, dim=2)
        w_var = torch.sum(alpha * x**2, dim=2) - w_mean**2
        return torch.cat([w_mean, torch.sqrt(w_var.clamp(min=1e-7))], dim=1)


class ECAPA_TDNN(nn.Module):  # noqa: N801
    def __init__(self, feat_dim: int, embed_dim: int):
        super().__init__()
        self.layer1 = Conv1dReluBn(feat_dim, CHANNELS, kernel_size=5, padding=2)
        self.layer2 = SE_Res2Block(CHANNELS, dilation=2)
        self.layer3 = SE_Res2Block(CHANNELS, dilation=3)
        self.layer4 = SE_Res2Block(CHANNELS, dilation=4)
        self.conv = nn.Conv1d(3 * CHANNELS, LATENT_CHANNELS, kernel_size=1)
        self.pool = ASTP(LATENT_CHANNELS)
        self.bn = nn.BatchNorm1d(2 * LATENT_CHANNELS)
        self.linear = nn.Linear(2 * LATENT_CHANNELS, embed_dim)

    def frame_latents(self, mel: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, frames) -> (batch, 1536, frames), the input of the perceiver."""
        out2 = self.layer2(self.layer1(mel))
        out3 = self.layer3(out2)
        out4 = self.layer4(out3)
        return F.relu(self.conv(torch.cat([out2, out3, out4], dim=1)))

    def embed(self, latents: torch.Tensor) -> torch.Tensor:
        """Frame latents -> utterance embedding (batch, embed_dim)."""
        return self.linear(self.bn(self.pool(latents)))
