"""The static engine's decoding step can be captured as a CUDA graph, checked on the CPU before any GPU runs it.

A captured step must neither wait for the host (``.item()``, ``bool(tensor)``, ``.tolist()``, copies to or from
the host) nor produce shapes that depend on values (``nonzero``, boolean-mask indexing, ``unique``...), nor make
tensors from Python data; and no tensor it allocates may outlive it (that memory belongs to the graphs' shared pool,
which another graph's replay overwrites). Every aten op of every step of real calls is checked here, for each plan
the engine bakes into its graphs, on both supported decoders. The capture procedure itself (warm-up, pool, the
fallback to eager steps when a capture fails) runs on the CPU with the CUDA-graph calls replaced by fakes.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import types
import weakref

import pytest
import torch
from generation_prompts import random_prompts
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import gpa.static_generation as static_generation
from gpa import profiling
from gpa.generation import generate_reference
from gpa.options import GenerationOptions
from gpa.static_generation import StaticEngine, unsupported_reason

aten = torch.ops.aten
# ops that copy a device value to the host, or whose output shape depends on tensor values (both synchronise)
HOST_SYNC_OPS = {aten._local_scalar_dense, aten.item, aten.is_nonzero, aten.equal, aten.nonzero, aten.masked_select,
                 aten._unique, aten._unique2, aten.unique_dim, aten.unique_consecutive, aten.unique_dim_consecutive,
                 aten.multinomial, aten.nonzero_numpy, aten.argwhere, aten.bincount, aten.histc}
PYTHON_DATA_OPS = {aten.lift_fresh, aten.lift_fresh_copy}  # torch.tensor(...) and the like
HOST_METHODS = {"tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"}
DEVICE_CHANGES = {aten._to_copy, aten.to, aten.copy_, aten.copy}


class _TensorMethods(TorchFunctionMode):
    """Tensor methods that reach the host without an aten op on a CPU tensor (``tolist``, ``cpu``, ``numpy``)."""

    def __init__(self, problems: list[str]):
        super().__init__()
        self.problems = problems

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_METHODS:
            self.problems.append(f"Tensor.{name} (reads the value on the host)")
        return func(*args, **(kwargs or {}))


class _AtenOps(TorchDispatchMode):
    """Every aten op: the forbidden ones are reported, the tensors made by the others are watched."""

    def __init__(self, problems: list[str]):
        super().__init__()
        self.problems = problems
        self.made: list[tuple[weakref.ref, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in HOST_SYNC_OPS:
            self.problems.append(f"{func} (host synchronisation or a value-dependent shape)")
        elif packet in PYTHON_DATA_OPS:
            self.problems.append(f"{func} (a tensor made from Python data)")
        elif packet in (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
                self.problems.append(f"{func} with a boolean mask (a value-dependent shape)")
        elif packet is aten.repeat_interleave and kwargs.get("output_size") is None and \
                any(isinstance(a, torch.Tensor) for a in args):
            self.problems.append(f"{func} without output_size (a value-dependent shape)")
        out = func(*args, **kwargs)
        inputs = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        outputs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        if packet in DEVICE_CHANGES and inputs and any(o.device != inputs[-1].device for o in outputs + inputs):
            self.problems.append(f"{func} between devices (a copy through the host)")
        known = {t.untyped_storage().data_ptr() for t in inputs}
        for o in outputs:
            if o.untyped_storage().data_ptr() not in known:  # new memory, not a view or in-place result
                self.made.append((weakref.ref(o), str(func)))
        return out


@contextlib.contextmanager
def capture_rules(engine: StaticEngine):
    """Report in the yielded list what in ``engine``'s decoding steps would break or corrupt a CUDA-graph capture."""
    problems: list[str] = []
    steps = [0]
    original = StaticEngine._step

    def checked_step(self, batch, keys):
        attributes = {name: id(value) for name, value in vars(self).items()}
        arena = {name: id(value) for name, value in vars(self.arena).items()}
        ops = _AtenOps(problems)
        with _TensorMethods(problems), ops:
            original(self, batch, keys)
        kept = sorted({name for ref, name in ops.made if ref() is not None})
        if kept:  # held only by reference cycles, maybe: collect them before calling it a leak
            gc.collect()
            kept = sorted({name for ref, name in ops.made if ref() is not None})
        if kept:
            problems.append(f"tensors made inside the step outlive it (graph-pool memory): {kept}")
        if {name: id(value) for name, value in vars(self).items()} != attributes or \
                {name: id(value) for name, value in vars(self.arena).items()} != arena:
            problems.append("the step assigns engine or arena attributes")
        steps[0] += 1

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StaticEngine, "_step", checked_step)
        yield problems
    assert steps[0] > 0, "no decoding step ran"


PLANS = {
    "greedy": ("stt", GenerationOptions(max_new_tokens=10)),
    "greedy-penalty": ("stt", GenerationOptions(max_new_tokens=10, repetition_penalty=1.3)),
    "min-new-tokens": ("stt", GenerationOptions(max_new_tokens=10, min_new_tokens=6)),
    "sampled-temperature-top-k-top-p": ("tts", GenerationOptions(max_new_tokens=10, do_sample=True, temperature=0.7,
                                                                 top_k=20, top_p=0.8)),
    "sampled-everything-constrained": ("vc", GenerationOptions(max_new_tokens=10, do_sample=True, temperature=0.9,
                                                               top_k=20, top_p=0.8, repetition_penalty=1.2,
                                                               min_new_tokens=3, constrained=True)),
    "greedy-constrained": ("tts", GenerationOptions(max_new_tokens=10, constrained=True)),
}


def call(model, task, options, n):
    """The arguments of a call of ``n`` random prompts with limits of their own."""
    return (random_prompts(model.layout, task, n, seed=4), options), dict(
        layout=model.layout, task=task, seeds=list(range(n)), pad_id=model.layout.pad_id,
        max_new_tokens=[options.max_new_tokens - i % 3 for i in range(n)])


def run(model, engine, task, options, n=5):
    args, kwargs = call(model, task, options, n)
    return engine.generate(*args, **kwargs)


def reference(model, task, options, n=5):
    args, kwargs = call(model, task, options, n)
    return generate_reference(model.llm, *args, **kwargs)


@pytest.mark.parametrize("plan", sorted(PLANS))
@pytest.mark.parametrize("decoder", ["qwen3", "qwen2"])
def test_every_decoding_step_is_capturable(tiny_model, tiny_alt_model, plan, decoder):
    model = tiny_model if decoder == "qwen3" else tiny_alt_model
    task, options = PLANS[plan]
    engine = StaticEngine(model.llm, max_rows=4, check_every=3)  # 4 rows for 5 prompts: refill and compaction
    with capture_rules(engine) as problems:
        run(model, engine, task, options)
    assert problems == []


def _choose_reading_item(scores, options, uniforms):
    return scores.argmax(-1) + int(scores.argmax(-1)[0]) * 0


def _choose_branching_on_a_tensor(scores, options, uniforms):
    return scores.argmax(-1) if (scores > 0).any() else scores.argmin(-1)


def _choose_with_a_boolean_mask(scores, options, uniforms):
    return scores.argmax(-1) + scores[scores > 1e30].numel()


def _choose_with_python_data(scores, options, uniforms):
    return scores.argmax(-1) + torch.tensor(0)


def _choose_reading_a_list(scores, options, uniforms):
    return scores.argmax(-1) + 0 * len(scores[:, 0].tolist())


_kept: list[torch.Tensor] = []


def _choose_keeping_a_tensor(scores, options, uniforms):
    _kept.append(scores * 1)  # like a module cache filled inside the step
    return scores.argmax(-1)


@pytest.mark.parametrize(("bad_choose", "finding"), [
    (_choose_reading_item, "aten.item"),
    (_choose_branching_on_a_tensor, "aten.is_nonzero"),
    (_choose_with_a_boolean_mask, "boolean mask"),
    (_choose_with_python_data, "aten.lift_fresh"),
    (_choose_reading_a_list, "Tensor.tolist"),
    (_choose_keeping_a_tensor, "outlive it"),
])
def test_the_rules_catch_a_step_that_cannot_be_captured(tiny_model, monkeypatch, bad_choose, finding):
    monkeypatch.setattr(static_generation, "choose", bad_choose)
    engine = StaticEngine(tiny_model.llm, check_every=2)
    with capture_rules(engine) as problems:
        run(tiny_model, engine, "stt", GenerationOptions(max_new_tokens=4), n=2)
    _kept.clear()
    assert any(finding in p for p in problems), problems


def test_rope_types_that_recompute_frequencies_in_the_forward_are_refused(tiny_model):
    config = types.SimpleNamespace(**vars(tiny_model.llm.config))
    assert unsupported_reason(types.SimpleNamespace(config=config)) is None
    config.rope_parameters = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    assert "RoPE type 'dynamic'" in unsupported_reason(types.SimpleNamespace(config=config))


# --- the capture procedure, with the CUDA-graph calls replaced by fakes ----------------------------------------


class _FakeStream:
    def wait_stream(self, other) -> None:
        pass


class _FakeGraph:
    """A CUDA graph whose replay runs the recorded step eagerly."""

    def __init__(self):
        self.step = None

    def replay(self) -> None:
        self.step()


class _Refused(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")


class _FakeCudaGraphs:
    """``torch.cuda``'s stream and graph calls for a CPU engine. A capture records the step without running it
    (the arena is put back as it was), or, with ``fail``, the step's first op raises as an illegal call does during
    a real capture."""

    def __init__(self, monkeypatch, fail: bool):
        self.fail = fail
        self.captures: list[dict] = []
        self.pools = 0
        fakes = self

        class graph:
            def __init__(self, cuda_graph, pool=None, stream=None, capture_error_mode="global"):
                fakes.captures.append({"pool": pool, "stream": stream, "mode": capture_error_mode})
                self.cuda_graph = cuda_graph

            def __enter__(self):
                fakes.capturing = self.cuda_graph
                if fakes.fail:
                    self.refused = _Refused()
                    self.refused.__enter__()
                    return
                self.saved = [(t, t.clone()) for t in fakes.arena_tensors()]

            def __exit__(self, *exc):
                fakes.capturing = None
                if fakes.fail:
                    self.refused.__exit__(*exc)
                    return
                for tensor, value in self.saved:
                    tensor.copy_(value)

        self.capturing = None
        self.engine: StaticEngine | None = None
        original = StaticEngine._step

        def recorded_step(engine, batch, keys):
            if self.capturing is not None:
                self.capturing.step = lambda: original(engine, batch, keys)
            original(engine, batch, keys)

        def pool_handle():
            self.pools += 1
            return ("pool", self.pools)

        monkeypatch.setattr(StaticEngine, "_step", recorded_step)
        monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: _FakeStream())
        monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _FakeStream())
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "set_stream", lambda s: None)
        monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
        self.devices_set: list[int] = []
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "set_device", self.devices_set.append)
        self.pools_ended: list = []
        monkeypatch.setattr(torch._C, "_cuda_endAllocateToPool", lambda device, pool: self.pools_ended.append(pool),
                            raising=False)
        monkeypatch.setattr(torch.cuda, "graph_pool_handle", pool_handle)
        monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
        monkeypatch.setattr(torch.cuda, "graph", graph)

    def arena_tensors(self) -> list[torch.Tensor]:
        arena = self.engine.arena
        return [*arena.keys, *arena.values, *(v for v in vars(arena).values() if isinstance(v, torch.Tensor))]


def graph_engine(model, fakes: _FakeCudaGraphs, **kwargs) -> StaticEngine:
    engine = StaticEngine(model.llm, **kwargs)
    engine.cuda_graphs = True  # the constructor allows graphs on CUDA only; the fakes stand in for it
    fakes.engine = engine
    return engine


def test_captured_steps_give_the_reference_tokens_and_are_dropped_with_their_plan(tiny_model, monkeypatch):
    """The warm-up is the step of the call that captures (the capture runs nothing), replays follow; graphs and
    their pool go when the plan or the arena changes."""
    fakes = _FakeCudaGraphs(monkeypatch, fail=False)
    engine = graph_engine(tiny_model, fakes, max_rows=4, check_every=3)
    sampled = PLANS["sampled-everything-constrained"][1]
    assert run(tiny_model, engine, "vc", sampled) == reference(tiny_model, "vc", sampled)
    assert len(engine.graphs) >= 2 and engine.cuda_graphs  # several batch buckets: refill and compaction
    assert {c["mode"] for c in fakes.captures} == {"thread_local"}
    assert fakes.pools_ended == []  # a capture that ends well is ended by PyTorch itself
    assert {c["pool"] for c in fakes.captures} == {("pool", 1)}  # one pool shared by the engine's graphs
    assert {id(c["stream"]) for c in fakes.captures} == {id(engine.capture_stream)}
    captured = len(fakes.captures)
    with profiling.record() as stages:
        assert run(tiny_model, engine, "vc", sampled) == reference(tiny_model, "vc", sampled)
    assert len(fakes.captures) == captured  # same plan and arena: the graphs are replayed
    assert "graph capture" not in stages and stages["decode steps"] > 0
    with profiling.record() as stages:
        run(tiny_model, engine, "stt", GenerationOptions(max_new_tokens=10))
    assert 0 < stages["graph capture"] <= stages["decode steps"]  # captures are timed, within the decoding

    greedy = GenerationOptions(max_new_tokens=10)
    assert run(tiny_model, engine, "stt", greedy) == reference(tiny_model, "stt", greedy)
    assert fakes.captures[-1]["pool"] == ("pool", 2)  # another plan (the call timed above): new graphs, new pool
    graphs = dict(engine.graphs)
    # rows longer than the arena's positions (a new arena), forced to cross key-length buckets as they grow
    longer = GenerationOptions(max_new_tokens=300, min_new_tokens=300)
    assert run(tiny_model, engine, "stt", longer, n=2) == reference(tiny_model, "stt", longer, n=2)
    assert not set(map(id, engine.graphs.values())) & set(map(id, graphs.values()))
    engine.release()
    assert engine.graphs == {} and engine.graph_pool is None and engine.arena is None


def test_a_larger_batch_gets_a_new_arena_and_new_graphs(tiny_model, monkeypatch):
    fakes = _FakeCudaGraphs(monkeypatch, fail=False)
    engine = graph_engine(tiny_model, fakes, check_every=3)  # rows: as many as the call has prompts
    greedy = GenerationOptions(max_new_tokens=10, repetition_penalty=1.2)
    assert run(tiny_model, engine, "stt", greedy, n=2) == reference(tiny_model, "stt", greedy, n=2)
    arena, graphs = engine.arena, list(engine.graphs.values())
    assert run(tiny_model, engine, "stt", greedy, n=7) == reference(tiny_model, "stt", greedy, n=7)
    assert engine.arena is not arena and engine.arena.rows == 7
    assert graphs and not set(map(id, engine.graphs.values())) & set(map(id, graphs))


def test_a_failed_capture_falls_back_to_eager_steps_with_one_warning(tiny_model, monkeypatch, caplog):
    fakes = _FakeCudaGraphs(monkeypatch, fail=True)
    engine = graph_engine(tiny_model, fakes, max_rows=4, check_every=3)
    options = PLANS["sampled-everything-constrained"][1]
    with caplog.at_level(logging.WARNING, logger="gpa.static_generation"):
        assert run(tiny_model, engine, "vc", options) == reference(tiny_model, "vc", options)
        assert run(tiny_model, engine, "vc", options) == reference(tiny_model, "vc", options)
    assert engine.cuda_graphs is False and engine.graphs == {} and engine.graph_pool is None
    assert len(fakes.captures) == 1
    # the allocator is told the capture is over (PyTorch < 2.12 skips it when ending a capture fails), and the
    # caller's device is put back
    assert fakes.pools_ended == [("pool", 1)] and fakes.devices_set == [0]
    warnings = [r for r in caplog.records if r.name == "gpa.static_generation"]
    assert len(warnings) == 1 and "operation not permitted when stream is capturing" in warnings[0].getMessage()
    assert "eager steps" in warnings[0].getMessage()
