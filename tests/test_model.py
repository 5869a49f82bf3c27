"""The GPA front on a tiny random checkpoint: batching, long inputs, per-item errors, reproducibility."""

import dataclasses
import io
import math

import numpy as np
import pytest
import soundfile as sf

from gpa.chunking import split_text
from gpa.errors import EmptyAudio, InvalidText, TooShortAudio, UnreadableAudio
from gpa.options import ConvertOptions, SynthesizeOptions, TranscribeOptions
from gpa.results import Speaker


def voice(seconds, seed=0, rate=16000):
    """Deterministic speech-like audio: a pitched buzz with syllable-rate amplitude modulation and pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 110 + 40 * seed % 97
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6)), 0, None)
    wave = 0.3 * wave * envelope + 0.01 * rng.normal(size=t.shape)
    return wave.astype(np.float32)


def wav_bytes(samples, rate=16000):
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV")
    return buf.getvalue()


def test_transcribe_counts_and_component_access(tiny_model):
    audio = voice(2.0)
    result = tiny_model.transcribe([(audio, 16000)])[0]
    assert result.ok, result.error
    assert isinstance(result.text, str)
    assert len(result.glm_tokens) == math.ceil(len(audio) / 1280)
    assert len(result.semantic_tokens) == len(audio) // 320
    assert result.duration_s == pytest.approx(2.0)
    assert [(s.start, s.end) for s in result.segments] == [(0.0, 2.0)]
    prompt = tiny_model.stt_prompt_ids((audio, 16000))
    assert prompt[0] == tiny_model.layout.start_glm
    assert len(prompt) == len(result.glm_tokens) + len(result.semantic_tokens) + 5


def test_batch_results_equal_single_results(tiny_model):
    audios = [(voice(s, seed=i), 16000) for i, s in enumerate([0.7, 3.1, 1.6])]
    together = tiny_model.transcribe(audios)
    for audio, batched in zip(audios, together, strict=True):
        alone = tiny_model.transcribe([audio])[0]
        assert batched.generated_ids == alone.generated_ids
        assert batched.glm_tokens == alone.glm_tokens and batched.semantic_tokens == alone.semantic_tokens
        assert batched.text == alone.text


def test_long_audio_is_windowed_at_pauses_and_stitched(tiny_model):
    audio = voice(7.0, seed=3)
    audio[int(3.3 * 16000) : int(3.6 * 16000)] = 0.0  # a pause inside the search zone of the first window
    result = tiny_model.transcribe([(audio, 16000)], TranscribeOptions(window_s=4.0))[0]
    assert result.ok, result.error
    assert len(result.segments) == 2
    assert result.segments[0].end == pytest.approx(3.45, abs=0.03)
    assert result.segments[0].end == result.segments[1].start and result.segments[1].end == pytest.approx(7.0)
    assert result.text == " ".join(s.text.strip() for s in result.segments if s.text.strip())


def test_one_bad_item_does_not_touch_its_batch_mates(tiny_model):
    good = (voice(1.0), 16000)
    results = tiny_model.transcribe([good, b"not audio at all", (np.zeros(0, np.float32), 16000),
                                     (np.zeros(100, np.float32), 16000), good])
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert isinstance(results[1].error, UnreadableAudio) and results[1].error.kind == "unreadable_audio"
    assert isinstance(results[2].error, EmptyAudio)
    assert isinstance(results[3].error, TooShortAudio)
    assert results[0].generated_ids == results[4].generated_ids


def test_speakers_come_from_one_pass_of_the_speaker_encoder(tiny_model, monkeypatch):
    audios = [(voice(2.0, seed=7), 16000), (voice(3.0, seed=8), 16000)]
    bicodec = tiny_model.bicodec
    samples = [tiny_model.load(a) for a in audios]
    expected_tokens, expected_embeddings = bicodec.global_tokens(samples), bicodec.speaker_embedding(samples)
    passes = []
    encode = bicodec._speaker
    monkeypatch.setattr(bicodec, "_speaker", lambda wavs: passes.append(len(wavs)) or encode(wavs))
    speakers = tiny_model.speakers(audios)
    assert passes == [2]  # tokens and embeddings together, not one pass each
    for speaker, tokens, embedding in zip(speakers, expected_tokens, expected_embeddings, strict=True):
        np.testing.assert_array_equal(speaker.global_tokens, tokens)
        np.testing.assert_array_equal(speaker.embedding, embedding)


def test_synthesize_is_reproducible_per_item_whatever_the_batch(tiny_model):
    ref = wav_bytes(voice(3.0, seed=5))
    texts = ["Hello there.", "A second, somewhat longer sentence to say.", "短い文です。"]
    options = SynthesizeOptions(max_new_tokens=120)
    together = tiny_model.synthesize(texts, [ref] * 3, options, seeds=[1, 2, 3])
    alone = tiny_model.synthesize(texts[1:2], [ref], options, seeds=[2])[0]
    assert together[1].generated_ids == alone.generated_ids
    np.testing.assert_allclose(together[1].audio, alone.audio, atol=1e-4)
    again = tiny_model.synthesize(texts[1:2], [ref], options, seeds=[2])[0]
    assert again.generated_ids == alone.generated_ids
    for result in together:
        assert result.ok, result.error
        assert result.audio.dtype == np.float32 and result.sample_rate == 16000
        assert len(result.audio) == 320 * len(result.semantic_tokens)
        assert len(result.global_tokens) == tiny_model.bicodec.num_global_tokens
        assert abs(float(result.audio.mean())) < 1e-4


def test_synthesize_reuses_speakers_and_reports_bad_text(tiny_model):
    speaker = tiny_model.speaker((voice(2.0, seed=7), 16000))
    assert isinstance(speaker, Speaker) and speaker.embedding.ndim == 1
    results = tiny_model.synthesize(["", "ok", "\x00\x01  ", "x" * 50], [speaker] * 4,
                                    SynthesizeOptions(max_new_tokens=60, max_text_chars=40))
    assert [r.ok or r.error.kind for r in results] == ["invalid_text", True, "invalid_text", "invalid_text"]
    assert isinstance(results[0].error, InvalidText)
    bad_ref = tiny_model.synthesize(["hello"], [b"garbage"], SynthesizeOptions(max_new_tokens=30))[0]
    assert bad_ref.error.kind == "unreadable_audio" and "reference" in str(bad_ref.error)


def test_long_text_is_split_at_sentences_and_crossfaded(tiny_model):
    text = " ".join(f"This is sentence number {i}." for i in range(12))
    options = SynthesizeOptions(max_new_tokens=60, max_chunk_units=80, crossfade_s=0.02)
    result = tiny_model.synthesize([text], [(voice(2.0), 16000)], options)[0]
    assert result.ok, result.error
    assert result.chunks == len(split_text(text, 80)) == 5
    overlap = int(0.02 * 16000) * (result.chunks - 1)
    assert len(result.audio) == 320 * len(result.semantic_tokens) - overlap


def test_truncation_is_reported(tiny_model):
    result = tiny_model.synthesize(["hello"], [(voice(2.0), 16000)],
                                   SynthesizeOptions(max_new_tokens=3, do_sample=False))[0]
    assert result.truncated or len(result.generated_ids) < 3


def test_convert_long_source_in_windows(tiny_model):
    source, ref = (voice(5.0, seed=1), 16000), (voice(2.0, seed=2), 16000)
    options = ConvertOptions(max_new_tokens=80, window_s=2.0)
    result = tiny_model.convert([source], [ref], options, seeds=[4])[0]
    assert result.ok, result.error
    assert result.chunks == 3
    assert len(result.source_semantic_tokens) == 5 * 50
    assert result.global_tokens == [int(x) for x in tiny_model.speaker(ref).global_tokens]
    again = tiny_model.convert([source, ref], [ref, ref], options, seeds=[4, 5])[0]
    np.testing.assert_allclose(again.audio, result.audio, atol=1e-4)


def test_constrained_decoding_only_emits_allowed_tokens(tiny_model):
    layout = tiny_model.layout
    tts = tiny_model.synthesize(["constrained"], [(voice(1.0), 16000)],
                                SynthesizeOptions(max_new_tokens=40, constrained=True))[0]
    assert all(layout.is_semantic(t) or t == layout.im_end for t in tts.generated_ids)
    stt = tiny_model.transcribe([(voice(1.0), 16000)], TranscribeOptions(max_new_tokens=40, constrained=True))[0]
    assert not any(layout.is_semantic(t) or layout.is_global(t) or layout.is_glm(t) for t in stt.generated_ids)


def test_options_log_as_plain_params():
    params = dataclasses.asdict(SynthesizeOptions())
    assert params["temperature"] == 0.2 and params["repetition_penalty"] == 1.2 and params["top_k"] is None
    assert params["max_new_tokens"] == 512 and params["do_sample"] is True
    assert dataclasses.asdict(TranscribeOptions())["do_sample"] is False


def test_unset_sampling_settings_come_from_the_checkpoint_generation_config(tiny_model):
    from gpa.generation import GenerationOptions

    defaults = GenerationOptions.for_task("tts", {"top_k": 20, "top_p": 0.8})
    resolved = SynthesizeOptions().generation(defaults)
    assert (resolved.top_k, resolved.top_p, resolved.temperature, resolved.repetition_penalty) == (20, 0.8, 0.2, 1.2)
    assert SynthesizeOptions(top_k=5).generation(defaults).top_k == 5
    assert TranscribeOptions().generation(tiny_model.checkpoint_generation["stt"]).do_sample is False


def test_every_attention_runs_without_cudnn_attention(tiny_model):
    """Batch jobs change shapes at every batch and decoding step, and cuDNN attention plans each new shape afresh
    (gpa/inference.py): every attention module of the three models runs with it off, and the process-wide
    setting is as before once GPA returns."""
    import torch

    seen: dict[str, set[bool]] = {}

    def record(module, args):
        seen.setdefault(type(module).__name__, set()).add(torch.backends.cuda.cudnn_sdp_enabled())

    attention = [m for part in (tiny_model.llm, tiny_model.glm.encoder, tiny_model.bicodec.codec,
                                tiny_model.bicodec.wav2vec2)
                 for m in part.modules() if type(m).__name__.endswith("Attention")]
    assert {type(m).__name__ for m in attention} == {"Qwen3Attention", "WhisperVQAttention", "Attention",
                                                     "Wav2Vec2Attention"}
    hooks = [m.register_forward_pre_hook(record) for m in attention]
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        speaker = tiny_model.speaker((voice(3.0, seed=2), 16000))
        assert tiny_model.transcribe([(voice(1.2), 16000), (voice(2.3, seed=1), 16000)])[0].ok
        assert tiny_model.synthesize(["two words"], [speaker], SynthesizeOptions(max_new_tokens=8))[0].ok
    finally:
        for hook in hooks:
            hook.remove()
    assert set(seen) == {type(m).__name__ for m in attention}, seen
    assert all(flags == {False} for flags in seen.values()), seen
    assert torch.backends.cuda.cudnn_sdp_enabled() == before


def test_cudnn_attention_switch_keeps_the_callers_choices_across_threads():
    import threading

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from gpa.inference import inference_mode

    cudnn = torch.backends.cuda.cudnn_sdp_enabled
    with sdpa_kernel([SDPBackend.MATH]):  # a caller's own choice: only the math kernel
        with inference_mode():
            assert not cudnn() and torch.backends.cuda.math_sdp_enabled()
            assert not torch.backends.cuda.flash_sdp_enabled()  # not switched back on
    assert cudnn()
    # two threads whose GPA calls overlap: off until the last one leaves, then back as it was
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with inference_mode():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def second():
        a_in.wait(10)
        with inference_mode():
            b_in.set()
            a_out.wait(10)
            seen["after the first left"] = cudnn()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"after the first left": False}
    assert cudnn()


def test_a_gpa_from_separately_loaded_parts_works_like_the_loaded_one(tiny_checkpoint, tiny_model):
    from gpa.bicodec import BiCodec
    from gpa.glm_tokenizer import GLMSpeechTokenizer
    from gpa.llm import load_llm
    from gpa.model import GPA

    llm, tokenizer = load_llm(tiny_checkpoint)
    glm = GLMSpeechTokenizer.from_pretrained(tiny_checkpoint / "glm-4-voice-tokenizer")
    parts = GPA.from_parts(llm, tokenizer, glm, BiCodec.from_pretrained(tiny_checkpoint / "BiCodec"),
                           source="s3://key:secret@bucket/gpa", content_hash="abc")
    assert parts.layout == tiny_model.layout
    assert (parts.source, parts.content_hash) == ("s3://bucket/gpa", "abc")  # never a credential
    audio = (voice(1.5, seed=5), 16000)
    assert parts.transcribe([audio])[0].generated_ids == tiny_model.transcribe([audio])[0].generated_ids
