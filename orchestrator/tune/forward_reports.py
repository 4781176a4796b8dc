"""The Ray Train callback of the sweep's Ray Train path: each report of a run, sent to the
Tune trial that runs it (`trainable.fit_reporting_to_tune` reports it to Tune)."""

from __future__ import annotations

from typing import Any

from ray.train import UserCallback

CHECKPOINT_PATH_KEY = "checkpoint_path"


class ForwardReports(UserCallback):
    """Put each report of a Ray Train run, rank 0's metrics and the path of the checkpoint
    it reported (if any, as `checkpoint_path`), into `queue` (a `ray.util.queue.Queue`).
    A Train callback runs in the run's controller, so the queue is an actor both reach.
    What Ray's `TuneReportCallback` sends, through a queue the trial's own thread reads."""

    def __init__(self, queue) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        self.queue.put(tune_row(metrics[0], checkpoint))


def tune_row(metrics: dict[str, Any] | None, checkpoint) -> dict[str, Any]:
    """What the Tune trial reports for a Train report (or the run's result): its metrics and
    the path of its checkpoint, if any, as `checkpoint_path`."""
    row = dict(metrics or {})
    if checkpoint is not None:
        row[CHECKPOINT_PATH_KEY] = checkpoint.path
    return row
