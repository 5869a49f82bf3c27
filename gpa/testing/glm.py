"""Random GLM-4-Voice tokenizers in the released ``glm-4-voice-tokenizer`` layout, for tests and benchmarks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..glm_tokenizer.config import SAMPLE_RATE, GLMTokenizerConfig
from ..glm_tokenizer.encoder import WhisperVQEncoder

_SIZES: dict[str, dict] = {
    # The released glm-4-voice-tokenizer shapes.
    "real": dict(num_mel_bins=128, d_model=1280, encoder_layers=32, encoder_attention_heads=20,
                 encoder_ffn_dim=5120, max_source_positions=1500, encoder_causal_convolution=True,
                 pooling_kernel_size=4, pooling_type="avg", pooling_position=16, quantize_vocab_size=16384,
                 quantize_position=16, quantize_encoder_only=True, quantize_causal_block_size=200,
                 quantize_ema_decay=0.99, chunk_length=30),
    # Same layout, tiny: 128 mels, causal convs, EMA buffers, pooling right before the quantizer.
    "tiny": dict(num_mel_bins=128, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                 encoder_ffn_dim=64, max_source_positions=200, encoder_causal_convolution=True,
                 pooling_kernel_size=4, pooling_type="avg", pooling_position=2, quantize_vocab_size=64,
                 quantize_position=2, quantize_encoder_only=True, quantize_causal_block_size=8,
                 quantize_ema_decay=0.99, chunk_length=4),
    # A different layout: 80 mels, symmetric convs, a layer after pooling, a full (not truncated) encoder with
    # its final LayerNorm, no EMA buffers.
    "tiny-alt": dict(num_mel_bins=80, d_model=48, encoder_layers=4, encoder_attention_heads=4,
                     encoder_ffn_dim=96, max_source_positions=300, encoder_causal_convolution=False,
                     pooling_kernel_size=4, pooling_type="avg", pooling_position=2, quantize_vocab_size=128,
                     quantize_position=3, quantize_encoder_only=False, quantize_causal_block_size=12,
                     quantize_ema_decay=None, chunk_length=6),
}


def _config_files(size: str) -> tuple[dict, dict]:
    s = dict(_SIZES[size])
    chunk_length = s.pop("chunk_length")
    model = {
        "architectures": ["WhisperVQEncoder"],
        "model_type": "whisper",
        "activation_dropout": 0.0,
        "activation_function": "gelu",
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "decoder_attention_heads": s["encoder_attention_heads"],
        "decoder_ffn_dim": s["encoder_ffn_dim"],
        "decoder_layers": s["encoder_layers"],
        "max_target_positions": 448,
        "num_hidden_layers": s["encoder_layers"],
        "vocab_size": 51866,
        "pad_token_id": 50256,
        "bos_token_id": 50257,
        "eos_token_id": 50257,
        "decoder_start_token_id": 50258,
        "init_std": 0.02,
        "scale_embedding": False,
        "apply_spec_augment": False,
        "is_encoder_decoder": True,
        "use_cache": True,
        "encoder_causal_attention": False,
        "quantize_causal_encoder": False,
        "quantize_commit_coefficient": 0.25,
        "quantize_loss_scale": 10.0,
        "quantize_restart_interval": 100,
        "skip_language_detection": True,
        "torch_dtype": "float32",
        **s,
    }
    preprocessor = {
        "chunk_length": chunk_length,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": s["num_mel_bins"],
        "hop_length": 160,
        "n_fft": 400,
        "n_samples": chunk_length * SAMPLE_RATE,
        "nb_max_frames": chunk_length * SAMPLE_RATE // 160,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "WhisperProcessor",
        "return_attention_mask": False,
        "sampling_rate": SAMPLE_RATE,
    }
    return model, preprocessor


def _sinusoids(length: int, channels: int) -> torch.Tensor:
    # float64, rounded once: torch's float32 sin/cos/exp differ in the last bit between CPU kernels, and the random
    # checkpoints must be the same bytes on every machine (the parity goldens check their hashes)
    scales = np.exp(-math.log(10000) / (channels // 2 - 1) * np.arange(channels // 2, dtype=np.float64))
    angles = np.arange(length, dtype=np.float64)[:, None] * scales[None, :]
    return torch.from_numpy(np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32))


# ... except that the convolutions amplify the (small) log-mel variations and each layer adds little to the
# residual stream: otherwise a time-constant offset dominates the hidden states and every frame gets one token.
_GAINS = {"conv1": 3.0, "conv2": 2.0, "out_proj": 0.2, "fc2": 0.2}


def _random_state(config: GLMTokenizerConfig, seed: int) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WhisperVQEncoder(config).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std

    state: dict[str, torch.Tensor] = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if key in ("embed_positions.weight", "embed_positions2.weight", "ema_count", "ema_weight"):
            continue  # derived below
        if "layer_norm" in key:
            state[key] = 1.0 + normal(shape, 0.1) if key.endswith("weight") else normal(shape, 0.1)
        elif key.endswith("bias"):
            state[key] = normal(shape, 0.02)
        elif key == "codebook.weight":
            state[key] = normal(shape, 0.2)
        else:  # conv / linear weights: about unit gain, ...
            gain = _GAINS.get(key.split(".")[-2], 1.0)
            state[key] = normal(shape, gain / math.sqrt(math.prod(shape[1:])))
    # Whisper's sinusoidal positions (the reference's init), scaled down so the audio, not the position,
    # decides the tokens; the post-quantizer table starts as a copy, as in the reference.
    positions = 0.1 * _sinusoids(*shapes["embed_positions.weight"])
    state["embed_positions.weight"] = positions
    state["embed_positions2.weight"] = positions[: shapes["embed_positions2.weight"][0]].clone()
    if "ema_count" in shapes:
        state["ema_count"] = torch.ones(shapes["ema_count"])
        state["ema_weight"] = state["codebook.weight"].clone()
    return {k: v.to(torch.float32).contiguous() for k, v in state.items()}


def write_random_checkpoint(directory: str | Path, *, seed: int, size: str = "tiny") -> None:
    """Write ``config.json``, ``preprocessor_config.json`` and ``model.safetensors`` of a randomly initialised
    tokenizer, loadable by this module and by the reference ``WhisperVQEncoder.from_pretrained`` /
    ``WhisperFeatureExtractor.from_pretrained``. Same seed and size -> byte-identical files."""
    if size not in _SIZES:
        raise ValueError(f"size must be one of {sorted(_SIZES)}, got {size!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model, preprocessor = _config_files(size)
    config = GLMTokenizerConfig.from_dict(model, preprocessor)
    save_file(_random_state(config, seed), str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(model, indent=2, sort_keys=True) + "\n")
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2, sort_keys=True) + "\n")
