"""The task registry: each task's declarations drive the CLI, manifest validation, output schema and metrics."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from jobs.io import schema as S
from jobs.tasks import TASKS, Task, get_task, register, task_of_manifest_name, work_schema
from jobs.tasks.base import WAV_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT / "manifests" / "examples" / "audio"


def test_output_schemas_are_those_outputs_were_written_with():
    """Old outputs stay readable and resumable: every task's output schema starts with the columns (types,
    nullability, ``datasets`` features) recorded before tasks became modules; columns added since come last and are
    nullable (an old part reads them as nulls)."""
    recorded = json.loads((ROOT / "tests" / "data" / "output_schemas.json").read_text())
    assert set(recorded) == set(TASKS)
    for name, task in TASKS.items():
        schema = S.output_schema(name)
        assert schema is task.output_schema
        fields = [[f.name, str(f.type), f.nullable] for f in schema]
        old = recorded[name]["fields"]
        assert fields[:len(old)] == old, name
        assert all(nullable for _, _, nullable in fields[len(old):]), name
        features = json.loads(schema.metadata[b"huggingface"])
        assert {k: v for k, v in features["info"]["features"].items() if k in dict.fromkeys(n for n, *_ in old)} \
            == recorded[name]["huggingface"]["info"]["features"], name


def test_typed_rows_are_made_from_the_schema_and_refuse_unknown_columns():
    for name, task in TASKS.items():
        row_type = task.row_type
        assert list(row_type.__dataclass_fields__) == task.output_schema.names, name
        with pytest.raises(TypeError, match="refrence"):
            row_type(id="a", status="ok", refrence="misspelt")
        row = row_type(id="a", status="ok")
        with pytest.raises(AttributeError):
            row.txet = "misspelt"  # slots: no attribute outside the schema
        table = task.table([row])
        assert table.schema == task.output_schema and table.to_pylist()[0]["id"] == "a"


def test_every_column_a_task_fills_in_is_a_work_column():
    schema = work_schema()
    assert schema.names[-len(WAV_COLUMNS):] == list(WAV_COLUMNS)
    for task in TASKS.values():
        for field in task.work_fields:
            assert schema.field(field.name).type == field.type
    assert set(S.INPUT.names) <= set(schema.names)


def test_task_names_are_ours_and_training_manifest_names_are_read_on_input_only():
    assert task_of_manifest_name(" STT ") is TASKS["transcribe"] and task_of_manifest_name("") is TASKS["transcribe"]
    assert task_of_manifest_name("tts-a") is TASKS["synthesize"] and task_of_manifest_name("vc") is TASKS["convert"]
    assert task_of_manifest_name("nope") is None
    for alias in ("stt", "asr", "tts", "vc"):
        with pytest.raises(ValueError, match="unknown job .* choose one of transcribe, synthesize, convert"):
            get_task(alias)


def test_the_docs_task_table_lists_exactly_the_registered_tasks():
    text = (ROOT / "docs" / "jobs.md").read_text()
    section = text.split("\n## Tasks\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if re.match(r"\| `", line)]
    table = {cells[0].strip().strip("`"): cells for cells in rows}
    assert list(table) == list(TASKS)
    for name, cells in table.items():
        task = TASKS[name]
        assert cells[4].strip() == f"`{task.options_class.__name__}`"
        names = {n.strip().strip("`") for n in cells[3].split(",")}
        assert names == {n or "none" for n in task.manifest_names}, name
        required = [f for f, needed in task.manifest_fields.items() if needed]
        assert [f.strip().split()[0].strip("`") for f in cells[2].split(";")[0].split(",")] == required, name


# --- a fourth task, registered by the test: what "adding a task" touches ----------------------------------------


@dataclass
class LoudnessOptions:
    floor_db: float = -100.0
    seed: int = 0
    batch_size: int = 32

    def validate(self) -> None:
        if not isinstance(self.floor_db, (int, float)):
            raise ValueError(f"option floor_db must be float, got {self.floor_db!r}")


class LoudnessTask(Task):
    name = "loudness"
    summary = "speech -> its RMS level"
    example = "gpa-batch loudness --input m.jsonl --output out/ --model m"
    manifest_names = ("loud",)
    manifest_fields = {"audio": True, "begin_time": False, "end_time": False}
    audio_fields = ("audio",)
    options_class = LoudnessOptions
    work_fields = [pa.field("rms_db", pa.float64())]
    output_fields = [pa.field("audio_uri", pa.string()), pa.field("rms_db", pa.float64())]
    audio_in_column = "duration_s"

    def run(self, model, rows, waves, options, speakers, quality):
        for row, wave in zip(rows, waves["wav"], strict=True):
            rms = float(np.sqrt(np.mean(np.square(wave)))) if len(wave) else 0.0
            row["rms_db"] = max(options.floor_db, 20 * np.log10(rms) if rms > 0 else options.floor_db)
        return [None] * len(rows)

    def output_row(self, row, audio, config, params, model_info):
        return self.row_type(**self.common(row, params, model_info), audio_uri=row.get("audio"),
                             rms_db=row.get("rms_db"))


@pytest.fixture
def loudness():
    task = register(LoudnessTask())
    try:
        yield task
    finally:
        del TASKS[task.name]


def test_a_fourth_task_is_one_module_and_one_registration(loudness, tmp_path):
    from jobs.cli import build_parser, config_from_args
    from jobs.io.manifest import load_inputs
    from jobs.pipeline import task_params
    from jobs.run.metrics import run_metrics
    from jobs.run.progress import window_counts
    from jobs.stages import decode_batch, encode_batch, split_table, work_table

    # the CLI: a subcommand with its own option keys
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert "loudness" in commands.choices and "floor_db (float)" in commands.choices["loudness"].format_help()
    args = parser.parse_args(["loudness", "--input", "m.jsonl", "--output", str(tmp_path / "out"), "--model", "m",
                              "--option", "floor_db=-60"])
    config = config_from_args(args.command, args)
    assert config.job == "loudness" and task_params(config)["floor_db"] == -60

    # manifest validation: its required field, its training-manifest name, another task's rows
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in (
        {"task": "loud", "audio": str(AUDIO / "espeak_short.flac")},
        {"task": "loud", "text": "no audio here"},
        {"task": "stt", "audio": str(AUDIO / "espeak_weather.flac")})) + "\n")
    inputs = load_inputs("loudness", str(manifest))
    assert inputs.table.num_rows == 1 and inputs.convention == "gpa"
    assert sorted(e["error_kind"] for e in inputs.errors) == ["missing_field", "other_task"]

    # the output schema, and its rows through the real decode and encode stages (no model needed)
    assert S.output_schema("loudness").names == [f.name for f in S.COMMON] + ["audio_uri", "rms_db"]
    work = decode_batch(inputs.table, "loudness", 3600.0)
    rows, waves = split_table(work)
    loudness.run(None, rows, waves, loudness.options(config), None, True)
    done = work_table(rows, {})
    out = encode_batch(done, config, "run", task_params(config))
    assert out.schema == loudness.output_schema
    [row] = out.to_pylist()
    assert row["status"] == "ok" and -60 <= row["rms_db"] < 0 and row["duration_s"] > 0

    # metrics and the progress lines count its input audio
    assert run_metrics("loudness", out, 1.0)["audio_hours_in"] == pytest.approx(row["duration_s"] / 3600)
    assert window_counts("loudness", out)["audio_s"] == pytest.approx(row["duration_s"])


def test_a_misspelt_work_column_fails_where_the_stage_hands_its_rows_on():
    from jobs.stages import work_table

    with pytest.raises(KeyError, match="out_txt"):
        work_table([{"id": "a", "status": "ok", "out_txt": "misspelt"}], {})
    assert work_table([{"id": "a", "status": "ok", "out_text": "fine"}], {}).column("out_text").to_pylist() == ["fine"]
