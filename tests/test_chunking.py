import numpy as np
import pytest

from gpa.chunking import crossfade_join, join_texts, split_audio, split_text, text_units


def speechlike(seconds, rate=16000, pauses=(), seed=0):
    """Noise bursts with silent gaps at the given times (seconds)."""
    rng = np.random.default_rng(seed)
    wave = rng.normal(0, 0.3, int(seconds * rate)).astype(np.float32)
    for at in pauses:
        wave[int((at - 0.15) * rate): int((at + 0.15) * rate)] = 0.0
    return wave


def test_short_audio_is_one_chunk():
    assert split_audio(np.zeros(16000, np.float32), 16000, 30.0) == [(0, 16000)]


def test_cuts_land_in_pauses_and_cover_everything():
    pauses = [25.0, 52.0, 80.0]
    wave = speechlike(100.0, pauses=pauses)
    ranges = split_audio(wave, 16000, 30.0)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(wave)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert all(end - start <= 30 * 16000 for start, end in ranges)
    cuts = [end / 16000 for _, end in ranges[:-1]]
    assert cuts == pytest.approx(pauses, abs=0.15)


def test_no_pause_still_respects_window():
    wave = speechlike(95.0)
    ranges = split_audio(wave, 16000, 30.0)
    assert all(end - start <= 30 * 16000 for start, end in ranges)
    assert sum(end - start for start, end in ranges) == len(wave)


def test_split_text_prefers_sentences_then_clauses_then_words():
    text = "One two three. Four five six seven! Eight, nine ten eleven twelve."
    assert split_text(text, 1000) == [text]
    assert split_text(text, 36) == ["One two three. Four five six seven!", "Eight, nine ten eleven twelve."]
    pieces = split_text(text, 16)
    assert all(text_units(p) <= 16 for p in pieces)
    assert " ".join(pieces).replace("  ", " ") == text


def test_split_text_cjk_and_unbreakable_words():
    text = "今天天气很好。我们去公园散步吧！"
    pieces = split_text(text, 27)
    assert pieces == ["今天天气很好。", "我们去公园散步吧！"]
    long_word = "x" * 50
    pieces = split_text(long_word, 20)
    assert "".join(pieces) == long_word and all(len(p) <= 20 for p in pieces)


def test_join_texts_spaces():
    assert join_texts(["hello", " world ", ""]) == "hello world"
    assert join_texts(["你好", "世界"]) == "你好世界"


def test_crossfade_join_length_and_continuity():
    a, b = np.ones(1000, np.float32), np.ones(1000, np.float32)
    out = crossfade_join([a, b], 16000, 0.01)
    assert len(out) == 2000 - 160
    assert np.all(out[840:1000] >= 1.0 - 1e-6)  # equal-power fade of equal signals never dips
    assert len(crossfade_join([a], 16000, 0.01)) == 1000
    assert len(crossfade_join([], 16000, 0.01)) == 0


def test_cuts_are_aligned_to_a_tokenizer_hop():
    wave = speechlike(20.0, pauses=[7.77, 14.1])
    ranges = split_audio(wave, 16000, 8.0, align=1280)
    assert all(start % 1280 == 0 for start, _ in ranges)
    assert all(end - start <= 8 * 16000 for start, end in ranges)
    assert ranges[0][1] / 16000 == pytest.approx(7.77, abs=0.1)
