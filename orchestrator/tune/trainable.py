"""The Tune function trainable: one trial, on one of two training paths.

- In-process path (1 worker, no GPU): the loop runs in the Tune trial's own process. A
  `TorchTrainer` per trial would cost ~19 s of controller start-up on 2 cores, and its
  processes would halve the trial's compute.
- Ray Train path (N workers or GPUs): the trial builds a `TorchTrainer` (Ray Train V2) with
  a `ScalingConfig`, and `TuneReportCallback` forwards the workers' reports to Tune. The
  Train run is named after the trial, so a retried trial resumes from its latest checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.tune.loops import LOOPS
from orchestrator.tune.session import TrainSession, TuneSession
from search_spaces import expand_setup

KEEP_CHECKPOINTS = 3


@dataclass(frozen=True)
class Scaling:
    num_workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: int = 1
    max_failures: int = 2  # retries of a failed trial (Tune) or worker group (Train)

    @property
    def in_process(self) -> bool:
        return self.num_workers == 1 and self.gpus_per_worker == 0

    def trial_resources(self) -> dict[str, float]:
        """What Tune reserves for the trial process itself."""
        if self.in_process:
            return {"CPU": self.cpus_per_worker, "GPU": 0}
        # The trial only drives a TorchTrainer whose workers hold the CPUs and GPUs. Tune
        # needs a non-empty request: a nominal 1 MiB of memory, so that the trial never
        # blocks its own workers from the node's last CPU.
        return {"CPU": 0, "GPU": 0, "memory": 2**20}

    def total_resources(self) -> dict[str, float]:
        """What one trial needs in all: the unit for how many trials fit at once."""
        return {"CPU": self.num_workers * self.cpus_per_worker,
                "GPU": self.num_workers * self.gpus_per_worker}

    def scaling_config(self):
        from ray.train import ScalingConfig

        resources = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            resources["GPU"] = self.gpus_per_worker
        return ScalingConfig(num_workers=self.num_workers, use_gpu=self.gpus_per_worker > 0,
                             resources_per_worker=resources)


def _wait_for_forwarded_reports(timeout: float = 30.0) -> None:
    """Let Tune take the Train run's last report before the trial function returns.

    `TuneReportCallback` hands each report to the trial through a one-item queue that the
    trial's Tune session drains while the function runs; `trainer.fit()` can return with
    the final report still in it, and that report, with the final metrics, was then lost
    (seen in 2 of 6 runs of a 2-worker trial). Wait until the queue is empty.
    """
    import time

    from ray.train._internal.session import get_session

    session = get_session()
    queue = getattr(session, "_inter_actor_queue", None) if session else None
    deadline = time.monotonic() + timeout
    while queue is not None and not queue.empty() and time.monotonic() < deadline:
        time.sleep(0.05)


def make_trainable(loop_name: str, scaling: Scaling, train_storage: str | Path) -> Callable:
    """A Tune function trainable running `LOOPS[loop_name]` on the path `scaling` picks."""
    loop = LOOPS[loop_name]
    threads = scaling.cpus_per_worker

    def train_worker(config: dict[str, Any]) -> None:
        loop(expand_setup(config), TrainSession(num_threads=threads))

    def trainable(config: dict[str, Any]) -> None:
        if scaling.in_process:
            loop(expand_setup(config), TuneSession(num_threads=threads))
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
                name=f"train-{trial_id}",
                storage_path=str(train_storage),
                callbacks=[TuneReportCallback()],
                checkpoint_config=train.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
                failure_config=train.FailureConfig(max_failures=scaling.max_failures),
                logging_config=train.LoggingConfig(log_level="WARNING"),
            ),
        )
        trainer.fit()
        _wait_for_forwarded_reports()

    trainable.__name__ = f"{loop_name}_trainable"
    from ray import tune

    return tune.with_resources(trainable, scaling.trial_resources())
