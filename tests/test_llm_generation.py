"""Batched generation on the tiny random LLM: equal to Hugging Face's generate, independent of batch mates and
padding, reproducible per seed, stopping per row, constrained when asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from gpa import prompts
from gpa.generation import GenerationOptions, generate
from gpa.llm import load_llm
from gpa.sampling import process_logits, sample
from gpa.testing.llm import write_random_checkpoint
from gpa.vocab import TokenLayout

SIZES = dict(glm_codebook_size=40, global_codebook_size=24, semantic_codebook_size=56)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny matrices: one thread avoids oversubscription on a shared CPU (10x faster here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llm_generation")
    write_random_checkpoint(directory, seed=3, **SIZES)
    model, tokenizer = load_llm(directory)
    return model, tokenizer, TokenLayout.from_tokenizer(tokenizer, **SIZES)


@pytest.fixture(scope="module")
def task_prompts(llm):
    _, tokenizer, layout = llm
    rng = np.random.default_rng(1)
    texts = ["Hello world.", "The train arrives at nine and the platform fills with people.", "今天天气很好"]
    return {
        "tts": [prompts.tts_prompt(layout, tokenizer, rng.integers(0, 24, 32), t).ids for t in texts],
        "vc": [prompts.vc_prompt(layout, rng.integers(0, 24, 32), rng.integers(0, 56, n)) for n in (8, 30, 17)],
        "stt": [prompts.stt_prompt(layout, rng.integers(0, 40, n // 4), rng.integers(0, 56, n)) for n in (40, 90, 64)],
    }


def _run(llm, batch, options, task, seeds=None):
    model, _, layout = llm
    return generate(model, batch, options, layout=layout, task=task, seeds=seeds, pad_id=layout.pad_id)


@pytest.mark.parametrize("task", ["stt", "tts", "vc"])
def test_greedy_equals_hf_generate(llm, task_prompts, task):
    model, tokenizer, layout = llm
    options = GenerationOptions(max_new_tokens=200)
    for prompt in task_prompts[task][:2]:
        (ours,) = _run(llm, [prompt], options, task)
        hf = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=200,
            do_sample=False,
            eos_token_id=layout.im_end,
            pad_token_id=layout.pad_id,
        )[0, len(prompt) :].tolist()
        assert ours.stopped and 5 < len(ours.ids) < 200  # the tiny model's outputs are short and well formed
        assert ours.ids + [layout.im_end] == hf


def test_greedy_with_repetition_penalty_equals_hf_generate(llm, task_prompts):
    model, _, layout = llm
    prompt = task_prompts["stt"][0]
    (ours,) = _run(llm, [prompt], GenerationOptions(max_new_tokens=60, repetition_penalty=1.3), "stt")
    hf = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=60,
        do_sample=False,
        repetition_penalty=1.3,
        eos_token_id=layout.im_end,
        pad_token_id=layout.pad_id,
    )[0, len(prompt) :].tolist()
    assert ours.ids + ([layout.im_end] if ours.stopped else []) == hf


def test_outputs_fit_the_task(llm, task_prompts):
    _, tokenizer, layout = llm
    for task in ("tts", "vc"):
        for out in _run(llm, task_prompts[task], GenerationOptions.for_task(task), task, seeds=[0, 1, 2]):
            semantic = prompts.semantic_from_generation(layout, out.ids)
            assert out.stopped and 10 <= len(semantic) == len(out.ids) <= 200
            assert len(set(semantic.tolist())) > len(semantic) // 2  # varied, not one repeated token
    texts = [
        prompts.text_from_generation(tokenizer, layout, o.ids)
        for o in _run(llm, task_prompts["stt"], GenerationOptions.for_task("stt"), "stt")
    ]
    assert all(texts) and len(set(texts)) == len(texts)  # different audio, different text


def test_greedy_is_independent_of_batch_mates_and_padding(llm, task_prompts):
    options = GenerationOptions(max_new_tokens=60)
    everything = task_prompts["tts"][:2] + task_prompts["vc"] + task_prompts["stt"][1:]
    alone = [_run(llm, [p], options, "vc")[0] for p in everything]
    together = _run(llm, everything, options, "vc")  # mixed lengths: up to ~70 tokens of left padding
    reversed_ = _run(llm, everything[::-1], options, "vc")[::-1]
    assert together == alone and reversed_ == alone
    assert len({len(o.ids) for o in alone}) > 3  # rows finish at different steps (and are dropped from the batch)


def test_seeded_sampling_is_independent_of_batch_mates(llm, task_prompts):
    options = GenerationOptions.for_task("tts")
    options.max_new_tokens = 60
    batch = task_prompts["tts"] + task_prompts["vc"]
    seeds = [11, 12, 13, 14, 15, 16]
    together = _run(llm, batch, options, "tts", seeds=seeds)
    alone = [_run(llm, [p], options, "tts", seeds=[s])[0] for p, s in zip(batch, seeds, strict=True)]
    assert together == alone
    shuffled = [3, 0, 5, 1, 4, 2]
    again = _run(llm, [batch[i] for i in shuffled], options, "tts", seeds=[seeds[i] for i in shuffled])
    assert [again[shuffled.index(i)] for i in range(6)] == alone
    # Same prompt, different seeds: different samples; same seed: the same sample.
    same_prompt = _run(llm, [batch[1]] * 3, options, "tts", seeds=[1, 2, 1])
    assert same_prompt[0] == same_prompt[2] and same_prompt[0].ids != same_prompt[1].ids


def test_stop_and_max_new_tokens_per_row(llm, task_prompts):
    _, _, layout = llm
    batch = task_prompts["tts"]
    full = _run(llm, batch, GenerationOptions(max_new_tokens=200), "tts")
    assert all(o.stopped and not o.hit_max_new_tokens and layout.im_end not in o.ids for o in full)
    cut_at = sorted(len(o.ids) for o in full)[1]  # one row stops before the cut, the others are cut
    cut = _run(llm, batch, GenerationOptions(max_new_tokens=cut_at), "tts")
    for whole, part in zip(full, cut, strict=True):
        if len(whole.ids) < cut_at:
            assert part == whole
        else:
            assert part.ids == whole.ids[:cut_at] and part.hit_max_new_tokens and not part.stopped


def test_constrained_decoding_only_emits_allowed_tokens(llm, task_prompts):
    model, _, layout = llm
    vocab = model.config.vocab_size
    # TTS prompts continue with semantic tokens; constrained to STT's tokens they can only give text.
    tts = task_prompts["tts"]
    free = _run(llm, tts, GenerationOptions(max_new_tokens=20), "stt")
    assert all(layout.is_semantic(t) for o in free for t in o.ids)
    text_allowed = layout.allowed_mask("stt", vocab)
    for out in _run(llm, tts, GenerationOptions(max_new_tokens=20, constrained=True), "stt"):
        assert out.ids and all(text_allowed[t] and not layout.is_audio(t) for t in out.ids)
    # STT prompts continue with text; constrained to TTS's tokens, only semantic tokens or the stop remain.
    stt = task_prompts["stt"]
    assert any(layout.is_text(t) for o in _run(llm, stt, GenerationOptions(max_new_tokens=5), "tts") for t in o.ids)
    options = GenerationOptions.for_task("tts")
    options.constrained, options.max_new_tokens = True, 20
    for out in _run(llm, stt, options, "tts", seeds=[1, 2, 3]):
        assert all(layout.is_semantic(t) for t in out.ids)
    # The mask itself: disallowed tokens can never win, even with the highest logit.
    logits = torch.zeros(2, vocab)
    logits[:, layout.glm_offset] = 100.0
    allowed = layout.allowed_mask("vc", vocab)
    scores = process_logits(logits, GenerationOptions(constrained=True), allowed=allowed)
    assert allowed[int(scores[0].argmax())] and torch.isinf(scores[:, layout.glm_offset]).all()


def test_logits_processing_equals_hf_processors():
    torch.manual_seed(0)
    scores = torch.randn(4, 300) * 3
    context = torch.randint(0, 300, (4, 25))
    seen = torch.zeros(4, 300, dtype=torch.bool).scatter_(1, context, True)
    for temperature, top_k, top_p in ((0.2, 50, 1.0), (0.7, 0, 0.8), (1.0, 5, 0.5), (1.3, 300, 0.95)):
        options = GenerationOptions(
            do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=1.2
        )
        expected = RepetitionPenaltyLogitsProcessor(1.2)(context, scores.clone())
        if temperature != 1.0:
            expected = TemperatureLogitsWarper(temperature)(context, expected)
        if top_k:
            expected = TopKLogitsWarper(top_k)(context, expected)
        if top_p < 1.0:
            expected = TopPLogitsWarper(top_p)(context, expected)
        assert torch.equal(process_logits(scores, options, seen=seen), expected)


def test_inverse_cdf_sampling():
    scores = torch.log(torch.tensor([[0.0, 0.5, 0.0, 0.25, 0.25, 0.0]]))
    picks = [int(sample(scores, torch.tensor([u]))) for u in (0.0, 0.49, 0.5, 0.74, 0.75, 0.999999)]
    assert picks == [1, 1, 3, 3, 4, 4]
    # Frequencies follow the probabilities.
    many = sample(scores.expand(20000, -1), torch.rand(20000, generator=torch.Generator().manual_seed(0)))
    counts = torch.bincount(many, minlength=6).float() / 20000
    assert torch.allclose(counts, torch.tensor([0.0, 0.5, 0.0, 0.25, 0.25, 0.0]), atol=0.02)


def test_task_defaults_follow_the_reference():
    stt = GenerationOptions.for_task("stt")
    assert (stt.do_sample, stt.max_new_tokens, stt.repetition_penalty) == (False, 512, 1.0)
    for task in ("tts", "tts-a", "vc"):
        opts = GenerationOptions.for_task(task)
        assert (opts.do_sample, opts.temperature, opts.repetition_penalty, opts.top_k, opts.top_p) == (
            True,
            0.2,
            1.2,
            50,
            1.0,
        )
        assert opts.max_new_tokens == 512 and not opts.constrained
    # What the reference leaves unset comes from the checkpoint's generation config.
    tuned = GenerationOptions.for_task("vc", {"top_k": 20, "top_p": 0.8, "temperature": 0.6})
    assert (tuned.top_k, tuned.top_p, tuned.temperature) == (20, 0.8, 0.2)
    assert GenerationOptions.for_task("stt", {"repetition_penalty": 1.1}).repetition_penalty == 1.1
    with pytest.raises(ValueError, match="unknown task"):
        GenerationOptions.for_task("asr")


def test_bad_arguments(llm, task_prompts):
    with pytest.raises(ValueError, match="at least one token"):
        _run(llm, [[]], GenerationOptions(), "stt")
    with pytest.raises(ValueError, match="2 seeds for 1 prompts"):
        _run(llm, task_prompts["tts"][:1], GenerationOptions.for_task("tts"), "tts", seeds=[1, 2])
    with pytest.raises(ValueError, match="temperature"):
        _run(llm, task_prompts["tts"][:1], GenerationOptions(do_sample=True, temperature=0.0), "tts")
    assert _run(llm, [], GenerationOptions(), "stt") == []
