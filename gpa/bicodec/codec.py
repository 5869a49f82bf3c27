"""The BiCodec network: the modules of ``BiCodec/model.safetensors`` under their checkpoint names."""

from __future__ import annotations

import torch
from torch import nn

from .config import BiCodecConfig
from .feature_codec import Decoder, Encoder
from .quantizer import FactorizedVectorQuantize
from .speaker import SpeakerEncoder
from .wave_generator import WaveGenerator


class BiCodecModel(nn.Module):
    def __init__(self, config: BiCodecConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.encoder)
        self.quantizer = FactorizedVectorQuantize(config.quantizer)
        self.speaker_encoder = SpeakerEncoder(config.speaker_encoder)
        self.prenet = Decoder(config.prenet)
        # Trained as an auxiliary feature predictor; inference never runs it, the checkpoint carries it.
        self.postnet = Decoder(config.postnet)
        self.decoder = WaveGenerator(config.decoder)

    def semantic_tokens(self, features: torch.Tensor, lengths: list[int] | None = None) -> torch.Tensor:
        """wav2vec2 features (batch, frames, channels) -> (batch, tokens); ``lengths``: each item's own frames
        (tokens past an item's ``encoder.output_length`` are padding)."""
        return self.quantizer.tokenize(self.encoder(features.transpose(1, 2), lengths))

    def decode(self, semantic_tokens: torch.Tensor, global_tokens: torch.Tensor,
               lengths: list[int] | None = None) -> torch.Tensor:
        """(batch, tokens) and (batch, num_quantizers, token_num) -> waveform (batch, samples). ``lengths``: each
        item's own number of tokens (None: every row is whole); samples past an item's share are padding."""
        speaker = self.speaker_encoder.detokenize(global_tokens)
        lengths_t = None if lengths is None else torch.tensor(lengths).to(semantic_tokens.device, non_blocking=True)
        x = self.prenet(self.quantizer.detokenize(semantic_tokens), speaker, lengths_t)
        if lengths_t is not None:
            lengths_t = self.prenet.output_length(lengths_t)
        return self.decoder(x + speaker.unsqueeze(-1), lengths_t).squeeze(1)
