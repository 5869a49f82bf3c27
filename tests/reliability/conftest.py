"""Real services for the reliability tests, started once for the package and stopped after it.

- ``s3``: moto's S3 server behind a :class:`FlakyEndpoint` (the endpoint the jobs use, which tests take down);
  the standard AWS environment points at the endpoint while the package runs.
- ``ray_runtime``: a local Ray runtime (2 CPUs) whose workers carry the fault hook of ``faults.py`` (dormant
  unless a test arms it). Only this runtime is ever shut down: never ``ray stop``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import report
from .faults import FAULTS_ENV, FlakyEndpoint, MotoServer
from .helpers import CANARY_ENV

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))  # jobs_helpers

AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN",
           "AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS")


@dataclass
class S3:
    moto: MotoServer
    endpoint: FlakyEndpoint

    def client(self):
        """A client that talks to moto directly (the tests' observer: unaffected by endpoint outages)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.moto.url, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="package", autouse=True)
def reliability_report(tmp_path_factory):
    """Where this run's measurements go (kept unless GPA_RELIABILITY_REPORT names a file)."""
    if os.environ.get(report.REPORT_ENV):
        yield Path(os.environ[report.REPORT_ENV])
        return
    path = tmp_path_factory.getbasetemp() / "reliability-report.jsonl"
    os.environ[report.REPORT_ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(report.REPORT_ENV, None)


@pytest.fixture(scope="package")
def s3():
    moto = MotoServer().start()
    endpoint = FlakyEndpoint(moto.port)
    endpoint.up()
    # the S3 client retries with backoff: the standard mode's 4 attempts (1 + 3 retries, ~3 s in all when the
    # endpoint stays down), set the standard way
    values = {"AWS_ENDPOINT_URL": endpoint.url, "AWS_DEFAULT_REGION": "us-east-1", **CANARY_ENV,
              "AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "4"}
    try:
        with pytest.MonkeyPatch.context() as env:
            for key in AWS_ENV:
                env.delenv(key, raising=False)  # nothing of the caller's AWS setup leaks in
            for key, value in values.items():
                env.setenv(key, value)
            yield S3(moto, endpoint)
    finally:
        endpoint.close()
        moto.stop()


@pytest.fixture(scope="package")
def faults_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@dataclass
class RayRuntime:
    address: str
    temp_dir: Path  # its session directory holds every worker's log


@pytest.fixture(scope="package")
def ray_runtime(s3, faults_dir):
    import ray

    if ray.is_initialized():  # another package's runtime: never ours to reuse or stop
        pytest.skip("a Ray runtime is already initialised in this process")
    temp = Path(tempfile.mkdtemp(prefix="gpa-rel-ray-"))
    # the AWS environment reaches the workers by inheritance (as on a real node), not through the runtime env
    env_vars = {FAULTS_ENV: str(faults_dir)}
    env_vars["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(temp),
                       runtime_env={"env_vars": env_vars,
                                    "worker_process_setup_hook": "reliability.faults.install_worker_faults"})
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield RayRuntime(context.address_info["address"], temp)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture()
def mlflow_uri(tmp_path) -> str:
    """A fresh sqlite MLflow store (a copy of one migrated once per session: migrating takes ~15 s)."""
    from jobs_helpers import migrated_mlflow_db

    return f"sqlite:///{migrated_mlflow_db(tmp_path / 'mlflow' / 'mlflow.db')}"


@pytest.fixture(scope="package")
def long_flac(tmp_path_factory) -> Path:
    """The 2-hour FLAC (8 kHz mono, quiet noise with pauses) shared by the corpus and the long-file scenario."""
    from .make_bad_inputs import write_long_flac

    return write_long_flac(tmp_path_factory.mktemp("long") / "two_hours.flac")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the heaviest reliability scenarios (deselect with -m 'not slow')")
