"""``gpa-batch <task>|demo|export``: the command line of the batch jobs, one subcommand per task of :mod:`jobs.tasks`.

Also a valid ``ray job submit`` entrypoint: with ``RAY_ADDRESS`` set it joins that cluster, else it starts Ray
locally for the duration of the job. Flags override the ``--config`` YAML file, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import traceback
from typing import Any

from gpa.options import ENGINES
from jobs.config import CPU_BATCH_SIZE, GPU_BATCH_SIZE, JobConfig, parse_actors
from jobs.io import schema as S
from jobs.tasks import TASKS, Task

# task options with a flag of their own (when the task's options have them); the others go through --option
OPTION_FLAGS = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "window_s")
EPILOG = "Flags override the --config YAML file (the same settings, snake_case), which overrides the defaults."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpa-batch",
        description="Batch ASR, voice-cloning TTS and voice conversion with GPA on Ray Data: "
                    "manifests or bucket prefixes in, Parquet and an MLflow run out.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for task in TASKS.values():
        _add_job_arguments(commands.add_parser(
            task.name, help=task.summary, description=f"{task.name}: {task.summary}",
            epilog=f"example:\n  {task.example}\n\n{EPILOG}", formatter_class=argparse.RawDescriptionHelpFormatter,
            argument_default=argparse.SUPPRESS), task)
        _add_run_control_arguments(commands.choices[task.name])
    demo = commands.add_parser("demo", help="run the jobs on the bundled examples with a tiny random checkpoint")
    demo.add_argument("--output", default="gpa-demo", help="where results go (default: ./gpa-demo)")
    demo.add_argument("--jobs", default="transcribe",
                      help="comma-separated jobs to run, or 'all' (default: transcribe)")
    demo.add_argument("--model", default=None,
                      help="checkpoint to use instead of the generated tiny one (e.g. AutoArk-AI/GPA)")
    demo.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default: sqlite in the output)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the tiny checkpoint and the jobs (default: 0)")
    from jobs.io.export import EXAMPLES as EXPORT_EXAMPLES
    from jobs.io.export import add_arguments as add_export_arguments

    add_export_arguments(commands.add_parser(
        "export", help="write a job's committed rows as files: transcripts (txt, srt, vtt, json, jsonl) or audio "
                       "(wav, flac) with a manifest",
        epilog=EXPORT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def _default(name: str) -> str:
    """A JobConfig default as help text."""
    value = {f.name: f.default for f in dataclasses.fields(JobConfig)}[name]
    return {True: "on", False: "off", None: "none"}.get(value, value) if isinstance(value, (bool, type(None))) \
        else str(value)


def _add_job_arguments(p: argparse.ArgumentParser, task: Task) -> dict[str, argparse._ArgumentGroup]:
    """The flags of ``task``'s subcommand, in groups (returned by title, for flags added elsewhere)."""
    required = p.add_argument_group("required (as flags or in the --config file)")
    required.add_argument("--input", metavar="URI", help="manifest (.jsonl/.json/.csv/.tsv/.parquet, local or "
                          "s3://) or, with --glob, a prefix to list audio files under (required)")
    required.add_argument("--output", metavar="URI", help="output prefix (local dir or s3://bucket/prefix) "
                          "(required)")
    required.add_argument("--model", metavar="SRC", help="checkpoint: local dir, s3:// prefix or Hugging Face id "
                          "(AutoArk-AI/GPA) (required)")

    io = p.add_argument_group("input and output")
    io.add_argument("--config", metavar="YAML", help="YAML file with any of these settings (default: none)")
    io.add_argument("--glob", help="list files matching this pattern under --input, e.g. '**/*.mp3' (default: "
                                   "read --input as a manifest)")
    io.add_argument("--format", dest="input_format", choices=("auto", "jsonl", "csv", "parquet"),
                    help="the manifest's format (default: auto, from its name and content)")
    io.add_argument("--convention", choices=("auto", "canonical", "gpa", "nemo"),
                    help="the manifest's field names: ours (canonical), GPA's training JSONL, NeMo's (default: auto, "
                    "what most of its first 100 rows follow)")
    io.add_argument("--skip-other-tasks", action="store_true",
                    help="GPA training manifests: leave out (and count) rows of other jobs' tasks instead of making "
                    "them error rows (default: off)")
    io.add_argument("--allow-empty", action="store_true",
                    help="accept an input without rows (an empty, complete job) instead of refusing it (default: off)")
    fields = ", ".join(f"{n}{'' if required_ else '?'}" for n, required_ in task.manifest_fields.items())
    io.add_argument("--field-map", action="append", metavar="OURS=THEIRS",
                    help=f"map manifest columns to ours ({fields}; ? = optional), e.g. id=utt_id,audio=path "
                    "(repeatable; default: none)")
    io.add_argument("--limit", type=int, help="process at most N pending rows (default: all)")
    if any(f.type == S.AUDIO for f in task.output_fields):
        io.add_argument("--audio-storage", choices=("inline", "objects"),
                        help="FLAC bytes inside the Parquet (inline) or as objects under <output>/audio/ "
                        f"(default: {_default('audio_storage')})")
    io.add_argument("--rows-per-part", type=int,
                    help=f"rows per Parquet part (default: {_default('rows_per_part')})")
    io.add_argument("--retry-errors", action="store_true",
                    help="also redo rows that failed in earlier runs (default: off)")
    io.add_argument("--takeover", action="store_true",
                    help="take the output over from a run that still holds its lease, only if that run is dead "
                    "(default: off)")

    pool = p.add_argument_group("actor pool and batching")
    pool.add_argument("--actors", type=parse_actors, metavar="MIN:MAX",
                      help="model actors, N or MIN:MAX (default: 1:G, G = the cluster's GPUs / GPUs per actor; 1:1 "
                      "on CPUs)")
    pool.add_argument("--batch-size", type=int, metavar="N",
                      help=f"items per model call: the LLM's batches and the round-trip ASR's (default: "
                      f"{GPU_BATCH_SIZE} on a GPU, {CPU_BATCH_SIZE} on a CPU); each actor call takes N x "
                      "--bucket-batches rows")
    pool.add_argument("--encoder-batch-size", type=int, metavar="N",
                      help="clips per speech-encoder call, GLM tokenizer and BiCodec (default: theirs, 32 and 16)")
    pool.add_argument("--encoder-precision", choices=("float32", "bfloat16"),
                      help="the speech encoders' arithmetic: float32 is exact; bfloat16 (GPU actors only) is faster "
                      "but its tokens can differ, measure with benchmarks/encoder_agreement.py (default: "
                      f"{_default('encoder_precision')})")
    pool.add_argument("--stages", choices=("fused", "split"),
                      help="fused: one actor pool runs the whole model; split: tokenize (speech encoders), generate "
                      "(the LLM) and detokenize (BiCodec decoder) in pools of their own, sharing each actor's GPUs, "
                      f"token ids between them (default: {_default('stages')})")
    pool.add_argument("--bucket-batches", type=int,
                      help="rows per actor call = batch size x this; they are sorted by length first (default: "
                      f"{_default('bucket_batches')})")
    pool.add_argument("--gpus-per-actor", type=float, help="fractions share a GPU (default: 1 when the cluster has "
                                                           "GPUs, else 0)")
    pool.add_argument("--cpus-per-actor", type=float,
                      help="default: 1 with a GPU, else 0.5 (keep <= 0.5 on small machines)")
    pool.add_argument("--cpus-per-task", type=float,
                      help=f"CPUs per decode/encode task (default: {_default('cpus_per_task')})")
    pool.add_argument("--memory-per-task-mb", type=int,
                      help=f"memory reserved per decode/encode task (default: {_default('memory_per_task_mb')})")
    pool.add_argument("--memory-per-actor-mb", type=int,
                      help="memory reserved per model actor, so Ray places no more on a node than it holds (default: "
                      "0, none)")
    pool.add_argument("--device", help="cuda or cpu (default: cuda when the actor has a GPU)")
    pool.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                      help="model precision (default: bfloat16 on cuda, float32 on a CPU)")
    pool.add_argument("--torch-threads", type=int, help="torch threads per actor (default: its CPUs, at least 1)")
    pool.add_argument("--cache-dir", help="where remote checkpoints are downloaded (default: the Hugging Face cache)")

    options = task.option_fields()
    group = p.add_argument_group(f"task ({task.options_class.__name__})")
    group.add_argument("--seed", type=int,
                       help=f"job seed; each row's seed derives from it and the row id (default: {_default('seed')})")
    for name in OPTION_FLAGS:
        if name in options:
            kind = _option_type(options[name])
            group.add_argument("--" + name.replace("_", "-"), type=kind, dest=f"opt_{name}",
                               metavar="N" if kind is int else "X",
                               help=f"{_OPTION_HELP.get(name, name)} (default: {_option_default(options[name])})")
    if "do_sample" in options:
        sampling = group.add_mutually_exclusive_group()
        sampling.add_argument("--do-sample", dest="opt_do_sample", action="store_const", const=True,
                              help=f"sample (default: {'on' if options['do_sample'].default else 'off'})")
        sampling.add_argument("--greedy", dest="opt_do_sample", action="store_const", const=False,
                              help=f"greedy decoding (default: {'off' if options['do_sample'].default else 'on'})")
    if "engine" in options:
        group.add_argument("--engine", dest="opt_engine", choices=ENGINES,
                           help="generation engine: static (preallocated KV cache, CUDA graphs), reference "
                           "(transformers' forward step by step) (default: auto = static on CUDA, reference on a CPU)")
    group.add_argument("--option", action="append", metavar="KEY=VALUE",
                       help=f"any task option, repeatable; keys: {task.option_keys()} (default: GPA's)")
    group.add_argument("--max-duration-s", type=float,
                       help=f"longer audio becomes an error row (default: {_default('max_duration_s')})")
    group.add_argument("--max-input-mb", type=float,
                       help=f"larger audio files become error rows without being read (default: "
                       f"{_default('max_input_mb')})")
    task.add_arguments(group, _default)

    track = p.add_argument_group("tracking")
    track.add_argument("--mlflow-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else an sqlite "
                                            "store kept in the output, <output>/_mlflow/)")
    track.add_argument("--experiment", help=f"MLflow experiment (default: gpa-batch-{task.name})")
    track.add_argument("--run-name", help=f"MLflow run name (default: {task.name}-<run id>)")
    track.add_argument("--samples", type=int,
                       help=f"sample outputs logged as artifacts (default: {_default('samples')})")

    report = p.add_argument_group("reporting")
    report.add_argument("--json", dest="print_json", action="store_true",
                        help="print the summary as JSON (default: off, as text)")
    progress = report.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_const", const=True,
                          help="show progress: Ray Data's bars on a terminal, else a line every --progress-every-s "
                          "(default: on)")
    progress.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                          help="no progress bars or lines, only the summary (default: off)")
    report.add_argument("--progress-every-s", type=_positive_seconds, metavar="S",
                        help="seconds between progress lines when stderr is not a terminal (a log file, a pipe, ray "
                        "job submit; default: 30)")
    resume = p.add_argument_group("rerunning into an existing output (docs/jobs.md, Resume)")
    resume.add_argument("--mode", choices=("resume", "redo", "new"),
                        help="resume: process only rows without a result, refused if the output's rows were made by "
                        "another model or other output-changing settings; redo: process every row again with this "
                        "model and settings, replacing the old rows; new: refuse an output that already has rows "
                        "(default: resume)")
    p.add_argument("--debug-delay-s", type=float, help=argparse.SUPPRESS)
    return {"required": required, "input and output": io, "actor pool and batching": pool, "task": group,
            "tracking": track, "reporting": report, "resume": resume}


_OPTION_HELP = {
    "max_new_tokens": "at most this many generated tokens per window or text piece",
    "temperature": "sampling temperature",
    "top_k": "sample from the k likeliest tokens",
    "top_p": "sample from the smallest set of tokens of this total probability",
    "repetition_penalty": "penalty on tokens already generated",
    "window_s": "longer audio is cut at pauses into windows of at most this many seconds",
}


def _option_type(f: dataclasses.Field) -> type:
    return {"int": int, "float": float}[str(f.type).split("|")[0].strip()]


def _option_default(f: dataclasses.Field) -> str:
    return "the checkpoint's generation config" if f.default is None else str(f.default)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def _add_run_control_arguments(p: argparse.ArgumentParser) -> None:
    run = p.add_argument_group("run control")
    run.add_argument("--dry-run", action="store_true", default=False,
                     help="check the model, input and output, print the plan (rows, estimated audio hours, batches, "
                          "resources) and exit; starts no Ray and writes nothing (default: off)")
    verbosity = run.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const="verbose",
                           default="default", help="also show Ray's and MLflow's own messages, and the traceback of "
                                               "a fatal error (default: off)")
    verbosity.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const="quiet",
                           help="only warnings and errors before the summary (default: off)")


def _fatal(config: JobConfig, exc: Exception, verbosity: str, run_id: str | None) -> int:
    """An error nobody foresaw: one line (what, and where the traceback is), the traceback only with --verbose."""
    from jobs.run.errors import root_cause

    if verbosity == "verbose":
        traceback.print_exc()
    hint = _log_hint(config, run_id) if run_id else ""
    if not hint and verbosity != "verbose":
        hint = "; --verbose shows the traceback"
    print(f"gpa-batch {config.job}: failed: {root_cause(exc)}{hint}", file=sys.stderr)
    return 1


def _log_hint(config: JobConfig, run_id: str) -> str:
    """Where the run's log (with the traceback) is, once the run has started and written it."""
    from jobs.io import storage
    from jobs.run.logs import run_log_uri

    uri = run_log_uri(config.output, run_id)
    try:
        written = storage.exists(uri)
    except Exception:  # the store that failed the run may fail this too
        written = False
    return f" (full log: {storage.redact_uri(uri)})" if written else ""


def config_from_args(job: str, args: argparse.Namespace) -> JobConfig:
    values: dict[str, Any] = {}
    given = vars(args)
    if given.get("config"):
        import yaml

        from jobs.io import storage

        try:
            loaded = yaml.load(storage.read_bytes(storage.normalize(given["config"])), _yaml_loader()) or {}
        except FileNotFoundError:
            raise ValueError(f"--config {storage.redact_uri(given['config'])}: no such file") from None
        except OSError as exc:  # a directory, no permission, an unreachable store
            raise ValueError(f"--config {storage.redact_uri(given['config'])}: cannot read it "
                             f"({type(exc).__name__})") from None
        except (yaml.YAMLError, ValueError) as exc:  # ValueError: a number PyYAML's resolver took but cannot read
            raise ValueError(f"--config {storage.redact_uri(given['config'])} is not valid YAML: "
                             f"{str(exc).splitlines()[0][:200]}") from None
        if not isinstance(loaded, dict):
            raise ValueError("--config must be a YAML mapping")
        values.update(loaded)
    options = dict(values.pop("options", None) or {})
    field_map = dict(values.pop("field_map", None) or {})
    for key, value in given.items():
        if key in ("command", "config", "print_json", "progress", "progress_every_s", "option", "field_map", "dry_run",
                   "verbosity"):
            continue
        if key.startswith("opt_"):
            options[key[4:]] = value
        else:
            values[key] = value
    for item in given.get("option") or []:
        key, _, raw = item.partition("=")
        options[key.strip().replace("-", "_")] = _literal(raw)
    for item in given.get("field_map") or []:
        for pair in item.split(","):
            ours, sep, theirs = pair.partition("=")
            if not sep:
                raise ValueError(f"--field-map expects OURS=THEIRS, got {pair!r}")
            field_map[ours.strip()] = theirs.strip()
    values["job"] = job
    values["options"] = options
    values["field_map"] = field_map
    missing = [k for k in ("input", "output", "model") if not values.get(k)]
    if missing:
        raise ValueError("missing " + ", ".join(f"--{k}" for k in missing))
    return JobConfig.from_dict(values)


def _yaml_loader():
    """PyYAML's safe loader, reading numbers such as ``1e-3`` as floats (YAML 1.2) rather than as text (YAML 1.1,
    which wants ``1.0e-3``): a config file's ``temperature: 1e-3`` means a number."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    exponent_float = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", exponent_float, list("-+0123456789."))
    return Loader


def _literal(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


EXIT_RETRY = 75  # EX_TEMPFAIL: some rows met an unreachable store; rerunning finishes them


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "export":
        from jobs.io.export import run_command

        return run_command(args)
    if args.command == "demo":
        from jobs.demo import run_demo

        return run_demo(output=args.output, jobs=[j.strip() for j in args.jobs.split(",") if j.strip()],
                        model=args.model, mlflow_uri=args.mlflow_uri, seed=args.seed)
    dry_run, verbosity = getattr(args, "dry_run", False), getattr(args, "verbosity", "default")
    try:
        config = config_from_args(args.command, args)
    except ValueError as exc:
        parser.error(str(exc))
    from jobs.run.logs import configure_logging, quiet_ray_console

    ray_logging_level = configure_logging(verbosity)
    from jobs.io.manifest import InputError
    from jobs.io.output import new_run_id
    from jobs.pipeline import check_config, check_output_identity, run_job
    from jobs.run.errors import JobError
    from jobs.run.preflight import dry_run_plan, format_plan, preflight
    from jobs.run.ray_runtime import ensure_ray, shutdown_ray
    from jobs.run.summary import format_summary, summary_dict

    try:
        check_config(config)  # seconds before Ray would have started
        checked = preflight(config)
        check_output_identity(config)  # a rerun with another model or settings (--mode)
        if dry_run:
            plan = dry_run_plan(config, checked)
            print(json.dumps(plan, indent=1) if getattr(args, "print_json", False) else format_plan(plan))
            return 0
    except (InputError, JobError) as exc:
        print(f"gpa-batch {config.job}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        return _fatal(config, exc, verbosity, None)
    started = False
    run_id = new_run_id()

    def start_ray() -> None:
        nonlocal started
        started = ensure_ray(logging_level=ray_logging_level)
        quiet_ray_console(verbosity)

    try:
        with _interrupt_on_termination():
            try:
                if os.environ.get("RAY_ADDRESS"):  # the cluster's resources size the actor pools: join it first
                    start_ray()
                # a local Ray starts only when rows are pending: a rerun of a finished job needs none
                result = run_job(config, progress=getattr(args, "progress", None),
                                 progress_every_s=getattr(args, "progress_every_s", None), run_id=run_id,
                                 start_ray=start_ray)
            finally:
                if started:
                    shutdown_ray()
    except (InputError, JobError) as exc:
        if verbosity == "verbose":
            traceback.print_exc()
        print(f"gpa-batch {config.job}: {exc}{_log_hint(config, run_id)}", file=sys.stderr)
        return 1
    except Exception as exc:
        return _fatal(config, exc, verbosity, run_id)
    except KeyboardInterrupt:  # run_job has ended its MLflow run and given the output up: no traceback to read
        print(f"gpa-batch {config.job}: interrupted; finished parts are kept and rerunning the same command "
              "resumes the job", file=sys.stderr)
        return 130
    if getattr(args, "print_json", False):
        print(json.dumps(summary_dict(result), indent=1, default=str))
    else:
        print(format_summary(result))
    # the store was unreachable for some rows: a scheduler that retries failed jobs reruns it (EX_TEMPFAIL)
    return EXIT_RETRY if result.extra.get("storage_unavailable") else 0


@contextlib.contextmanager
def _interrupt_on_termination():
    """SIGTERM and SIGHUP (a scheduler stopping the job, a closed terminal) end the run as Ctrl-C does: the run
    gives its output up, and Ray and its temporary directory are removed (the default action would kill the
    process before any of that)."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
