"""What the Ray cluster a job runs on offers (its GPUs, the CPUs of its nodes)."""

from __future__ import annotations

import os

from jobs.config import JobConfig


def on_cluster() -> bool:
    """Whether this job runs on a Ray cluster it connected to (not one it started, not before Ray is up)."""
    import ray

    return bool(os.environ.get("RAY_ADDRESS")) and ray.is_initialized()


def cluster_resources(config: JobConfig) -> tuple[float, float]:
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
