"""The static engine gives the reference engine's tokens: greedy ids and seeded samples, on random prompts of mixed
lengths, with every logits processor, per-prompt limits, refill of finished slots and compaction (the parity
goldens are checked with both engines in tests/test_parity.py)."""

from __future__ import annotations

import random

import pytest
import torch
from generation_prompts import random_prompts

from gpa.generation import generate, generate_reference, resolve_engine
from gpa.options import GenerationOptions, TranscribeOptions
from gpa.static_generation import StaticEngine, static_engine

CASES = {
    "greedy": ("stt", GenerationOptions(max_new_tokens=40)),
    "greedy-penalty-constrained": ("stt", GenerationOptions(max_new_tokens=40, repetition_penalty=1.3,
                                                            constrained=True)),
    "sampled-penalty": ("tts", GenerationOptions(max_new_tokens=60, do_sample=True, temperature=0.7,
                                                 repetition_penalty=1.2)),
    "sampled-top-p-constrained": ("vc", GenerationOptions(max_new_tokens=60, do_sample=True, temperature=0.9,
                                                          top_k=20, top_p=0.8, repetition_penalty=1.3,
                                                          constrained=True)),
    "forced-length": ("stt", GenerationOptions(max_new_tokens=30, min_new_tokens=30)),
}


def both_engines(model, batch, options, task, seeds, limits, engine):
    kwargs = dict(layout=model.layout, task=task, seeds=seeds, pad_id=model.layout.pad_id, max_new_tokens=limits)
    expected = generate_reference(model.llm, batch, options, **kwargs)
    return expected, engine.generate(batch, options, **kwargs)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("max_rows", [None, 4])  # 4 < 13 prompts: slots are refilled and rows compacted
def test_same_tokens_as_the_reference_engine(tiny_model, case, max_rows):
    task, options = CASES[case]
    batch = random_prompts(tiny_model.layout, task, 13, seed=len(case))
    rng = random.Random(1)
    limits = [rng.randint(1, options.max_new_tokens) if i % 2 else options.max_new_tokens for i in range(13)]
    engine = StaticEngine(tiny_model.llm, max_rows=max_rows, check_every=3)
    expected, got = both_engines(tiny_model, batch, options, task, list(range(13)), limits, engine)
    assert got == expected
    assert any(r.stopped for r in expected) or case == "forced-length"
    assert any(len(r.ids) > 5 for r in expected)
    if case == "forced-length":  # <|im_end|> blocked: every row runs to its own limit
        assert [len(r.ids) for r in got] == limits and all(r.hit_max_new_tokens for r in got)


def test_qwen2_decoder(tiny_alt_model):
    options = GenerationOptions(max_new_tokens=50, do_sample=True, temperature=0.8, repetition_penalty=1.2)
    batch = random_prompts(tiny_alt_model.layout, "tts", 9, seed=3)
    engine = StaticEngine(tiny_alt_model.llm, max_rows=3, check_every=5)
    expected, got = both_engines(tiny_alt_model, batch, options, "tts", [7] * 9, [50] * 9, engine)
    assert got == expected and any(r.stopped for r in got)


def test_a_rows_tokens_do_not_depend_on_its_batch_mates(tiny_model):
    options = GenerationOptions(max_new_tokens=60, do_sample=True, temperature=0.8, repetition_penalty=1.2)
    batch = random_prompts(tiny_model.layout, "tts", 8, seed=11)
    kwargs = dict(layout=tiny_model.layout, task="tts", pad_id=0)
    engine = StaticEngine(tiny_model.llm, check_every=4)
    together = engine.generate(batch, options, seeds=list(range(8)), max_new_tokens=[60] * 8, **kwargs)
    for i in (0, 5):
        alone = engine.generate([batch[i]], options, seeds=[i], max_new_tokens=[60], **kwargs)
        assert alone == [together[i]]
    reversed_ = engine.generate(batch[::-1], options, seeds=list(range(8))[::-1], max_new_tokens=[60] * 8, **kwargs)
    assert reversed_[::-1] == together


def test_the_arena_is_kept_and_grown_between_calls(tiny_model):
    engine = StaticEngine(tiny_model.llm, check_every=8)
    options = GenerationOptions(max_new_tokens=20)
    kwargs = dict(layout=tiny_model.layout, task="stt", seeds=None, pad_id=0)
    short = random_prompts(tiny_model.layout, "stt", 3, seed=5)
    first = engine.generate(short, options, max_new_tokens=[20] * 3, **kwargs)
    arena = engine.arena
    assert engine.generate(short, options, max_new_tokens=[20] * 3, **kwargs) == first
    assert engine.arena is arena  # same shapes: same arena
    long = [p * 6 for p in short]  # longer than the arena's positions
    expected = generate_reference(tiny_model.llm, long, options, max_new_tokens=[20] * 3, **kwargs)
    assert engine.generate(long, options, max_new_tokens=[20] * 3, **kwargs) == expected
    assert engine.arena is not arena and engine.arena.positions >= max(map(len, long)) + 20


def test_rows_are_sized_by_their_own_token_limits(tiny_model):
    """Per-prompt limits (ASR's tokens per second of a window) size the cache rows, not max_new_tokens: a row
    that reaches its limit keeps writing at its frozen position, which must stay inside the row."""
    engine = StaticEngine(tiny_model.llm, check_every=8)
    options = GenerationOptions(max_new_tokens=200, min_new_tokens=200)  # every row runs to its limit
    prompts = [p for p in random_prompts(tiny_model.layout, "stt", 20, seed=8) if 60 <= len(p) <= 240][:3]
    limits = [255 - len(p) for p in prompts]  # prompt + limit + 1 == 256 for every row: one key bucket
    assert len(prompts) == 3 and max(limits) <= 200
    kwargs = dict(layout=tiny_model.layout, task="stt", seeds=None, pad_id=0, max_new_tokens=limits)
    ours = engine.generate(prompts, options, **kwargs)
    assert engine.arena.positions == 256  # max_new_tokens would have asked for 512
    assert ours == generate_reference(tiny_model.llm, prompts, options, **kwargs)
    assert [len(out.ids) for out in ours] == limits


def test_engine_choice(tiny_model):
    assert resolve_engine(tiny_model.llm, "auto") == "reference"  # the CPU default keeps the exact numerics
    assert resolve_engine(tiny_model.llm, "static") == "static"
    assert static_engine(tiny_model.llm) is static_engine(tiny_model.llm)
    with pytest.raises(ValueError, match="engine must be one of"):
        GenerationOptions(engine="fast").validate()
    with pytest.raises(ValueError, match="engine must be one of"):
        TranscribeOptions(engine="fast")
    with pytest.raises(ValueError, match="min_new_tokens"):
        GenerationOptions(max_new_tokens=5, min_new_tokens=6).validate()
    with pytest.raises(ValueError, match="token limit"):
        generate(tiny_model.llm, [[1, 2]], GenerationOptions(max_new_tokens=5), layout=tiny_model.layout, task="stt",
                 pad_id=0, max_new_tokens=[6])
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        generate(tiny_model.llm, [[10**7]], GenerationOptions(engine="static"), layout=tiny_model.layout, task="stt",
                 pad_id=0)


def test_transcribe_with_either_engine_gives_the_same_text(tiny_model, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(int(16000 * s)).astype(np.float32), 16000) for s in (0.4, 1.3, 2.2)]
    reference = tiny_model.transcribe(clips, TranscribeOptions(engine="reference", max_new_tokens=40))
    static = tiny_model.transcribe(clips, TranscribeOptions(engine="static", max_new_tokens=40))
    assert [r.generated_ids for r in static] == [r.generated_ids for r in reference]
    assert [r.text for r in static] == [r.text for r in reference]
    assert all(r.ok for r in static) and any(r.generated_ids for r in static)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_replay_the_eager_step(tiny_model):
    """Graphs (really captured: no fallback) give the eager steps' tokens, for three plans in turn, while another
    thread of the process does CUDA work with host synchronisations (as another stage of a job may)."""
    import threading

    model = tiny_model.llm.to("cuda")
    stop = threading.Event()
    syncs = [0]

    def other_stage():
        x = torch.randn(256, 256, device="cuda")
        while not stop.is_set():
            float((x @ x).sum())  # a kernel and a host synchronisation, on this thread's stream
            syncs[0] += 1

    worker = threading.Thread(target=other_stage, daemon=True)
    worker.start()
    try:
        plans = [("tts", GenerationOptions(max_new_tokens=40, do_sample=True, temperature=0.8, repetition_penalty=1.2)),
                 ("vc", GenerationOptions(max_new_tokens=40, do_sample=True, top_k=20, top_p=0.8, constrained=True)),
                 ("stt", GenerationOptions(max_new_tokens=40))]
        eager = StaticEngine(model, cuda_graphs=False, max_rows=4)
        graphs = StaticEngine(model, cuda_graphs=True, max_rows=4)
        for task, options in plans:
            batch = random_prompts(tiny_model.layout, task, 10, seed=2)
            kwargs = dict(layout=tiny_model.layout, task=task, seeds=list(range(10)), pad_id=0,
                          max_new_tokens=[40] * 10)
            assert graphs.generate(batch, options, **kwargs) == eager.generate(batch, options, **kwargs), task
            assert graphs.cuda_graphs and graphs.graphs, task  # captured and replayed, no fallback
    finally:
        stop.set()
        worker.join()
        tiny_model.llm.to("cpu")
    assert syncs[0] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_failed_capture_decodes_eagerly_and_leaves_the_allocator_usable(tiny_model, monkeypatch):
    """A step that synchronises with the host while being captured: the capture fails, the call still gives the
    eager tokens, and the allocator still empties its cache and serves allocations afterwards."""
    model = tiny_model.llm.to("cuda")
    original = StaticEngine._step

    def step_reading_a_value(engine, batch, keys):
        original(engine, batch, keys)
        if torch.cuda.is_current_stream_capturing():
            int(engine.arena.step[0])  # a host synchronisation: not allowed during a capture

    try:
        monkeypatch.setattr(StaticEngine, "_step", step_reading_a_value)
        batch = random_prompts(tiny_model.layout, "stt", 6, seed=3)
        options = GenerationOptions(max_new_tokens=20)
        kwargs = dict(layout=tiny_model.layout, task="stt", seeds=list(range(6)), pad_id=0, max_new_tokens=[20] * 6)
        eager = StaticEngine(model, cuda_graphs=False, max_rows=4).generate(batch, options, **kwargs)
        engine = StaticEngine(model, cuda_graphs=True, max_rows=4)
        assert engine.generate(batch, options, **kwargs) == eager
        assert engine.cuda_graphs is False and not engine.graphs
        engine.release()  # empties the cache: raised before PyTorch 2.8 while the allocator saw a capture running
        big = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
        del big
        assert engine.generate(batch, options, **kwargs) == eager
    finally:
        tiny_model.llm.to("cpu")


def test_token_limits_per_second_of_audio_force_lengths(tiny_model):
    """The benchmark's forced lengths: <|im_end|> blocked, each window limited to ceil(rate x its seconds)."""
    import math

    import numpy as np

    rng = np.random.default_rng(1)
    seconds = (0.5, 1.7, 3.0)
    clips = [(0.1 * rng.standard_normal(int(16000 * s)).astype(np.float32), 16000) for s in seconds]
    options = TranscribeOptions(max_new_tokens=40, min_new_tokens=40, max_new_tokens_per_second=3.5, engine="static")
    results = tiny_model.transcribe(clips, options)
    assert [len(r.generated_ids) for r in results] == [math.ceil(3.5 * s) for s in seconds]
    assert all(r.truncated for r in results)
    with pytest.raises(ValueError, match="max_new_tokens_per_second"):
        TranscribeOptions(max_new_tokens_per_second=0)


def test_stage_timings_are_recorded_only_when_asked(tiny_model):
    import numpy as np

    from gpa.profiling import record

    clip = (0.1 * np.random.default_rng(2).standard_normal(16000).astype(np.float32), 16000)
    with record() as timings:
        tiny_model.transcribe([clip], TranscribeOptions(max_new_tokens=8))
    assert {"audio decode", "GLM encode", "BiCodec encode", "prefill", "decode steps"} <= set(timings)
    assert all(t >= 0 for t in timings.values())
    tiny_model.transcribe([clip], TranscribeOptions(max_new_tokens=8))  # no recording open: nothing to collect
