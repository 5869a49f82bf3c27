"""Quality measures of generated rows: WER/CER against a text, GPA's own round-trip ASR, speaker similarity."""

from __future__ import annotations

import re
import unicodedata

import numpy as np

from jobs.io.schema import SAMPLE_RATE


def normalize_text(text: str) -> str:
    """Lower case, no punctuation, single spaces: WER/CER measure words, not formatting."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(c).startswith(("P", "S")) else c for c in text)
    return re.sub(r"\s+", " ", text).strip()


def error_rates(reference: str, hypothesis: str) -> tuple[float | None, float | None]:
    """(WER, CER) of ``hypothesis`` against ``reference`` after :func:`normalize_text`; None without a reference."""
    import jiwer

    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref:
        return None, None
    if not hyp:
        return 1.0, 1.0
    return float(jiwer.wer(ref, hyp)), float(jiwer.cer(ref, hyp))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / denom) if denom > 0 else 0.0


def round_trip(model, rows: list[dict], audios: list[np.ndarray], batch_size: int) -> None:
    """GPA's own ASR on generated audio (an intelligibility check): fills each row's ``asr_text``."""
    if not rows:
        return
    from gpa import TranscribeOptions

    # enough tokens for the text that was asked for (a random or broken model must not run to 512 every time)
    budget = min(512, 16 + 2 * max(len(r.get("text") or "") for r in rows))
    options = TranscribeOptions(batch_size=batch_size, max_new_tokens=budget)
    results = model.transcribe([(a, SAMPLE_RATE) for a in audios], options)
    for row, result in zip(rows, results, strict=True):
        row["asr_text"] = result.text if result.ok else None


def similarity(model, rows, audios, column: str, reference_embeddings=None, sources=None) -> None:
    """Cosine similarity of BiCodec speaker embeddings, output vs reference (or vs source), into ``column``."""
    if not rows:
        return
    from gpa.errors import GPAError

    try:
        outs = model.speaker_embeddings([(a, SAMPLE_RATE) for a in audios])
        refs = (np.stack([np.asarray(e, np.float32).reshape(-1) for e in reference_embeddings])
                if reference_embeddings is not None
                else model.speaker_embeddings([(s, SAMPLE_RATE) for s in sources]))
    except GPAError:
        return  # quality is best effort: a row is not failed because its quality cannot be measured
    for row, a, b in zip(rows, outs, refs, strict=True):
        row[column] = cosine(a, b)
