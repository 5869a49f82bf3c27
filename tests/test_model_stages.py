"""GPA's stages (tokenize -> generate -> detokenize, token ids in between) run apart give what the task methods,
which compose them in one process, give: a batch job may run each stage in a process of its own."""

import numpy as np

from gpa.options import ConvertOptions, SynthesizeOptions, TranscribeOptions
from gpa.results import SpeechTokens
from tests.test_model import voice


def _round_trip(tokens):
    """Tokens as they cross a process boundary in a job: plain int lists in Arrow/pickle, back to arrays."""
    return [SpeechTokens(np.asarray([int(x) for x in t.glm]), np.asarray([int(x) for x in t.semantic]))
            for t in tokens]


def test_transcription_stages_apart_equal_transcribe(tiny_model):
    windows = [voice(s, seed=i) for i, s in enumerate([0.9, 2.4, 1.3])]
    options = TranscribeOptions(max_new_tokens=12)
    tokens = _round_trip(tiny_model.tokenize_speech(windows))
    generations = tiny_model.generate_transcription(tokens, options)
    texts = tiny_model.detokenize_text([g.ids for g in generations])
    for window, speech, generation, text in zip(windows, tokens, generations, texts, strict=True):
        [whole] = tiny_model.transcribe([(window, 16000)], options)
        assert whole.ok, whole.error
        assert whole.glm_tokens == speech.glm.tolist() and whole.semantic_tokens == speech.semantic.tolist()
        assert whole.generated_ids == generation.ids
        assert whole.text == text


def test_synthesis_stages_apart_equal_synthesize(tiny_model):
    speaker = tiny_model.speaker((voice(2.0, seed=5), 16000))
    texts = ["A short one.", "Another, a little longer."]
    options = SynthesizeOptions(max_new_tokens=24, min_new_tokens=8, max_chunk_units=1000)
    seeds = [3, 4]
    whole = tiny_model.synthesize(texts, [speaker, speaker], options, seeds=seeds)
    # one chunk per text: the chunk's seed is the item's seed mixed with chunk index 0
    from gpa.model import piece_seed

    generations = tiny_model.generate_synthesis(texts, [speaker, speaker], options,
                                                seeds=[piece_seed(s, 0) for s in seeds])
    speech = tiny_model.detokenize_speech([speaker.global_tokens] * 2, [g.ids for g in generations])
    for result, generation, (semantic, wave) in zip(whole, generations, speech, strict=True):
        assert result.ok, result.error
        assert result.generated_ids == generation.ids
        assert result.semantic_tokens == semantic.tolist()
        np.testing.assert_allclose(result.audio, wave - wave.mean(), atol=1e-6)


def test_conversion_stages_apart_equal_convert(tiny_model):
    speaker = tiny_model.speaker((voice(2.0, seed=6), 16000))
    sources = [voice(1.5, seed=7), voice(2.5, seed=8)]
    options = ConvertOptions(max_new_tokens=24, min_new_tokens=8)
    whole = tiny_model.convert([(s, 16000) for s in sources], [speaker, speaker], options, seeds=[1, 2])
    from gpa.model import piece_seed

    semantic = tiny_model.tokenize_source(sources)
    generations = tiny_model.generate_conversion(semantic, [speaker, speaker], options,
                                                 seeds=[piece_seed(s, 0) for s in (1, 2)])
    speech = tiny_model.detokenize_speech([speaker.global_tokens] * 2, [g.ids for g in generations])
    for result, source, generation, (out, wave) in zip(whole, semantic, generations, speech, strict=True):
        assert result.ok, result.error
        assert result.source_semantic_tokens == source.tolist()
        assert result.generated_ids == generation.ids and result.semantic_tokens == out.tolist()
        np.testing.assert_allclose(result.audio, wave - wave.mean(), atol=1e-6)


def test_a_failing_stage_fails_only_its_items(tiny_model):
    """An item that fails at the generate stage (text too long for the prompt) does not take its batch mates."""
    speaker = tiny_model.speaker((voice(2.0, seed=5), 16000))
    options = SynthesizeOptions(max_new_tokens=16, min_new_tokens=4, max_chunk_units=10**6, max_text_chars=10**6)
    texts = ["Fine.", "word " * 5000, "Also fine."]
    results = tiny_model.synthesize(texts, [speaker] * 3, options, seeds=[1, 2, 3])
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error.kind == "invalid_text"


def test_each_stage_runs_on_a_gpa_holding_only_its_components(tiny_checkpoint, tiny_model):
    """A job's tokenize, generate and detokenize processes each load only what their stage needs."""
    import pytest

    from gpa import GPA

    encoders = GPA.from_pretrained(tiny_checkpoint, components=("glm", "bicodec"))
    language_model = GPA.from_pretrained(tiny_checkpoint, components=("llm",))
    assert encoders.layout == tiny_model.layout == language_model.layout
    assert encoders.content_hash == tiny_model.content_hash
    windows = [voice(1.2, seed=1), voice(2.2, seed=2)]
    options = TranscribeOptions(max_new_tokens=10)
    tokens = encoders.tokenize_speech(windows)
    generations = language_model.generate_transcription(_round_trip(tokens), options)
    texts = encoders.detokenize_text([g.ids for g in generations])
    assert [r.text for r in tiny_model.transcribe([(w, 16000) for w in windows], options)] == texts
    with pytest.raises(RuntimeError, match="without its llm"):
        encoders.generate_transcription(tokens, options)
    with pytest.raises(ValueError, match="components must be some of"):
        GPA.from_pretrained(tiny_checkpoint, components=("vocoder",))


def test_long_inputs_through_the_stages_apart_equal_the_task_methods(tiny_model):
    """Windows, chunks, piece seeds and the joins are the library's own: a job running the stages apart cuts and
    stitches exactly as the one-process path does."""
    from gpa.chunking import join_speech, join_texts
    from gpa.model import piece_seed

    audio = voice(7.0, seed=3)
    audio[int(3.3 * 16000): int(3.6 * 16000)] = 0.0
    options = TranscribeOptions(window_s=4.0, max_new_tokens=40, max_new_tokens_per_second=3.0)
    windows = tiny_model.transcription_windows(audio, options)
    assert len(windows) == 2
    tokens = tiny_model.tokenize_speech([audio[a:b] for a, b in windows])
    generations = tiny_model.generate_transcription(tokens, options, seconds=[(b - a) / 16000 for a, b in windows])
    [whole] = tiny_model.transcribe([(audio, 16000)], options)
    assert whole.text == join_texts(tiny_model.detokenize_text([g.ids for g in generations]))
    assert [(s.start, s.end) for s in whole.segments] == [(a / 16000, b / 16000) for a, b in windows]
    assert whole.generated_ids == [t for g in generations for t in g.ids]

    speaker = tiny_model.speaker((voice(2.0, seed=5), 16000))
    text = "First sentence here. Second one follows. And a third to finish."
    synth = SynthesizeOptions(max_new_tokens=20, min_new_tokens=6, max_chunk_units=4)
    chunks = tiny_model.synthesis_chunks(text, synth)
    assert len(chunks) > 1
    generations = tiny_model.generate_synthesis(chunks, [speaker] * len(chunks), synth,
                                                seeds=[piece_seed(9, k) for k in range(len(chunks))])
    waves = [w for _, w in tiny_model.detokenize_speech([speaker.global_tokens] * len(chunks),
                                                        [g.ids for g in generations])]
    [result] = tiny_model.synthesize([text], [speaker], synth, seeds=[9])
    assert result.chunks == len(chunks)
    # batched decoding of equal-length pieces differs from one by one in float rounding only
    np.testing.assert_allclose(result.audio, join_speech(waves, 16000, synth.crossfade_s), atol=2e-5)


def test_a_stand_in_for_a_component_not_loaded_is_plainly_absent_to_copy_and_hasattr(tiny_checkpoint):
    import copy

    from gpa import GPA

    encoders = GPA.from_pretrained(tiny_checkpoint, components=("bicodec",))
    assert not hasattr(encoders.llm, "__deepcopy__") and not encoders.glm
    copy.copy(encoders.llm)  # copy asks for dunders: absent, not an error
