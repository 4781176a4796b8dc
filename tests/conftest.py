"""Shared test setup: no network, W&B offline, small thread counts."""

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture
def sweep_env(tmp_path):
    """Environment for a sweep subprocess: offline W&B, no cluster address, no user key,
    and a private Ray temp dir (short: Ray's socket paths must stay under 108 bytes)."""
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "RAY_"))}
    env.update(WANDB_MODE="offline", WANDB_DIR=str(tmp_path), HOME=str(tmp_path),
               PYTHONPATH=str(ROOT), RAY_TMPDIR=ray_tmp)
    yield env
    shutil.rmtree(ray_tmp, ignore_errors=True)


def free_port() -> int:
    """A free TCP port on localhost, for a gloo process group in tests."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_when_running(pattern: str, delay: float = 0.3, timeout: float = 60.0):
    """Start a thread that SIGKILLs, for real, the first process whose command line holds
    `pattern` (e.g. a Ray actor's `ray::AttackWorker.run`), `delay` s after it appears, so
    mid-work. Returns the thread and the list that receives the killed pid."""
    import os
    import signal
    import threading
    import time

    import psutil

    killed: list[int] = []

    def kill() -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if pattern in " ".join(proc.info["cmdline"] or []):
                    time.sleep(delay)
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread, killed
