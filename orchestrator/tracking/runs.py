"""Weights & Biases tracking: one W&B run per trial, grouped by sweep and start time.

Mode: `online` when an API key is configured (WANDB_API_KEY or a `wandb login` netrc
entry), `offline` otherwise, `disabled` on request. Offline runs land in each trial's
directory as `wandb/offline-run-*`; `wandb sync` uploads them later. The API key is never
put in a config, a log or a results file: it stays in the environment.
"""

from __future__ import annotations

import netrc
import os
import queue
import sys
import threading
import time
from numbers import Number
from pathlib import Path
from typing import Any

from ray.tune import Callback

from orchestrator.tracking.offline import find_offline_runs
from orchestrator.tune.session import FINAL_FILE
from orchestrator.tune.storage import long_tables, read_final_artifacts
from search_spaces import expand_setup

WANDB_MODES = ("offline", "online", "disabled")
DEFAULT_PROJECT = "robustness-lab"


def has_api_key() -> bool:
    """True when W&B could authenticate: WANDB_API_KEY, or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
    host = host.split("/")[0].split(":")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(requested: str | None) -> str:
    """The W&B mode to use; raises ValueError for `online` without an API key."""
    if requested is None:
        return "online" if has_api_key() else "offline"
    if requested not in WANDB_MODES:
        raise ValueError(f"--wandb must be one of {', '.join(WANDB_MODES)}")
    if requested == "online" and not has_api_key():
        raise ValueError("--wandb online needs an API key: run `wandb login` or set "
                         "WANDB_API_KEY (or use --wandb offline and sync later)")
    return requested


def prepare_environment(mode: str) -> None:
    """Set WANDB_MODE before `ray.init`, so every Ray worker inherits it.

    Offline or disabled, no process needs the API key: it is removed from the environment
    so that Ray cannot copy it into a runtime environment or a log.
    """
    os.environ["WANDB_MODE"] = mode
    os.environ.pop("WANDB_DIR", None)  # runs live in their trial's directory
    if mode != "online":
        os.environ.pop("WANDB_API_KEY", None)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")  # Ray already captures trial output


DRAIN_SECONDS = 600.0  # the longest a sweep's end waits for W&B (ROBUSTNESS_WANDB_DRAIN_S)


def drain(thread: threading.Thread, work: queue.Queue, limit: float, every: float = 5.0,
          say=None) -> bool:
    """Wait for the W&B thread to finish the calls queued in `work`, at most `limit`
    seconds, telling `say` (default: stderr) every `every` seconds how many are left.
    True when it finished; False when it gave up (the thread is a daemon: the process
    exits anyway; the runs not yet finished stay incomplete, the sweep's files are whole)."""
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    started = time.monotonic()
    while True:
        thread.join(timeout=max(0.0, min(every, limit - (time.monotonic() - started))))
        if not thread.is_alive():
            return True
        waited = time.monotonic() - started
        if waited >= limit:
            say(f"[wandb] gave up after {waited:.0f} s with ~{work.qsize()} W&B calls queued; "
                f"the trial runs they belong to are incomplete (the sweep's own files are "
                f"not); raise ROBUSTNESS_WANDB_DRAIN_S to wait longer")
            return False
        say(f"[wandb] finishing the trial runs: ~{work.qsize()} W&B calls queued, "
            f"{waited:.0f} s")


class WandbTrialLogger(Callback):
    """A Tune callback that keeps one W&B run per trial, in the sweep's driver process.

    Config = the trial's config; every reported result is logged (step = Tune's iteration);
    the summary ends with the trial's final metrics and its status. A trial whose final
    checkpoint holds long tables (`ood`, and a study's own: lists of rows in final.json)
    also gets each as a W&B table of that name (e.g. `ood`: score x OOD set: AUROC,
    AUPR-in, AUPR-out, FPR95, TNR95). Offline runs are written
    to `<trial dir>/wandb/offline-run-*`. Unlike Ray's WandbLoggerCallback there are no
    logging actors to start per trial, and none that can be killed before W&B has flushed.
    All W&B calls run on one background thread, so a slow `wandb.init` (or a slow network
    in online mode) never stalls Tune's event loop; the experiment's end waits for it.
    """

    EXCLUDE = ("config", "checkpoint_path", "checkpoint_dir_name", "should_checkpoint", "done",
               "date", "hostname", "node_ip", "pid", "timestamp")

    def __init__(self, mode: str, group: str, project: str | None = None,
                 local_dir: str | None = None, drain_seconds: float | None = None):
        self.mode = mode
        self.drain_seconds = drain_seconds if drain_seconds is not None else float(
            os.environ.get("ROBUSTNESS_WANDB_DRAIN_S", DRAIN_SECONDS))
        self.group = group
        self.project = project or os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT)
        self.local_dir = local_dir
        self._runs: dict[str, Any] = {}
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None

    def __getstate__(self):  # Tune pickles callbacks: threads, queues and runs stay behind
        return {"mode": self.mode, "group": self.group, "project": self.project,
                "local_dir": self.local_dir, "drain_seconds": self.drain_seconds}

    def __setstate__(self, state):
        self.__init__(**state)

    # --- the W&B side, on the background thread ---------------------------------------
    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            method, args = item
            try:
                method(*args)
            except Exception as error:  # tracking must never take the sweep down
                print(f"[wandb] {method.__name__} failed: {error!r}", file=sys.stderr)

    def _start(self, trial_id: str, name: str, config: dict, directory: str) -> None:
        import wandb

        if trial_id in self._runs:  # a retried trial keeps its run
            return
        Path(directory).mkdir(parents=True, exist_ok=True)
        self._runs[trial_id] = wandb.init(
            project=self.project, group=self.group, name=name, id=trial_id, config=config,
            dir=directory, mode=self.mode, reinit="create_new", resume="allow",
            # no system metadata per trial (host, OS, Python; ~45% of a run's start-up): the
            # sweep's summary run records it once
            settings=wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True,
                                    disable_git=True, save_code=False))

    def _log(self, trial_id: str, metrics: dict) -> None:
        self._runs[trial_id].log(metrics)

    def _finish(self, trial_id: str, status: str, exit_code: int,
                tables: dict[str, list[dict]] | None = None) -> None:
        import wandb

        run = self._runs.pop(trial_id, None)
        if run is not None:
            for name, rows in (tables or {}).items():
                columns = list(rows[0])
                run.log({name: wandb.Table(columns=columns,
                                           data=[[r.get(c) for c in columns] for r in rows])})
            run.summary["status"] = status
            run.finish(exit_code=exit_code)

    # --- Tune's side, on the driver's event loop -----------------------------------------
    def _submit(self, method, *args) -> None:
        if self._thread is None:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._work, name="wandb-logger",
                                            daemon=True)
            self._thread.start()
        self._queue.put((method, args))

    def _run_directory(self, trial) -> str:
        """Where the trial's W&B files go: its own directory in local storage (Tune's
        `local_path` is a staging copy that Tune syncs when the trial ends, which can be
        before W&B has flushed). With remote storage they stay on the driver, in the
        sweep's local results directory (`local_dir`), beside trials.csv."""
        import pyarrow.fs

        if isinstance(trial.storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
            return str(trial.path)
        if self.local_dir:
            return str(Path(self.local_dir, Path(trial.path).name))
        return str(trial.local_path)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._submit(self._start, trial.trial_id, str(trial), expand_setup(trial.config),
                     self._run_directory(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        """One W&B step per epoch: the epochs a report carries (`earlier_epochs`, sent
        together by a trial with tiny epochs), then the report's own."""
        for metrics in [*result.get("earlier_epochs", []), result]:
            self._submit(self._log, trial.trial_id,
                         {k: v for k, v in metrics.items()
                          if k not in self.EXCLUDE and isinstance(v, (Number, str, bool))})

    # the per-epoch diagnostic is logged as metrics (`diag_auroc_*`), not as a table
    NOT_TABLES = ("diagnostic",)

    @classmethod
    def _tables(cls, trial) -> dict[str, list[dict]]:
        """The long tables of the trial's final checkpoint (Tune's, or Ray Train's by path;
        `long_tables`), read through the storage's filesystem."""
        checkpoint = getattr(trial, "checkpoint", None)
        if checkpoint is not None:
            final = read_final_artifacts(checkpoint.filesystem, checkpoint.path, FINAL_FILE)
        else:
            final = read_final_artifacts(trial.storage.storage_filesystem,
                                         (trial.last_result or {}).get("checkpoint_path"),
                                         FINAL_FILE)
        return {name: rows for name, rows in long_tables(final or {}).items()
                if name not in cls.NOT_TABLES}

    def _end_trial(self, trial, failed: bool) -> None:
        status = "error" if failed else (trial.last_result or {}).get("status", "incomplete")
        tables = {} if failed else self._tables(trial)
        self._submit(self._finish, trial.trial_id, status, int(failed), tables)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end_trial(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end_trial(trial, failed=True)

    def on_experiment_end(self, trials, **info):
        if self._thread is None:
            return
        for trial in trials:  # trials that never completed (interrupted sweep)
            if trial.status not in ("TERMINATED", "ERROR"):
                self._end_trial(trial, failed=True)
        self._queue.put(None)
        drain(self._thread, self._queue, self.drain_seconds)
        self._thread = None


def wandb_callback(mode: str, group: str, project: str | None = None,
                   local_dir: str | None = None):
    """The W&B Tune callback for `mode`, or None when tracking is disabled. `local_dir`:
    the sweep's local results directory, home of the W&B files of a remote storage's
    trials."""
    if mode == "disabled":
        return None
    return WandbTrialLogger(mode=mode, group=group, project=project, local_dir=local_dir)


def sync_instructions(sweep_dir: str | Path) -> str:
    """Where the offline runs are, and the `wandb sync` command that uploads them."""
    runs = find_offline_runs(sweep_dir)
    if not runs:
        return ""
    pattern = Path(sweep_dir) / "*" / "wandb" / "offline-run-*"
    return (f"W&B: {len(runs)} offline runs under {sweep_dir}\n"
            f"     upload them with:  wandb sync {pattern}")


class JobRun:
    """One W&B run for a job on a sweep's trials (an attack, Langevin chains, the defense),
    in the sweep's group, written into the job's directory. With tracking disabled every
    method does nothing, so job code never tests for it.

    `log` takes progress metrics (plotted against `x_axis`, which need not increase across
    calls from different units), `table` and `image` log results, `finish` writes the
    summary. A resumed job passes the same `run_id` and continues its run.
    """

    def __init__(self, mode: str, kind: str, name: str, group: str, config: dict[str, Any],
                 directory: str | Path, run_id: str | None = None,
                 project: str | None = None):
        self.run = None
        if mode == "disabled":
            return
        import wandb

        Path(directory).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project or os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT), group=group,
            job_type=kind, name=name, id=run_id, config=config, dir=str(directory), mode=mode,
            reinit="create_new", resume="allow",
            settings=wandb.Settings(console="off", x_disable_stats=True, disable_git=True,
                                    save_code=False))
        self._defined: set[str] = set()

    def log(self, metrics: dict[str, Any], x_axis: str | None = None) -> None:
        if self.run is None:
            return
        if x_axis is not None:
            for key in metrics:
                if key != x_axis and key not in self._defined:
                    self.run.define_metric(key, step_metric=x_axis)
                    self._defined.add(key)
        self.run.log({k: v for k, v in metrics.items() if isinstance(v, (Number, str, bool))})

    def table(self, key: str, frame) -> None:
        if self.run is None:
            return
        import wandb

        self.run.log({key: wandb.Table(dataframe=frame.reset_index(drop=True))})

    def image(self, key: str, path: str | Path) -> None:
        if self.run is None or not Path(path).exists():
            return
        import wandb

        self.run.log({key: wandb.Image(str(path))})

    def finish(self, summary: dict[str, Any] | None = None, failed: bool = False) -> None:
        if self.run is None:
            return
        for key, value in (summary or {}).items():
            self.run.summary[key] = value
        self.run.finish(exit_code=int(failed))
        self.run = None

