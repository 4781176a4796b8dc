"""A sweep's plan: everything it was asked, resolved once and checked before Ray starts
(`orchestrator.sweep.main` builds it), which the experiment, the console, the reports,
best.json and sweep.json all read. A setting cannot mean one thing to Tune and another
to the report: each is here once.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from orchestrator.tune.scaling import Scaling
from orchestrator.tune.search import Search
from search_spaces import Profile, SearchSpace


def sweep_settings(profile: Profile, scaling: Scaling,
                   search: Search | None = None) -> dict[str, Any]:
    """What decides a sweep's trials: every config value (a list where it is swept, the
    distribution's text where it is searched), the trial resources and the search
    (`Search.settings`). Recorded in sweep.json; a resume must not change it."""
    values = {**profile.config, **profile.grid,
              **{k: str(d) for k, d in profile.search.items()},
              "num_workers": scaling.num_workers,
              "gpus_per_worker": scaling.gpus_per_worker,
              "cpus_per_worker": scaling.cpus_per_worker,
              "search": (search or Search(metric="", mode="max")).settings()}
    return json.loads(json.dumps(values))  # tuples as lists, as read back


@dataclass(frozen=True)
class SweepPlan:
    """One sweep: the space and its profile (overrides, `--set-from` and `--seeds`
    applied), the trial resources, the search, where it is stored and read, and how it
    is shown. `command` is what the user typed (after `python -m orchestrator.sweep`):
    the console's resume advice repeats it."""
    space: SearchSpace
    profile_name: str
    profile: Profile
    scaling: Scaling
    search: Search
    storage: str                              # a directory or a URI
    data_dir: str
    wandb: str                                # W&B mode: online, offline, disabled
    overrides: tuple[str, ...] = ()           # --set-from and --set, as given (sweep.json)
    resume: bool = False
    max_concurrent_trials: int | None = None  # --max-concurrent-trials (None: as fits)
    verbose: bool = False
    status_interval: float = 10.0
    command: tuple[str, ...] = ()

    @property
    def prefix(self) -> str:
        """Its runs are `<prefix>-<time>` in the storage."""
        return f"{self.space.name}-{self.profile_name}"

    def settings(self) -> dict[str, Any]:
        """sweep.json's `settings` (`sweep_settings`)."""
        return sweep_settings(self.profile, self.scaling, self.search)

    def record(self, sweep_dir: str, started: str) -> dict[str, Any]:
        """sweep.json: what the sweep was asked (what --resume and the report read)."""
        return {"name": self.space.name, "profile": self.profile_name,
                "overrides": list(self.overrides),
                "num_workers": self.scaling.num_workers,
                "gpus_per_worker": self.scaling.gpus_per_worker,
                "cpus_per_worker": self.scaling.cpus_per_worker, "wandb": self.wandb,
                "storage": sweep_dir, "started": started, "settings": self.settings()}

    def resume_command(self) -> str:
        """The command that resumes this sweep: the user's, with `--resume`."""
        words = [w for w in self.command if w != "--resume"]
        return shlex.join(["python", "-m", "orchestrator.sweep", *words, "--resume"])
