"""Complete random GPA checkpoints in the official directory layout, for tests, demos and benchmarks.

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

from ..bicodec import load_config as load_bicodec_config
from ..glm_tokenizer import GLMTokenizerConfig
from . import bicodec, glm, llm

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
        made_with = ", ".join(f"{key} {value}" for key, value in wanted.items())
        raise FileExistsError(f"{path} holds other files (not a random checkpoint made with {made_with}); "
                              "name a new or empty folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        glm_dir, bicodec_dir = staging / "glm-4-voice-tokenizer", staging / "BiCodec"
        # Different component seeds so the three models are not built from the same random stream.
        glm.write_random_checkpoint(glm_dir, seed=seed * 3 + 1, size=size)
        bicodec.write_random_checkpoint(bicodec_dir, seed=seed * 3 + 2, size=size)
        glm_config = GLMTokenizerConfig.from_dir(glm_dir)
        bicodec_config = load_bicodec_config(bicodec_dir / "config.yaml")
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
