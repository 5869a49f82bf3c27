"""The one job skeleton shared by transcribe, synthesize and convert: this module only orchestrates.

    read + validate (driver) -> plan (jobs.run.plan) -> decode (CPU tasks)
    -> GPA (one actor pool, or one per model stage: jobs.stages.model_stages) -> encode (CPU tasks)
    -> staged Parquet parts -> verify and commit (jobs.run.bookkeeping) -> metrics file and MLflow (jobs.run.reporting)

Rows that fail validation are written by the driver as error rows; everything else flows through Ray Data. Ray
start-up is jobs.run.ray_runtime, cluster probing jobs.run.cluster, the one-line reasons of failures jobs.run.errors.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pyarrow as pa

from jobs.config import JobConfig
from jobs.io import schema as S
from jobs.io import storage
from jobs.io.manifest import InputRows, load_inputs
from jobs.io.output import OutputStore, new_run_id
from jobs.run.bookkeeping import JobResult, run_result, verified_records
from jobs.run.cluster import cluster_resources, on_cluster
from jobs.run.errors import JobError, root_cause, storage_failures
from jobs.run.logs import run_log
from jobs.run.plan import pipeline_order, plan_run
from jobs.run.reporting import report, track_failure
from jobs.run.tracking import JobTracking
from jobs.tasks import get_task

log = logging.getLogger(__name__)

__all__ = ["JobError", "JobResult", "check_config", "run_job", "task_params"]


def check_config(config: JobConfig) -> None:
    """Raise JobError for what is wrong with ``config`` itself (task options, credentials in URIs), before Ray, the
    input or the output are touched: the CLI runs it before it starts Ray, run_job again."""
    for flag in ("input", "output", "model", "reference"):
        value = getattr(config, flag)
        if value and storage.is_uri(value) and "@" in urlsplit(value).netloc:  # never echoed
            raise JobError(f"--{flag} carries credentials (user:password@); use the AWS environment instead")
    task_params(config)  # unknown or invalid task options


def run_job(config: JobConfig, *, progress: bool | None = None, progress_every_s: float | None = None,
            run_id: str | None = None, start_ray: Callable[[], None] | None = None) -> JobResult:
    """Run one job to the end: its output is committed (or untouched) when this returns or raises. ``run_id``: the
    caller's (to find the run's log, :func:`jobs.run.logs.run_log_uri`), else a new one. ``start_ray``: called
    once rows are pending, before the pipeline (else Ray Data starts a default local Ray if none runs)."""
    started = time.time()
    run_id = run_id or new_run_id()
    check_config(config)
    cluster_gpus, cluster_cpus = cluster_resources(config)
    if cluster_gpus == 0 and config.gpus_per_actor is None and config.device is None and on_cluster():
        log.warning("the Ray cluster has no GPU now, so the model actors run on CPU; if its GPU nodes are added on "
                    "demand (a GPU group that starts at zero nodes), pass --gpus-per-actor")
    asked_gpus = config.gpus_per_actor
    config = config.for_cluster(cluster_gpus, cluster_cpus)
    if (config.device or "").startswith("cuda") and not config.gpus_per_actor:
        # an actor without a GPU cannot see one: it would fail only after Ray and the actor pool have started
        why = "--gpus-per-actor is 0" if asked_gpus is not None else "the Ray cluster has no GPU now"
        raise JobError(f"--device {config.device} needs GPU actors, but {why}: pass --gpus-per-actor N (a GPU group "
                       "that is added on demand), or use --device cpu")
    on_gpu = bool(config.gpus_per_actor) and (config.device or "cuda").startswith("cuda")
    if config.encoder_precision != "float32" and not on_gpu:
        raise JobError(f"--encoder-precision {config.encoder_precision} needs GPU actors (bf16 convolutions are "
                       "wrong on CPUs); use float32, or give the actors a GPU")
    params = task_params(config)
    store = OutputStore(config.output)
    previous = store.load().job
    if previous and previous != config.job:
        raise JobError(f"{storage.redact_uri(store.uri)} holds {previous} results; use another --output")
    with storage_failures("could not read the output's lease"):
        store.check_free(run_id, config.takeover)  # before anything is read or logged for a run that cannot go on
        store.check_ours()
        # no run of ours wrote there (read now: MLflow's default store is made in the output further down)
        new_output = not storage.listdir(store.meta, recursive=True)
    run_identity = check_output_identity(config, store)
    inputs = load_inputs(config.job, config.input, glob=config.glob, input_format=config.input_format,
                         field_map=config.field_map, reference=config.reference,
                         max_text_chars=config.max_text_chars, convention=config.convention,
                         skip_other_tasks=config.skip_other_tasks, allow_empty=config.allow_empty)
    if start_ray is not None and plan_run(config, inputs, store).todo.num_rows:
        start_ray()  # before the output is touched: a Ray that cannot start leaves nothing behind
    # only now, with everything checked, does this run touch the output (the default MLflow store lives there)
    tracking = JobTracking(tracking_uri=config.mlflow_uri, output=store.uri,
                           experiment=config.experiment or f"gpa-batch-{config.job}",
                           run_name=config.run_name or f"{config.job}-{run_id}",
                           tags={"gpa_batch.job": config.job, "gpa_batch.run_id": run_id})
    try:
        return _run(config, run_id, started, params, store, inputs, tracking, (progress, progress_every_s),
                    run_identity, new_output)
    except BaseException as exc:
        track_failure(config, inputs, run_id, params, tracking, exc)
        raise


def _run(config: JobConfig, run_id: str, started: float, params: dict, store: OutputStore, inputs: InputRows,
         tracking: JobTracking, progress: tuple[bool | None, float | None], run_identity: dict,
         new_output: bool) -> JobResult:
    # a new output that cannot be made holds no parts to keep, and a rerun may fail the same way (a path no
    # preflight can judge)
    failure = (("could not create the output", "no results were written: check that --output can be written, "
                "then rerun") if new_output else
               ("could not take over the output", "finished parts are kept: rerun the same command"))
    with storage_failures(*failure):
        store.start(run_id, config.takeover)  # takes ownership, adopts parts of an interrupted run, removes debris
    tracking.own_output(lambda: store.is_current(run_id), store.output_id)
    # a heartbeat tells later runs that this one is alive, until it is reported (an output's own MLflow store too)
    with run_log(store.uri, run_id), store.holding(run_id):
        try:
            with storage_failures("could not take over the output"):
                plan = plan_run(config, inputs, store)
                if plan.invalid:
                    store.stage(run_id, f"part-{run_id}-invalid.parquet",
                                _error_rows(config, plan.invalid, run_id, params))
            if plan.todo.num_rows:
                _run_pipeline(config, plan.todo, run_id, params, progress, run_identity["expected_model"])
            with storage_failures("could not commit the run"):
                records, unavailable, new_rows = verified_records(store, run_id, plan.expected,
                                                                   _light_columns(get_task(config.job)))
                wall_s = time.time() - started
                run_info = {"run_id": run_id, "job": config.job, "started": started, "wall_s": wall_s,
                            "rows": sum(plan.expected.values()), "input": storage.redact_uri(config.input),
                            "mode": config.mode, "identity": _made_by(run_identity, new_rows)}
                # rows the store could not serve are retried by the next run: the output is not complete
                plan.unavailable = unavailable
                commit = store.commit(records, run=run_info, complete=plan.complete, supersede=plan.supersede)
                store.finish_run(run_id)
            new_files = [storage.join(store.uri, p["path"]) for p in commit.parts if p["run_id"] == run_id]
            result = run_result(config, inputs, plan, store, commit, run_id, wall_s, new_rows)
            report(config, inputs, store, result, params, new_files, new_rows, tracking)
            return result
        except BaseException as exc:
            track_failure(config, inputs, run_id, params, tracking, exc)
            raise


def check_output_identity(config: JobConfig, store: OutputStore | None = None) -> dict:
    """Refuse (JobError) a run that ``config.mode`` forbids on this output: by default, one whose model or
    output-changing settings differ from those that made its rows (see :mod:`jobs.run.resume`). Reads the commit file
    and hashes a local model; the CLI calls it before Ray starts, run_job again. Returns this run's identity, with
    ``expected_model``: the hash the actors must load when the driver could not hash the model itself."""
    from jobs.run import resume

    store = store or OutputStore(config.output)
    try:
        commit = store.load()
        recorded = resume.recorded_identity(commit.runs, store.read) if commit.rows else None
    except Exception as exc:  # not a directory, an unreachable store, a commit file of something else
        raise JobError(f"cannot read what {storage.redact_uri(store.uri)} holds ({root_cause(exc)})") from None
    # a first run has nothing to compare with: its rows tell the model's hash, at no cost to the driver
    model_hash = resume.driver_model_hash(config.model) if commit.rows else None
    current = resume.identity(model_hash, resume.output_settings(config, task_params(config)))
    try:
        resume.check_identity(config.mode, store.uri, commit.rows, recorded, current)
    except ValueError as exc:
        raise JobError(str(exc)) from None
    keeps_rows = config.mode == "resume" and recorded is not None
    recorded_model = recorded.get("model_hash") if recorded else None
    return {**current, "recorded_model": recorded_model if keeps_rows else None,
            "expected_model": recorded_model if keeps_rows and model_hash is None else None}


def _made_by(run_identity: dict, new_rows: pa.Table | None) -> dict:
    """The identity this run records: its model's hash as the driver or, failing that, its rows know it (a run
    that made no rows keeps the output's)."""
    from jobs.run import resume

    model_hash = run_identity.get("model_hash")
    if model_hash is None and new_rows is not None:
        hashes = {h for h in new_rows.column("model_hash").to_pylist() if h}
        model_hash = hashes.pop() if len(hashes) == 1 else None
    return resume.identity(model_hash or run_identity.get("recorded_model"), run_identity["settings"])


def _run_pipeline(config: JobConfig, rows: pa.Table, run_id: str, params: dict,
                  progress: tuple[bool | None, float | None] = (None, None), expected_model: str | None = None) -> None:
    import ray

    from jobs.run.progress import DEFAULT_EVERY_S, ProgressLines

    show, every_s = progress
    ctx = ray.data.DataContext.get_current()
    # Ray Data's bars on a terminal; in a log, our periodic lines (bars there are a wall of carriage returns)
    ctx.enable_progress_bars = show is not False and sys.stderr.isatty()
    if show is False or sys.stderr.isatty():
        _run_stages(config, rows, run_id, params, expected_model, None)
        return
    with ProgressLines(config.job, rows.num_rows, every_s or DEFAULT_EVERY_S) as lines:
        _run_stages(config, rows, run_id, params, expected_model, lines.tally)


def _run_stages(config: JobConfig, rows: pa.Table, run_id: str, params: dict, expected_model: str | None,
                tally) -> None:
    import ray

    from jobs.stages import GPAStage, decode_batch, encode_batch, make_sink, model_stages

    task = get_task(config.job)
    order = pipeline_order(task, rows)
    window = config.window_rows
    # take() copies each window into its own buffers: a slice would ship the whole table with every block
    blocks = [rows.take(order[i: i + window]) for i in range(0, len(order), window)]
    options = task.options(config)  # built and checked once: the typed config and options travel as they are
    # a memory reservation for the CPU stages (decoded audio) also keeps Ray from fusing them into the model
    # actors, which would serialise decoding and inference in one process
    cpu_args = {"num_cpus": config.cpus_per_task, "memory": config.memory_per_task_mb * 2**20}
    ds = ray.data.from_blocks(blocks)  # block metadata computed here, not by a remote task per block
    ds = ds.map_batches(decode_batch, batch_format="pyarrow", batch_size=window, zero_copy_batch=True,
                        fn_kwargs={"job": config.job, "max_duration_s": config.max_duration_s,
                                   "max_bytes": config.max_input_bytes}, **cpu_args)
    stages = model_stages(config)
    log.info("model stages: %s; %d:%d actors each", ", ".join(m.describe(config) for m in stages), *config.actors)
    for model_stage in stages:
        memory = config.memory_per_actor_mb * model_stage.share * 2**20
        ds = ds.map_batches(
            GPAStage, fn_constructor_kwargs={"config": config, "options": options, "stage": model_stage.stage,
                                             "expected_model": expected_model, "share": model_stage.share},
            batch_format="pyarrow", batch_size=window,
            compute=ray.data.ActorPoolStrategy(min_size=config.actors[0], max_size=config.actors[1]),
            num_gpus=config.gpus_per_actor * model_stage.share, num_cpus=config.cpus_per_actor * model_stage.share,
            **({"memory": memory} if memory else {}),
        )
    ds = ds.map_batches(encode_batch, batch_format="pyarrow", batch_size=window,
                        fn_kwargs={"config": config, "run_id": run_id, "params": params, "progress": tally}, **cpu_args)
    # the write gathers rows_per_part rows per part; it must not be fused with encode, or encoding would wait for
    # a whole part's rows instead of streaming window by window (hence no memory reservation here)
    try:
        ds.write_datasink(make_sink(config.output, run_id, config.rows_per_part),
                          ray_remote_args={"num_cpus": config.cpus_per_task})
    except Exception as exc:  # e.g. the actors cannot load the checkpoint: no row can succeed, stop the job
        raise JobError(f"the pipeline failed, nothing was committed (finished parts are kept for the next run): "
                       f"{root_cause(exc)}") from exc


# --- task options and rows written by the driver --------------------------------------------------------------


def task_params(config: JobConfig) -> dict:
    """The task options as a dict (what rows and MLflow record). Raises JobError for unknown or invalid options."""
    try:
        options = get_task(config.job).options(config)
        options.validate()  # again: a task may set options after building them
        return dataclasses.asdict(options)
    except (TypeError, ValueError) as exc:
        raise JobError(f"invalid task options: {exc}") from None


def _error_rows(config: JobConfig, errors: list[dict], run_id: str, params: dict) -> pa.Table:
    task = get_task(config.job)
    rows = []
    for e in errors:
        row = {**e, "status": "error", "seed": None}
        rows.append(task.output_row(row, None, config, params, {"run_id": run_id}))
    return task.table(rows)


def _light_columns(task) -> list[str]:
    """The output columns small enough to read back for the run's metrics: not audio, segments or token lists."""
    return [f.name for f in task.output_schema if f.type != S.AUDIO and not pa.types.is_list(f.type)]
