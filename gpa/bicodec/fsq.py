"""Residual finite scalar quantization (FSQ) for the global (speaker) tokens.

Each of ``len(levels)`` code dimensions is squashed into ``levels[i]`` integer steps; a token is the
mixed-radix number formed by those steps. Residual stages re-quantize what the previous stages left,
at a finer scale ``(levels - 1) ** -stage``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..inference import full_precision


class ResidualFSQ(nn.Module):
    def __init__(self, levels: tuple[int, ...], num_quantizers: int, dim: int):
        super().__init__()
        code_dim = len(levels)
        self.num_quantizers = num_quantizers
        self.project_in = nn.Linear(dim, code_dim) if dim != code_dim else nn.Identity()
        self.project_out = nn.Linear(code_dim, dim) if dim != code_dim else nn.Identity()
        levels_t = torch.tensor(levels, dtype=torch.int32)
        self.register_buffer("levels", levels_t, persistent=False)
        basis = torch.cumprod(torch.tensor([1, *levels[:-1]]), dim=0, dtype=torch.int32)
        self.register_buffer("basis", basis, persistent=False)
        scales = torch.stack([(torch.tensor(levels, dtype=torch.float32) - 1) ** -q for q in range(num_quantizers)])
        self.register_buffer("scales", scales, persistent=False)
        self.codebook_size = math.prod(levels)

    def _bound(self, z: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
        # tanh squashing into (-(L-1)/2, (L-1)/2), shifted by half a step for even L so that rounding
        # yields exactly L values.
        half_l = (self.levels - 1) * (1 + eps) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = (offset / half_l).atanh()
        return (z + shift).tanh() * half_l - offset

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (..., code_dim) -> codes in [-1, 1] and int64 indices (...)."""
        half_width = self.levels // 2
        codes = self._bound(z).round() / half_width
        digits = codes * half_width + half_width
        indices = (digits * self.basis).sum(dim=-1).to(torch.int32)
        return codes, indices.long()

    def _indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        digits = (indices.unsqueeze(-1) // self.basis) % self.levels
        half_width = self.levels // 2
        return (digits - half_width) / half_width

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, dim) -> (batch, num_quantizers, tokens) indices. Quantization runs in float32."""
        with full_precision(x.device):
            proj_dtype = self.project_in.weight.dtype if isinstance(self.project_in, nn.Linear) else x.dtype
            residual = self.project_in(x.to(proj_dtype)).float()
        all_indices = []
        for scale in self.scales.float():
            codes, indices = self._quantize(residual / scale)
            residual = residual - codes * scale
            all_indices.append(indices)
        return torch.stack(all_indices, dim=1)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """(batch, num_quantizers, tokens) indices -> (batch, tokens, dim)."""
        scales = self.scales.float()
        codes = sum(self._indices_to_codes(indices[:, q]) * scales[q] for q in range(indices.shape[1]))
        proj_dtype = self.project_out.weight.dtype if isinstance(self.project_out, nn.Linear) else codes.dtype
        return self.project_out(codes.to(proj_dtype))
