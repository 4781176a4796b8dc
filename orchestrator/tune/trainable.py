"""The Tune function trainable: one trial, on one of two training paths.

- In-process path (1 worker, no GPU): the loop runs in the Tune trial's own process. A
  `TorchTrainer` per trial would cost ~19 s of controller start-up on 2 cores, and its
  processes would halve the trial's compute.
- Ray Train path (N workers or GPUs): the trial builds a `TorchTrainer` (Ray Train V2) with
  a `ScalingConfig`, and `TuneReportCallback` forwards the workers' reports to Tune. The
  Train run is named after the trial, so a retried trial resumes from its latest checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.tune.epochs import run_epochs
from orchestrator.tune.scaling import Scaling
from orchestrator.tune.session import TRAIN_RUN_PREFIX, TrainSession, TuneSession
from search_spaces import expand_setup
from workloads.studies import LOOPS

KEEP_CHECKPOINTS = 3


def report_after_fit(final: dict[str, Any], timeout: float = 300.0) -> None:
    """Report a Ray Train run's final metrics to the Tune trial that ran it, once more.

    `TuneReportCallback` forwards each report of the run through a queue (one item) that
    the trial's Tune session drains while this function runs; `fit()` can return with the
    last report still queued, and it was then lost when the function ended (2 of 6
    two-worker runs). So the final metrics go through the same queue, after what is left in
    it, and the function waits until the session has taken them: the trial's last row is its
    final one (a duplicate at worst). Not `tune.report`: the session takes a queued item
    by reporting it itself into a one-item result queue, which `tune.report` from this
    thread may have filled first, and the trial then hung for good (seen in CI)."""
    from ray.train._internal.session import get_session

    queue = get_session()._get_or_create_inter_actor_queue()
    queue.put(final, block=True, timeout=timeout)
    deadline = time.monotonic() + timeout
    while not queue.empty() and time.monotonic() < deadline:
        time.sleep(0.05)


def make_trainable(loop_name: str, scaling: Scaling, train_storage: str | Path,
                   filesystem=None, board: str | None = None) -> Callable:
    """A Tune function trainable running the loop `LOOPS[loop_name]` (by `run_epochs`) on
    the path `scaling` picks. Ray Train runs keep their checkpoints under `train_storage` in
    `filesystem` (a pyarrow filesystem; None: the local disk). `board` names the sweep's
    progress board, which the loop's final stage tells its steps (progress_board.py)."""
    loop = LOOPS[loop_name]
    threads = scaling.cpus_per_worker

    def train_worker(config: dict[str, Any]) -> None:
        run_epochs(loop, expand_setup(config), TrainSession(num_threads=threads, board=board))

    def trainable(config: dict[str, Any]) -> None:
        if scaling.in_process:
            config = expand_setup(config)
            run_epochs(loop, config,
                       TuneSession(threads, config.get("report_seconds", 0.0), board))
            return
        from ray import train, tune
        from ray.train.torch import TorchTrainer
        from ray.tune.integration.ray_train import TuneReportCallback

        trial_id = tune.get_context().get_trial_id()
        trainer = TorchTrainer(
            train_worker,
            train_loop_config=config,
            scaling_config=scaling.scaling_config(),
            run_config=train.RunConfig(
                name=f"{TRAIN_RUN_PREFIX}{trial_id}",
                storage_path=str(train_storage), storage_filesystem=filesystem,
                callbacks=[TuneReportCallback()],
                checkpoint_config=train.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
                failure_config=train.FailureConfig(max_failures=scaling.max_failures),
                logging_config=train.LoggingConfig(log_level="WARNING"),
            ),
        )
        result = trainer.fit()
        final = dict(result.metrics or {})
        if result.checkpoint is not None:
            final["checkpoint_path"] = result.checkpoint.path
        report_after_fit(final)

    trainable.__name__ = f"{loop_name}_trainable"
    from ray import tune

    return tune.with_resources(trainable, scaling.trial_resources())
