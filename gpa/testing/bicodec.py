"""Random-weight BiCodec checkpoints in the released directory layout, for tests and benchmarks.

``directory/config.yaml``, ``directory/model.safetensors`` and ``directory/wav2vec2-large-xlsr-53/{config.json,
preprocessor_config.json, model.safetensors}``, with the released key names, so that the reference
implementation loads them unchanged. Weights come from a ``torch.Generator`` seeded with ``seed`` and are
scaled to keep activations O(1) through the stacks, so tokens vary over time and across voices and decoded
audio is not silent. Same seed and size -> byte-identical files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from ..bicodec.codec import BiCodecModel
from ..bicodec.config import (
    BiCodecConfig,
    EncoderConfig,
    FeatDecoderConfig,
    MelConfig,
    QuantizerConfig,
    SpeakerEncoderConfig,
    WaveGeneratorConfig,
    config_to_dict,
)
from ..bicodec.layers import Snake1d, WNConv1d, WNConvTranspose1d
from ..bicodec.model import CONFIG_FILE, WAV2VEC2_DIR, WEIGHTS_FILE
from ..bicodec.perceiver import PerceiverResampler, RMSNorm
from ..bicodec.quantizer import FactorizedVectorQuantize
from ..bicodec.vocos import AdaLayerNorm, ConvNeXtBlock
from ..bicodec.wave_generator import ResidualUnit

SIZES = ("tiny", "tiny-alt", "real")
WAVE_RATES = (8, 5, 4, 2)  # 320 samples per semantic token at 16 kHz, as released
WAVE_KERNELS = (16, 11, 8, 4)
RESIDUAL_GAIN = 0.1
OUTPUT_GAIN = 0.3


def _bicodec_config(size: str) -> BiCodecConfig:
    if size == "real":
        return BiCodecConfig(
            mel_params=MelConfig(num_mels=128),
            encoder=EncoderConfig(1024, 384, 2048, 12, 1024, (1, 1)),
            decoder=WaveGeneratorConfig(1024, 1536, WAVE_RATES, WAVE_KERNELS),
            quantizer=QuantizerConfig(1024, 8192, 8),
            speaker_encoder=SpeakerEncoderConfig(128, 1024, 128, 32, (4, 4, 4, 4, 4, 4), 1),
            prenet=FeatDecoderConfig(1024, 384, 2048, 12, 1024, condition_dim=1024, sample_ratios=(1, 1)),
            postnet=FeatDecoderConfig(1024, 384, 2048, 6, 1024),
        )
    if size == "tiny":
        return BiCodecConfig(
            mel_params=MelConfig(num_mels=32),
            encoder=EncoderConfig(32, 32, 64, 2, 32, (1, 1)),
            decoder=WaveGeneratorConfig(32, 32, WAVE_RATES, WAVE_KERNELS),
            quantizer=QuantizerConfig(32, 64, 8),
            speaker_encoder=SpeakerEncoderConfig(32, 32, 16, 32, (4, 4, 4, 4, 4, 4), 1),
            prenet=FeatDecoderConfig(32, 32, 64, 2, 32, condition_dim=32, sample_ratios=(1, 1)),
            postnet=FeatDecoderConfig(32, 32, 64, 1, 32),
        )
    if size == "tiny-alt":
        return BiCodecConfig(
            mel_params=MelConfig(num_mels=24, mel_fmax=7600.0),
            encoder=EncoderConfig(48, 40, 80, 3, 40, (1,)),
            decoder=WaveGeneratorConfig(24, 48, WAVE_RATES, WAVE_KERNELS),
            quantizer=QuantizerConfig(40, 100, 6),
            speaker_encoder=SpeakerEncoderConfig(24, 24, 20, 32, (8, 5, 5, 5), 1),
            prenet=FeatDecoderConfig(40, 40, 80, 2, 24, condition_dim=24, sample_ratios=(1, 1)),
            # Upsampling postnet: never run at inference, but its checkpoint keys differ.
            postnet=FeatDecoderConfig(24, 16, 32, 1, 24, sample_ratios=(2, 1)),
            ref_segment_duration=2.5,
            volume_normalize=True,
        )
    raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")


def _wav2vec2_config(size: str) -> dict:
    """config.json of the wav2vec2 encoder (the xlsr-53 architecture; tiny ones keep 320x total stride)."""
    common = {
        "architectures": ["Wav2Vec2Model"],
        "model_type": "wav2vec2",
        "hidden_act": "gelu",
        "hidden_dropout": 0.1,
        "activation_dropout": 0.0,
        "attention_dropout": 0.1,
        "feat_proj_dropout": 0.1,
        "final_dropout": 0.0,
        "layerdrop": 0.1,
        "layer_norm_eps": 1e-5,
        "feat_extract_norm": "layer",
        "feat_extract_activation": "gelu",
        "conv_bias": True,
        "do_stable_layer_norm": True,
        "apply_spec_augment": True,
        "mask_time_prob": 0.075,
        "mask_time_length": 10,
        "mask_feature_prob": 0.0,
        "mask_feature_length": 10,
        "initializer_range": 0.02,
        "vocab_size": 32,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    if size == "real":
        dims = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                    conv_dim=[512] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
                    num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16)
    elif size == "tiny":
        # 17 layers: hidden state 16 is an inner layer's output, as in the 24-layer release.
        dims = dict(hidden_size=32, num_hidden_layers=17, num_attention_heads=2, intermediate_size=64,
                    conv_dim=[32, 32, 32], conv_kernel=[10, 8, 4], conv_stride=[5, 8, 8],
                    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    elif size == "tiny-alt":
        # Exactly 16 layers: hidden state 16 is the final (layer-normed) one. Released conv layout.
        dims = dict(hidden_size=48, num_hidden_layers=16, num_attention_heads=3, intermediate_size=96,
                    conv_dim=[16] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
                    num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4)
    else:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    return {**common, **dims, "num_feat_extract_layers": len(dims["conv_dim"])}


PREPROCESSOR_CONFIG = {
    "do_normalize": True,
    "feature_extractor_type": "Wav2Vec2FeatureExtractor",
    "feature_size": 1,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": True,
    "sampling_rate": 16000,
}


class _Init:
    """Deterministic draws from one seeded generator."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)

    def normal(self, shape, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.gen) * std + mean

    def uniform(self, shape, low: float, high: float) -> torch.Tensor:
        return torch.rand(tuple(shape), generator=self.gen) * (high - low) + low


def _fan_in(module: nn.Module, weight: torch.Tensor) -> int:
    if isinstance(module, (nn.ConvTranspose1d, WNConvTranspose1d)):
        # Each output sample sees in_channels * kernel / stride inputs.
        stride = module.stride[0] if isinstance(module.stride, tuple) else module.stride
        return max(1, weight.shape[0] * weight.shape[2] // stride)
    return max(1, weight[0].numel())


def _bicodec_state(model: BiCodecModel, init: _Init) -> dict[str, torch.Tensor]:
    """A value for every checkpoint entry, module by module in a fixed order."""
    values: dict[str, torch.Tensor] = {}
    # Residual branches of the wave generator start small so that magnitudes do not grow stage after stage
    # (the output goes through tanh; a saturated square wave would be as degenerate as silence).
    gains = {f"{name}.block.3": RESIDUAL_GAIN for name, m in model.named_modules() if isinstance(m, ResidualUnit)}
    gains[f"decoder.model.{len(model.decoder.model) - 2}"] = OUTPUT_GAIN
    for prefix, module in model.named_modules():
        p = f"{prefix}." if prefix else ""
        own = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        own = {k: v for k, v in own.items() if f"{p}{k}" in model.state_dict_keys}
        if not own:
            continue
        if isinstance(module, (WNConv1d, WNConvTranspose1d)):
            gain = gains.get(prefix, 1.0)
            v = init.normal(module.weight_v.shape, gain / math.sqrt(_fan_in(module, module.weight_v)))
            values[p + "weight_v"] = v
            # magnitude = |v| so the effective weight equals v
            values[p + "weight_g"] = v.norm(2, dim=tuple(range(1, v.dim())), keepdim=True)
            values[p + "bias"] = init.normal(module.bias.shape, 0.02)
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.ConvTranspose1d)):
            values[p + "weight"] = init.normal(module.weight.shape, 1 / math.sqrt(_fan_in(module, module.weight)))
            if module.bias is not None:
                values[p + "bias"] = init.normal(module.bias.shape, 0.02)
        elif isinstance(module, (nn.LayerNorm, RMSNorm)):
            for name, t in own.items():
                values[p + name] = init.normal(t.shape, 0.1, 1.0 if name in ("weight", "gamma") else 0.0)
        elif isinstance(module, nn.BatchNorm1d):
            n = module.num_features
            values[p + "weight"] = init.normal((n,), 0.1, 1.0)
            values[p + "bias"] = init.normal((n,), 0.1)
            values[p + "running_mean"] = init.normal((n,), 0.1)
            values[p + "running_var"] = init.uniform((n,), 0.5, 1.5)
            values[p + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        elif isinstance(module, Snake1d):
            values[p + "alpha"] = init.uniform(module.alpha.shape, 0.5, 1.5)
        elif isinstance(module, ConvNeXtBlock):
            values[p + "gamma"] = init.uniform(module.gamma.shape, 0.1, 0.5)
        elif isinstance(module, PerceiverResampler):
            values[p + "latents"] = init.normal(module.latents.shape)
        elif isinstance(module, FactorizedVectorQuantize):
            values[p + "cluster_size"] = torch.zeros(module.cluster_size.shape)
        elif isinstance(module, nn.Embedding):
            values[p + "weight"] = init.normal(module.weight.shape)
        else:
            raise TypeError(f"no random init rule for {type(module).__name__} at {prefix!r}")
        if isinstance(module, nn.Linear) and prefix.endswith(".scale") and isinstance(
            model.get_submodule(prefix.rsplit(".", 1)[0]), AdaLayerNorm
        ):
            values[p + "bias"] = values[p + "bias"] + 1.0  # adaptive LayerNorm scale around 1
    return values


def _wav2vec2_state(config: dict, init: _Init) -> dict[str, torch.Tensor]:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    with torch.device("meta"):
        model = Wav2Vec2Model(Wav2Vec2Config(**config))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    values: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        # Released checkpoints store the positional conv's weight norm as weight_g/weight_v (norm over dim 2).
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        if key.endswith("weight_g"):
            continue  # derived from weight_v below
        if key.endswith("weight_v"):
            v = init.normal(shape, 1 / math.sqrt(shape[1] * shape[2]))
            values[key] = v
            values[key[: -len("weight_v")] + "weight_g"] = v.norm(2, dim=(0, 1), keepdim=True)
        elif key == "masked_spec_embed":
            values[key] = init.uniform(shape, 0.0, 1.0)
        elif "layer_norm" in key:
            values[key] = init.normal(shape, 0.1, 1.0 if key.endswith("weight") else 0.0)
        elif key.endswith("bias"):
            values[key] = init.normal(shape, 0.02)
        elif key.endswith("weight"):
            fan_in = math.prod(shape[1:])
            values[key] = init.normal(shape, 1 / math.sqrt(fan_in))
        else:
            raise KeyError(f"no random init rule for wav2vec2 key {key}")
    return values


def _save(values: dict[str, torch.Tensor], path: Path, dtype: torch.dtype) -> None:
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sorted(values.items())}
    save_file(tensors, str(path), metadata={"format": "pt"})


def write_random_checkpoint(directory: str | Path, *, seed: int, size: str = "tiny") -> None:
    """Write a random BiCodec directory (see module docstring). ``size``: "tiny", "tiny-alt" or "real"."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    directory = Path(directory)
    (directory / WAV2VEC2_DIR).mkdir(parents=True, exist_ok=True)
    config = _bicodec_config(size)
    init = _Init(seed)

    with torch.device("meta"):
        model = BiCodecModel(config)
    model.state_dict_keys = set(model.state_dict())  # type: ignore[attr-defined]
    values = _bicodec_state(model, init)
    missing = model.state_dict_keys - set(values)  # type: ignore[attr-defined]
    if missing:
        raise AssertionError(f"random init left checkpoint keys unset: {sorted(missing)[:5]}")
    # Tiny checkpoints are stored in float16 to stay small (the fixed 512-channel ECAPA-TDNN dominates);
    # loaders cast to the model dtype. "real" is float32 like the release.
    _save(values, directory / WEIGHTS_FILE, torch.float32 if size == "real" else torch.float16)
    (directory / CONFIG_FILE).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))

    w2v_config = _wav2vec2_config(size)
    w2v_dir = directory / WAV2VEC2_DIR
    _save(_wav2vec2_state(w2v_config, init), w2v_dir / "model.safetensors", torch.float32)
    (w2v_dir / "config.json").write_text(json.dumps(w2v_config, indent=2, sort_keys=True) + "\n")
    (w2v_dir / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2, sort_keys=True) + "\n")
