"""The one job skeleton shared by transcribe, synthesize and convert.

    read + validate (driver) -> resume filter -> decode (CPU tasks) -> GPA (actor pool) -> encode (CPU tasks)
    -> staged Parquet parts -> commit -> metrics, MLflow, summary

Rows that fail validation are written by the driver as error rows; everything else flows through Ray Data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import schema as S
from . import storage
from .config import JobConfig
from .manifest import InputRows, load_inputs
from .metrics import error_summary, run_metrics
from .output import OutputRefused, OutputStore, count_ids, new_run_id, read_parquet, resume_plan
from .tasks import TASKS, row_seed
from .tracking import JobTracking, Tracking

log = logging.getLogger(__name__)


class _NoBothResourcesWarning(logging.Filter):
    """Ray Data warns that giving a map both CPUs and GPUs is "experimental"; it is how a GPU actor keeps a CPU
    reserved on every Ray version (only recent ones reserve one CPU for GPU work by themselves)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Specifying both num_cpus and num_gpus" not in record.getMessage()


logging.getLogger("ray.data._internal.execution.operators.map_operator").addFilter(_NoBothResourcesWarning())


class JobError(RuntimeError):
    """The job as a whole cannot run (unreadable input, output of another job, inconsistent write)."""


@dataclass
class JobResult:
    job: str
    run_id: str
    input: str  # redacted
    output: str
    input_rows: int
    skipped_other_task: int
    already_done: int
    processed: int
    counts: dict[str, int]  # ok / error / error kinds, over the rows of this run
    committed_rows: int
    committed: dict[str, int]  # ok / error / error kinds over every committed row of the output
    complete: bool
    files: list[str]
    metrics: dict[str, float]
    metrics_path: str
    tracking: Tracking | None = None
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)


def check_config(config: JobConfig) -> None:
    """Raise JobError for what is wrong with ``config`` itself (task options, credentials in URIs), before Ray, the
    input or the output are touched: the CLI runs it before it starts Ray, run_job again."""
    for flag in ("input", "output", "model", "reference"):
        value = getattr(config, flag)
        if value and storage.is_uri(value) and "@" in urlsplit(value).netloc:  # never echoed
            raise JobError(f"--{flag} carries credentials (user:password@); use the AWS environment instead")
    task_params(config)  # unknown or invalid task options


def run_job(config: JobConfig, *, progress: bool | None = None, run_id: str | None = None) -> JobResult:
    """Run one job to the end: its output is committed (or untouched) when this returns or raises. ``run_id``: the
    caller's (to find the run's log, :func:`run_log_uri`), else a new one."""
    started = time.time()
    run_id = run_id or new_run_id()
    check_config(config)
    cluster_gpus, cluster_cpus = _cluster_resources(config)
    if cluster_gpus == 0 and config.gpus_per_actor is None and config.device is None and _on_cluster():
        log.warning("the Ray cluster has no GPU now, so the model actors run on CPU; if its GPU nodes are added on "
                    "demand (a GPU group that starts at zero nodes), pass --gpus-per-actor")
    config = config.for_cluster(cluster_gpus, cluster_cpus)
    params = task_params(config)
    store = OutputStore(config.output)
    previous = store.load().job
    if previous and previous != config.job:
        raise JobError(f"{storage.redact_uri(store.uri)} holds {previous} results; use another --output")
    with _storage_failures("could not read the output's lease"):
        store.check_free(run_id, config.takeover)  # before anything is read or logged for a run that cannot go on
        store.check_ours()
    inputs = load_inputs(config.job, config.input, glob=config.glob, input_format=config.input_format,
                         field_map=config.field_map, reference=config.reference,
                         max_text_chars=config.max_text_chars, convention=config.convention,
                         skip_other_tasks=config.skip_other_tasks, allow_empty=config.allow_empty)
    # only now, with everything checked, does this run touch the output (the default MLflow store lives there)
    tracking = JobTracking(tracking_uri=config.mlflow_uri, output=store.uri,
                           experiment=config.experiment or f"gpa-batch-{config.job}",
                           run_name=config.run_name or f"{config.job}-{run_id}",
                           tags={"gpa_batch.job": config.job, "gpa_batch.run_id": run_id})
    try:
        return _run(config, run_id, started, params, store, inputs, tracking, progress)
    except BaseException as exc:
        _track_failure(config, inputs, run_id, params, tracking, exc)
        raise


def _run(config: JobConfig, run_id: str, started: float, params: dict, store: OutputStore, inputs: InputRows,
         tracking: JobTracking, progress: bool | None) -> JobResult:
    with _storage_failures("could not take over the output"):
        store.start(run_id, config.takeover)  # takes ownership, adopts parts of an interrupted run, removes debris
    tracking.own_output(lambda: store.is_current(run_id), store.output_id)
    # a heartbeat tells later runs that this one is alive, until it is reported (an output's own MLflow store too)
    with _run_log(store.uri, run_id), store.holding(run_id):
        try:
            with _storage_failures("could not take over the output"):
                plan = _plan(config, inputs, store)
                if plan.invalid:
                    store.stage(run_id, f"part-{run_id}-invalid.parquet",
                                _error_rows(config, plan.invalid, run_id, params))
            if plan.todo.num_rows:
                _run_pipeline(config, plan.todo, run_id, params, progress)
            with _storage_failures("could not commit the run"):
                records, unavailable, new_rows = _verified_records(store, run_id, plan.expected,
                                                                   _light_columns(TASKS[config.job]))
                wall_s = time.time() - started
                run_info = {"run_id": run_id, "job": config.job, "started": started, "wall_s": wall_s,
                            "rows": sum(plan.expected.values()), "input": storage.redact_uri(config.input)}
                # rows the store could not serve are retried by the next run: the output is not complete
                plan.unavailable = unavailable
                commit = store.commit(records, run=run_info, complete=plan.complete, supersede=plan.supersede)
                store.finish_run(run_id)
            new_files = [storage.join(store.uri, p["path"]) for p in commit.parts if p["run_id"] == run_id]
            result = _result(config, inputs, plan, store, commit, run_id, wall_s, new_rows)
            _report(config, inputs, store, result, params, new_files, new_rows, tracking)
            return result
        except BaseException as exc:
            _track_failure(config, inputs, run_id, params, tracking, exc)
            raise


def run_log_uri(output: str, run_id: str) -> str:
    """Where a run's log goes: its lines, and the traceback of what ended it."""
    return storage.join(storage.normalize(output), "_gpa_batch", "logs", f"{run_id}.log")


class _LinesHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def _run_log(output: str, run_id: str):
    """Keep what this run logs (our loggers, Ray Data's) and, when it fails, the full traceback, in
    :func:`run_log_uri`: written once when the run ends, as an object store cannot append; credentials scrubbed."""
    import traceback

    handler = _LinesHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("jobs", "gpa", "ray.data")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    except BaseException as exc:
        handler.lines.append("".join(traceback.format_exception(exc)).rstrip())
        raise
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        uri = run_log_uri(output, run_id)
        try:
            storage.write_bytes(uri, "".join(storage.scrub(line, 1 << 20) + "\n" for line in handler.lines).encode())
        except Exception as exc:  # the store failing now must not hide why the run ended
            log.warning("could not write the run's log %s (%s)", storage.redact_uri(uri), type(exc).__name__)


def _track_failure(config: JobConfig, inputs: InputRows, run_id: str, params: dict, tracking: JobTracking,
                   exc: BaseException) -> None:
    """End the MLflow run as FAILED with the reason (only the first call does anything)."""
    values = job_params(config, inputs, storage.redact_uri(config.model), "", run_id, params)
    tracking.finish(params=values, metrics={}, artifacts={}, failure=_root_cause(exc))


@dataclass
class _Plan:
    todo: pa.Table  # valid rows to process (schema.INPUT), each with its seed
    invalid: list[dict]  # rows that failed validation, to write as error rows
    already_done: int
    cut: int  # pending rows left for a later run by --limit
    supersede: bool  # some of this run's ids already have committed rows (retries)
    unavailable: int = 0  # rows of this run whose input the store could not serve (storage_unavailable)

    @property
    def complete(self) -> bool:
        return self.cut == 0 and self.unavailable == 0

    @property
    def expected(self) -> Counter:
        return Counter(self.todo.column("id").to_pylist() + [e["id"] for e in self.invalid])


def _plan(config: JobConfig, inputs: InputRows, store: OutputStore) -> _Plan:
    """What this run does: the input rows without a committed row (and, with --retry-errors, the failed ones)."""
    wanted = Counter(inputs.table.column("id").to_pylist() + [e["id"] for e in inputs.errors])
    versions = {i: v for i, v in zip(inputs.table.column("id").to_pylist(),
                                     inputs.table.column("input_version").to_pylist(), strict=True) if v is not None}
    done, redo = resume_plan(store.index(), config.retry_errors, wanted, versions)
    finished = done - redo
    todo = inputs.table
    if finished:
        todo = todo.filter(pc.invert(pc.is_in(todo.column("id"), value_set=pa.array(finished, pa.string()))))
    invalid = [e for e in inputs.errors if e["id"] not in finished]
    cut = 0
    if config.limit is not None and todo.num_rows > config.limit:
        cut = todo.num_rows - config.limit
        deferred = set(todo.column("id").to_pylist()[config.limit:])
        todo = todo.slice(0, config.limit)
        # an id's rows go together: its duplicates wait for the run that does its first row
        cut += sum(e["id"] in deferred for e in invalid)
        invalid = [e for e in invalid if e["id"] not in deferred]
    seeds = [row_seed(config.seed, row_id, seed)
             for row_id, seed in zip(todo.column("id").to_pylist(), todo.column("seed").to_pylist(), strict=True)]
    todo = todo.set_column(todo.schema.get_field_index("seed"), "seed", pa.array(seeds, pa.int64()))
    already_done = inputs.total - (todo.num_rows + cut) - len(invalid)
    return _Plan(todo=todo, invalid=invalid, already_done=already_done, cut=cut, supersede=bool(redo & done))


def _verified_records(store: OutputStore, run_id: str, expected: Counter,
                      columns: list[str]) -> tuple[list[dict], int, pa.Table | None]:
    """The run's staged parts, once they are checked to hold exactly one row per pending input row; how many of
    those rows failed for a transient reason (the store was unreachable); and the rows' ``columns`` (for the
    run's metrics: each part is read once)."""
    if not store.is_current(run_id):
        raise JobError("another run took this output over (--takeover) while this one was running; nothing was "
                       "committed (the other run adopts this run's finished parts)")
    records = [r for r in store.staged_records() if r["run_id"] == run_id]
    written: Counter = Counter()
    unavailable = 0
    parts = []
    for record in records:
        part = read_parquet(storage.join(store.run_dir(run_id), record["part"]), columns)
        written += count_ids(part)
        unavailable += sum(k in storage.TRANSIENT_KINDS for k in part.column("error_kind").to_pylist())
        parts.append(part)
    if written != expected:
        missing, extra = sum((expected - written).values()), sum((written - expected).values())
        store.finish_run(run_id)
        raise JobError(f"the run wrote an inconsistent row set ({missing} rows missing, {extra} extra); "
                       "nothing was committed, rerun the same command")
    return records, unavailable, pa.concat_tables(parts) if parts else None


@contextlib.contextmanager
def _storage_failures(what: str):
    """A storage failure around the commit is a :class:`JobError` with a clear message, not a traceback. The commit
    protocol keeps the output consistent: readers see the previous commit (or this one, if its commit file was
    written), and the next run adopts every finished part."""
    try:
        yield
    except JobError:
        raise
    except OutputRefused as exc:
        raise JobError(str(exc)) from None
    except Exception as exc:
        raise JobError(f"{what} ({_root_cause(exc)}); finished parts are kept: rerun the same command") from exc


def _result(config, inputs, plan, store, commit, run_id, wall_s, new_rows: pa.Table | None) -> JobResult:
    metrics = run_metrics(config.job, new_rows, wall_s)
    metrics.update(input_rows=inputs.total, already_done=plan.already_done, committed_rows=commit.rows)
    if inputs.skipped_other_task:
        metrics["skipped_other_task"] = inputs.skipped_other_task
    counts = {"ok": int(metrics.get("rows_ok", 0)), "error": int(metrics.get("rows_error", 0)),
              **{k.split(".", 1)[1]: int(v) for k, v in metrics.items() if k.startswith("rows_error.")}}
    index = store.index()
    # rows an earlier input had and this one lacks stay in the output (a manifest edited between runs): say so, as
    # the output then holds more rows than this input
    input_ids = pa.array(inputs.table.column("id").to_pylist() + [e["id"] for e in inputs.errors], pa.string())
    not_in_input = index.num_rows - (pc.sum(pc.is_in(index.column("id"), value_set=input_ids)).as_py() or 0)
    if not_in_input:
        metrics["rows_not_in_input"] = not_in_input
        log.warning("the output holds %d rows whose ids are not in this input (from an earlier input); they stay: "
                    "write to a new --output to have only this input's rows", not_in_input)
    index = index.to_pylist()
    committed = Counter("ok" if r["status"] == "ok" else "error" for r in index)
    committed.update(r["error_kind"] for r in index if r["status"] != "ok")
    return JobResult(
        job=config.job, run_id=run_id, input=storage.redact_uri(config.input), output=store.uri,
        input_rows=inputs.total, skipped_other_task=inputs.skipped_other_task, already_done=plan.already_done,
        processed=sum(plan.expected.values()), counts=counts, committed_rows=commit.rows, committed=dict(committed),
        complete=plan.complete, files=store.files(commit), metrics=metrics,
        metrics_path=storage.join(store.meta, "runs", f"{run_id}.json"), wall_s=wall_s,
        extra={"pending_after_limit": plan.cut, "storage_unavailable": plan.unavailable,
               "convention": inputs.convention, "rows_not_in_input": not_in_input},
    )


def _report(config: JobConfig, inputs: InputRows, store: OutputStore, result: JobResult, params: dict,
            new_files: list[str], new_rows: pa.Table | None, tracking: JobTracking) -> None:
    """Metrics file first (always), then MLflow; a tracking failure is recorded, never raised."""
    model_source = _first(new_rows, "model_source") or storage.redact_uri(config.model)
    hashes = sorted({h for h in new_rows.column("model_hash").to_pylist() if h}) if new_rows is not None else []
    if len(hashes) > 1:  # the checkpoint was replaced at its source while the run went on: each row says which
        log.warning("this run's rows were made by %d versions of the checkpoint (replaced during the run); each "
                    "row's model_hash says which", len(hashes))
    model_hash = ",".join(hashes)
    values = job_params(config, inputs, model_source, model_hash, result.run_id, params)
    local = {"run_id": result.run_id, "job": config.job, "params": values, "metrics": result.metrics, "mlflow": None}
    storage.write_bytes(result.metrics_path, json.dumps(local, indent=1, default=str).encode())
    try:
        artifacts = _artifacts(config, new_files, new_rows)
    except Exception as exc:  # artifacts are a nicety: log the run without them rather than not at all
        log.warning("could not prepare MLflow artifacts: %s", storage.scrub(str(exc), 300))
        artifacts = {}
    result.tracking = tracking.finish(params=values, metrics=result.metrics, artifacts=artifacts,
                                      tags={"gpa_batch.model_hash": model_hash})
    t = result.tracking
    local["mlflow"] = {"uri": t.uri, "experiment": t.experiment, "run_id": t.run_id, "error": t.error}
    storage.write_bytes(result.metrics_path, json.dumps(local, indent=1, default=str).encode())


# --- the Ray Data part -----------------------------------------------------------------------------------------


def _run_pipeline(config: JobConfig, rows: pa.Table, run_id: str, params: dict, progress: bool | None) -> None:
    import ray

    from .stages import GPAStage, decode_batch, encode_batch, make_sink

    task = TASKS[config.job]
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress if progress is not None else _interactive()
    order = pipeline_order(task, rows)
    window = config.window_rows
    # take() copies each window into its own buffers: a slice would ship the whole table with every block
    blocks = [rows.take(order[i: i + window]) for i in range(0, len(order), window)]
    cfg = config.to_dict()
    # a memory reservation for the CPU stages (decoded audio) also keeps Ray from fusing them into the model
    # actors, which would serialise decoding and inference in one process
    cpu_args = {"num_cpus": config.cpus_per_task, "memory": config.memory_per_task_mb * 2**20}
    ds = ray.data.from_blocks(blocks)  # block metadata computed here, not by a remote task per block
    ds = ds.map_batches(decode_batch, batch_format="pyarrow", batch_size=window, zero_copy_batch=True,
                        fn_kwargs={"job": config.job, "max_duration_s": config.max_duration_s,
                                   "max_bytes": config.max_input_bytes}, **cpu_args)
    ds = ds.map_batches(
        GPAStage, fn_constructor_kwargs={"config": cfg}, batch_format="pyarrow", batch_size=window,
        compute=ray.data.ActorPoolStrategy(min_size=config.actors[0], max_size=config.actors[1]),
        num_gpus=config.gpus_per_actor, num_cpus=config.cpus_per_actor,
        **({"memory": config.memory_per_actor_mb * 2**20} if config.memory_per_actor_mb else {}),
    )
    ds = ds.map_batches(encode_batch, batch_format="pyarrow", batch_size=window,
                        fn_kwargs={"config": cfg, "run_id": run_id, "params": params}, **cpu_args)
    # the write gathers rows_per_part rows per part; it must not be fused with encode, or encoding would wait for
    # a whole part's rows instead of streaming window by window (hence no memory reservation here)
    try:
        ds.write_datasink(make_sink(config.output, run_id, config.rows_per_part),
                          ray_remote_args={"num_cpus": config.cpus_per_task})
    except Exception as exc:  # e.g. the actors cannot load the checkpoint: no row can succeed, stop the job
        raise JobError(f"the pipeline failed, nothing was committed (finished parts are kept for the next run): "
                       f"{_root_cause(exc)}") from exc


def _root_cause(exc: BaseException) -> str:
    """The line that says what went wrong (``gpa.errors.CheckpointError: ...``), without credentials. Ray wraps a
    worker's error in several layers whose own messages are tracebacks or empty."""
    import re

    if isinstance(exc, KeyboardInterrupt):  # whatever it interrupted (a retry, Ray's own code) is not the reason
        return "KeyboardInterrupt: interrupted (Ctrl-C or SIGINT); rerunning the same command resumes the job"
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    pattern = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b[^\s]*: \S")
    for error in chain:
        lines = [line for line in str(error).splitlines() if pattern.match(line)]
        if lines:
            return storage.scrub(lines[-1], 500)
    first = chain[0]
    return storage.scrub(f"{type(first).__name__}: {str(first).strip().splitlines()[0] if str(first).strip() else ''}",
                         500)


def pipeline_order(task, rows: pa.Table) -> np.ndarray:
    """The order (row indices) rows go through the pipeline in.

    Longest first: similar lengths share a window (little padding) and the stragglers do not come last. Segments
    of long recordings instead go file by file, in time order, so that a decode worker decodes each recording once
    for its consecutive segments; GPA still sorts each window by true length.
    """
    if rows.column("begin_time").null_count < rows.num_rows or rows.column("end_time").null_count < rows.num_rows:
        keys = pa.table({"audio": pc.fill_null(rows.column("audio"), ""),
                         "begin": pc.fill_null(rows.column("begin_time"), 0.0)})
        return pc.sort_indices(keys, [("audio", "ascending"), ("begin", "ascending")]).to_numpy()
    lengths = task.lengths(rows)
    if not lengths.all():  # no duration in the manifest: local files are ordered by their size
        lengths = task.lengths(_with_local_sizes(rows, lengths == 0))
    return np.argsort(-lengths, kind="stable")


def _with_local_sizes(rows: pa.Table, unknown: np.ndarray) -> pa.Table:
    """``rows`` with ``size_bytes`` filled in for the ``unknown`` rows whose audio is a local file. (Objects in a
    store would cost a request each: a manifest of them is ordered within each window only, see docs/jobs.md.)"""
    from concurrent.futures import ThreadPoolExecutor

    def sizes_of(paths: list[str]) -> list[int | None]:
        found = []
        for path in paths:
            try:
                found.append(os.stat(path).st_size)
            except OSError:  # a missing file becomes its row's error later, not the planner's
                found.append(None)
        return found

    sizes = rows.column("size_bytes").to_pylist()
    audio = rows.column("audio").to_pylist()
    todo = [i for i in np.flatnonzero(unknown) if sizes[i] is None and audio[i] and not storage.is_uri(audio[i])]
    # threads, as each stat on a network file system (a cluster's shared disk) waits on a round trip; chunks, as
    # a future per file would cost more than a local stat (~4 us)
    chunks = [[audio[i] for i in todo[k: k + 4096]] for k in range(0, len(todo), 4096)]
    with ThreadPoolExecutor(8) as pool:
        found = [size for chunk in pool.map(sizes_of, chunks) for size in chunk]
    for i, size in zip(todo, found, strict=True):
        sizes[i] = size
    return rows.set_column(rows.schema.get_field_index("size_bytes"), "size_bytes", pa.array(sizes, pa.int64()))


def _on_cluster() -> bool:
    """Whether this job runs on a Ray cluster it connected to (not one it started, not before Ray is up)."""
    import ray

    return bool(os.environ.get("RAY_ADDRESS")) and ray.is_initialized()


def _cluster_resources(config: JobConfig) -> tuple[float, float]:
    """(GPUs of the Ray cluster, CPUs of its smallest node that can hold an actor: one with a GPU if any). Without
    a connection, Ray Data will start a local Ray on this machine: its GPUs (asked of torch only when needed) and
    the CPUs this process may use."""
    import ray

    if ray.is_initialized():
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        gpu_nodes = [n for n in nodes if n.get("GPU", 0) > 0]
        return sum(n.get("GPU", 0.0) for n in nodes), min(n.get("CPU", 0.0) for n in gpu_nodes or nodes or [{}])
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if config.gpus_per_actor is not None:
        return 0.0, cpus
    import torch

    return float(torch.cuda.device_count()), cpus


def _interactive() -> bool:
    import sys

    return sys.stderr.isatty()


_LOCAL_RAY_DIR: list[str] = []
_RAY_DIR_PREFIX = "gpa-batch-ray-"
_OWNER_FILE = "gpa-batch-owner.pid"


def ensure_ray(num_cpus: int | None = None, *, logging_level: int = logging.INFO) -> bool:
    """Connect to ``RAY_ADDRESS`` when set, else start a local Ray in a temporary directory of its own (removed by
    :func:`shutdown_ray`, at exit too; one left by a killed run is removed by the next start). Returns True when
    this call started it; a failure to start or connect is a :class:`JobError` of one line. ``logging_level``: of
    Ray's own driver-side messages (see :mod:`jobs.logs`)."""
    import atexit

    import ray

    if ray.is_initialized():
        return False
    try:
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True, logging_level=logging_level)
        else:
            _remove_orphaned_ray_dirs()
            temp = tempfile.mkdtemp(prefix=_RAY_DIR_PREFIX)
            _LOCAL_RAY_DIR.append(temp)
            with open(os.path.join(temp, _OWNER_FILE), "w") as f:
                f.write(str(os.getpid()))
            atexit.register(shutdown_ray)  # an exit that skips the caller's finally (sys.exit in a library, ...)
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, _temp_dir=temp,
                     logging_level=logging_level)
    except Exception as exc:
        shutdown_ray()
        where = os.environ.get("RAY_ADDRESS") or "a local Ray"
        hint = "" if os.environ.get("RAY_ADDRESS") else (
            f"; Ray's socket paths under {tempfile.gettempdir()} must stay short (set TMPDIR to a short path)"
            if len(tempfile.gettempdir()) > 40 else "")
        raise JobError(f"could not start or connect to {storage.redact_uri(where)} ({_root_cause(exc)}){hint}") \
            from None
    return True


def shutdown_ray() -> None:
    """Stop the Ray that :func:`ensure_ray` started (and remove its temporary directory)."""
    import shutil

    import ray

    ray.shutdown()
    while _LOCAL_RAY_DIR:
        shutil.rmtree(_LOCAL_RAY_DIR.pop(), ignore_errors=True)


def _remove_orphaned_ray_dirs() -> None:
    """Remove the temporary directories of local Rays whose owner process is gone (a run killed with SIGKILL, which
    no handler sees). A directory without an owner file is left alone: it may be another run's, just made."""
    import glob
    import shutil

    for path in glob.glob(os.path.join(tempfile.gettempdir(), _RAY_DIR_PREFIX + "*")):
        try:
            with open(os.path.join(path, _OWNER_FILE)) as f:
                owner = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if owner != os.getpid() and not os.path.exists(f"/proc/{owner}"):
            shutil.rmtree(path, ignore_errors=True)


# --- driver-side rows, params, artifacts -----------------------------------------------------------------------


def task_params(config: JobConfig) -> dict:
    """The task options as a dict (what rows and MLflow record). Raises JobError for unknown or invalid options."""
    try:
        options = TASKS[config.job].options(config)
        options.validate()  # again: a task may set options after building them
        return dataclasses.asdict(options)
    except (TypeError, ValueError) as exc:
        raise JobError(f"invalid task options: {exc}") from None


def _error_rows(config: JobConfig, errors: list[dict], run_id: str, params: dict) -> pa.Table:
    task = TASKS[config.job]
    rows = []
    for e in errors:
        row = {**e, "status": "error", "seed": None}
        rows.append(task.output_row(row, None, config, params, {"run_id": run_id}))
    return S.rows_to_table(rows, task.schema())


def _light_columns(task) -> list[str]:
    return [n for n in task.schema().names if n not in ("audio", "segments", "global_tokens", "semantic_tokens",
                                                         "source_semantic_tokens")]


def _first(table: pa.Table | None, column: str):
    if table is None:
        return None
    for value in table.column(column).to_pylist():
        if value:
            return value
    return None


def job_params(config: JobConfig, inputs: InputRows, model_source: str, model_hash: str, run_id: str,
               options: dict) -> dict:
    """MLflow params: what determines the results, URIs without credentials."""
    params = {
        "job": config.job, "run_id": run_id, "model_source": storage.redact_uri(model_source),
        "model_hash": model_hash, "input": storage.redact_uri(config.input),
        "output": storage.redact_uri(config.output),
        "input_convention": inputs.convention, "glob": config.glob or "", "batch_size": config.batch_size,
        "bucket_batches": config.bucket_batches, "actors_min": config.actors[0], "actors_max": config.actors[1],
        "gpus_per_actor": config.gpus_per_actor,
        "cpus_per_actor": config.cpus_per_actor, "retry_errors": config.retry_errors, "seed": config.seed,
        "limit": config.limit if config.limit is not None else "", "audio_storage": config.audio_storage,
        "max_duration_s": config.max_duration_s, "quality": config.quality,
    }
    if config.job == "synthesize":
        params.update(keep_max_cer=config.keep_max_cer, keep_min_similarity=config.keep_min_similarity)
    params.update({f"options.{k}": v for k, v in options.items()})
    return params


def redacted_config(config: JobConfig) -> dict:
    values = config.to_dict()
    for key in ("input", "output", "model", "reference", "mlflow_uri", "cache_dir"):
        if values.get(key):
            values[key] = storage.redact_uri(values[key])
    values["actors"] = f"{config.actors[0]}:{config.actors[1]}"
    return values


def _artifacts(config: JobConfig, new_files: list[str], light: pa.Table | None) -> dict[str, bytes]:
    import yaml

    artifacts = {"config.yaml": yaml.safe_dump(redacted_config(config), sort_keys=False).encode(),
                 "errors.json": json.dumps(error_summary(light), indent=1).encode()}
    samples, n = [], 0
    for uri in new_files:
        if n >= config.samples:
            break
        table = read_parquet(uri)
        for row in table.filter(pc.equal(table.column("status"), "ok")).slice(0, config.samples - n).to_pylist():
            n += 1
            flac = _sample_audio(row.pop("audio", None))
            if flac:
                name = storage.safe_name(row["id"], ".flac")
                artifacts[f"samples/{name}"] = flac
                row["audio_file"] = name
            for key in ("global_tokens", "semantic_tokens", "source_semantic_tokens"):
                if row.get(key) is not None:
                    row[key] = f"{len(row[key])} tokens"
            samples.append(row)
    artifacts["samples/samples.json"] = json.dumps(samples, indent=1, default=str, ensure_ascii=False).encode()
    return artifacts


def _sample_audio(audio: dict | None) -> bytes | None:
    """A sample row's FLAC: inline bytes, or the object it was written to (``--audio-storage objects``)."""
    if not audio:
        return None
    if audio.get("bytes"):
        return audio["bytes"]
    if audio.get("path"):
        try:
            return storage.read_bytes(audio["path"])
        except Exception as exc:  # a sample is a convenience: the run's results are already committed
            log.warning("sample audio %s not logged: %s", storage.redact_uri(audio["path"]), type(exc).__name__)
    return None
