"""What a person reads while a sweep runs (Tune's own table only with `--verbose`): a line
per finished trial (its key config, status, headline metrics, seconds) and a status line
every `interval` seconds (trials done, running, pending, elapsed, ETA)."""

from __future__ import annotations

import math
import sys
import time
from numbers import Number
from typing import Any

from ray.tune import Callback


def console_keys(table_keys: tuple[str, ...], settings: dict[str, Any]) -> tuple[str, ...]:
    """The config keys that name a trial on the console: the space's table keys, and the
    seed when the sweep runs several."""
    seeds = settings.get("seed")
    return (*table_keys, "seed") if isinstance(seeds, list) and len(seeds) > 1 else table_keys


class ConsoleReporter(Callback):
    def __init__(self, keys: tuple[str, ...], metrics: tuple[str, ...], total: int,
                 interval: float = 10.0, headline: int = 3):
        self.keys, self.metrics, self.total = keys, metrics, total
        self.interval, self.headline = interval, headline
        self._started = time.monotonic()
        self._last_status = self._started
        self._finished = 0

    def __getstate__(self):  # Tune pickles callbacks with the experiment
        return {"keys": self.keys, "metrics": self.metrics, "total": self.total,
                "interval": self.interval, "headline": self.headline}

    def __setstate__(self, state):
        self.__init__(**state)

    def _say(self, text: str) -> None:
        print(text, file=sys.stdout, flush=True)

    def trial_line(self, config: dict[str, Any], result: dict[str, Any], status: str) -> str:
        """`model=gffn batch_size=16: completed, test_acc 0.975, test_ece 0.021 (12.3 s)`."""
        keys = " ".join(f"{k}={config[k]}" for k in self.keys if k in config)
        shown = [(m, result[m]) for m in self.metrics
                 if isinstance(result.get(m), Number) and not isinstance(result[m], bool)
                 and math.isfinite(result[m])][:self.headline]
        figures = "".join(f", {m} {v:.4g}" for m, v in shown)
        seconds = result.get("time_total_s")
        took = f" ({seconds:.1f} s)" if isinstance(seconds, Number) else ""
        return f"{keys}: {status}{figures}{took}"

    def _finish(self, trial, status: str) -> None:
        from search_spaces import expand_setup

        self._finished += 1
        line = self.trial_line(expand_setup(trial.config), trial.last_result or {}, status)
        self._say(f"[trial {self._finished}/{self.total}] {line}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, (trial.last_result or {}).get("status", "completed"))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, "error")

    def on_step(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if now - self._last_status < self.interval:
            return
        self._last_status = now
        counts: dict[str, int] = {}
        for trial in trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        done = counts.get("TERMINATED", 0) + counts.get("ERROR", 0)
        elapsed = now - self._started
        eta = f", ETA ~{elapsed / done * (self.total - done):.0f} s" if done else ""
        self._say(f"[sweep] {done}/{self.total} done, {counts.get('RUNNING', 0)} running, "
                  f"{counts.get('PENDING', 0)} pending, {elapsed:.0f} s{eta}")
