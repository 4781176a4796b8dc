"""How a train loop talks to Ray: one small interface, two implementations.

`TuneSession` runs the loop inside the Tune trial's own process (single CPU worker: no
Ray Train controller, no extra processes). `TrainSession` runs it on a Ray Train
`TorchTrainer` worker (DDP over N workers, GPUs). A loop written against `Session` runs
unchanged on both paths.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workloads.evaluation.examples import EXAMPLES

STATE_FILE = "state.pt"
TRAIN_RUN_PREFIX = "train-"
FINAL_FILE = "final.json"
EXAMPLES_FILE = "examples.parquet"  # the final stage's per-example outputs (`EXAMPLES`)


class Session:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    trial_id: str = ""  # the Tune trial this runs (where the driver records a schedule)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict[str, Any], state: dict | None = None,
               final: dict | None = None) -> None:
        """Report one epoch's metrics; save `state` (and `final` artifacts) as a checkpoint."""
        raise NotImplementedError

    def restore(self) -> tuple[dict | None, dict | None]:
        """The latest checkpoint's (state, final artifacts), or (None, None)."""
        raise NotImplementedError

    def progress(self, text: str) -> None:
        """Say what the trial is doing between reports (e.g. its final stage's step): shown
        on the sweep's console. Only rank 0 speaks; without a board it says nothing."""
        self._say(text)

    _say = staticmethod(lambda text: None)  # a session with a board replaces it


CHECKPOINT_PREFIX = "ckpt-"  # the temporary directories a report's checkpoint is written to


def clean_stale_checkpoint_dirs(root: str | Path | None = None) -> list[Path]:
    """Remove the temporary checkpoint directories (`ckpt-<pid>-*` in the system's temp dir,
    or `root`) whose process is gone: a trial killed while it wrote a checkpoint leaves its
    own behind. A live process's are left alone. Returns what was removed. Each trial
    process calls it as it starts, and so does a sweep."""
    import shutil

    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{CHECKPOINT_PREFIX}*-*"):
        pid = path.name[len(CHECKPOINT_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


@contextmanager
def _checkpoint_dir(state: dict | None, final: dict | None):
    """A temporary directory holding `state.pt`, `final.json` and the final stage's
    per-example outputs (`examples.parquet`), or None without state. Named
    `ckpt-<pid>-*`: what a killed process leaves is found and removed by
    `clean_stale_checkpoint_dirs`."""
    if state is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix=f"{CHECKPOINT_PREFIX}{os.getpid()}-") as directory:
        torch.save(state, Path(directory) / STATE_FILE)
        if final is not None:
            final = dict(final)
            examples = final.pop(EXAMPLES, None)
            if examples is not None:
                examples.to_parquet(Path(directory) / EXAMPLES_FILE, index=False)
            (Path(directory) / FINAL_FILE).write_text(json.dumps(final))
        yield directory


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: corrupt, truncated, or holding more than tensors
    and plain values. The message names the file."""


def load_checkpoint_dir(directory: str | Path, name: str | None = None,
                        ) -> tuple[dict | None, dict | None]:
    """`state.pt` (read with `weights_only=True`: a checkpoint cannot run code) and
    `final.json` of a checkpoint directory. `name` is how errors call the checkpoint (its
    storage path, when `directory` is a local copy)."""
    directory = Path(directory)
    path = directory / STATE_FILE
    where = f"{name}/{STATE_FILE}" if name else str(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        detail = (str(error).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(f"checkpoint {where} is corrupt, truncated or unsafe "
                              f"({error.__class__.__name__}: {detail})") from None
    final_path = directory / FINAL_FILE
    try:
        final = json.loads(final_path.read_text()) if final_path.exists() else None
    except ValueError:
        raise CheckpointError(f"checkpoint file {final_path} is not valid JSON") from None
    if final is not None and (directory / EXAMPLES_FILE).exists():
        import pandas as pd

        final[EXAMPLES] = pd.read_parquet(directory / EXAMPLES_FILE)
    return state, final


def _restore(checkpoint) -> tuple[dict | None, dict | None]:
    if checkpoint is None:
        return None, None
    with checkpoint.as_directory() as directory:
        return load_checkpoint_dir(directory, name=checkpoint.path)


def _quiet_ray_train_logs() -> None:
    """Ray logs every checkpoint and report at INFO; the console keeps Tune's table only."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)


def _quiet_ray_train_worker_logs() -> None:
    """Ray Train V2 sets a worker's root logger to INFO, and logs every report's full
    metrics from a logger named after its source file, which propagates to the root
    (`LoggingConfig` does not reach it). On this worker process, the root keeps warnings."""
    logging.getLogger().setLevel(logging.WARNING)


def _where() -> dict[str, Any]:
    """Which node and process ran a report, and when (`reported_at`, Unix seconds): shows
    where trials ran on a cluster, when a worker was replaced, and which trials ran at the
    same time."""
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "worker_pid": os.getpid(),
            "reported_at": time.time()}


def select_device(use_gpu: bool) -> torch.device:
    """CUDA when GPUs were requested and one is visible; otherwise the CPU."""
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class TuneSession(Session):
    """The loop runs in the Tune trial's process and reports with `ray.tune.report`.

    A report is a round trip to the driver (~10 ms on 2 busy cores), as long as a small
    epoch. So a running trial's epochs are sent at most every `report_seconds` (0: each
    epoch), each report carrying the epochs since the last one in `earlier_epochs`: every
    epoch's metrics still reach result.json and W&B. Checkpoints and the final report go
    at once."""

    def __init__(self, num_threads: int = 1, report_seconds: float = 0.0,
                 board: str | None = None):
        from ray import tune

        from orchestrator.tune.progress_board import trial_progress

        _quiet_ray_train_logs()
        clean_stale_checkpoint_dirs()
        torch.set_num_threads(max(1, num_threads))
        self.device = select_device(use_gpu=False)
        self.trial_id = tune.get_context().get_trial_id() or ""
        self._say = trial_progress(board, self.trial_id)
        self.report_seconds = report_seconds
        self._held: list[dict[str, Any]] = []
        self._last_sent = time.monotonic()

    def report(self, metrics, state=None, final=None):
        from ray import tune

        now = time.monotonic()
        if (state is None and final is None and metrics.get("status") == "running"
                and now - self._last_sent < self.report_seconds):
            self._held.append(metrics)
            return
        earlier, self._held, self._last_sent = self._held, [], now
        with _checkpoint_dir(state, final) as directory:
            checkpoint = tune.Checkpoint.from_directory(directory) if directory else None
            extra = {"earlier_epochs": earlier} if earlier else {}
            tune.report({**metrics, **extra, **_where()}, checkpoint=checkpoint)

    def restore(self):
        from ray import tune

        return _restore(tune.get_checkpoint())


class TrainSession(Session):
    """The loop runs on a Ray Train worker; rank 0 writes the checkpoints."""

    def __init__(self, num_threads: int = 1, board: str | None = None):
        import ray.train
        import ray.train.torch

        from orchestrator.tune.progress_board import trial_progress

        _quiet_ray_train_worker_logs()
        clean_stale_checkpoint_dirs()
        torch.set_num_threads(max(1, num_threads))
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        # the Train run is named train-<trial id> (trainable.py)
        self.trial_id = context.get_experiment_name().removeprefix(TRAIN_RUN_PREFIX)
        if self.rank == 0:
            self._say = trial_progress(board, self.trial_id)

    def prepare_model(self, model):
        import ray.train.torch

        return ray.train.torch.prepare_model(model)  # moves to device; DDP when N > 1

    def report(self, metrics, state=None, final=None):
        import ray.train

        if self.rank != 0:
            state = final = None
        with _checkpoint_dir(state, final) as directory:
            checkpoint = ray.train.Checkpoint.from_directory(directory) if directory else None
            ray.train.report({**metrics, **_where()}, checkpoint=checkpoint)

    def restore(self):
        import ray.train

        return _restore(ray.train.get_checkpoint())


class LocalSession(Session):
    """No Ray: keeps every report in memory. For notebooks, tests and the plain baseline."""

    def __init__(self, num_threads: int | None = None):
        if num_threads:
            torch.set_num_threads(num_threads)
        self.reports: list[dict[str, Any]] = []
        self.stages: list[str] = []  # what progress() said
        self.final: dict | None = None
        self._state: dict | None = None

    def report(self, metrics, state=None, final=None):
        self.reports.append(dict(metrics))
        if state is not None:
            self._state = copy.deepcopy(state)
        if final is not None:
            self.final = final

    def restore(self):
        return self._state, self.final

    def progress(self, text: str) -> None:
        self.stages.append(text)
