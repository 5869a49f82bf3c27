"""wav2vec2 features for the semantic stream: the mean of hidden states 11, 14 and 16 of wav2vec2-large-xlsr-53.

``hidden_states[k]`` follows transformers' convention: index 0 is the input of the first transformer layer,
index k the output of layer k. Only the first 16 layers are ever needed, so the rest are dropped after a
strict load. Caveat reproduced here: in the stable-layer-norm variant transformers applies the encoder's
final LayerNorm to the *last* hidden state only, so index 16 is normalised iff the model has exactly 16 layers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import check_loading_info, quiet_transformers
from ..errors import CheckpointError

MIXED_LAYERS = (11, 14, 16)

# Heads of Wav2Vec2ForPreTraining (the released xlsr-53 weights); the bare encoder does not use them.
PRETRAINING_HEAD_PREFIXES = ("quantizer.", "project_q.", "project_hid.")


class Wav2Vec2Features(nn.Module):
    """Raw 16 kHz waveforms (batch, samples) -> mixed hidden states (batch, frames, hidden_size)."""

    def __init__(self, model: nn.Module, *, do_normalize: bool = True):
        super().__init__()
        config = model.config
        self.num_layers = config.num_hidden_layers
        needed = max(MIXED_LAYERS)
        if self.num_layers < needed:
            raise CheckpointError(f"wav2vec2 has {self.num_layers} layers; BiCodec mixes hidden states up to {needed}")
        self.stable_layer_norm = bool(config.do_stable_layer_norm)
        self.conv_kernel = tuple(config.conv_kernel)
        self.conv_stride = tuple(config.conv_stride)
        self.do_normalize = do_normalize
        self.hidden_size = config.hidden_size
        model.encoder.layers = model.encoder.layers[:needed]
        self.model = model

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device="cpu", dtype=torch.float32) -> Wav2Vec2Features:
        from transformers import Wav2Vec2Model

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise CheckpointError(f"no wav2vec2 config.json in {directory}")
        if not (directory / "model.safetensors").is_file():
            raise CheckpointError(
                f"no wav2vec2 model.safetensors in {directory} (pickle weights are never loaded: convert them "
                "once with `gpa convert-weights`)"
            )
        try:
            with quiet_transformers():
                model, info = Wav2Vec2Model.from_pretrained(
                    str(directory), use_safetensors=True, output_loading_info=True, dtype=dtype
                )
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot load wav2vec2 from {directory}: {exc}") from exc
        check_loading_info(f"wav2vec2 weights in {directory}", info, ignore_unexpected=PRETRAINING_HEAD_PREFIXES)
        do_normalize = True
        preprocessor = directory / "preprocessor_config.json"
        if preprocessor.is_file():
            do_normalize = bool(json.loads(preprocessor.read_text()).get("do_normalize", True))
        return cls(model, do_normalize=do_normalize).to(device).eval()

    def num_frames(self, num_samples: int) -> int:
        """Frames the convolutional front end yields for ``num_samples`` (0 if too short for one)."""
        length = num_samples
        for kernel, stride in zip(self.conv_kernel, self.conv_stride, strict=True):
            if length < kernel:
                return 0
            length = (length - kernel) // stride + 1
        return length

    def normalize(self, wav: np.ndarray) -> np.ndarray:
        """Per-utterance zero mean / unit variance, as Wav2Vec2FeatureExtractor computes it (float32 numpy)."""
        wav = np.asarray(wav, dtype=np.float32)
        if not self.do_normalize:
            return wav
        return (wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)

    @torch.no_grad()
    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        model = self.model
        encoder = model.encoder
        dtype = next(model.parameters()).dtype
        extracted = model.feature_extractor(input_values.to(dtype))
        hidden, _ = model.feature_projection(extracted.transpose(1, 2))
        hidden = hidden + encoder.pos_conv_embed(hidden)
        if not self.stable_layer_norm:
            hidden = encoder.layer_norm(hidden)
        states = [hidden]
        for layer in encoder.layers:
            out = layer(hidden, attention_mask=None)
            hidden = out[0] if isinstance(out, tuple) else out
            states.append(hidden)
        if self.stable_layer_norm and self.num_layers == len(states) - 1:
            states[-1] = encoder.layer_norm(states[-1])
        a, b, c = MIXED_LAYERS
        return (states[a] + states[b] + states[c]) / 3
