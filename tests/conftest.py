"""Shared fixtures: random checkpoints in the official layout, built once per test session."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    # Tiny models on a 2-core machine: intra-op threads cost far more in synchronisation than they gain
    # (measured 10-20x slower per generation step with 2 threads while other processes run).
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from gpa.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0, arch="qwen3", size="tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    from gpa.model import GPA

    return GPA.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="session")
def tiny_alt_model(tmp_path_factory):
    """A Qwen2 decoder (the other architecture the static engine supports)."""
    from gpa.model import GPA
    from gpa.testing import make_tiny_checkpoint

    return GPA.from_pretrained(make_tiny_checkpoint(tmp_path_factory.mktemp("alt") / "c", 1, arch="qwen2",
                                                    size="tiny-alt"))


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on 127.0.0.1, with the standard AWS environment pointing at it.

    Yields the endpoint URL; the server is stopped after the session.
    """
    import re
    import subprocess
    import sys
    import threading
    import time

    env = dict(os.environ)
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    endpoint, deadline = None, time.time() + 30
    while endpoint is None and time.time() < deadline:
        line = process.stdout.readline()
        match = re.search(r"Running on (http://127\.0\.0\.1:\d+)", line)
        if match:
            endpoint = match.group(1)
    if endpoint is None:
        process.kill()
        raise RuntimeError("moto server did not start")
    # the server logs every request: once a pipe nobody reads is full (64 KiB), its next write blocks and every
    # later request times out
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
    try:
        with pytest.MonkeyPatch.context() as env:
            for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
                env.setenv(key, value)
            yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture()
def s3_bucket(s3_server):
    """A fresh, empty bucket on the test S3 server; yields its name."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def ray_address(s3_server):
    """A local Ray runtime for one test module (started after the S3 server, so its workers see the AWS env)."""
    import ray

    temp = tempfile.mkdtemp(prefix="gpa-batch-test-ray-")
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield context.address_info["address"]
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
