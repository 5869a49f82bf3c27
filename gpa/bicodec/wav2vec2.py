"""wav2vec2 features for the semantic stream: the mean of hidden states 11, 14 and 16 of wav2vec2-large-xlsr-53.

``hidden_states[k]`` follows transformers' convention: index 0 is the input of the first transformer layer,
index k the output of layer k. Only the first 16 layers are ever needed, so the rest are dropped after a
strict load. Caveat reproduced here: in the stable-layer-norm variant transformers applies the encoder's
final LayerNorm to the *last* hidden state only, so index 16 is normalised iff the model has exactly 16 layers.

Batches of different lengths: each item's valid frames come out as they would for the item alone. The
convolutional front end has no padding, so valid frames only ever see the item's own samples (its per-frame
LayerNorm mixes nothing over time; the GroupNorm variant normalises over time, so there the front end runs item
by item, as it does on a CPU). Padded frames are zeroed before the positional convolution, which sees them as
its zero padding, and are masked out as attention keys.
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
        # "group": a GroupNorm over time after the first convolution, which padding would leak into.
        self.front_end_per_frame = config.feat_extract_norm == "layer"
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

    def _front_end(self, input_values: torch.Tensor, lengths: list[int] | None) -> torch.Tensor:
        """Convolutional features (batch, frames, conv_dim[-1])."""
        extractor = self.model.feature_extractor
        # Item by item where the front end normalises over time (GroupNorm), and on a CPU, where one clip's large
        # early activations stay in cache (16 clips of 2-10 s, tiny checkpoint, 1 thread: semantic tokens in
        # 0.46 s with the front end batched, 0.31 s item by item, 0.34 s one clip per call).
        per_item = not self.front_end_per_frame or input_values.device.type == "cpu"
        if lengths is None or not per_item:
            return extractor(input_values).transpose(1, 2)
        frames = self.num_frames(input_values.shape[1])
        out = input_values.new_zeros(input_values.shape[0], frames, self.model.config.conv_dim[-1])
        for row, n in enumerate(lengths):
            item = extractor(input_values[row : row + 1, :n]).transpose(1, 2)
            out[row, : item.shape[1]] = item[0]
        return out

    @torch.no_grad()
    def forward(self, input_values: torch.Tensor, lengths: list[int] | None = None) -> torch.Tensor:
        """``lengths``: each row's own number of samples (the rest is padding); None: every row is whole.

        Frames past an item's ``num_frames(length)`` are padding in the result.
        """
        model = self.model
        encoder = model.encoder
        dtype = next(model.parameters()).dtype
        extracted = self._front_end(input_values.to(dtype), lengths)
        hidden, _ = model.feature_projection(extracted)
        attention_mask = None
        if lengths is not None and any(n != input_values.shape[1] for n in lengths):
            frames = torch.tensor([self.num_frames(n) for n in lengths], device=hidden.device)
            valid = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < frames[:, None]
            # zero padding as the positional convolution would see it for the item alone
            hidden = hidden * valid[..., None].to(hidden.dtype)
            # additive key mask (batch, 1, 1, keys), broadcast over heads and queries by eager and SDPA attention
            # alike; a boolean (batch, 1, queries, keys) mask costs a conversion per layer on the CPU
            attention_mask = torch.zeros(valid.shape, dtype=hidden.dtype, device=hidden.device)
            attention_mask = attention_mask.masked_fill(~valid, torch.finfo(hidden.dtype).min)[:, None, None, :]
        hidden = hidden + encoder.pos_conv_embed(hidden)
        if not self.stable_layer_norm:
            hidden = encoder.layer_norm(hidden)
        states = [hidden]
        for layer in encoder.layers:
            out = layer(hidden, attention_mask=attention_mask)
            hidden = out[0] if isinstance(out, tuple) else out
            states.append(hidden)
        if self.stable_layer_norm and self.num_layers == len(states) - 1:
            states[-1] = encoder.layer_norm(states[-1])
        a, b, c = MIXED_LAYERS
        return (states[a] + states[b] + states[c]) / 3
