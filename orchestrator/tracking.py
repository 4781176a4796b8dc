"""Weights & Biases tracking: one W&B run per trial, grouped by sweep and start time.

Mode: `online` when an API key is configured (WANDB_API_KEY or a `wandb login` netrc
entry), `offline` otherwise, `disabled` on request. Offline runs land in each trial's
directory as `wandb/offline-run-*`; `wandb sync` uploads them later. The API key is never
put in a config, a log or a results file: it stays in the environment.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path

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
    if mode != "online":
        os.environ.pop("WANDB_API_KEY", None)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")  # Ray already captures trial output


def wandb_callback(mode: str, group: str, project: str | None = None):
    """Ray Tune's WandbLoggerCallback for `mode`, or None when tracking is disabled."""
    if mode == "disabled":
        return None
    from ray.air.integrations.wandb import WandbLoggerCallback

    return WandbLoggerCallback(
        project=project or os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
        group=group,
        mode=mode,
        excludes=["checkpoint_path", "checkpoint_dir_name"],
    )


def sync_instructions(sweep_dir: str | Path) -> str:
    """Where the offline runs are, and the `wandb sync` command that uploads them."""
    runs = find_offline_runs(sweep_dir)
    if not runs:
        return ""
    pattern = Path(sweep_dir) / "*" / "wandb" / "offline-run-*"
    return (f"W&B: {len(runs)} offline runs under {sweep_dir}\n"
            f"     upload them with:  wandb sync {pattern}")
