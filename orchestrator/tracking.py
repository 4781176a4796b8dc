"""Weights & Biases tracking: one W&B run per trial, grouped by sweep and start time.

Mode: `online` when an API key is configured (WANDB_API_KEY or a `wandb login` netrc
entry), `offline` otherwise, `disabled` on request. Offline runs land in each trial's
directory as `wandb/offline-run-*`; `wandb sync` uploads them later. The API key is never
put in a config, a log or a results file: it stays in the environment.
"""

from __future__ import annotations

import netrc
import os
from numbers import Number
from pathlib import Path
from typing import Any

from ray.tune import Callback

from orchestrator.wandb_offline import find_offline_runs

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


class WandbTrialLogger(Callback):
    """A Tune callback that keeps one W&B run per trial, in the sweep's driver process.

    Config = the trial's config; every reported result is logged (step = Tune's iteration);
    the summary ends with the trial's final metrics and its status. Offline runs are written
    to `<trial dir>/wandb/offline-run-*`. Unlike Ray's WandbLoggerCallback there are no
    logging actors to start per trial, and none that can be killed before W&B has flushed.
    """

    def __init__(self, mode: str, group: str, project: str | None = None,
                 exclude: tuple[str, ...] = ("config", "checkpoint_path", "checkpoint_dir_name",
                                             "should_checkpoint", "done", "date", "hostname",
                                             "node_ip", "pid", "timestamp")):
        self.mode = mode
        self.group = group
        self.project = project or os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT)
        self.exclude = set(exclude)
        self._runs: dict[str, Any] = {}

    def _start(self, trial) -> Any:
        import wandb

        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        Path(trial.local_path).mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=self.project, group=self.group, name=str(trial), id=trial.trial_id,
            config=dict(trial.config), dir=trial.local_path, mode=self.mode, reinit="create_new",
            resume="allow", settings=wandb.Settings(console="off", x_disable_stats=True,
                                                    disable_git=True, save_code=False))
        self._runs[trial.trial_id] = run
        return run

    def on_trial_start(self, iteration, trials, trial, **info):
        self._start(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metrics = {k: v for k, v in result.items()
                   if k not in self.exclude and isinstance(v, (Number, str, bool))}
        self._start(trial).log(metrics, step=result.get("training_iteration"))

    def _finish(self, trial, exit_code: int) -> None:
        run = self._runs.pop(trial.trial_id, None)
        if run is not None:
            if trial.last_result:
                run.summary["status"] = trial.last_result.get("status", "incomplete")
            if exit_code:
                run.summary["status"] = "error"
            run.finish(exit_code=exit_code)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, exit_code=0)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, exit_code=1)

    def on_experiment_end(self, trials, **info):
        for trial in trials:
            self._finish(trial, exit_code=0 if trial.status == "TERMINATED" else 1)


def wandb_callback(mode: str, group: str, project: str | None = None):
    """The W&B Tune callback for `mode`, or None when tracking is disabled."""
    if mode == "disabled":
        return None
    return WandbTrialLogger(mode=mode, group=group, project=project)


def sync_instructions(sweep_dir: str | Path) -> str:
    """Where the offline runs are, and the `wandb sync` command that uploads them."""
    runs = find_offline_runs(sweep_dir)
    if not runs:
        return ""
    pattern = Path(sweep_dir) / "*" / "wandb" / "offline-run-*"
    return (f"W&B: {len(runs)} offline runs under {sweep_dir}\n"
            f"     upload them with:  wandb sync {pattern}")
