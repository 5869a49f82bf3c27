"""Shared fixtures: random checkpoints in the official layout, built once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from gpa.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0, arch="qwen3", size="tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    from gpa.model import GPA

    return GPA.from_pretrained(tiny_checkpoint)
