"""Checks a job passes before Ray starts, in seconds, and the plan ``--dry-run`` prints.

The model source resolves and its configurations and weight headers read (no load), the output can be written
(and is not a file), the input exists and its columns can serve the job. Each failure is a :class:`JobError` of one
line that says what, where and what to do. Nothing here writes anything; neither torch nor Ray is imported.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from gpa.checkpoint_files import CheckpointSummary, inspect_local, inspect_s3, is_hf_repo_id
from gpa.errors import CheckpointError
from gpa.storage import nearest_existing, s3_endpoint
from jobs.config import JobConfig
from jobs.io import storage
from jobs.io.manifest import check_columns
from jobs.run.errors import JobError

# a bad endpoint must fail the check in seconds: botocore's defaults wait 60 s per try, and retry
S3_CONNECT_TIMEOUT_S = 2.0
S3_READ_TIMEOUT_S = 5.0
S3_ATTEMPTS = 2
HUB_TIMEOUT_S = 5.0


@dataclass
class Preflight:
    model: CheckpointSummary | None  # None: a source checked only when an actor loads it (a Hub id, gs://)


def preflight(config: JobConfig) -> Preflight:
    """Check the output, the input and the model of ``config`` (in that order: cheapest first)."""
    s3 = _S3Clients()
    check_output(config.output, s3)
    check_output_free(config)
    check_input(config, s3)
    return Preflight(model=check_model(config.model, config.cache_dir, s3))


def check_output(uri: str, s3: _S3Clients) -> None:
    """The output is a directory (or can be made one) this process may write into, or an S3 prefix in a bucket
    that answers."""
    where = storage.redact_uri(uri)
    if _is_s3(uri):
        s3.bucket(uri, "--output")
        return
    if storage.is_uri(uri):  # another store: its client reports problems when the run writes
        return
    path = storage.normalize(uri)
    if os.path.exists(path) and not os.path.isdir(path):
        raise JobError(f"--output {where} is a file; give a directory (it is made if missing)")
    existing = nearest_existing(path)
    if not os.path.isdir(existing):
        raise JobError(f"--output {where}: {existing} is a file, so the directory cannot be made; choose another "
                       "--output")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise JobError(f"--output {where}: no permission to write in {existing}; choose another --output")


def check_output_free(config: JobConfig) -> None:
    """What :func:`jobs.pipeline.run_job` checks again when it starts, read-only here: the output holds no other
    job's results, no live run holds it, and it is not a folder of other files a run would replace."""
    from jobs.io.output import OutputRefused, OutputStore

    store = OutputStore(config.output)
    try:
        previous = store.load().job
        if previous and previous != config.job:
            raise JobError(f"{storage.redact_uri(store.uri)} holds {previous} results; use another --output")
        store.check_free("preflight", config.takeover)
        store.check_ours()
    except OutputRefused as exc:
        raise JobError(str(exc)) from None
    except ValueError as exc:  # a commit file that is not ours
        raise JobError(f"--output {exc}") from None


def check_input(config: JobConfig, s3: _S3Clients) -> None:
    """The input exists and, for a manifest, its first rows carry the fields the job needs."""
    where = storage.redact_uri(config.input)
    # a manifest may be readable with s3:GetObject alone, which HeadBucket does not take: its read says what fails
    if _is_s3(config.input) and config.glob:
        s3.bucket(config.input, "--input")
    if config.reference and not storage.is_uri(config.reference) and not os.path.isfile(
            storage.normalize(config.reference)):  # every row without its own reference would become an error row
        raise JobError(f"--reference {config.reference}: no such file")
    if config.glob:
        if not storage.is_uri(config.input) and not os.path.isdir(storage.normalize(config.input)):
            raise JobError(f"--input {where}: no such directory to list (--glob {config.glob!r})")
        return
    check_columns(config.job, config.input, input_format=config.input_format, field_map=config.field_map,
                  reference=config.reference, convention=config.convention)  # InputError: says which input


def check_model(source: str, cache_dir: str | None, s3: _S3Clients) -> CheckpointSummary | None:
    """The checkpoint's configurations and weight headers read, wherever it is."""
    where = storage.redact_uri(source)
    try:
        if _is_s3(source):
            client = s3.bucket(source, "--model")
            try:
                return inspect_s3(source, client)
            except CheckpointError:
                raise
            except Exception as exc:
                raise JobError(s3.failure("--model", source, exc)) from None
        if storage.is_uri(source):
            return None
        if is_hf_repo_id(source):
            return _check_hub(source, cache_dir)
        if not os.path.exists(os.path.expanduser(source.removeprefix("file://"))):
            raise JobError(f"--model {where}: no such directory (nor an s3:// prefix or a Hugging Face repo id "
                           "owner/name)")
        return inspect_local(source)
    except CheckpointError as exc:
        raise JobError(f"--model {exc}") from None


def _check_hub(repo_id: str, cache_dir: str | None) -> CheckpointSummary | None:
    """A Hub checkpoint in the local cache is checked like a directory; one not in it must at least exist on a Hub
    that answers (the actors download it)."""
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True)
    except Exception:  # not cached (or only partly): the Hub decides
        pass
    else:
        return inspect_local(local)
    advice = ("without a network, download it elsewhere and pass the local directory or an s3:// copy as "
              "--model")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise JobError(f"--model {repo_id}: not in the Hugging Face cache and HF_HUB_OFFLINE is set; {advice}")
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(repo_id, timeout=HUB_TIMEOUT_S)
    except Exception as exc:
        raise JobError(f"--model {repo_id}: not in the Hugging Face cache and the Hub did not answer "
                       f"({type(exc).__name__}); {advice}") from None
    return None


def _is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


class _S3Clients:
    """One botocore client with short timeouts and few retries (the run's own clients keep their patient
    defaults); each bucket is asked once."""

    def __init__(self):
        self._client = None
        self._checked: set[str] = set()

    def client(self):
        if self._client is None:
            import botocore.session
            from botocore.config import Config

            config = Config(connect_timeout=S3_CONNECT_TIMEOUT_S, read_timeout=S3_READ_TIMEOUT_S,
                            retries={"max_attempts": S3_ATTEMPTS, "mode": "standard"})
            self._client = botocore.session.get_session().create_client("s3", endpoint_url=s3_endpoint(),
                                                                        config=config)
        return self._client

    def bucket(self, uri: str, flag: str):
        """The client, once the bucket of ``uri`` answers; else a :class:`JobError` that says why."""
        bucket = uri.split("://", 1)[1].split("/", 1)[0]
        client = self.client()
        if bucket not in self._checked:
            try:
                client.head_bucket(Bucket=bucket)
            except Exception as exc:
                raise JobError(self.failure(flag, uri, exc)) from None
            self._checked.add(bucket)
        return client

    @staticmethod
    def failure(flag: str, uri: str, exc: Exception) -> str:
        from botocore.exceptions import ClientError, NoCredentialsError

        where = f"{flag} {storage.redact_uri(uri)}"
        bucket = uri.split("://", 1)[1].split("/", 1)[0]
        if isinstance(exc, NoCredentialsError):
            return f"{where}: no AWS credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile)"
        if isinstance(exc, ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = exc.response.get("Error", {}).get("Code")
            if status == 404 or code in ("NoSuchBucket", "404"):
                return f"{where}: bucket {bucket!r} does not exist; create it or choose another {flag}"
            if status == 403 or code in ("AccessDenied", "403"):
                return f"{where}: access to bucket {bucket!r} denied; check the AWS credentials and the bucket policy"
            return f"{where}: the store answered {code or status}; check the bucket and the credentials"
        endpoint = storage.redact_uri(s3_endpoint() or "the AWS S3 endpoint")
        return (f"{where}: cannot reach {endpoint} ({type(exc).__name__}); check AWS_ENDPOINT_URL and the network, "
                "then rerun")


# --- --dry-run ---------------------------------------------------------------------------------------------------


def dry_run_plan(config: JobConfig, checked: Preflight) -> dict:
    """What the job would do: rows to process (after resume and --limit), the audio hours they hold (estimated from
    durations in the manifest, else from local file sizes), model calls, and the resources it would ask Ray for.
    Reads the input and the output's committed rows; writes nothing and starts nothing."""
    import numpy as np

    from jobs.io.manifest import load_inputs
    from jobs.io.output import OutputStore
    from jobs.run.cluster import cluster_resources
    from jobs.run.plan import plan_run, with_local_sizes
    from jobs.stages import model_stages
    from jobs.tasks import get_task

    inputs = load_inputs(config.job, config.input, glob=config.glob, input_format=config.input_format,
                         field_map=config.field_map, reference=config.reference,
                         max_text_chars=config.max_text_chars, convention=config.convention,
                         skip_other_tasks=config.skip_other_tasks, allow_empty=config.allow_empty)
    config = config.for_cluster(*cluster_resources(config))
    plan = plan_run(config, inputs, OutputStore(config.output))
    todo = plan.todo
    task = get_task(config.job)
    plan_info: dict = {"job": config.job, "input": storage.redact_uri(config.input),
                       "output": storage.redact_uri(config.output), "input_rows": inputs.total,
                       "invalid_rows": len(plan.invalid), "already_done": plan.already_done,
                       "to_process": todo.num_rows, "left_by_limit": plan.cut}
    if not task.audio_fields:  # its rows are measured in text (Task.lengths)
        plan_info["text_characters"] = int(task.lengths(todo).sum())
    else:
        lengths = task.lengths(todo)
        lengths = task.lengths(with_local_sizes(todo, lengths == 0)) if not lengths.all() else lengths
        plan_info["audio_hours_estimated"] = round(float(lengths.sum()) / 3600, 3)
        plan_info["rows_without_length"] = int(np.count_nonzero(lengths == 0))
    plan_info.update({
        "batch_size": config.batch_size, "model_calls": math.ceil(todo.num_rows / config.batch_size),
        "actor_calls": math.ceil(todo.num_rows / config.window_rows),
        "actors": f"{config.actors[0]}:{config.actors[1]}", "gpus_per_actor": config.gpus_per_actor,
        "cpus_per_actor": config.cpus_per_actor, "memory_per_actor_mb": config.memory_per_actor_mb,
        "model_stages": ", ".join(m.describe(config) for m in model_stages(config)),
        "cpus_per_task": config.cpus_per_task, "memory_per_task_mb": config.memory_per_task_mb,
        "ray": os.environ.get("RAY_ADDRESS") or "local (started for the job)",
        "model": storage.redact_uri(config.model),
    })
    if checked.model is not None:
        plan_info["model_parameters"] = sum(checked.model.parameters.values())
    return plan_info


def format_plan(plan: dict) -> str:
    lines = [f"gpa-batch {plan['job']} --dry-run: nothing was started or written"]
    lines += [f"  {key.replace('_', ' '):<22}{value}" for key, value in plan.items() if key != "job"]
    return "\n".join(lines)
