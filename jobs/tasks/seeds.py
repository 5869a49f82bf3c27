"""Per-row seeds: a row's output never depends on which batch it lands in, in which order, or in which run."""

from __future__ import annotations

import hashlib


def row_seed(job_seed: int, row_id: str, explicit: int | None) -> int:
    """A row's seed: its own, else derived from the job seed and its id."""
    if explicit is not None:
        return int(explicit)
    digest = int(hashlib.sha256(row_id.encode("utf-8", "surrogatepass")).hexdigest()[:12], 16)
    return (int(job_seed) * 1_000_003 + digest) % (2**31 - 1)
