"""``--keep-tokens``: transcribe rows keep the GLM and semantic token ids the model made (a real job on a local Ray
runtime and the tiny random checkpoint), and an output written before the columns existed still resumes and reads."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from jobs_helpers import output_part, write_jsonl, write_output

from jobs.cli import build_parser, config_from_args
from jobs.config import JobConfig
from jobs.io.output import OutputStore
from jobs.pipeline import run_job

EXAMPLES = Path(__file__).resolve().parents[1] / "manifests" / "examples"


def test_keep_tokens_is_a_transcribe_flag():
    def config(*extra: str) -> JobConfig:
        args = build_parser().parse_args([extra[0], "--input", "m.jsonl", "--output", "o", "--model", "m", *extra[1:]])
        return config_from_args(args.command, args)

    assert config("transcribe", "--keep-tokens").keep_tokens and not config("transcribe").keep_tokens
    with pytest.raises(SystemExit):  # not a synthesize flag: a usage error
        config("synthesize", "--keep-tokens")
    with pytest.raises(ValueError, match="--keep-tokens is a setting of transcribe, not of synthesize: .* which "
                                         "synthesize and convert rows always keep"):
        JobConfig(job="synthesize", input="m.jsonl", output="o", model="m", keep_tokens=True)  # from a --config file


def test_keep_tokens_is_recorded_with_the_runs_params(tmp_path):
    """It decides which columns the rows fill, so MLflow's params and the metrics file say whether it was on."""
    from jobs.io.manifest import load_inputs
    from jobs.run.reporting import job_params

    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "audio": str(EXAMPLES / "audio" / "jfk.flac")}])
    inputs = load_inputs("transcribe", str(manifest))
    for keep in (False, True):
        config = JobConfig(job="transcribe", input=str(manifest), output=str(tmp_path / "o"), model="m",
                           keep_tokens=keep).for_cluster(cluster_gpus=0)
        assert job_params(config, inputs, "m", "", "run", {})["keep_tokens"] is keep


def test_rows_keep_the_models_tokens_beside_rows_of_an_output_without_them(ray_address, tiny_checkpoint,
                                                                          tiny_model, tmp_path):
    from gpa import TranscribeOptions

    audio = {"jfk": EXAMPLES / "audio" / "jfk.flac", "weather": EXAMPLES / "audio" / "espeak_weather.flac"}
    output = str(tmp_path / "out")
    # rows an earlier version committed: no token columns at all
    old = output_part("transcribe", [{"id": "earlier", "status": "ok", "text": "from before", "num_glm_tokens": 3}],
                      without=("glm_tokens", "semantic_tokens"))
    write_output(output, "transcribe", [old], complete=False)
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "earlier", "audio": str(audio["jfk"])},
        *({"id": k, "audio": str(v)} for k, v in audio.items()),
        {"id": "broken", "audio": str(tmp_path / "missing.wav")},
    ])
    config = JobConfig(job="transcribe", input=str(manifest), output=output, model=str(tiny_checkpoint),
                       batch_size=1, bucket_batches=1, keep_tokens=True, options={"max_new_tokens": 8},
                       mlflow_uri=f"file://{tmp_path / 'mlruns'}")
    result = run_job(config)
    assert result.already_done == 1 and result.processed == 3

    rows = {r["id"]: r for r in OutputStore(output).read().to_pylist()}
    assert sorted(rows) == ["broken", "earlier", "jfk", "weather"]
    direct = tiny_model.transcribe([str(p) for p in audio.values()], TranscribeOptions(max_new_tokens=8))
    for row_id, expected in zip(audio, direct, strict=True):
        row = rows[row_id]
        assert row["status"] == "ok" and row["glm_tokens"] == expected.glm_tokens
        assert row["semantic_tokens"] == expected.semantic_tokens
        assert row["num_glm_tokens"] == len(row["glm_tokens"]) > 0
        assert row["num_semantic_tokens"] == len(row["semantic_tokens"]) > 0
    assert rows["broken"]["status"] == "error" and rows["broken"]["glm_tokens"] is None
    assert rows["earlier"]["glm_tokens"] is None and rows["earlier"]["text"] == "from before"
    dataset = OutputStore(output).dataset()
    kind = dataset.schema.field("glm_tokens").type
    assert pa.types.is_list(kind) and kind.value_type == pa.int32()
    assert dataset.to_table(columns=["id", "semantic_tokens"]).num_rows == 4

    # without the flag the columns stay null (same work row, the job's own output_row)
    from jobs.tasks import TASKS

    work = {"id": "x", "status": "ok", "audio": "a.wav", "glm_tokens": [1, 2], "semantic_tokens": [3]}
    plain = TASKS["transcribe"].output_row(work, None, JobConfig(job="transcribe", input="i", output="o", model="m"),
                                           {}, {})
    kept = TASKS["transcribe"].output_row(work, None, config, {}, {})
    assert plain.glm_tokens is None and plain.semantic_tokens is None
    assert (kept.glm_tokens, kept.semantic_tokens) == ([1, 2], [3])


def test_a_part_without_the_token_columns_reads_them_as_token_nulls(tmp_path):
    """Readers that ask a part for the new columns get them typed as the schema says, so parts of both versions
    concatenate."""
    from jobs.io.output import read_parquet

    old = output_part("transcribe", [{"id": "a", "status": "ok"}], without=("glm_tokens", "semantic_tokens"))
    new = output_part("transcribe", [{"id": "b", "status": "ok", "glm_tokens": [4, 5], "semantic_tokens": [6]}])
    store = write_output(str(tmp_path / "out"), "transcribe", [old, new])
    parts = [read_parquet(f, ["id", "glm_tokens", "semantic_tokens"]) for f in store.files()]
    assert all(p.schema.field("glm_tokens").type == pa.list_(pa.int32()) for p in parts)
    assert pa.concat_tables(parts).to_pylist() == [{"id": "a", "glm_tokens": None, "semantic_tokens": None},
                                                   {"id": "b", "glm_tokens": [4, 5], "semantic_tokens": [6]}]
