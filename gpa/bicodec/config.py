"""BiCodec configuration, read from ``BiCodec/config.yaml``.

The released file (Spark-TTS layout) keeps the network sections under ``audio_tokenizer:`` and the
preprocessing settings (``sample_rate``, ``ref_segment_duration``, ``latent_hop_length``,
``volume_normalize``) at the top level. A flat file with everything at the top level loads the same way.
Section fields are named exactly like the yaml keys (which are the reference constructors' arguments).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import CheckpointError

NETWORK_SECTIONS = ("mel_params", "encoder", "decoder", "quantizer", "speaker_encoder", "prenet", "postnet")

# Training-only quantizer settings found in released configs; they do not change inference.
QUANTIZER_TRAINING_KEYS = frozenset(
    {"commitment", "codebook_loss_weight", "decay", "threshold_ema_dead_code", "momentum", "use_l2_normlize"}
)


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 640
    hop_length: int = 320
    mel_fmin: float = 10.0
    mel_fmax: float | None = None
    num_mels: int = 128


@dataclass(frozen=True)
class EncoderConfig:
    """The feature encoder (wav2vec2 features -> quantizer input)."""

    input_channels: int
    vocos_dim: int
    vocos_intermediate_dim: int
    vocos_num_layers: int
    out_channels: int
    sample_ratios: tuple[int, ...] = (1, 1)


@dataclass(frozen=True)
class FeatDecoderConfig:
    """The prenet/postnet (quantized features -> wave generator input), optionally speaker-conditioned."""

    input_channels: int
    vocos_dim: int
    vocos_intermediate_dim: int
    vocos_num_layers: int
    out_channels: int
    condition_dim: int | None = None
    sample_ratios: tuple[int, ...] = (1, 1)
    use_tanh_at_final: bool = False


@dataclass(frozen=True)
class WaveGeneratorConfig:
    input_channel: int
    channels: int
    rates: tuple[int, ...]
    kernel_sizes: tuple[int, ...]
    d_out: int = 1


@dataclass(frozen=True)
class QuantizerConfig:
    input_dim: int
    codebook_size: int
    codebook_dim: int


@dataclass(frozen=True)
class SpeakerEncoderConfig:
    input_dim: int = 100
    out_dim: int = 512
    latent_dim: int = 128
    token_num: int = 32
    fsq_levels: tuple[int, ...] = (4, 4, 4, 4, 4, 4)
    fsq_num_quantizers: int = 1


@dataclass(frozen=True)
class BiCodecConfig:
    mel_params: MelConfig
    encoder: EncoderConfig
    decoder: WaveGeneratorConfig
    quantizer: QuantizerConfig
    speaker_encoder: SpeakerEncoderConfig
    prenet: FeatDecoderConfig
    postnet: FeatDecoderConfig
    # Preprocessing (top level of config.yaml in the released layout).
    sample_rate: int = 16000
    ref_segment_duration: float = 6.0
    latent_hop_length: int = 320
    volume_normalize: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def ref_segment_length(self) -> int:
        """Samples in the speaker reference clip: the duration rounded down to whole latent hops."""
        samples = int(self.sample_rate * self.ref_segment_duration)
        return samples // self.latent_hop_length * self.latent_hop_length

    @property
    def samples_per_semantic_token(self) -> int:
        return math.prod(self.decoder.rates) * math.prod(self.prenet.sample_ratios)


_SECTION_TYPES = {
    "mel_params": MelConfig,
    "encoder": EncoderConfig,
    "decoder": WaveGeneratorConfig,
    "quantizer": QuantizerConfig,
    "speaker_encoder": SpeakerEncoderConfig,
    "prenet": FeatDecoderConfig,
    "postnet": FeatDecoderConfig,
}


def _section(name: str, raw: Any, source: str):
    cls = _SECTION_TYPES[name]
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source}: section {name!r} must be a mapping, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    ignored = QUANTIZER_TRAINING_KEYS if name == "quantizer" else frozenset()
    unknown = sorted(set(raw) - known - ignored)
    if unknown:
        raise CheckpointError(f"{source}: unknown keys in section {name!r}: {unknown}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            if f.default is dataclasses.MISSING:
                raise CheckpointError(f"{source}: section {name!r} lacks required key {f.name!r}")
            continue
        value = raw[f.name]
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def config_from_dict(raw: dict[str, Any], source: str = "config") -> BiCodecConfig:
    """Build a config from a parsed yaml mapping, nested (``audio_tokenizer:``) or flat."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source}: expected a mapping at the top level")
    nested = raw.get("audio_tokenizer")
    network = nested if isinstance(nested, dict) else raw
    missing = [name for name in NETWORK_SECTIONS if name not in network]
    if missing:
        raise CheckpointError(f"{source}: missing sections {missing}")
    sections = {name: _section(name, network[name], source) for name in NETWORK_SECTIONS}

    def setting(key: str):
        # The reference reads these from the top level; a flat or fully nested file may carry them either way.
        if key in raw:
            return raw[key]
        if isinstance(nested, dict) and key in nested:
            return nested[key]
        return None

    settings: dict[str, Any] = {}
    for key, required in (
        ("sample_rate", False),
        ("ref_segment_duration", True),
        ("latent_hop_length", True),
        ("volume_normalize", False),
    ):
        value = setting(key)
        if value is None:
            if required:
                raise CheckpointError(f"{source}: missing setting {key!r}")
            continue
        settings[key] = value
    extra = {k: v for k, v in raw.items() if k not in settings and k != "audio_tokenizer" and k not in sections}
    config = BiCodecConfig(**sections, **settings, extra=extra)
    _validate(config, source)
    return config


def _validate(config: BiCodecConfig, source: str) -> None:
    if config.mel_params.sample_rate != config.sample_rate:
        raise CheckpointError(
            f"{source}: mel sample_rate {config.mel_params.sample_rate} != sample_rate {config.sample_rate}"
        )
    if len(config.decoder.rates) != len(config.decoder.kernel_sizes):
        raise CheckpointError(f"{source}: decoder rates and kernel_sizes differ in length")
    odd = [(k, r) for k, r in zip(config.decoder.kernel_sizes, config.decoder.rates, strict=True) if (k - r) % 2]
    if odd:
        # padding (k - r) / 2 then leaves r * frames + 1 samples: a waveform no longer r samples per frame
        raise CheckpointError(f"{source}: decoder kernel_sizes and rates must differ by an even number, got "
                              + ", ".join(f"{k} and {r}" for k, r in odd))
    speaker_dim = config.speaker_encoder.out_dim
    links = {
        "mel_params.num_mels == speaker_encoder.input_dim": (config.mel_params.num_mels,
                                                             config.speaker_encoder.input_dim),
        "encoder.out_channels == quantizer.input_dim": (config.encoder.out_channels, config.quantizer.input_dim),
        "quantizer.input_dim == prenet.input_channels": (config.quantizer.input_dim, config.prenet.input_channels),
        "prenet.condition_dim == speaker_encoder.out_dim": (config.prenet.condition_dim, speaker_dim),
        "prenet.out_channels == speaker_encoder.out_dim": (config.prenet.out_channels, speaker_dim),
        "prenet.out_channels == decoder.input_channel": (config.prenet.out_channels, config.decoder.input_channel),
    }
    broken = [f"{rule} ({a} vs {b})" for rule, (a, b) in links.items() if a != b]
    if broken:
        raise CheckpointError(f"{source}: inconsistent dimensions: {'; '.join(broken)}")
    if config.ref_segment_length <= 0:
        raise CheckpointError(f"{source}: ref_segment_duration gives an empty reference clip")


def load_config(path: str | Path) -> BiCodecConfig:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"BiCodec config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CheckpointError(f"cannot parse {path}: {exc}") from exc
    return config_from_dict(raw, source=str(path))


def config_to_dict(config: BiCodecConfig) -> dict[str, Any]:
    """The released (nested) layout, loadable by the reference implementation."""

    def plain(section) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(section).items()}

    network = {name: plain(getattr(config, name)) for name in NETWORK_SECTIONS}
    # The reference constructs FactorizedVectorQuantize(**quantizer), whose `commitment` is required.
    network["quantizer"].update(commitment=0.25, codebook_loss_weight=2.0)
    return {
        "audio_tokenizer": network,
        "sample_rate": config.sample_rate,
        "ref_segment_duration": config.ref_segment_duration,
        "latent_hop_length": config.latent_hop_length,
        "volume_normalize": config.volume_normalize,
    }
