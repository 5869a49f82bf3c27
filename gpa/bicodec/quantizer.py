"""Factorized vector quantizer for the semantic stream: project to a low-dimensional code space and pick the
codebook entry with the highest cosine similarity."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..inference import full_precision
from .config import QuantizerConfig
from .layers import WNConv1d


class FactorizedVectorQuantize(nn.Module):
    def __init__(self, config: QuantizerConfig):
        super().__init__()
        self.codebook_size = config.codebook_size
        if config.input_dim != config.codebook_dim:
            self.in_project = WNConv1d(config.input_dim, config.codebook_dim, kernel_size=1)
            self.out_project = WNConv1d(config.codebook_dim, config.input_dim, kernel_size=1)
        else:
            self.in_project = nn.Identity()
            self.out_project = nn.Identity()
        self.codebook = nn.Embedding(config.codebook_size, config.codebook_dim)
        # Training statistic (EMA code usage); kept only because the checkpoint carries it.
        self.register_buffer("cluster_size", torch.zeros(config.codebook_size))

    def tokenize(self, z: torch.Tensor) -> torch.Tensor:
        """(batch, input_dim, frames) -> (batch, frames) int64 code indices, picked in float32 whatever the
        model dtype or autocast."""
        with full_precision(z.device):
            weight_dtype = self.codebook.weight.dtype
            latents = self.in_project(z.to(weight_dtype)).float()
            batch = latents.shape[0]
            encodings = F.normalize(latents.transpose(1, 2).reshape(-1, latents.shape[1]))
            codebook = F.normalize(self.codebook.weight.float())
            # Squared euclidean distance of unit vectors (= 2 - 2 cos); same expression as the reference so that
            # near-ties resolve identically.
            dist = (
                encodings.pow(2).sum(1, keepdim=True)
                - 2 * encodings @ codebook.t()
                + codebook.pow(2).sum(1, keepdim=True).t()
            )
        return (-dist).max(1).indices.reshape(batch, -1)

    def detokenize(self, indices: torch.Tensor) -> torch.Tensor:
        """(batch, frames) indices -> (batch, input_dim, frames)."""
        return self.out_project(self.codebook(indices).transpose(1, 2))
