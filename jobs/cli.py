"""``gpa-batch transcribe|synthesize|convert|demo``: the command line of the batch jobs.

Also a valid ``ray job submit`` entrypoint: with ``RAY_ADDRESS`` set it joins that cluster, else it starts Ray
locally for the duration of the job. Flags override the ``--config`` YAML file, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import traceback
from typing import Any

from gpa.options import ENGINES

from .config import JOBS, JobConfig, parse_actors

SAMPLING_FLAGS = (
    ("--max-new-tokens", int), ("--temperature", float), ("--top-k", int), ("--top-p", float),
    ("--repetition-penalty", float), ("--window-s", float),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpa-batch",
        description="Batch ASR, voice-cloning TTS and voice conversion with GPA on Ray Data: "
                    "manifests or bucket prefixes in, Parquet and an MLflow run out.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{transcribe,synthesize,convert,demo}")
    for job in JOBS:
        helps = {"transcribe": "speech -> text (ASR)", "synthesize": "text + reference voice -> speech (TTS)",
                 "convert": "speech + reference voice -> the same speech in that voice"}
        _add_job_arguments(commands.add_parser(job, help=helps[job], argument_default=argparse.SUPPRESS))
        _add_run_control_arguments(commands.choices[job])
    demo = commands.add_parser("demo", help="run the jobs on the bundled examples with a tiny random checkpoint")
    demo.add_argument("--output", default="gpa-demo", help="where results go (default: ./gpa-demo)")
    demo.add_argument("--jobs", default="transcribe",
                      help="comma-separated jobs to run, or 'all' (default: transcribe)")
    demo.add_argument("--model", default=None,
                      help="checkpoint to use instead of the generated tiny one (e.g. AutoArk-AI/GPA)")
    demo.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default: sqlite in the output)")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def _add_job_arguments(p: argparse.ArgumentParser) -> None:
    io = p.add_argument_group("input and output")
    io.add_argument("--input", help="manifest (.jsonl/.json/.csv/.tsv/.parquet, local or s3://) or, with --glob, "
                                    "a prefix to list audio files under")
    io.add_argument("--output", help="output prefix (local dir or s3://bucket/prefix)")
    io.add_argument("--model", help="checkpoint: local dir, s3:// prefix or Hugging Face id (AutoArk-AI/GPA)")
    io.add_argument("--config", help="YAML file with any of these settings (flags win)")
    io.add_argument("--glob", help="list files matching this pattern under --input (e.g. '**/*.mp3')")
    io.add_argument("--format", dest="input_format", choices=("auto", "jsonl", "csv", "parquet"))
    io.add_argument("--convention", choices=("auto", "canonical", "gpa", "nemo"),
                    help="the manifest's field names: ours (canonical), GPA's training JSONL, NeMo's; default auto: "
                    "what most of its first 100 rows follow")
    io.add_argument("--skip-other-tasks", action="store_true",
                    help="GPA training manifests: leave out (and count) rows of other jobs' tasks instead of making "
                    "them error rows")
    io.add_argument("--allow-empty", action="store_true",
                    help="accept an input without rows (an empty, complete job) instead of refusing it")
    io.add_argument("--field-map", action="append", metavar="OURS=THEIRS",
                    help="map manifest columns to ours, e.g. id=utt_id,audio=path (repeatable)")
    io.add_argument("--reference", help="reference voice for rows without ref_audio (synthesize, convert)")
    io.add_argument("--limit", type=int, help="process at most N pending rows")
    io.add_argument("--audio-storage", choices=("inline", "objects"),
                    help="FLAC bytes inside the Parquet (inline, default) or as objects under <output>/audio/")
    io.add_argument("--rows-per-part", type=int, help="rows per Parquet part (default 1000)")
    io.add_argument("--retry-errors", action="store_true", help="also redo rows that failed in earlier runs")
    io.add_argument("--takeover", action="store_true",
                    help="take the output over from a run that still holds its lease (only if that run is dead)")

    pool = p.add_argument_group("actor pool and batching")
    pool.add_argument("--actors", type=parse_actors, metavar="MIN:MAX",
                      help="model actors (N or MIN:MAX; default 1:G, G = the cluster's GPUs / GPUs per actor; 1:1 "
                      "on CPUs)")
    pool.add_argument("--batch-size", type=int, help="items per model call (default 256 on a GPU, 8 on a CPU)")
    pool.add_argument("--bucket-batches", type=int,
                      help="rows per actor call = batch size x this; they are sorted by length first (default 4)")
    pool.add_argument("--gpus-per-actor", type=float, help="default: 1 when the cluster has GPUs, else 0")
    pool.add_argument("--cpus-per-actor", type=float,
                      help="default 1 with a GPU, else 0.5 (keep <= 0.5 on small machines)")
    pool.add_argument("--cpus-per-task", type=float, help="CPUs per decode/encode task (default 0.5)")
    pool.add_argument("--memory-per-task-mb", type=int, help="memory reserved per decode/encode task (default 512)")
    pool.add_argument("--memory-per-actor-mb", type=int,
                      help="memory reserved per model actor, so Ray places no more on a node than it holds (default 0: "
                      "none)")
    pool.add_argument("--device", help="cuda / cpu (default: cuda when the actor has a GPU)")
    pool.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    pool.add_argument("--torch-threads", type=int)
    pool.add_argument("--cache-dir", help="where remote checkpoints are downloaded")

    task = p.add_argument_group("task")
    task.add_argument("--seed", type=int, help="job seed; each row's seed derives from it and the row id")
    for flag, kind in SAMPLING_FLAGS:
        task.add_argument(flag, type=kind, dest=f"opt_{flag[2:].replace('-', '_')}")
    sampling = task.add_mutually_exclusive_group()
    sampling.add_argument("--do-sample", dest="opt_do_sample", action="store_const", const=True)
    sampling.add_argument("--greedy", dest="opt_do_sample", action="store_const", const=False)
    task.add_argument("--engine", dest="opt_engine", choices=ENGINES,
                      help="generation engine: static (preallocated KV cache, CUDA graphs), reference (transformers' "
                           "forward step by step); default auto = static on CUDA, reference on a CPU")
    task.add_argument("--option", action="append", metavar="KEY=VALUE", help="any other task option (repeatable)")
    task.add_argument("--max-duration-s", type=float, help="longer audio becomes an error row (default 3600)")
    task.add_argument("--max-text-chars", type=int, help="longer text becomes an error row (default 20000)")
    task.add_argument("--max-input-mb", type=float,
                      help="larger audio files become error rows without being read (default 2048)")
    task.add_argument("--no-quality", dest="quality", action="store_false",
                      help="skip round-trip ASR and speaker similarity")
    task.add_argument("--keep-max-cer", type=float, help="synthesize quality gate: max CER (default 0.5)")
    task.add_argument("--keep-min-similarity", type=float, help="synthesize quality gate: min similarity (0.5)")

    track = p.add_argument_group("tracking")
    track.add_argument("--mlflow-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else an sqlite "
                                            "store kept in the output, <output>/_mlflow/)")
    track.add_argument("--experiment", help="MLflow experiment (default gpa-batch-<job>)")
    track.add_argument("--run-name")
    track.add_argument("--samples", type=int, help="sample outputs logged as artifacts (default 3)")
    p.add_argument("--json", dest="print_json", action="store_true", help="print the summary as JSON")
    progress = p.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_const", const=True)
    progress.add_argument("--no-progress", dest="progress", action="store_const", const=False)
    p.add_argument("--debug-delay-s", type=float, help=argparse.SUPPRESS)


def _add_run_control_arguments(p: argparse.ArgumentParser) -> None:
    run = p.add_argument_group("run control")
    run.add_argument("--dry-run", action="store_true", default=False,
                     help="check the model, input and output, print the plan (rows, estimated audio hours, batches, "
                          "resources) and exit; starts no Ray and writes nothing")
    verbosity = run.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const="verbose",
                           default="default", help="also show Ray's and MLflow's own messages, and the traceback of "
                                               "a fatal error")
    verbosity.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const="quiet",
                           help="only warnings and errors before the summary")


def config_from_args(job: str, args: argparse.Namespace) -> JobConfig:
    values: dict[str, Any] = {}
    given = vars(args)
    if given.get("config"):
        import yaml

        from . import storage

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
        if key in ("command", "config", "print_json", "progress", "option", "field_map", "dry_run", "verbosity"):
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
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(output=args.output, jobs=[j.strip() for j in args.jobs.split(",") if j.strip()],
                        model=args.model, mlflow_uri=args.mlflow_uri, seed=args.seed)
    dry_run, verbosity = getattr(args, "dry_run", False), getattr(args, "verbosity", "default")
    try:
        config = config_from_args(args.command, args)
    except ValueError as exc:
        parser.error(str(exc))
    from .logs import configure_logging, quiet_ray_console

    ray_logging_level = configure_logging(verbosity)
    from .manifest import InputError
    from .output import new_run_id
    from .pipeline import JobError, check_config, ensure_ray, run_job, shutdown_ray
    from .preflight import dry_run_plan, format_plan, preflight
    from .summary import format_summary, summary_dict

    try:
        check_config(config)  # seconds before Ray would have started
        checked = preflight(config)
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
    try:
        with _interrupt_on_termination():
            try:
                started = ensure_ray(logging_level=ray_logging_level)
                quiet_ray_console(verbosity)
                result = run_job(config, progress=getattr(args, "progress", None), run_id=run_id)
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


def _fatal(config: JobConfig, exc: Exception, verbosity: str, run_id: str | None) -> int:
    """An error nobody foresaw: one line (what, and where the traceback is), the traceback only with --verbose."""
    from .pipeline import _root_cause

    if verbosity == "verbose":
        traceback.print_exc()
    hint = _log_hint(config, run_id) if run_id else ""
    if not hint and verbosity != "verbose":
        hint = "; --verbose shows the traceback"
    print(f"gpa-batch {config.job}: failed: {_root_cause(exc)}{hint}", file=sys.stderr)
    return 1


def _log_hint(config: JobConfig, run_id: str) -> str:
    """Where the run's log (with the traceback) is, once the run has started and written it."""
    from . import storage
    from .pipeline import run_log_uri

    uri = run_log_uri(config.output, run_id)
    try:
        written = storage.exists(uri)
    except Exception:  # the store that failed the run may fail this too
        written = False
    return f" (full log: {storage.redact_uri(uri)})" if written else ""


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


def job_main(job: str) -> None:
    """``python -m jobs.<job> ...``."""
    sys.exit(main([job, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
