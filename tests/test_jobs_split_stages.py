"""The split pipeline (tokenize -> generate -> detokenize actor pools, token ids between them) writes the rows the
fused one (GPA whole in one actor) writes: in-process for every task, and through Ray for synthesis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jobs.config import JobConfig
from jobs.io import schema as S
from jobs.pipeline import task_params
from jobs.stages import GPAStage, decode_batch, encode_batch, model_stages
from jobs.tasks import get_task

AUDIO = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "audio"
TIMING = ("timings", "params")  # per-run values; everything else must be equal


def _inputs(job: str) -> list[dict]:
    speech = [AUDIO / "jfk.flac", AUDIO / "espeak_weather.flac", AUDIO / "espeak_short.flac"]
    if job == "transcribe":
        rows = [{"id": p.stem, "audio": str(p)} for p in speech]
        rows.append({"id": "missing", "audio": str(AUDIO / "missing.flac")})
    elif job == "synthesize":
        rows = [{"id": f"t{k}", "text": text, "ref_audio": str(speech[k % 2])}
                for k, text in enumerate(["Hello there.", "A second, longer sentence. And a third one here.", "Hi."])]
        rows.append({"id": "bad-ref", "text": "Hello.", "ref_audio": str(AUDIO / "missing.flac")})
    else:
        rows = [{"id": p.stem, "audio": str(p), "ref_audio": str(speech[0])} for p in speech]
        rows.append({"id": "missing", "audio": str(AUDIO / "missing.flac"), "ref_audio": str(speech[0])})
    return [{**r, "seed": 7 + k} for k, r in enumerate(rows)]


def _run(config: JobConfig, rows: list[dict]) -> dict[str, dict]:
    batch = decode_batch(S.rows_to_table(rows, S.INPUT), config.job, 3600.0)
    for model_stage in model_stages(config):
        batch = GPAStage(config, stage=model_stage.stage)(batch)
    out = encode_batch(batch, config, "run", task_params(config)).to_pylist()
    return {r["id"]: {k: v for k, v in r.items() if k not in TIMING} for r in out}


@pytest.mark.parametrize("job", ["transcribe", "synthesize", "convert"])
def test_split_stages_write_what_the_fused_model_writes(job, tiny_checkpoint, tiny_model):
    options = {"max_new_tokens": 12, "min_new_tokens": 4}
    if job != "transcribe":
        options["max_new_tokens"] = 24
    if job == "synthesize":
        options["max_chunk_units"] = 6  # several chunks per text: seeds and joins per piece
    if job == "convert":
        options["window_s"] = 4.0  # jfk (11 s) in windows
    base = dict(job=job, input="m.jsonl", output="out", model=str(tiny_checkpoint), batch_size=2, seed=3,
                options=options)
    fused_config = JobConfig(**base).for_cluster(0, 2)
    split_config = JobConfig(**base, stages="split").for_cluster(0, 2)
    assert [m.stage for m in model_stages(split_config)] == (
        ["tokenize", "generate"] if job == "transcribe" else ["tokenize", "generate", "detokenize"])
    rows = _inputs(job)
    fused, split = _run(fused_config, rows), _run(split_config, rows)
    assert sorted(fused) == sorted(split) == sorted(r["id"] for r in rows)
    assert sum(r["status"] == "ok" for r in fused.values()) == len(rows) - 1
    # the job's stages are the library's: GPA's own task methods give the same tokens
    good = [r for r in rows if "missing" not in r.get("audio", "") + r.get("ref_audio", "")]
    task_options = get_task(job).options(fused_config)
    if job == "transcribe":
        direct = tiny_model.transcribe([r["audio"] for r in good], task_options)
        for r, d in zip(good, direct, strict=True):
            assert (fused[r["id"]]["text"], fused[r["id"]]["num_glm_tokens"]) == (d.text, len(d.glm_tokens))
    else:
        speakers = [tiny_model.speaker(r["ref_audio"]) for r in good]
        seeds = [r["seed"] for r in good]
        direct = (tiny_model.synthesize([r["text"] for r in good], speakers, task_options, seeds=seeds)
                  if job == "synthesize" else
                  tiny_model.convert([r["audio"] for r in good], speakers, task_options, seeds=seeds))
        for r, d in zip(good, direct, strict=True):
            assert fused[r["id"]]["semantic_tokens"] == d.semantic_tokens, r["id"]
    for row_id, expected in fused.items():
        got = split[row_id]
        if expected.get("audio"):  # batched decoding of equal-length pieces differs in float rounding only
            import io

            import soundfile as sf

            a, b = (sf.read(io.BytesIO(r.pop("audio")["bytes"]))[0] for r in (expected, got))
            np.testing.assert_allclose(a, b, atol=1e-3)
            for name in ("speaker_similarity", "source_similarity"):
                if expected.get(name) is not None:
                    assert got[name] == pytest.approx(expected[name], abs=1e-3)
                    expected.pop(name), got.pop(name)
        assert got == expected, row_id


def test_a_split_job_on_ray_commits_what_the_fused_stages_make(ray_address, tiny_checkpoint, tmp_path):
    """Three actor pools on a 2-CPU local Ray (each with its share of the actor's CPU): the committed rows equal the
    fused model's, one output row per input row, the bad one an error row."""
    import json

    from jobs.io.output import OutputStore
    from jobs.pipeline import run_job

    rows = _inputs("convert")
    manifest = tmp_path / "convert.jsonl"
    manifest.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "seed"}) + "\n" for r in rows))
    config = JobConfig(job="convert", input=str(manifest), output=str(tmp_path / "out"), model=str(tiny_checkpoint),
                       batch_size=2, bucket_batches=2, seed=3, stages="split",
                       mlflow_uri=f"file://{tmp_path / 'mlruns'}", options={"max_new_tokens": 24, "min_new_tokens": 4})
    result = run_job(config)
    assert result.complete and result.counts["ok"] == len(rows) - 1 and result.counts["error"] == 1
    written = {r["id"]: r for r in OutputStore(config.output).read().to_pylist()}
    from jobs.tasks.seeds import row_seed

    fused_config = JobConfig(**{**config.to_dict(), "stages": "fused"}).for_cluster(0, 2)
    fused = _run(fused_config, [{**r, "seed": row_seed(3, r["id"], None)} for r in rows])
    assert sorted(written) == sorted(fused)
    for row_id, expected in fused.items():
        got = written[row_id]
        assert got["status"] == expected["status"] and got["error_kind"] == expected["error_kind"]
        for name in ("global_tokens", "source_semantic_tokens", "semantic_tokens", "num_generated_tokens"):
            assert got[name] == expected[name], (row_id, name)
