"""What a person reads while a sweep runs (Tune's own table only with `--verbose`): a line
per finished trial (its number, key config, status, headline metrics, seconds; a trial the
scheduler stopped early: its epoch and validation metrics; numbered on from the trials a
resumed sweep had finished) and, every `interval` seconds, a status line (trials done,
running, pending, elapsed, ETA) followed by what the running trials are doing: the epoch
of their latest report, or the step of their final stage read from the sweep's progress
board (progress_board.py).

Tune calls only the hooks its `Callback` defines (`on_step_end`, `on_trial_result`, ...);
tests/test_console.py fails on any `on_*` method here that is not one."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from numbers import Number
from pathlib import Path
from typing import Any

from ray.tune import Callback

from orchestrator.tune.search import max_epochs


def console_keys(table_keys: tuple[str, ...], settings: dict[str, Any]) -> tuple[str, ...]:
    """The config keys that name a trial on the console: the space's table keys, and the
    seed when the sweep runs several."""
    seeds = settings.get("seed")
    return (*table_keys, "seed") if isinstance(seeds, list) and len(seeds) > 1 else table_keys


def planned_epochs(config: dict[str, Any]) -> str:
    """The epochs a trial will run at most, as shown: "10", or "<=50" when early stopping
    may end it sooner (budget A, or a `patience`); "" when the config does not say."""
    epochs = max_epochs(config)
    if epochs is None:
        return ""
    budgeted = {"A": "max_epochs_a", "B": "epochs_b"}.get(config.get("budget"), "") in config
    early = config["budget"] == "A" if budgeted else bool(config.get("patience"))
    return ("<=" if early else "") + str(epochs)


def value_text(value: Any) -> str:
    """A config value as the console shows it: a float to 4 significant digits, written as
    Python writes a float (1.1667668532767103e-05 -> "1.167e-05", 1.0 -> "1.0")."""
    if isinstance(value, float) and math.isfinite(value):
        return repr(float(f"{value:.4g}"))
    return str(value)


def already_finished(statuses: Iterable[str]) -> int:
    """How many of the trials' `statuses` are finished: on a resumed experiment's first
    step, the trials that finished before it was stopped (Tune restores them TERMINATED;
    errored ones it resumes are PENDING again)."""
    return sum(status in ("TERMINATED", "ERROR") for status in statuses)


def error_line(trial) -> str:
    """The last line of a failed trial's traceback (Tune's error.txt), e.g. "ValueError:
    energy fine-tuning: batch size 100000 exceeds the 1077 training inputs"."""
    try:
        lines = Path(trial.error_file).read_text().splitlines()
    except (OSError, TypeError):
        return "see the sweep's ray.log"
    lines = [line.strip() for line in lines if line.strip()]
    return lines[-1][:200] if lines else "see the sweep's ray.log"


class ConsoleReporter(Callback):
    """The console of a sweep (the module's docstring): `keys` name a trial, `metrics` are
    the headline results of a finished one (the first `headline` finite ones), `total` the
    trials planned, `metric` the sweep's own (shown first for a stopped trial); a status
    line every `interval` seconds naming up to `shown` running trials, whose final-stage
    steps are read from the progress board named `board`."""

    def __init__(self, keys: tuple[str, ...], metrics: tuple[str, ...], total: int,
                 interval: float = 10.0, headline: int = 3, board: str | None = None,
                 shown: int = 4, metric: str = ""):
        self.keys, self.metrics, self.total = keys, metrics, total
        self.interval, self.headline, self.board, self.shown = interval, headline, board, shown
        self.metric = metric  # the sweep's (validation) metric: a stopped trial shows it
        self._started = time.monotonic()
        self._last_status = self._started
        self._finished = 0
        self._before: int | None = None  # trials finished before this run (a resume's)
        self._epochs: dict[str, tuple[int, float]] = {}  # trial id -> (epoch, time.time())
        self._labels: dict[str, tuple[str, str]] = {}  # trial id -> (label, planned epochs)
        self._board = None

    def __getstate__(self):  # Tune pickles callbacks with the experiment
        return {"keys": self.keys, "metrics": self.metrics, "total": self.total,
                "interval": self.interval, "headline": self.headline, "board": self.board,
                "shown": self.shown, "metric": self.metric}

    def __setstate__(self, state):
        self.__init__(**state)

    def _say(self, text: str) -> None:
        print(text, file=sys.stdout, flush=True)

    def label(self, config: dict[str, Any]) -> str:
        """`model=gffn batch_size=16`: the trial's values of the sweep's key config."""
        return " ".join(f"{k}={value_text(config[k])}" for k in self.keys if k in config)

    def trial_line(self, config: dict[str, Any], result: dict[str, Any], status: str,
                   metrics: tuple[str, ...] | None = None) -> str:
        """`model=gffn batch_size=16: completed, test_acc 0.975, test_ece 0.021 (12.3 s)`:
        the first `headline` finite values of `metrics` (default: the table's)."""
        keys = self.label(config)
        shown = [(m, result[m]) for m in (self.metrics if metrics is None else metrics)
                 if isinstance(result.get(m), Number) and not isinstance(result[m], bool)
                 and math.isfinite(result[m])][:self.headline]
        figures = "".join(f", {m} {v:.4g}" for m, v in shown)
        seconds = result.get("time_total_s")
        took = f" ({seconds:.1f} s)" if isinstance(seconds, Number) else ""
        return f"{keys}: {status}{figures}{took}"

    def finished_line(self, config: dict[str, Any], result: dict[str, Any]) -> str:
        """The line of a trial that ended: its status and test metrics; for a trial the
        scheduler stopped before its last epoch (its last report still "running", no test
        metrics), "stopped at epoch 2" and its validation metrics, the sweep's first:
        `lr=0.001: stopped at epoch 2, val_acc 0.8833, val_nll 0.41 (3.1 s)`."""
        status = result.get("status", "completed")
        if status != "running":
            return self.trial_line(config, result, status)
        validation = (self.metric, *(k for k in result if k.startswith("val_")))
        return self.trial_line(config, result, f"stopped at epoch {result.get('epoch', '?')}",
                               tuple(m for m in dict.fromkeys(validation) if m))

    def _finish(self, trial, line: str) -> None:
        self._finished += 1
        self._epochs.pop(trial.trial_id, None)
        self._labels.pop(trial.trial_id, None)
        self._say(f"[trial {self._finished}/{self.total}] {line}")

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self._before is None:  # the first step: a resumed sweep numbers on from these
            self._before = already_finished(t.status for t in trials)
            self._finished += self._before

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if isinstance(result.get("epoch"), int):
            self._epochs[trial.trial_id] = (result["epoch"], time.time())

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        from search_spaces import expand_setup

        self._finish(trial, self.finished_line(expand_setup(trial.config),
                                               trial.last_result or {}))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        from search_spaces import expand_setup

        self._finish(trial, self.trial_line(expand_setup(trial.config),
                                            trial.last_result or {},
                                            f"error ({error_line(trial)})"))

    def on_step_end(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if now - self._last_status < self.interval:
            return
        self._last_status = now
        counts: dict[str, int] = {}
        for trial in trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        done = counts.get("TERMINATED", 0) + counts.get("ERROR", 0)
        elapsed = now - self._started
        here = done - (self._before or 0)  # finished in this run (a resume's: since it)
        eta = f", ETA ~{elapsed / here * (self.total - done):.0f} s" if here > 0 else ""
        self._say(f"[sweep] {done}/{self.total} done, {counts.get('RUNNING', 0)} running, "
                  f"{counts.get('PENDING', 0)} pending, {elapsed:.0f} s{eta}")
        running = [t for t in trials if t.status == "RUNNING"]
        stages = self._stages() if running else {}
        for trial in running[:self.shown]:
            self._say(f"  {self._described(trial)[0]}: {self._doing(trial, stages)}")
        if len(running) > self.shown:
            self._say(f"  ... and {len(running) - self.shown} more running")

    def _described(self, trial) -> tuple[str, str]:
        """(label, planned epochs) of a trial, worked out once."""
        from search_spaces import expand_setup

        if trial.trial_id not in self._labels:
            config = expand_setup(trial.config)
            self._labels[trial.trial_id] = (self.label(config) or trial.trial_id,
                                            planned_epochs(config))
        return self._labels[trial.trial_id]

    def _doing(self, trial, stages: dict[str, tuple[str, float]]) -> str:
        """"epoch 3/10", or the final stage's latest step if it is newer than the epoch."""
        epoch, reported = self._epochs.get(trial.trial_id, (None, 0.0))
        stage, said = stages.get(trial.trial_id, (None, 0.0))
        if stage is not None and said >= reported:
            return stage if stage.startswith("final stage") else f"final stage: {stage}"
        if epoch is None:
            return "starting"
        planned = self._described(trial)[1]
        return f"epoch {epoch}/{planned}" if planned else f"epoch {epoch}"

    def _stages(self) -> dict[str, tuple[str, float]]:
        if self.board is None:
            return {}
        from orchestrator.tune.progress_board import read_board

        if self._board is None:
            import ray

            try:
                self._board = ray.get_actor(self.board)
            except ValueError:
                return {}
        return read_board(self._board)
