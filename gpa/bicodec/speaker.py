"""Speaker path: mel -> ECAPA-TDNN frame latents -> perceiver (32 slots) -> residual FSQ -> global tokens,
and back: global tokens -> speaker latent ("d-vector") that conditions the decoder."""

from __future__ import annotations

import torch
from torch import nn

from .config import SpeakerEncoderConfig
from .ecapa import ECAPA_TDNN, LATENT_CHANNELS
from .fsq import ResidualFSQ
from .perceiver import PerceiverResampler


class SpeakerEncoder(nn.Module):
    def __init__(self, config: SpeakerEncoderConfig):
        super().__init__()
        self.config = config
        self.speaker_encoder = ECAPA_TDNN(feat_dim=config.input_dim, embed_dim=config.out_dim)
        self.perceiver_sampler = PerceiverResampler(
            dim=config.latent_dim, dim_context=LATENT_CHANNELS, num_latents=config.token_num
        )
        self.quantizer = ResidualFSQ(config.fsq_levels, config.fsq_num_quantizers, dim=config.latent_dim)
        self.project = nn.Linear(config.latent_dim * config.token_num, config.out_dim)

    def tokenize(self, mel: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, frames) -> (batch, num_quantizers, token_num) global tokens."""
        latents = self.speaker_encoder.frame_latents(mel)
        return self.quantizer.tokenize(self.perceiver_sampler(latents.transpose(1, 2)))

    def tokenize_and_embed(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global tokens and the ECAPA utterance embedding, sharing the trunk."""
        latents = self.speaker_encoder.frame_latents(mel)
        tokens = self.quantizer.tokenize(self.perceiver_sampler(latents.transpose(1, 2)))
        return tokens, self.speaker_encoder.embed(latents)

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch, num_quantizers, token_num) -> (batch, out_dim) speaker latent."""
        z = self.quantizer.decode(tokens)  # (batch, token_num, latent_dim)
        # Flattened channel-major, i.e. as (latent_dim, token_num), like the released projection expects.
        return self.project(z.transpose(1, 2).reshape(z.shape[0], -1))
