"""BiCodec: the Spark-TTS speech codec GPA speaks in (32 global speaker tokens + 50 Hz semantic tokens)."""

from .config import BiCodecConfig, load_config
from .model import BiCodec

__all__ = ["BiCodec", "BiCodecConfig", "load_config"]
