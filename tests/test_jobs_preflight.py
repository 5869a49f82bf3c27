"""Preflight, --dry-run, fatal-error lines and quiet output, driven through the CLI as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.io.manifest import InputError, check_columns

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "manifests" / "examples"
# a preflight failure answers within this (the bound on this 2-CPU machine); each test prints its time
PREFLIGHT_S = 5.0


def gpa_batch(*args: str, env: dict | None = None, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    # as a user's shell runs it: not with the levels an in-process main() of another test left in os.environ
    inherited = {k: v for k, v in os.environ.items() if k not in ("RAY_DATA_LOG_LEVEL", "MLFLOW_LOGGING_LEVEL")}
    out = subprocess.run([sys.executable, "-m", "jobs", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                         timeout=timeout, env={**inherited, **(env or {})})
    return out, time.monotonic() - started


def refused(*args: str, env: dict | None = None) -> str:
    """Run a command that preflight must refuse: exit code 1, one line, no traceback, in seconds. Its line."""
    out, wall = gpa_batch(*args, env=env)
    print(f"preflight refusal in {wall:.2f} s: {out.stderr.strip()}")
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr + out.stdout
    [line] = out.stderr.strip().splitlines()
    assert wall < PREFLIGHT_S, f"{wall:.1f} s"
    return line


def transcribe(output, model, *extra) -> list[str]:
    return ["transcribe", "--input", EXAMPLES / "transcribe.jsonl", "--output", output, "--model", model, *extra]


def test_an_output_that_is_a_file_is_refused_untouched(tmp_path, tiny_checkpoint):
    target = tmp_path / "results.parquet"
    target.write_bytes(b"precious")
    line = refused(*transcribe(target, tiny_checkpoint))
    assert line == f"gpa-batch transcribe: --output {target} is a file; give a directory (it is made if missing)"
    assert target.read_bytes() == b"precious"
    line = refused(*transcribe(target / "out", tiny_checkpoint))
    assert f"{target} is a file, so the directory cannot be made" in line


def test_an_output_that_is_not_ours_or_is_busy_is_refused_before_ray(tmp_path, tiny_checkpoint):
    dataset = tmp_path / "dataset"
    (dataset / "data").mkdir(parents=True)
    (dataset / "data" / "train.parquet").write_bytes(b"theirs")
    assert "is not a gpa-batch output but holds files a run would replace" in refused(
        *transcribe(dataset, tiny_checkpoint))
    busy = tmp_path / "busy"
    (busy / "_gpa_batch").mkdir(parents=True)
    lease = {"run_id": "nightly-1", "host": "head", "pid": 42, "heartbeat": time.time()}
    (busy / "_gpa_batch" / "current-run").write_text(json.dumps(lease))
    assert "run nightly-1 on head, pid 42 is writing to" in refused(*transcribe(busy, tiny_checkpoint))
    assert sorted(p.name for p in busy.rglob("*")) == ["_gpa_batch", "current-run"]


def test_a_bad_model_is_refused_before_anything_is_written(tmp_path, tiny_checkpoint):
    """The model used to fail inside the Ray actors, 40-60 s in, after the output's marker and MLflow store were
    made; now it is one line, in seconds, and the output does not exist."""
    out = tmp_path / "out"
    line = refused(*transcribe(out, tmp_path / "no-such-model"))
    assert line.startswith("gpa-batch transcribe: --model ") and "no such directory" in line
    not_a_checkpoint = tmp_path / "folder"
    not_a_checkpoint.mkdir()
    assert "no config.json (LLM)" in refused(*transcribe(out, not_a_checkpoint))
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_checkpoint, truncated)
    weights = truncated / "BiCodec" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    line = refused(*transcribe(out, truncated))
    assert "BiCodec/model.safetensors" in line and "truncated or corrupt" in line
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_checkpoint, pickled)
    (pickled / "glm-4-voice-tokenizer" / "model.safetensors").rename(pickled / "glm-4-voice-tokenizer" / "model.bin")
    assert "gpa convert-weights" in refused(*transcribe(out, pickled))
    assert not out.exists()


def test_a_hub_model_without_a_network_is_one_line(tmp_path):
    line = refused(*transcribe(tmp_path / "out", "someone/not-cached"),
                   env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert "not in the Hugging Face cache and HF_HUB_OFFLINE is set" in line and "s3:// copy" in line
    assert not (tmp_path / "out").exists()


def test_manifests_whose_first_rows_all_lack_a_needed_field_are_refused(tmp_path, tiny_checkpoint):
    csv = tmp_path / "speech.csv"
    csv.write_text("utt_id,path,text\na,x.wav,hello\nb,y.wav,world\n")
    line = refused("transcribe", "--input", csv, "--output", tmp_path / "out", "--model", tiny_checkpoint)
    assert "no 'audio' column in its first 2 rows" in line and "its columns are path, text, utt_id" in line
    assert "--field-map audio=COLUMN" in line
    line = refused(*transcribe(tmp_path / "out", tiny_checkpoint, "--field-map", "audio=nosuch"))
    assert "--field-map audio=nosuch names no column with values" in line
    line = refused("synthesize", "--input", EXAMPLES / "synthesize.jsonl", "--output", tmp_path / "out",
                   "--model", tiny_checkpoint, "--field-map", "ref_audio=nosuch")
    assert "or pass --reference FILE for every row" in line
    line = refused("synthesize", "--input", EXAMPLES / "synthesize.jsonl", "--output", tmp_path / "out",
                   "--model", tiny_checkpoint, "--reference", tmp_path / "voice.wav")
    assert line == f"gpa-batch synthesize: --reference {tmp_path / 'voice.wav'}: no such file"
    assert "input not found: " in refused(*transcribe(tmp_path / "out", tiny_checkpoint)[:1], "--input",
                                        tmp_path / "none.jsonl", "--output", tmp_path / "out", "--model",
                                        tiny_checkpoint)
    assert not (tmp_path / "out").exists()


def test_one_row_without_the_field_stays_that_rows_error(tmp_path):
    rows = [{"id": "a", "audio": "a.wav"}, {"id": "b", "path": "b.wav"}]
    check_columns("transcribe", str(_write(tmp_path / "m.jsonl", rows)))  # b becomes an error row, as before
    with pytest.raises(InputError, match="no 'audio' column in its first 1 rows"):
        check_columns("transcribe", str(_write(tmp_path / "n.jsonl", rows[1:])))
    # rows of other jobs in a mixed GPA training manifest say nothing about this job's columns
    check_columns("transcribe", str(_write(tmp_path / "gpa.jsonl", [{"task": "tts", "text": "hi"}])))
    check_columns("convert", str(_write(tmp_path / "c.jsonl", [{"audio": "a.wav"}])), reference="r.wav")


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dry_run_prints_the_plan_and_starts_and_writes_nothing(tmp_path, tiny_checkpoint):
    temp = tmp_path / "tmp"  # where a local Ray would make its directory
    temp.mkdir()
    out, wall = gpa_batch(*transcribe(tmp_path / "out", tiny_checkpoint, "--limit", "4", "--dry-run", "--json"),
                          env={"TMPDIR": str(temp)})
    print(f"dry run in {wall:.2f} s")
    assert out.returncode == 0, out.stderr[-3000:]
    plan = json.loads(out.stdout)
    assert plan["input_rows"] == 6 and plan["to_process"] == 4 and plan["left_by_limit"] == 2
    assert plan["batch_size"] == 8 and plan["model_calls"] == 1 and plan["actors"] == "1:1"
    assert plan["model_parameters"] > 0 and 0 < plan["audio_hours_estimated"] < 0.1
    assert not (tmp_path / "out").exists() and os.listdir(temp) == []
    out, _ = gpa_batch(*transcribe(tmp_path / "out", tiny_checkpoint, "--dry-run"), env={"TMPDIR": str(temp)})
    assert out.returncode == 0 and "--dry-run: nothing was started or written" in out.stdout
    assert "to process            6" in out.stdout


def test_s3_model_output_and_endpoint_problems_are_one_line_each(tmp_path, s3_bucket, tiny_checkpoint):
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    for path in sorted(Path(tiny_checkpoint).rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), s3_bucket, f"models/tiny/{path.relative_to(tiny_checkpoint).as_posix()}")
    model, output = f"s3://{s3_bucket}/models/tiny", f"s3://{s3_bucket}/out"
    out, wall = gpa_batch(*transcribe(output, model, "--dry-run", "--json"))
    print(f"S3 dry run in {wall:.2f} s")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout)["model_parameters"] > 0
    assert s3.list_objects_v2(Bucket=s3_bucket, Prefix="out").get("KeyCount") == 0  # nothing written
    line = refused(*transcribe(output, f"s3://{s3_bucket}/models/none"))
    assert line.endswith(f"--model s3://{s3_bucket}/models/none: no objects under this prefix")
    s3.put_object(Bucket=s3_bucket, Key="models/tiny/model.safetensors", Body=b"\x10\x00")
    assert "model.safetensors is not a safetensors file" in refused(*transcribe(output, model))
    line = refused(*transcribe("s3://no-such-bucket/out", tiny_checkpoint))
    assert "--output s3://no-such-bucket/out: bucket 'no-such-bucket' does not exist" in line
    import socket

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    dead = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    line = refused(*transcribe(output, tiny_checkpoint), env=dead)
    assert f"--output {output}: cannot reach http://127.0.0.1:{port}" in line and "AWS_ENDPOINT_URL" in line
    line = refused(*transcribe(tmp_path / "out", model), env=dead)
    assert line.startswith(f"gpa-batch transcribe: --model {model}: cannot reach")
    assert not (tmp_path / "out").exists()


RAY_NOISE = ("Token authentication is enabled", "Started a local Ray instance")
MLFLOW_NOISE = "Creating initial MLflow database tables"


def test_runs_are_quiet_by_default_and_verbose_on_request(tmp_path, tiny_checkpoint):
    out, wall = gpa_batch(*transcribe(tmp_path / "quiet", tiny_checkpoint, "--limit", "1"))
    print(f"run in {wall:.1f} s; stderr:\n{out.stderr}")
    assert out.returncode == 0, out.stderr[-3000:]
    for noise in (*RAY_NOISE, MLFLOW_NOISE):
        assert noise not in out.stderr
    [log] = (tmp_path / "quiet" / "_gpa_batch" / "logs").iterdir()
    assert log.name == f"{out.stdout.split()[3]}.log"  # "gpa-batch transcribe  run <run id>  (...)"
    out, _ = gpa_batch(*transcribe(tmp_path / "verbose", tiny_checkpoint, "--limit", "1", "--verbose"))
    assert out.returncode == 0, out.stderr[-3000:]
    for noise in ("Started a local Ray instance", MLFLOW_NOISE):  # Ray's token notice comes once per fresh setup
        assert noise in out.stderr


def test_a_run_that_fails_after_it_started_is_one_line_pointing_at_its_log(tmp_path, tiny_checkpoint):
    """A checkpoint whose headers read but whose weights do not fit its configuration passes preflight and fails
    in the actors: the user sees one line saying where the full log is, and the log holds the traceback."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    config = json.loads((broken / "config.json").read_text())
    config["num_hidden_layers"] += 1  # the weights lack the extra layer
    (broken / "config.json").write_text(json.dumps(config))
    out, wall = gpa_batch(*transcribe(tmp_path / "out", broken, "--limit", "1"))
    print(f"failed run in {wall:.1f} s; stderr:\n{out.stderr}")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    [log] = (tmp_path / "out" / "_gpa_batch" / "logs").iterdir()
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("gpa-batch transcribe: the pipeline failed") and last.endswith(f"(full log: {log})")
    assert "Traceback" in log.read_text() and "missing keys" in log.read_text()


def test_worker_tracebacks_stay_off_the_console_and_other_worker_lines_pass():
    from jobs.run.logs import _without_tracebacks

    shown: list[str] = []
    emit = _without_tracebacks(lambda data: shown.extend(data["lines"]))
    emit({"pid": 7, "lines": ["decoding 3 files", "Exception raised in creation task: the actor died ...",
                              "  File \"stages.py\", line 113, in __init__", "    self.model = GPA.from_pretrained("]})
    emit({"pid": 8, "lines": ["another worker's warning"]})
    emit({"pid": 7, "lines": ["           ^^^^^^", "", "gpa.errors.CheckpointError: missing keys", "loaded in 2 s",
                              "[E task_manager.cc] will be retried. Error: Traceback (most recent call last):",
                              "  File \"x.py\", line 1", "OSError: gone", "done"]})
    emit({"pid": "raylet", "lines": ["Task f failed. Error: Traceback (most recent call last):\n  File \"x\"\nE: x",
                                     "Task g failed:\nno traceback"]})
    assert shown == ["decoding 3 files", "another worker's warning", "loaded in 2 s", "done",
                     "Task g failed:\nno traceback"]


def test_preflight_imports_neither_torch_nor_ray(tiny_checkpoint, tmp_path):
    code = f"""
import sys
from jobs.cli import build_parser, config_from_args
from jobs.run.preflight import preflight
args = build_parser().parse_args(["transcribe", "--input", "{EXAMPLES / 'transcribe.jsonl'}", "--output",
                                  "{tmp_path / 'out'}", "--model", "{tiny_checkpoint}"])
assert preflight(config_from_args("transcribe", args)).model.parameters["LLM"] > 0
print(sorted(m for m in ("torch", "ray", "transformers", "mlflow") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]" and not (tmp_path / "out").exists()


def test_an_unforeseen_error_is_one_line_and_its_traceback_only_with_verbose(tmp_path, monkeypatch, capsys):
    import jobs.run.preflight
    from jobs.cli import main

    def broken(*args, **kwargs):
        raise RuntimeError("a bug nobody foresaw")

    monkeypatch.setattr(jobs.run.preflight, "check_model", broken)
    for name in ("RAY_DATA_LOG_LEVEL", "MLFLOW_LOGGING_LEVEL"):  # main() sets them: undone after the test
        monkeypatch.setenv(name, "WARNING")
    argv = transcribe(tmp_path / "out", tmp_path / "model")
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err == ("gpa-batch transcribe: failed: RuntimeError: a bug nobody foresaw; --verbose shows the "
                   "traceback\n")
    assert main([str(a) for a in argv] + ["--verbose"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err
    assert err.endswith("gpa-batch transcribe: failed: RuntimeError: a bug nobody foresaw\n")
    assert not (tmp_path / "out").exists()


def test_a_rerun_with_nothing_pending_starts_no_ray(tmp_path, tiny_checkpoint):
    """Item 7 of issue 19: a local Ray starts only when rows are pending; rerunning a finished job answers from the
    commit file without it."""
    manifest = tmp_path / "one.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": str(EXAMPLES / "audio" / "espeak_short.flac")}) + "\n")
    args = ["transcribe", "--input", manifest, "--output", tmp_path / "out", "--model", tiny_checkpoint,
            "--max-new-tokens", "4", "--no-progress", "--verbose"]
    first, _ = gpa_batch(*args)
    assert first.returncode == 0 and "Started a local Ray instance" in first.stderr, first.stderr[-2000:]
    again, wall = gpa_batch(*args)
    print(f"no-op rerun in {wall:.1f} s")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Started a local Ray instance" not in again.stderr and "1 already done" in again.stdout, again.stdout
