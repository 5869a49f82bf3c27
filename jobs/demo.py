"""``gpa-batch demo``: the jobs on the bundled examples with a generated tiny checkpoint, local Ray, local output.

The tiny checkpoint has random weights: its transcripts and audio are noise. The demo shows the pipeline (inputs,
error rows, Parquet, resume, MLflow), not the model; ``--model AutoArk-AI/GPA`` (or a local/s3 checkpoint
directory) runs the same thing with the released weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jobs.config import JOBS, JobConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "manifests" / "examples"
RANDOM_WEIGHTS_NOTE = (
    "NOTE: this demo uses a tiny checkpoint with RANDOM weights, generated on the spot. Its transcripts and\n"
    "audio are noise; the demo shows the pipeline, not the model. To run the same job with the released model:\n"
    "  gpa-batch transcribe --input manifests/examples/transcribe.jsonl --output ./gpa-out --model AutoArk-AI/GPA\n"
    "(or --model /path/to/checkpoint, or --model s3://bucket/prefix), or: gpa-batch demo --model AutoArk-AI/GPA"
)


def reading_hint(root: Path, job: str) -> str:
    """How to read what the demo wrote (each line works as printed, in a POSIX shell, whatever the folder's name)."""
    from shlex import quote

    from jobs.io.schema import output_schema

    output = root / job
    # columns this job's rows have (convert's have no text)
    columns = [c for c in ("id", "status", "text", "duration_s") if c in output_schema(job).names][:3]
    code = (f"from jobs.io.output import OutputStore; print(OutputStore({json.dumps(str(output))}).dataset()"
            f".to_table(columns={json.dumps(columns)}).to_pandas())")
    # transcripts (timed segments) export as subtitles, audio as files, as `gpa-batch export` decides by columns
    export = f"--format srt --dest {quote(str(root / 'subtitles'))}" if "segments" in output_schema(job).names \
        else f"--format wav --dest {quote(str(root / f'{job}-wav'))}"
    return (f"results under {root}/<job>/ (Parquet parts, listed in _gpa_batch/commit.json); to read them:\n"
            f"  python -c {quote(code)}\n"
            f"  gpa-batch export {quote(str(output))} {export}\n"
            f"  with Hugging Face datasets: see docs/outputs.md (datasets decodes the audio column only with "
            f"torchcodec and FFmpeg installed; the recipe there decodes it with soundfile)")


def already_done_note(job: str, rows: int, output: Path) -> str:
    """What a rerun of the demo says: it resumed an output that was already complete, so nothing ran again."""
    return (f"{job}: already done, {rows} rows in {output} from an earlier demo (a rerun resumes, it does not "
            f"recompute); to run it again: rm -rf {output.parent}, or gpa-batch demo --output ANOTHER_DIR")


def run_demo(*, output: str = "gpa-demo", jobs: list[str] | None = None, model: str | None = None,
             mlflow_uri: str | None = None, seed: int = 0) -> int:
    from jobs.run.logs import configure_logging, quiet_ray_console

    ray_logging_level = configure_logging("default")  # quiet as the jobs are: before Ray or MLflow are imported
    from jobs.io.manifest import InputError
    from jobs.pipeline import check_config, check_output_identity, run_job
    from jobs.run.errors import JobError
    from jobs.run.preflight import preflight
    from jobs.run.ray_runtime import ensure_ray, shutdown_ray
    from jobs.run.summary import format_summary

    jobs = list(JOBS) if jobs in (None, ["all"]) else jobs
    unknown = [j for j in jobs if j not in JOBS]
    if unknown:
        print(f"unknown job(s): {', '.join(unknown)}; choose from {', '.join(JOBS)} or all")
        return 2
    if not (EXAMPLES / "transcribe.jsonl").is_file():
        print(f"the examples are not at {EXAMPLES}: run the demo from a checkout of the repository")
        return 1
    root = Path(output).resolve()
    options: dict = {}
    if model is None:
        from gpa.testing import make_tiny_checkpoint

        print(RANDOM_WEIGHTS_NOTE + "\n")
        model = str(make_tiny_checkpoint(root / "tiny-checkpoint", seed=seed))
        options = {"max_new_tokens": 64}  # random weights rarely stop by themselves: keep the demo quick
        print(f"tiny checkpoint: {model}")
    configs = [JobConfig(job=job, input=str(EXAMPLES / f"{job}.jsonl"), output=str(root / job), model=model,
                         mlflow_uri=mlflow_uri, seed=seed, options=dict(options), batch_size=4, bucket_batches=2)
               for job in jobs]
    try:
        for config in configs:  # the checks a job runs before Ray starts: a wrong --model is one line in a second
            check_config(config)
            preflight(config)
            check_output_identity(config)
        started = ensure_ray(logging_level=ray_logging_level)
        quiet_ray_console("default")
        try:
            for config in configs:
                result = run_job(config)
                print()
                print(format_summary(result))
                if result.processed == 0 and result.complete:
                    print(already_done_note(config.job, result.committed_rows, root / config.job))
        finally:
            if started:
                shutdown_ray()
    except (InputError, JobError) as exc:
        print(f"gpa-batch demo: {exc}", file=sys.stderr)
        return 1
    print()
    print(reading_hint(root, jobs[0]))
    if options:
        print(RANDOM_WEIGHTS_NOTE)
    return 0
