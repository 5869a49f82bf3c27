"""Resume keyed to what made the rows (``--mode resume|redo|new``), on a real local Ray with tiny checkpoints; the
CLI's refusal before Ray starts; progress lines in a piped log and RTFx in the summary."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jobs_helpers import committed, write_jsonl

from jobs.config import JobConfig
from jobs.pipeline import JobError, run_job

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT / "manifests" / "examples" / "audio"


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    """A second tiny checkpoint: the same architecture, other weights (another model hash)."""
    from gpa.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "other", seed=1, arch="qwen3", size="tiny")


@pytest.fixture()
def manifest(tmp_path):
    return write_jsonl(tmp_path / "m.jsonl", [{"id": f"clip-{i}", "audio": str(AUDIO / "espeak_short.flac")}
                                              for i in range(3)])


def config(manifest, output, model, **overrides) -> JobConfig:
    values = dict(job="transcribe", input=str(manifest), output=str(output), model=str(model),
                  mlflow_uri=f"sqlite:///{Path(output).parent / 'mlflow.db'}", batch_size=2, bucket_batches=2,
                  options={"max_new_tokens": 8}, samples=0)
    options = overrides.pop("options", {})
    values.update(overrides)
    values["options"] = {**values["options"], **options}
    return JobConfig(**values)


def commit_body(output: Path) -> bytes:
    return (output / "_gpa_batch" / "commit.json").read_bytes()


def test_a_rerun_with_another_model_or_settings_is_refused_and_redo_recomputes(
        ray_address, tiny_checkpoint, other_checkpoint, manifest, tmp_path):
    out = tmp_path / "out"
    first = run_job(config(manifest, out, tiny_checkpoint))
    assert first.processed == 3 and first.complete
    made_by = {r["model_hash"] for r in committed(out)}
    [run] = json.loads(commit_body(out))["runs"]
    assert run["identity"]["model_hash"] in made_by and run["identity"]["settings"]["max_new_tokens"] == 8

    # the same model and settings resume; a batch size (which never changes a row) does not count
    again = run_job(config(manifest, out, tiny_checkpoint, batch_size=1))
    assert again.processed == 0 and again.already_done == 3

    before = commit_body(out)
    with pytest.raises(JobError, match=r"made with model [0-9a-f]{12} \(this run: [0-9a-f]{12}\).*--mode redo"):
        run_job(config(manifest, out, other_checkpoint))
    with pytest.raises(JobError, match=r"max_new_tokens=8 \(this run: 12\)"):
        run_job(config(manifest, out, tiny_checkpoint, options={"max_new_tokens": 12}))
    with pytest.raises(JobError, match=r"seed=0 \(this run: 5\)"):
        run_job(config(manifest, out, tiny_checkpoint, seed=5))
    assert commit_body(out) == before  # refused before anything was written

    with pytest.raises(JobError, match="--mode new: .* already holds 3 rows"):
        run_job(config(manifest, out, other_checkpoint, mode="new"))

    redone = run_job(config(manifest, out, other_checkpoint, mode="redo"))
    assert redone.processed == 3 and redone.already_done == 0 and redone.committed_rows == 3 and redone.complete
    rows = committed(out)
    assert len(rows) == 3 and {r["model_hash"] for r in rows}.isdisjoint(made_by)  # every old row superseded
    # the output is now the other model's: a plain rerun with it resumes, the first model is refused
    assert run_job(config(manifest, out, other_checkpoint)).processed == 0
    with pytest.raises(JobError, match="made with model"):
        run_job(config(manifest, out, tiny_checkpoint))


def test_mode_new_runs_only_into_an_output_without_rows(ray_address, tiny_checkpoint, manifest, tmp_path):
    result = run_job(config(manifest, tmp_path / "fresh", tiny_checkpoint, mode="new"))
    assert result.processed == 3 and result.committed_rows == 3


def test_an_output_written_before_identities_were_recorded_still_resumes(
        ray_address, tiny_checkpoint, other_checkpoint, manifest, tmp_path):
    out = tmp_path / "old"
    run_job(config(manifest, out, tiny_checkpoint, limit=2))
    # what earlier versions wrote: runs without identity or mode
    body = json.loads(commit_body(out))
    body["runs"] = [{k: v for k, v in run.items() if k not in ("identity", "mode")} for run in body["runs"]]
    (out / "_gpa_batch" / "commit.json").write_text(json.dumps(body))

    # other settings cannot be told from such an output: it resumes (the rows' own model hash is checked)
    resumed = run_job(config(manifest, out, tiny_checkpoint, options={"max_new_tokens": 9}))
    assert resumed.processed == 1 and resumed.already_done == 2 and resumed.complete
    assert len({r["model_hash"] for r in committed(out)}) == 1
    body = json.loads(commit_body(out))
    body["runs"] = [{k: v for k, v in run.items() if k not in ("identity", "mode")} for run in body["runs"]]
    (out / "_gpa_batch" / "commit.json").write_text(json.dumps(body))
    with pytest.raises(JobError, match="made with model"):
        run_job(config(manifest, out, other_checkpoint))


def test_an_actor_loading_another_model_than_the_expected_one_stops_before_any_row(tiny_checkpoint):
    """The check for models the driver cannot hash (s3:// prefixes, Hugging Face ids): the actor's."""
    from jobs.run.resume import ModelChangedError
    from jobs.stages import GPAStage

    cfg = config("m.jsonl", "out", tiny_checkpoint, device="cpu", gpus_per_actor=0.0)
    with pytest.raises(ModelChangedError, match="made by model 0123456789ab, this run's is [0-9a-f]{12}; pass --mode"):
        GPAStage(cfg, expected_model="0123456789abcdef")
    assert GPAStage(cfg, expected_model=None).model.content_hash


def test_a_model_the_driver_cannot_hash_is_checked_by_the_actors(
        ray_address, tiny_checkpoint, other_checkpoint, manifest, tmp_path, monkeypatch):
    """As for an s3:// prefix or a Hugging Face id (the driver does not download them): the run stops as the actors
    load the other model, with the same advice, and commits nothing."""
    import jobs.run.resume

    out = tmp_path / "out"
    run_job(config(manifest, out, tiny_checkpoint, limit=2))  # a row left for the actors of the next run
    before = commit_body(out)
    monkeypatch.setattr(jobs.run.resume, "driver_model_hash", lambda model: None)
    with pytest.raises(JobError, match=r"ModelChangedError: the output's rows were made by model [0-9a-f]{12}, this "
                                       r"run's is [0-9a-f]{12}; pass --mode redo"):
        run_job(config(manifest, out, other_checkpoint))
    assert commit_body(out) == before
    resumed = run_job(config(manifest, out, tiny_checkpoint))  # the same model: resumes
    assert resumed.processed == 1 and resumed.already_done == 2 and resumed.complete


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def test_cli_refuses_another_model_in_one_line_before_ray_starts(
        ray_address, tiny_checkpoint, other_checkpoint, manifest, tmp_path):
    out = tmp_path / "out"
    run_job(config(manifest, out, tiny_checkpoint))
    started = time.monotonic()
    done = cli("transcribe", "--input", str(manifest), "--output", str(out), "--model", str(other_checkpoint),
               "--max-new-tokens", "8", "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr[-2000:]
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("gpa-batch transcribe: ") and "--mode redo" in line and "Traceback" not in done.stderr
    assert elapsed < 30  # no Ray started (a local Ray alone takes 10-30 s on the 2-CPU machine)


def test_progress_lines_in_a_piped_log_and_rtfx_in_the_summary(tiny_checkpoint, tmp_path):
    from jobs.run.progress import LINE

    manifest = write_jsonl(tmp_path / "m.jsonl", [
        *({"id": f"clip-{i}", "audio": str(AUDIO / "espeak_short.flac")} for i in range(6)),
        {"id": "gone", "audio": str(tmp_path / "gone.wav")}])
    done = cli("transcribe", "--input", str(manifest), "--output", str(tmp_path / "out"), "--model",
               str(tiny_checkpoint), "--max-new-tokens", "8", "--batch-size", "1", "--bucket-batches", "1",
               "--progress-every-s", "0.5", "--debug-delay-s", "0.5", "--samples", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [LINE.match(line) for line in done.stderr.splitlines() if " progress: " in line]
    assert lines and all(lines), done.stderr[-3000:]
    last = lines[-1]
    assert last["job"] == "transcribe" and int(last["total"]) == 7 and 0 <= int(last["done"]) <= 7
    assert [int(m["done"]) for m in lines] == sorted(int(m["done"]) for m in lines)  # counts only grow
    # each model call sleeps 0.5 s (--debug-delay-s) and lines come every 0.5 s: lines see rows arrive
    assert int(last["done"]) > 0 and float(last["hours"]) > 0 and last["rtfx"] != "-"
    assert "enable_progress_bars" not in done.stderr  # Ray's hint names its API, not --progress
    summary = done.stdout
    assert "7 rows: 6 ok, 1 error" in summary and "RTFx " in summary.split("throughput", 1)[1].splitlines()[0]


def test_the_driver_hashes_a_local_model_without_torch(tiny_checkpoint, manifest, tmp_path):
    """The check runs on the driver, which never loads torch (test_jobs_cli): the hash equals the actors'."""
    from gpa.checkpoint_files import content_hash

    code = f"""
import sys
from jobs.config import JobConfig
from jobs.pipeline import check_output_identity
from jobs.run.resume import driver_model_hash
identity = check_output_identity(JobConfig(job="transcribe", input="{manifest}", output="{tmp_path / 'out'}",
                                           model="{tiny_checkpoint}"))
print(identity["model_hash"], driver_model_hash("{tiny_checkpoint}"),
      sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    # an output without rows has nothing to compare with: the model is not hashed for it
    assert done.stdout.split() == ["None", content_hash(tiny_checkpoint), "[]"]
    assert not (tmp_path / "out").exists()  # checking writes nothing


def test_mode_and_progress_flags(capsys):
    from jobs.cli import build_parser, config_from_args

    base = ["transcribe", "--input", "m.jsonl", "--output", "out", "--model", "m"]
    assert config_from_args("transcribe", build_parser().parse_args(base)).mode == "resume"
    args = build_parser().parse_args([*base, "--mode", "redo", "--progress-every-s", "5"])
    assert config_from_args("transcribe", args).mode == "redo" and args.progress_every_s == 5.0
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*base, "--mode", "fresh"])
    assert exit_.value.code == 2 and "invalid choice: 'fresh'" in capsys.readouterr().err
    for bad in ("0", "-1", "nan", "soon"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*base, "--progress-every-s", bad])
        assert "expected a number of seconds above 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--mode must be resume, redo or new"):
        JobConfig(job="transcribe", input="m", output="o", model="m", mode="fresh")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["transcribe", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--mode {resume,redo,new}", "--progress ", "--no-progress", "--progress-every-s S"):
        assert flag in text
    assert "a line every --progress-every-s" in text and "redo: process every row again" in text
