"""The Tune function trainable: one trial, on one of two training paths.

- In-process path (1 worker, no GPU): the loop runs in the Tune trial's own process. A
  `TorchTrainer` per trial would cost ~19 s of controller start-up on 2 cores, and its
  processes would halve the trial's compute.
- Ray Train path (N workers or GPUs): the trial builds a `TorchTrainer` (Ray Train V2) with
  a `ScalingConfig`, and `ForwardReports` forwards the workers' reports to Tune. The
  Train run is named after the trial, so a retried trial resumes from its latest checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.tune.epochs import run_epochs
from orchestrator.tune.scaling import Scaling
from orchestrator.tune.session import TRAIN_RUN_PREFIX, TrainSession, TuneSession
from search_spaces import expand_setup
from workloads.studies import LOOPS

KEEP_CHECKPOINTS = 3


def fit_reporting_to_tune(fit: Callable[[], Any], reports) -> Any:
    """Run `fit()` (a Ray Train run) in a thread, and meanwhile report to Tune, from this
    thread (the trial function's), each item the run puts into `reports` (a one-item
    `ray.util.queue.Queue` that `ForwardReports` fills: the run waits until each is taken,
    as with Ray's callback), in order, to the last; return `fit()`'s result or raise its
    error.

    Why not Ray's `TuneReportCallback`: it puts the run's reports into a one-item queue that
    the trial's Tune session drains on its main thread, and that thread reports each item
    itself into the session's one-item result queue. When the trial function ended while the
    session held the last item but had not yet reported it, the function's end-of-run report
    filled the result queue first and the session blocked for good on its own put (the
    intermittent two-worker hang of CI, found from the stacks of the trial process: its main
    thread in `Queue.put` under `_get_result_from_queues`, the function's thread gone). Here
    only the function's thread reports, the one way the Function API is made for."""
    import threading

    from ray import tune
    from ray.util.queue import Empty

    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = fit()
        except BaseException as error:  # raised again in the trial's function below
            outcome["error"] = error

    thread = threading.Thread(target=run, name="ray-train-fit", daemon=True)
    thread.start()
    while True:
        done = not thread.is_alive()  # before the get: a run's reports precede its end
        try:
            tune.report(reports.get(timeout=0.2))
        except Empty:
            if done:
                break
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


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
        from ray.util.queue import Queue

        from orchestrator.tune.forward_reports import ForwardReports, tune_row

        trial_id = tune.get_context().get_trial_id()
        reports = Queue(1, actor_options={"num_cpus": 0})  # the run waits for Tune to take each
        trainer = TorchTrainer(
            train_worker,
            train_loop_config=config,
            scaling_config=scaling.scaling_config(),
            run_config=train.RunConfig(
                name=f"{TRAIN_RUN_PREFIX}{trial_id}",
                storage_path=str(train_storage), storage_filesystem=filesystem,
                callbacks=[ForwardReports(reports)],
                checkpoint_config=train.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
                failure_config=train.FailureConfig(max_failures=scaling.max_failures),
                logging_config=train.LoggingConfig(log_level="WARNING"),
            ),
        )
        result = fit_reporting_to_tune(trainer.fit, reports)
        # the trial's last row is its final one (a duplicate at worst)
        tune.report(tune_row(result.metrics, result.checkpoint))

    trainable.__name__ = f"{loop_name}_trainable"
    from ray import tune

    return tune.with_resources(trainable, scaling.trial_resources())
