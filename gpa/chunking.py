"""Splitting inputs that are too long for one pass, and joining the pieces back.

Audio is cut at low-energy points (pauses) so that no word is split; text is cut at sentence boundaries, then
clause boundaries, then spaces; synthesized pieces are joined with a short equal-power crossfade.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

from .errors import InvalidText

FRAME_S = 0.02  # energy is measured on 20 ms frames


def split_audio(
    samples: np.ndarray, sample_rate: int, window_s: float, search_s: float | None = None, align: int = 1
) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` sample ranges covering ``samples``, each at most ``window_s`` long.

    Each cut is placed in the middle of the quietest stretch within the last ``search_s`` seconds (default: a
    third of the window) before the window's end, rounded down to a multiple of ``align`` samples (a tokenizer's
    hop, so that the windows' tokens add up to the whole input's).
    """
    total = len(samples)
    window = int(window_s * sample_rate) // align * align
    if window <= 0:
        raise ValueError("window_s must be positive")
    if total <= window:
        return [(0, total)]
    frame = max(1, int(FRAME_S * sample_rate))
    search = int((search_s if search_s is not None else window_s / 3) * sample_rate)
    energy = _frame_energy(samples, frame)
    ranges, start = [], 0
    while total - start > window:
        lo_frame = (start + window - search) // frame + 1
        hi_frame = (start + window) // frame  # frames fully inside the window
        if hi_frame <= lo_frame:
            cut = start + window
        else:
            cut = _middle_of_quietest_run(energy, lo_frame, hi_frame) * frame + frame // 2
        cut = max(cut // align * align, start + align)
        ranges.append((start, cut))
        start = cut
    ranges.append((start, total))
    return ranges


def _middle_of_quietest_run(energy: np.ndarray, lo: int, hi: int) -> int:
    """Index of the middle frame of the run of near-minimal frames around the quietest one in ``[lo, hi)``:
    cutting mid-pause keeps the speech on both sides whole."""
    zone = energy[lo:hi]
    quietest = int(np.argmin(zone))
    quiet = zone <= zone[quietest] * 2 + 1e-10
    first = last = quietest
    while first > 0 and quiet[first - 1]:
        first -= 1
    while last < len(zone) - 1 and quiet[last + 1]:
        last += 1
    return lo + (first + last) // 2


def _frame_energy(samples: np.ndarray, frame: int, block_samples: int = 1 << 20) -> np.ndarray:
    n = len(samples) // frame
    framed = samples[: n * frame].reshape(n, frame)
    energy = np.empty(n, dtype=np.float64)
    # block by block: a float64 copy of a long recording would take twice its size again (2 h: ~1 GB)
    step = max(1, block_samples // frame)
    for first in range(0, n, step):
        block = framed[first : first + step].astype(np.float64)
        energy[first : first + step] = (block * block).mean(axis=1)
    return energy


_SENTENCE_END = re.compile(r"(?<=[.!?。！？…])\s+|(?<=[。！？])")
_CLAUSE_END = re.compile(r"(?<=[,;:，；：、])\s*")


def text_units(text: str) -> int:
    """Rough speaking length of ``text``: one unit per Latin character, three per CJK character (which each carry
    a syllable)."""
    return sum(3 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


_JOINERS = frozenset("\u200c\u200d")  # ZWNJ and ZWJ: they change how a word of some scripts is written and read


def clean_text(text: str, max_chars: int) -> str:
    """Text as the model should see it: control characters become spaces; format (Cf: zero-width spaces,
    direction marks, ...), private-use (Co) and surrogate (Cs) code points go, except ZWJ/ZWNJ between two
    characters of a word; whitespace runs collapse. :class:`InvalidText` when nothing speakable (no letter or
    digit) is left, or when what is left is longer than ``max_chars``."""
    if not isinstance(text, str):
        raise InvalidText(f"text must be a string, got {type(text).__name__}")
    kept = []
    for i, c in enumerate(text):
        category = unicodedata.category(c)
        if category == "Cc":
            kept.append(" ")
        elif category not in ("Cf", "Co", "Cs"):
            kept.append(c)
        elif c in _JOINERS and 0 < i < len(text) - 1 and _in_word(text[i - 1]) and _in_word(text[i + 1]):
            kept.append(c)
    cleaned = " ".join("".join(kept).split())
    if not cleaned:
        raise InvalidText("text is empty")
    if not any(unicodedata.category(c)[0] in "LN" for c in cleaned):
        raise InvalidText("text has nothing to speak (no letter or digit once control and format characters "
                          "are removed)")
    if len(cleaned) > max_chars:
        raise InvalidText(
            f"text has {len(cleaned)} characters; the limit is {max_chars} (SynthesizeOptions.max_text_chars)"
        )
    return cleaned


def _in_word(c: str) -> bool:
    return unicodedata.category(c)[0] in "LMN"


def split_text(text: str, max_units: int) -> list[str]:
    """Pieces of ``text`` of at most ``max_units`` :func:`text_units` each, cut at the strongest boundary possible."""
    text = text.strip()
    if text_units(text) <= max_units:
        return [text] if text else []
    pieces: list[str] = []
    for sentence in _split_keep(text, _SENTENCE_END):
        if text_units(sentence) <= max_units:
            pieces.append(sentence)
            continue
        for clause in _split_keep(sentence, _CLAUSE_END):
            if text_units(clause) <= max_units:
                pieces.append(clause)
            else:
                pieces.extend(_split_words(clause, max_units))
    return _merge_small(pieces, max_units)


def _split_keep(text: str, pattern: re.Pattern) -> list[str]:
    return [p.strip() for p in pattern.split(text) if p and p.strip()]


def _split_words(text: str, max_units: int) -> list[str]:
    words = text.split(" ") if " " in text else list(text)
    joiner = " " if " " in text else ""
    out, current = [], ""
    for word in words:
        while text_units(word) > max_units:  # a single "word" longer than a piece: hard cut
            cut = _prefix_within(word, max_units)
            if current:
                out.append(current)
                current = ""
            out.append(word[:cut])
            word = word[cut:]
        candidate = f"{current}{joiner}{word}" if current else word
        if text_units(candidate) <= max_units:
            current = candidate
        else:
            out.append(current)
            current = word
    if current:
        out.append(current)
    return [p for p in out if p.strip()]


def _prefix_within(word: str, max_units: int) -> int:
    units = 0
    for i, c in enumerate(word):
        units += text_units(c)
        if units > max_units:
            return max(i, 1)
    return len(word)


def _merge_small(pieces: list[str], max_units: int) -> list[str]:
    """Greedily rejoin neighbouring pieces while they fit, so pieces are as long as allowed."""
    merged: list[str] = []
    for piece in pieces:
        if merged:
            joiner = "" if _is_cjk(merged[-1][-1]) or _is_cjk(piece[0]) else " "
            candidate = merged[-1] + joiner + piece
            if text_units(candidate) <= max_units:
                merged[-1] = candidate
                continue
        merged.append(piece)
    return merged


def _is_cjk(char: str) -> bool:
    return unicodedata.east_asian_width(char) in "WF"


def join_texts(texts: list[str]) -> str:
    """Join transcripts of consecutive chunks (no space between CJK characters)."""
    out = ""
    for text in (t.strip() for t in texts):
        if not text:
            continue
        if out and not (_is_cjk(out[-1]) and _is_cjk(text[0])):
            out += " "
        out += text
    return out


def crossfade_join(pieces: list[np.ndarray], sample_rate: int, crossfade_s: float) -> np.ndarray:
    """Concatenate waveforms, overlapping neighbours by ``crossfade_s`` with an equal-power fade."""
    pieces = [np.asarray(p, dtype=np.float32) for p in pieces if len(p)]
    if not pieces:
        return np.zeros(0, np.float32)
    out = pieces[0]
    for piece in pieces[1:]:
        n = min(int(crossfade_s * sample_rate), len(out), len(piece))
        if n == 0:
            out = np.concatenate([out, piece])
            continue
        t = np.linspace(0.0, np.pi / 2, n, dtype=np.float32)
        overlap = out[-n:] * np.cos(t) + piece[:n] * np.sin(t)
        out = np.concatenate([out[:-n], overlap, piece[n:]])
    return out


def join_speech(pieces: list[np.ndarray], sample_rate: int, crossfade_s: float) -> np.ndarray:
    """One item's generated speech from its pieces in order: crossfaded, then without DC (as the reference does)."""
    audio = crossfade_join(pieces, sample_rate, crossfade_s)
    return (audio - audio.mean()).astype(np.float32) if len(audio) else audio
