"""Small helpers shared by the reliability tests."""

from __future__ import annotations

import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples"
AUDIO = EXAMPLES / "audio"

# Canary credentials: every job of this package runs with them (moto accepts any), and test_security.py checks that
# they never reach a log, an MLflow store, an error message or a Parquet file.
CANARY = f"gpacanary{uuid.uuid4().hex[:12]}"
CANARY_ENV = {"AWS_ACCESS_KEY_ID": "AKIAGPABATCHTEST", "AWS_SECRET_ACCESS_KEY": f"{CANARY}secretkey",
              "AWS_SESSION_TOKEN": f"{CANARY}sessiontoken"}


def small_config(job: str, manifest, output, model, mlflow_uri, **overrides):
    """A job config sized for this machine: tiny batches, a handful of generated tokens."""
    from jobs.config import JobConfig

    values = dict(job=job, input=str(manifest), output=str(output), model=str(model), mlflow_uri=mlflow_uri,
                  batch_size=2, bucket_batches=2, rows_per_part=4, options={"max_new_tokens": 4}, quality=False,
                  samples=1)
    values.update(overrides)
    return JobConfig(**values)
