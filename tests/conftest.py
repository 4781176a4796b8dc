"""Shared test setup: no network, W&B offline, small thread counts."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture
def sweep_env(tmp_path):
    """Environment for a sweep subprocess: offline W&B, no cluster address, no user key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "RAY_"))}
    env.update(WANDB_MODE="offline", WANDB_DIR=str(tmp_path), HOME=str(tmp_path),
               PYTHONPATH=str(ROOT), RAY_TMPDIR=str(tmp_path / "ray"))
    return env
