"""GLM-4-Voice speech tokenizer: 16 kHz audio -> discrete speech tokens at 12.5 tokens/s (GPA's ASR input).

Pipeline (the released ``glm-4-voice-tokenizer``): Whisper log-mel features (128 bins, 10 ms hop) -> two
(causal) convolutions, the second with stride 2 -> the first 16 Whisper-large encoder layers with
block-causal self-attention -> average pooling by 4 -> nearest codebook entry (16384 codes).
One token covers 2 * 4 * 160 = 1280 samples (80 ms).

Each input is featurised as if it were alone (padded with zeros to a whole number of tokens, exactly what the
reference does for a batch of one), so the result of an item never depends on what it is batched with:
 - mel frames past an item's own padded length are zeros (what a convolution's zero padding would see);
 - attention never looks at keys past an item's valid samples (block-causal mask ∧ key mask), or, in fully
   causal layers, at keys after the query; positions past an item's padded length thus never reach it;
 - an item's padded length is a whole number of pooling windows, so pooling never mixes items' padding.

Weights load strictly from the official ``model.safetensors`` (keys are the reference ``WhisperVQEncoder``
state dict, unprefixed, including the codebook's EMA buffers when ``quantize_ema_decay`` is set).

Modules: ``config`` (config.json and preprocessor_config.json), ``mel`` (the log-mel features), ``encoder`` (the
network, parameter names = the checkpoint's keys), ``tokenizer`` (the batched front). Random checkpoints in this
layout, for tests and benchmarks, are written by :mod:`gpa.testing.glm`.
"""

from ..errors import TooLongAudio
from .config import SAMPLE_RATE, GLMTokenizerConfig
from .encoder import WhisperVQEncoder
from .mel import log_mel_spectrogram, mel_filters
from .tokenizer import GLMSpeechTokenizer

__all__ = [
    "SAMPLE_RATE",
    "GLMSpeechTokenizer",
    "GLMTokenizerConfig",
    "TooLongAudio",
    "WhisperVQEncoder",
    "log_mel_spectrogram",
    "mel_filters",
]
