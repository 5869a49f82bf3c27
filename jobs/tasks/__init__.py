"""The registry of tasks: each task is one module (``jobs/tasks/<name>.py``) and its name in the line below.

Manifest validation, the CLI subcommands and their help, the output schemas, the metrics and the docs' task table
are derived from it. Task names are ours everywhere in code, outputs and docs; GPA training manifests' names (stt,
tts-a, vc, ...) are accepted on input only (:func:`task_of_manifest_name`).
"""

from __future__ import annotations

import importlib

import pyarrow as pa

from jobs.io import schema as S
from jobs.tasks.base import WAV_COLUMNS, WORK_COMMON, Task, VoiceTask, mark_error

__all__ = ["TASKS", "WAV_COLUMNS", "Task", "VoiceTask", "get_task", "mark_error", "register",
           "task_of_manifest_name", "work_schema"]

TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add ``task`` to the registry (its name and its training-manifest names must be new)."""
    if not task.name or task.name in TASKS:
        raise ValueError(f"task name {task.name!r} is empty or taken")
    taken = {n for t in TASKS.values() for n in t.manifest_names}
    if taken & set(task.manifest_names):
        raise ValueError(f"training-manifest names {sorted(taken & set(task.manifest_names))} are taken")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The task called ``name``; a ValueError naming the tasks there are otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown job {name!r}; choose one of {', '.join(TASKS)}") from None


def task_of_manifest_name(name: str) -> Task | None:
    """The task a GPA training manifest's ``task`` value names (case and spaces ignored), else None."""
    key = str(name).strip().lower()
    return next((t for t in TASKS.values() if key in t.manifest_names), None)


def work_schema() -> pa.Schema:
    """The columns work rows carry between the stages: every task's (a column two tasks share has one type)."""
    fields = {f.name: f for f in WORK_COMMON}
    for task in TASKS.values():
        for f in task.work_fields:
            if fields.setdefault(f.name, f).type != f.type:
                raise TypeError(f"work column {f.name} has two types: {fields[f.name].type} and {f.type}")
    return pa.schema([*fields.values(), *(pa.field(n, S.WAV) for n in WAV_COLUMNS)])


# the task modules of this package, each with its ``TASK``: adding a task adds its module's name here
for _module in ("transcribe", "synthesize", "convert"):
    register(importlib.import_module(f"{__name__}.{_module}").TASK)
