"""Random checkpoints in the official GPA directory layout, for tests, demos and benchmarks.

The real weights cannot be downloaded everywhere; these checkpoints exercise exactly the same loading and
inference code. Their weights are random: transcripts and audio they produce are noise.

``size="tiny"`` / ``"tiny-alt"``: two different small configurations (a few MB, fast on a CPU).
``size="real"``: the released model's shapes (Qwen3 28 layers, hidden 512, vocab 180,445; GLM and BiCodec at
full size) with random weights, for GPU benchmarks.

``emitted_text=STT_TEXT`` (or any string) makes the LLM's transcripts readable text made of that string's
whole-character tokens (Chinese, Latin words, digits, spaces, punctuation) instead of byte fragments, for tests of
transcript decoding; the other files are the same as without it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import bicodec, glm_tokenizer, llm

MARKER = ".gpa-random-checkpoint.json"
SIZES = ("tiny", "tiny-alt", "real")
# Text whose whole-character tokens an ``emitted_text`` checkpoint emits (all of them are in the tiny BPE).
STT_TEXT = "今天天气很好，这是语音识别的测试。The morning train arrives at 9:30, 1 2 3 4 5 6 7 8 0."


def make_tiny_checkpoint(
    path: str | os.PathLike,
    seed: int = 0,
    *,
    arch: str = "qwen3",
    size: str = "tiny",
    emitted_text: str | None = None,
) -> Path:
    """Write a complete random checkpoint to ``path`` (deterministic for ``seed``) and return ``path``.

    If ``path`` already holds the checkpoint for the same arguments it is reused. The checkpoint is built in a
    temporary directory and renamed into place, so an interrupted call never leaves a partial checkpoint.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}")
    if arch not in ("qwen3", "qwen2"):
        raise ValueError("arch must be 'qwen3' or 'qwen2'")
    path = Path(path)
    wanted = {"seed": seed, "arch": arch, "size": size}
    if emitted_text is not None:  # absent otherwise: earlier checkpoints keep their exact bytes
        wanted["emitted_text"] = emitted_text
    marker = path / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return path
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not a random checkpoint made with {wanted}")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        glm_dir, bicodec_dir = staging / "glm-4-voice-tokenizer", staging / "BiCodec"
        # Different component seeds so the three models are not built from the same random stream.
        glm_tokenizer.write_random_checkpoint(glm_dir, seed=seed * 3 + 1, size=size)
        bicodec.write_random_checkpoint(bicodec_dir, seed=seed * 3 + 2, size=size)
        glm_config = glm_tokenizer.GLMTokenizerConfig.from_dir(glm_dir)
        bicodec_config = bicodec.load_config(bicodec_dir / "config.yaml")
        llm.write_random_checkpoint(
            staging,
            seed=seed * 3,
            size=size,
            arch=arch,
            glm_codebook_size=glm_config.quantize_vocab_size,
            global_codebook_size=math.prod(bicodec_config.speaker_encoder.fsq_levels),
            semantic_codebook_size=bicodec_config.quantizer.codebook_size,
            emitted_text=emitted_text,
        )
        (staging / MARKER).write_text(json.dumps(wanted))
        if path.exists():
            path.rmdir()  # empty (checked above)
        os.rename(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def speech_like(num_samples: int, seed: int, sample_rate: int = 16000) -> np.ndarray:
    """A deterministic speech-like float32 waveform: voiced syllables (a harmonic source with a wandering pitch and
    vowel-like spectral tilt) at about 4 per second, noisy "fricative" bursts and short pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / sample_rate
    f0 = rng.uniform(90, 240) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.3, 1.2) * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    tilt = rng.uniform(0.6, 1.4)
    voiced = sum(np.sin(k * phase + rng.uniform(0, 6)) / k**tilt for k in range(1, 16))
    syllables = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)), 0, None) ** 0.7
    fricative = rng.standard_normal(num_samples) * (np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t) > 0.85)
    pauses = np.sin(2 * np.pi * rng.uniform(0.15, 0.4) * t + rng.uniform(0, 6)) > -0.8
    wave = (voiced * syllables + 0.3 * fricative) * pauses + 0.003 * rng.standard_normal(num_samples)
    peak = np.abs(wave).max()
    return (rng.uniform(0.2, 0.8) * wave / (peak if peak > 0 else 1.0)).astype(np.float32)


def speech_like_clips(count: int, seed: int = 0, *, min_s: float = 2.0, max_s: float = 10.0,
                      sample_rate: int = 16000) -> list[np.ndarray]:
    """``count`` :func:`speech_like` clips with durations drawn uniformly in [min_s, max_s] (any sample count)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(int(min_s * sample_rate), int(max_s * sample_rate) + 1, size=count)
    return [speech_like(int(n), seed * 100_003 + i, sample_rate) for i, n in enumerate(lengths)]
