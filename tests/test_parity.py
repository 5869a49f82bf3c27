"""Parity with the reference implementation (AutoArk/GPA 57f00c3) on random tiny checkpoints.

The goldens under tests/fixtures/parity/ were made by running the reference code itself on the checkpoints that
``make_tiny_checkpoint`` writes (how: tests/fixtures/README.md). Every stage is checked on the reference's own
input for that stage (the LLM on the reference's prompt ids, BiCodec decoding on the reference's tokens, ...), so
a failure names the stage and module that diverged instead of a symptom further down the pipeline.

Transcripts: the tiny checkpoints above emit byte fragments as text. Their ``emitted_text`` variants (goldens under
tests/fixtures/parity/transcripts/) emit whole characters, so the reference's STT text, as ``run_stt`` returns it,
is compared as a string.

Two reference routes exist for audio given to BiCodec: GPAInference passes file paths (soundfile, then
percentile loudness normalisation), the server passes tensors (peak normalisation to 0.9). Both are recorded;
``GPA.bicodec.normalization`` ("percentile" / "peak") selects which one ours follows.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gpa import GPA
from gpa.audio import load_audio
from gpa.bicodec import BiCodec
from gpa.bicodec.preprocess import normalize
from gpa.errors import CheckpointError
from gpa.generation import GenerationOptions, generate
from gpa.glm_tokenizer import TooLongAudio
from gpa.prompts import text_from_generation
from gpa.testing import make_tiny_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
SPEC = json.loads((FIXTURES / "spec.json").read_text())
CHECKPOINTS = sorted(p.parent.name for p in FIXTURES.glob("*/checkpoint.json"))
TEXT_CHECKPOINTS = sorted(p.parent.name for p in (FIXTURES / "transcripts").glob("*/checkpoint.json"))
ROUTES = {"file": "percentile", "tensor": "peak"}  # reference route -> our BiCodec normalization


@dataclass
class Case:
    name: str
    directory: Path
    model: GPA
    ref: dict
    arrays: dict[str, np.ndarray]
    paths: list[str]
    audio: list[np.ndarray]

    def prompts(self, route: str) -> list[dict]:
        return self.ref["prompts"] if route == "file" else self.ref["tensor_route_prompts"]


def _sha256_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _rebuild(golden: Path, tmp: Path) -> tuple[Path, dict]:
    """The checkpoint the goldens in ``golden`` were made from, checked file by file against their sha256."""
    manifest = json.loads((golden / "checkpoint.json").read_text())
    ckpt = make_tiny_checkpoint(tmp / "ckpt", **manifest["make_tiny_checkpoint"])
    files = _sha256_tree(ckpt)
    changed = sorted(k for k in files.keys() | manifest["files"].keys() if files.get(k) != manifest["files"].get(k))
    assert not changed, (
        f"make_tiny_checkpoint{manifest['make_tiny_checkpoint']} no longer writes the checkpoint the goldens were "
        f"made from (differing files: {changed}); regenerate the goldens with the reference (tests/fixtures/README.md)"
    )
    return ckpt, json.loads((golden / "reference.json").read_text())


@pytest.fixture(scope="module", params=CHECKPOINTS)
def case(request, tmp_path_factory) -> Case:
    golden = FIXTURES / request.param
    ckpt, ref = _rebuild(golden, tmp_path_factory.mktemp(request.param))
    with np.load(golden / "arrays.npz") as data:
        arrays = dict(data)
    paths = [str(FIXTURES / "inputs" / name) for name in ref["inputs"]]
    model = GPA.from_pretrained(ckpt)
    return Case(request.param, ckpt, model, ref, arrays, paths, [load_audio(p) for p in paths])


@pytest.fixture
def route(request, case):
    """Switch our BiCodec to the loudness normalisation of the reference route under test."""
    bicodec = case.model.bicodec
    saved = bicodec.normalization
    bicodec.normalization = ROUTES[request.param]
    yield request.param
    bicodec.normalization = saved


def _where(case: Case, what: str) -> str:
    return f"[{case.name}] {what}"


# --------------------------------------------------------------------------------------------------------------
# GLM speech tokenizer (gpa/glm_tokenizer/)


def test_glm_tokenizer(case):
    glm = case.model.glm
    clipped = []
    for i, (name, audio) in enumerate(zip(case.ref["inputs"], case.audio, strict=True)):
        expected = case.ref["per_input"][i]
        # The reference silently truncates its input to the feature extractor's chunk_length; ours refuses.
        used = int(expected["glm_samples_used"])
        if used < audio.size:
            with pytest.raises(TooLongAudio):
                glm.tokenize([audio])
        clipped.append(audio[:used])
        mel_key = f"in{i}/glm_mel"
        if mel_key in case.arrays:
            mel = glm.features([clipped[-1]])[0]
            ref_mel = case.arrays[mel_key]
            assert mel.shape == ref_mel.shape, _where(case, f"GLM log-mel shape of {name}")
            err = float(np.abs(mel - ref_mel).max())
            assert err <= 1e-4, _where(case, f"GLM log-mel of {name} differs (max abs {err:.2e}): features stage")
        tokens = glm.tokenize([clipped[-1]])[0]
        assert tokens.tolist() == expected["glm_tokens"], _where(case, f"GLM tokens of {name} (mel matched)")
    batched = glm.tokenize(clipped)
    assert [t.tolist() for t in batched] == [p["glm_tokens"] for p in case.ref["per_input"]], _where(
        case, "GLM tokens in one batch differ from the single-item goldens"
    )


# --------------------------------------------------------------------------------------------------------------
# BiCodec tokenizer (gpa/bicodec)


@pytest.mark.parametrize("route", ["file", "tensor"], indirect=True)
def test_bicodec_tokens(case, route):
    """Per item on the file route (normalisation, wav2vec2 features, speaker mel, tokens), then all items in one
    batch on both routes; the routes differ only in the loudness normalisation."""
    bicodec = case.model.bicodec
    prefix = "" if route == "file" else "tensor_"
    for i, (name, audio) in enumerate(zip(case.ref["inputs"], case.audio, strict=True)):
        expected = case.ref["per_input"][i]
        np.testing.assert_allclose(
            normalize(audio, bicodec.normalization),
            audio * expected[f"{prefix}gain"],
            rtol=1e-5,
            atol=1e-7,
            err_msg=_where(case, f"{route} route: loudness normalisation of {name} (gpa/bicodec/preprocess.py)"),
        )
        if route == "tensor":
            continue
        feats = bicodec.wav2vec2_features([audio])[0].numpy()
        ref_feats = case.arrays[f"in{i}/w2v_features"]
        assert feats.shape == ref_feats.shape, _where(case, f"wav2vec2 feature shape of {name}")
        err = float(np.abs(feats - ref_feats).max())
        assert err <= 1e-4, _where(case, f"wav2vec2 features (mean of 11/14/16) of {name}: max abs {err:.2e}")
        mel = bicodec.mel([audio])[0].numpy()
        ref_mel = case.arrays[f"in{i}/speaker_mel"]
        assert mel.shape == ref_mel.shape, _where(case, f"speaker mel shape of {name}")
        np.testing.assert_allclose(
            mel, ref_mel, rtol=1e-4, atol=1e-5, err_msg=_where(case, f"speaker mel (reference clip) of {name}")
        )
        glob, sem = bicodec.tokenize([audio])[0]
        assert sem.tolist() == expected["semantic_tokens"], _where(
            case, f"BiCodec semantic tokens of {name} (features matched)"
        )
        assert glob.tolist() == expected["global_tokens"], _where(
            case, f"BiCodec global tokens of {name} (speaker mel matched)"
        )
    for i, (glob, sem) in enumerate(bicodec.tokenize(case.audio)):
        expected = case.ref["per_input"][i]
        what = f"{route} route, all inputs in one batch: BiCodec %s tokens of {case.ref['inputs'][i]}"
        assert sem.tolist() == expected[f"{prefix}semantic_tokens"], _where(case, what % "semantic")
        assert glob.tolist() == expected[f"{prefix}global_tokens"], _where(case, what % "global")


# --------------------------------------------------------------------------------------------------------------
# Prompts (gpa/prompts.py, gpa/vocab.py) through the public GPA accessors


@pytest.mark.parametrize("route", ["file", "tensor"], indirect=True)
def test_prompts(case, route):
    model, layout = case.model, case.model.layout
    offsets = case.ref["offsets"]
    assert (layout.glm_offset, layout.global_offset, layout.semantic_offset) == (
        offsets["glm_semantic_token_offset"],
        offsets["global_token_offset"],
        offsets["semantic_token_offset"],
    ), _where(case, "audio token offsets (gpa/vocab.py TokenLayout)")
    for p in case.prompts(route):
        if route == "tensor" and p.get("same_as_file_route"):
            continue  # checked on the file route (stt: neither GLM nor semantic tokens depend on the loudness)
        if p["task"] == "stt":
            i = p["audio"]
            if case.ref["per_input"][i]["glm_samples_used"] < case.audio[i].size:
                # Known departure: the reference truncates GLM input to chunk_length, we raise (GPA chunks first).
                with pytest.raises(TooLongAudio):
                    model.stt_prompt_ids(case.paths[i])
                continue
            ids = model.stt_prompt_ids(case.paths[i])
            what = f"stt prompt of {case.ref['inputs'][i]}"
        elif p["task"] == "tts":
            ids = model.tts_prompt_ids(p["text"], case.paths[p["reference"]])
            what = f"tts prompt of {p['text']!r} / {case.ref['inputs'][p['reference']]}"
        else:
            ids = model.vc_prompt_ids(case.paths[p["source"]], case.paths[p["reference"]])
            what = f"vc prompt {case.ref['inputs'][p['source']]} -> {case.ref['inputs'][p['reference']]}"
        assert ids == p["input_ids"], _where(case, f"{route} route: {what}")


# --------------------------------------------------------------------------------------------------------------
# LLM forward and greedy generation (gpa/llm.py, gpa/generation.py), on the reference's prompt ids


def test_llm_logits(case):
    for k, p in enumerate(case.ref["prompts"]):
        with torch.inference_mode():
            logits = case.model.llm(torch.tensor([p["input_ids"]])).logits[0].float().numpy()
        last = case.arrays[f"prompt{k}/logits_last"]
        err = float(np.abs(logits[-1] - last).max())
        assert err <= 1e-4 * max(1.0, float(np.abs(last).max())), _where(
            case, f"LLM logits at the last position of prompt {k} ({p['task']}): max abs {err:.2e}"
        )
        argmax = case.arrays[f"prompt{k}/argmax_all"]
        decisive = case.arrays[f"prompt{k}/top2_gap"] > 1e-3
        assert np.array_equal(logits.argmax(-1)[decisive], argmax[decisive]), _where(
            case, f"LLM argmax over the prompt positions of prompt {k}"
        )


def _greedy(case: Case, prompts: list[dict], repetition_penalty: float = 1.0, engine: str = "reference"
            ) -> list[list[int]]:
    options = GenerationOptions(
        max_new_tokens=SPEC["max_new_tokens"], do_sample=False, repetition_penalty=repetition_penalty, engine=engine
    )
    layout = case.model.layout
    results: list[list[int]] = [[] for _ in prompts]
    for task in ("stt", "tts", "vc"):  # generate() serves one task per call
        rows = [n for n, p in enumerate(prompts) if p["task"] == task]
        if not rows:
            continue
        outs = generate(
            case.model.llm,
            [prompts[n]["input_ids"] for n in rows],
            options,
            layout=layout,
            task=task,
            pad_id=layout.pad_id,
        )
        for n, o in zip(rows, outs, strict=True):
            results[n] = o.ids + ([layout.im_end] if o.stopped else [])  # the reference keeps the stop token
    return results


@pytest.mark.parametrize("engine", ["reference", "static"])
@pytest.mark.parametrize("route", ["file", "tensor"])
def test_greedy_generation(case, route, engine):
    prompts = [p for p in case.prompts(route) if "greedy" in p]
    if route == "file":  # alone (one prompt per task, to keep the test fast), then all in one batch
        for task in ("stt", "tts", "vc"):
            p = next(p for p in prompts if p["task"] == task)
            assert _greedy(case, [p], engine=engine) == [p["greedy"]], _where(case, f"greedy {task} generation")
    assert _greedy(case, prompts, engine=engine) == [p["greedy"] for p in prompts], _where(
        case, f"{route} route: greedy generation of all prompts in one batch ({engine} engine)"
    )
    with_penalty = [p for p in prompts if "greedy_rp" in p]
    penalty = SPEC["repetition_penalty"]
    assert _greedy(case, with_penalty, penalty, engine) == [p["greedy_rp"] for p in with_penalty], _where(
        case, f"{route} route: greedy generation with repetition penalty {penalty}"
    )


# --------------------------------------------------------------------------------------------------------------
# BiCodec decoding (gpa/bicodec), on the reference's tokens


def test_bicodec_decode(case):
    pairs = []
    for k, d in enumerate(case.ref["decode"]):
        glob = np.asarray(case.ref["per_input"][d["global_from"]]["global_tokens"])
        sem = np.asarray(case.ref["per_input"][d["semantic_from"]]["semantic_tokens"][: d["semantic_tokens"]])
        pairs.append((glob, sem, case.arrays[f"decode{k}/wav"]))
    for k, (glob, sem, expected) in enumerate(pairs):
        wav = case.model.decode([glob], [sem])[0]
        assert wav.shape == expected.shape, _where(case, f"decoded length of pair {k}")
        err = float(np.abs(wav - expected).max())
        assert err <= 1e-4, _where(case, f"BiCodec decode of pair {k}: max abs error {err:.2e}")
    batched = case.model.decode([g for g, _, _ in pairs], [s for _, s, _ in pairs])
    for k, (wav, (_, _, expected)) in enumerate(zip(batched, pairs, strict=True)):
        err = float(np.abs(wav - expected).max())
        assert err <= 1e-4, _where(case, f"batched BiCodec decode of pair {k}: max abs error {err:.2e}")


def test_bicodec_state_saved_by_the_reference_loads(case, tmp_path):
    """The reference's BiCodec module keeps torchaudio's mel filterbank and window in its state dict. Saved from it
    (weight norm not yet removed), our checkpoint's weights come back bit for bit plus those two buffers, stored in
    bicodec_buffers.npz: that file loads and tokenizes the same; with either buffer off by 1e-3 it is refused."""
    with np.load(FIXTURES / case.name / "bicodec_buffers.npz") as data:
        buffers = {k: torch.from_numpy(v) for k, v in data.items()}
    assert sorted(buffers) == ["mel_transformer.mel_scale.fb", "mel_transformer.spectrogram.window"]
    directory = tmp_path / "BiCodec"
    shutil.copytree(case.directory / "BiCodec", directory)
    weights = load_file(directory / "model.safetensors")
    save_file(weights | buffers, directory / "model.safetensors")
    codec = BiCodec.from_pretrained(directory)
    audio = case.audio[:2]
    assert [[t.tolist() for t in pair] for pair in codec.tokenize(audio)] == [
        [t.tolist() for t in pair] for pair in case.model.bicodec.tokenize(audio)
    ], _where(case, "tokens after loading the reference-saved BiCodec state")
    for key in buffers:
        bad = buffers[key].clone()
        bad.view(-1)[bad.numel() // 2] += 1e-3
        save_file(weights | buffers | {key: bad}, directory / "model.safetensors")
        with pytest.raises(CheckpointError, match=re.escape(key) + " differs from the value computed from the config"):
            BiCodec.from_pretrained(directory)


# --------------------------------------------------------------------------------------------------------------
# STT transcripts (gpa/prompts.py text_from_generation, through GPA.transcribe) on text-emitting checkpoints

# Departure (docs/fidelity.md): the reference leaves spelled-out audio tokens in a transcript, we drop them.
_AUDIO_TOKEN = re.compile(r"<\|(?:glm_semantic|bicodec_global|bicodec_semantic)_\d+\|>")


@pytest.fixture(scope="module", params=TEXT_CHECKPOINTS)
def text_case(request, tmp_path_factory) -> tuple[str, GPA, dict]:
    ckpt, ref = _rebuild(FIXTURES / "transcripts" / request.param, tmp_path_factory.mktemp(request.param))
    return request.param, GPA.from_pretrained(ckpt), ref


def test_transcript_goldens_have_spaces_and_audio_tokens():
    """What the transcript goldens exercise together: words after spaces, and spelled-out audio tokens where a
    generation left text mode (the reference keeps them, we drop them)."""
    transcripts = [
        rec["transcript"]
        for name in TEXT_CHECKPOINTS
        for rec in json.loads((FIXTURES / "transcripts" / name / "reference.json").read_text())["stt"]
    ]
    assert any(re.search(r" [A-Za-z]", t) for t in transcripts)
    assert any(_AUDIO_TOKEN.search(t) for t in transcripts)


def test_stt_transcripts(text_case):
    """Per input: prompt ids, greedy ids (the checkpoint's repetition penalty applies in both), the transcript
    decoded from the reference's ids, then GPA.transcribe end to end (all inputs the reference did not truncate,
    in one batch)."""
    name, model, ref = text_case
    options = model.checkpoint_generation["stt"]
    assert options.repetition_penalty == ref["generation_config"]["repetition_penalty"]
    whole = []
    for rec in ref["stt"]:
        where = f"[{name}] {rec['input']}"
        path = str(FIXTURES / "inputs" / rec["input"])
        expected = _AUDIO_TOKEN.sub("", rec["transcript"])
        if rec["glm_truncated"]:
            with pytest.raises(TooLongAudio):
                model.stt_prompt_ids(path)
        else:
            assert model.stt_prompt_ids(path) == rec["input_ids"], f"{where}: stt prompt"
            whole.append((path, expected))
        out = generate(model.llm, [rec["input_ids"]], options, layout=model.layout, task="stt",
                       pad_id=model.layout.pad_id)[0]
        assert out.ids + ([model.layout.im_end] if out.stopped else []) == rec["greedy"], f"{where}: greedy ids"
        text = text_from_generation(model.tokenizer, model.layout, rec["greedy"])
        assert text == expected, f"{where}: transcript decoded from the reference's ids"
    texts = "".join(_AUDIO_TOKEN.sub("", rec["transcript"]) for rec in ref["stt"])
    for kind, pattern in (("Chinese", r"[\u4e00-\u9fff]"), ("Latin", r"[A-Za-z]"), ("digits", r"\d")):
        assert re.search(pattern, texts), f"[{name}] the transcript goldens have no {kind}"
    results = model.transcribe([p for p, _ in whole])
    for (path, expected), result in zip(whole, results, strict=True):
        assert result.error is None and len(result.segments) == 1, path
        assert result.segments[0].text == expected, f"[{name}] {Path(path).name}: GPA.transcribe"
        assert result.text == expected.strip()
