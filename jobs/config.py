"""The settings of one job run: what the CLI flags and the ``--config`` YAML file fill in."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from jobs.tasks import TASKS, get_task

JOBS = tuple(TASKS)  # the registered tasks (jobs.tasks)

# Items per model call when --batch-size is not given. On a GPU, decoding steps cost about the same for 8 rows as
# for 128 (kernel launches, not arithmetic, bound them): an H200 transcribed 4.9 clips/s in batches of 8, 26.5 in
# batches of 64 and 40 in batches of 128 (docs/jobs.md).
CPU_BATCH_SIZE = 8
GPU_BATCH_SIZE = 256  # the static engine sizes its KV cache from the card's free memory


@dataclass
class JobConfig:
    job: str
    input: str
    output: str
    model: str
    # input
    glob: str | None = None  # list files under --input instead of reading a manifest
    input_format: str = "auto"  # auto | jsonl | csv | parquet
    convention: str = "auto"  # auto | canonical | gpa | nemo (jobs.io.manifest.CONVENTIONS)
    skip_other_tasks: bool = False  # GPA training manifests: leave other jobs' rows out (else they are error rows)
    allow_empty: bool = False  # an input without rows ends as an empty, complete job instead of being refused
    field_map: dict[str, str] = field(default_factory=dict)  # our field -> the manifest's column
    reference: str | None = None  # default reference audio for rows without one (synthesize, convert)
    limit: int | None = None  # process at most this many pending rows (the rest stay pending)
    # pool and batching
    # None: 1:N where N actors fill the cluster's GPUs (GPUs / GPUs per actor); 1:1 on CPUs, where each actor holds
    # a full model copy in memory
    actors: tuple[int, int] | None = None
    # items per model call (the task options' batch_size: LLM batches, round-trip ASR); None: GPU_BATCH_SIZE when
    # actors have a GPU, else CPU_BATCH_SIZE. Each actor call takes batch_size * bucket_batches rows (window_rows).
    batch_size: int | None = None
    # clips per speech-encoder call (GLM tokenizer, BiCodec); None: their own defaults (32, 16): the encoders hold a
    # whole batch's activations at once, so LLM-sized batches of long clips would not fit a card
    encoder_batch_size: int | None = None
    bucket_batches: int = 4  # each actor call sorts batch_size * bucket_batches rows by length first
    # fused: one actor pool runs GPA whole; split: tokenize, generate and detokenize run in actor pools of their own
    # (token ids between them), sharing each actor's GPU share (docs/architecture.md)
    stages: str = "fused"
    # float32 (exact, the default) or bfloat16: the speech encoders under bf16 autocast, GPU actors only (their bf16
    # convolutions are wrong on CPUs); tokens can differ from float32's (benchmarks/encoder_agreement.py)
    encoder_precision: str = "float32"
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    # None: 1 with a GPU (its decoding loop keeps a core busy), else 0.5 (<= 0.5 on small machines, or the CPU
    # stages starve)
    cpus_per_actor: float | None = None
    cpus_per_task: float = 0.5  # decode/encode tasks
    memory_per_task_mb: int = 512  # memory reserved per decode/encode task
    memory_per_actor_mb: int = 0  # memory reserved per model actor (0: none; Ray then packs actors by CPU/GPU only)
    device: str | None = None  # None: cuda when the actor has a GPU, else cpu
    dtype: str | None = None  # None: bfloat16 on cuda, float32 on cpu
    torch_threads: int | None = None
    cache_dir: str | None = None
    # task
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # TranscribeOptions / SynthesizeOptions / ConvertOptions
    max_duration_s: float = 3600.0  # longer inputs become error rows (too_long_audio)
    max_input_mb: float = 2048.0  # larger audio files (and references) become error rows, unread (unreadable_audio)
    max_text_chars: int = 20_000
    quality: bool = True  # synthesize: round-trip ASR + speaker similarity; convert: similarities
    keep_max_cer: float = 0.5
    keep_min_similarity: float = 0.5
    keep_tokens: bool = False  # a transcribe setting: rows keep their GLM and semantic token ids
    rows_per_part: int | None = 1000  # rows per Parquet part (also the unit of work a killed run can lose)
    audio_storage: str = "inline"  # inline: FLAC bytes in the Parquet; objects: FLAC files under <output>/audio/
    # resume
    retry_errors: bool = False
    mode: str = "resume"  # resume | redo | new: a rerun into rows of another model or settings (jobs.run.resume)
    takeover: bool = False  # take the output from a run whose lease has not expired (it is known to be dead)
    # tracking
    mlflow_uri: str | None = None
    experiment: str | None = None  # default: gpa-batch-<job>
    run_name: str | None = None
    samples: int = 3  # sample outputs logged as MLflow artifacts
    # testing aid: sleep this long in every model call (to interrupt a run in tests)
    debug_delay_s: float = 0.0

    def __post_init__(self) -> None:
        get_task(self.job)  # an unknown job is a ValueError naming the tasks
        if isinstance(self.actors, (list, tuple)):
            self.actors = (int(self.actors[0]), int(self.actors[1]))
        elif self.actors is not None:
            self.actors = parse_actors(str(self.actors))
        if self.actors is not None:
            lo, hi = self.actors
            if lo < 1 or hi < lo:
                raise ValueError(f"--actors must be MIN:MAX with 1 <= MIN <= MAX, got {lo}:{hi}")
        # (name, value, lowest allowed, whole numbers only); 0 threads means torch's default, 0 MB no reservation
        for name, value, low, whole in (
                ("batch_size", self.batch_size, 1, True), ("encoder_batch_size", self.encoder_batch_size, 1, True),
                ("bucket_batches", self.bucket_batches, 1, True),
                ("limit", self.limit, 0, True), ("rows_per_part", self.rows_per_part, 1, True),
                ("samples", self.samples, 0, True), ("memory_per_task_mb", self.memory_per_task_mb, 0, True),
                ("memory_per_actor_mb", self.memory_per_actor_mb, 0, True),
                ("torch_threads", self.torch_threads, 0, True), ("max_text_chars", self.max_text_chars, 1, True),
                ("gpus_per_actor", self.gpus_per_actor, 0, False), ("cpus_per_actor", self.cpus_per_actor, 0, False),
                ("cpus_per_task", self.cpus_per_task, 0, False), ("debug_delay_s", self.debug_delay_s, 0, False),
                ("keep_max_cer", self.keep_max_cer, 0, False),
                ("keep_min_similarity", self.keep_min_similarity, -1, False)):
            kind = numbers.Integral if whole else numbers.Real
            if value is not None and (isinstance(value, bool) or not isinstance(value, kind) or not value >= low
                                      or not math.isfinite(value)):  # NaN fails >= too
                raise ValueError(f"--{name.replace('_', '-')} must be {'a whole number' if whole else 'a number'} "
                                 f">= {low}, got {value!r}")
        if isinstance(self.max_duration_s, bool) or not isinstance(self.max_duration_s, numbers.Real) \
                or not self.max_duration_s > 0 or not math.isfinite(self.max_duration_s):
            raise ValueError(f"--max-duration-s must be a number above 0, got {self.max_duration_s!r}")
        for f in dataclasses.fields(self):  # the text settings, by their annotations
            value = getattr(self, f.name)
            if f.type in ("str", "str | None") and value is not None and not isinstance(value, str):
                # a YAML value that read as a number, say
                raise ValueError(f"--{f.name.replace('_', '-')} must be text, got {value!r} (quote it in YAML)")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in sorted({s for t in TASKS.values() for s in t.task_settings}):
            if getattr(self, name) != defaults[name] and name not in get_task(self.job).task_settings:
                owners = [t for t in TASKS.values() if name in t.task_settings]
                raise ValueError(f"--{name.replace('_', '-')} is a setting of {', '.join(t.name for t in owners)}, "
                                 f"not of {self.job}: {owners[0].task_settings[name]}")
        if self.encoder_precision not in ("float32", "bfloat16"):
            raise ValueError(f"--encoder-precision must be float32 or bfloat16, got {self.encoder_precision!r}")
        if self.stages not in ("fused", "split"):
            raise ValueError(f"--stages must be fused or split, got {self.stages!r}")
        if self.audio_storage not in ("inline", "objects"):
            raise ValueError("--audio-storage must be inline or objects")
        if self.mode not in ("resume", "redo", "new"):
            raise ValueError(f"--mode must be resume, redo or new, got {self.mode!r}")
        if self.input_format not in ("auto", "jsonl", "csv", "parquet"):
            raise ValueError("--format must be auto, jsonl, csv or parquet")
        if self.convention not in ("auto", "canonical", "gpa", "nemo"):
            raise ValueError("--convention must be auto, canonical, gpa or nemo")
        if isinstance(self.max_input_mb, bool) or not isinstance(self.max_input_mb, numbers.Real) \
                or not self.max_input_mb > 0 or not math.isfinite(self.max_input_mb):
            raise ValueError(f"--max-input-mb must be a number above 0, got {self.max_input_mb!r}")

    def for_cluster(self, cluster_gpus: float, cluster_cpus: float | None = None) -> JobConfig:
        """This config with the defaults that depend on the cluster filled in: GPUs per actor (1 when the cluster
        has a GPU, else 0), the pool's size (up to as many actors as the cluster's GPUs hold), and the batch size
        and CPUs per actor for the device the actors will run on (at most half a CPU where an actor's node has 2
        CPUs or fewer, GPU actors too: the read and decode tasks need the rest). ``cluster_gpus``: the GPUs of the
        whole cluster; ``cluster_cpus``: the CPUs of its smallest node that can hold an actor."""
        wants_gpu = self.device is None or self.device.startswith("cuda")
        gpus = self.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if cluster_gpus >= 1 and wants_gpu else 0.0
        on_gpu = gpus > 0 and wants_gpu
        batch = self.batch_size or (GPU_BATCH_SIZE if on_gpu else CPU_BATCH_SIZE)
        cpus = self.cpus_per_actor
        if cpus is None:
            cpus = 1.0 if gpus > 0 and (cluster_cpus is None or cluster_cpus > 2) else 0.5
        actors = self.actors
        if actors is None:
            # Ray Data starts one and adds actors while input waits, up to what the GPUs hold
            actors = (1, max(1, int(cluster_gpus / gpus + 1e-6))) if on_gpu else (1, 1)
        return dataclasses.replace(self, gpus_per_actor=gpus, batch_size=batch, cpus_per_actor=cpus, actors=actors)

    def model_dtype(self, device: str) -> str:
        """The model's dtype on ``device``: ``dtype`` when given, else bfloat16 on CUDA and float32 on a CPU."""
        return self.dtype or ("bfloat16" if device.startswith("cuda") else "float32")

    @property
    def max_input_bytes(self) -> int:
        return int(self.max_input_mb * 2**20)

    @property
    def window_rows(self) -> int:
        """Rows per actor call: the model sorts them by length and runs them in batches of ``batch_size``."""
        if self.batch_size is None:
            raise ValueError("the batch size depends on the cluster: use for_cluster() first")
        return self.batch_size * self.bucket_batches

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> JobConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)


def parse_actors(text: str) -> tuple[int, int]:
    """``"2"`` -> (2, 2); ``"1:4"`` -> (1, 4)."""
    try:
        if ":" in text:
            lo, hi = text.split(":", 1)
            return int(lo), int(hi)
        return int(text), int(text)
    except ValueError:
        raise ValueError(f"--actors must be N or MIN:MAX, got {text!r}") from None
