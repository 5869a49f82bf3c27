"""Resume keyed to what made the rows: the model and the settings that change a row's result.

Each committed run records its identity (the model's content hash and those settings) in the commit file. A rerun
compares its own with the identity of the last run that recorded one, and ``--mode`` says what to do:

- ``resume`` (default): process the rows without a committed row, only if the model and settings match;
- ``redo``: process every input row again with this model and settings; their new rows supersede the old ones;
- ``new``: only into an output without committed rows (refused otherwise).

Outputs written before identities were recorded are checked on the model only, from their rows' ``model_hash``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from jobs.io import storage
from jobs.tasks import get_task

MODES = ("resume", "redo", "new")
# task options that are not a row's recipe: a row's tokens do not depend on its batch mates nor on the engine
# (equal on a CPU; in bfloat16 on a GPU they differ by rounding only, docs/performance.md), so a rerun on other
# hardware, with another batch size or engine, resumes
NEUTRAL_OPTIONS = ("batch_size", "engine")


class ModelChangedError(RuntimeError):
    """The model actors loaded is not the one that made the output's rows (raised in an actor)."""


def output_settings(config, params: dict) -> dict:
    """The settings of ``config`` that change a row's result (``params``: the task options as a dict)."""
    settings = {k: v for k, v in params.items() if k not in NEUTRAL_OPTIONS}
    settings["dtype"] = config.dtype or "auto"
    settings["encoder_precision"] = config.encoder_precision
    settings.update(get_task(config.job).job_params(config))
    return json.loads(json.dumps(settings, sort_keys=True, default=str))  # as the commit file will hold them


def identity(model_hash: str | None, settings: dict) -> dict:
    return {"model_hash": model_hash or None, "settings": settings}


def recorded_identity(runs: list[dict], read_rows: Callable[[list[str]], pa.Table | None]) -> dict | None:
    """The identity of the output's rows: the last committed run's that recorded one, else (outputs of earlier
    versions) the model hash the committed ok rows share, with no settings to compare. ``read_rows(columns)``
    reads those columns of the committed rows (only for outputs of earlier versions)."""
    for run in reversed(runs):
        if isinstance(run.get("identity"), dict):
            return run["identity"]
    rows = read_rows(["status", "model_hash"])
    if rows is None or rows.num_rows == 0:
        return None
    ok = rows.filter(pc.equal(rows.column("status"), "ok"))
    hashes = sorted(h for h in pc.unique(ok.column("model_hash")).to_pylist() if h)
    return {"model_hash": hashes[-1] if len(hashes) == 1 else None, "settings": None} if hashes else None


_HASHES: dict[tuple, str] = {}  # (directory, its files' sizes and mtimes) -> content hash, for this process


def driver_model_hash(model: str) -> str | None:
    """The content hash of ``model`` when the driver can know it without downloading anything: a local checkpoint
    directory (read once per process). None for object-store prefixes and Hugging Face ids: their actors check."""
    from gpa.checkpoint_files import content_hash

    if storage.is_uri(model) and not model.startswith("file://"):
        return None
    directory = Path(model.removeprefix("file://")).expanduser()
    if not directory.is_dir():
        return None
    key = (str(directory.resolve()), tuple(sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns)
                                                  for p in directory.rglob("*") if p.is_file())))
    if key not in _HASHES:
        _HASHES[key] = content_hash(directory)
    return _HASHES[key]


def check_identity(mode: str, output: str, committed_rows: int, recorded: dict | None, current: dict) -> None:
    """Raise ValueError (one line: what differs, what to do) when ``mode`` forbids this run on this output.
    ``current["model_hash"]`` None: unknown to the driver (the actors check it)."""
    where = storage.redact_uri(output)
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "new":
        if committed_rows:
            raise ValueError(f"--mode new: {where} already holds {committed_rows} rows; choose a new --output, or "
                             f"--mode resume (continue it) or --mode redo (recompute every row)")
        return
    if mode == "redo" or recorded is None or not committed_rows:
        return
    differences = identity_differences(recorded, current)
    if differences:
        raise ValueError(f"{where} holds rows made with {'; '.join(differences)}; pass --mode redo to recompute "
                         f"every row with this run's model and settings, or write to a new --output")


def identity_differences(recorded: dict, current: dict) -> list[str]:
    """What differs between the output's identity and this run's, as ``name X (this run: Y)`` phrases."""
    found = []
    old, new = recorded.get("model_hash"), current.get("model_hash")
    if old and new and old != new:
        found.append(f"model {old[:12]} (this run: {new[:12]})")
    old_settings, new_settings = recorded.get("settings"), current.get("settings")
    if isinstance(old_settings, dict) and isinstance(new_settings, dict):
        for key in sorted(set(old_settings) | set(new_settings)):
            if old_settings.get(key) != new_settings.get(key):
                found.append(f"{key}={_shown(old_settings.get(key))} (this run: {_shown(new_settings.get(key))})")
    return found


def _shown(value) -> str:
    return "unset" if value is None else json.dumps(value) if isinstance(value, str) else str(value)


def check_actor_model(expected: str | None, loaded: str) -> None:
    """Raise :class:`ModelChangedError` in a model actor whose checkpoint is not the one that made the output's rows
    (when the driver could not hash the model itself)."""
    if expected and loaded and loaded != expected:
        raise ModelChangedError(f"the output's rows were made by model {expected[:12]}, this run's is "
                                f"{loaded[:12]}; pass --mode redo to recompute every row with it, or write to a new "
                                f"--output")

