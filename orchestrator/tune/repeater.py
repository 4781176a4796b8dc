"""A model-based searcher's draw run once per seed: Ray Tune's `Repeater`, whose repeat
index is the trial's seed (`--seeds K` with `--search optuna / hyperopt / bohb`). Imports
Ray: `orchestrator.tune.search.search_algorithm` imports it once the checks have passed.

Tune's `Repeater` hands each draw to `repeat` trials, writes the repeat's index into the
trial's config (`__trial_index__`) and tells the searcher a draw's value once all its
trials ended: the mean over them. `SeedRepeater` writes the index's seed as the trial's
`seed` instead, so that the trial's config (trials.csv, W&B) names its seed as on a grid,
and adds what Ray's leaves out: BOHB's calls (`on_pause` / `on_unpause` from
`HyperBandForBOHB`, and a draw's result at each budget, the mean over its seeds once each
reported there), and its own state in the searcher's checkpoint, so that a resumed sweep
runs the missing seeds of its last draw and tells the searcher the draws it completes.
"""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.search import Repeater
from ray.tune.search.repeater import TRIAL_INDEX


class SeedRepeater(Repeater):
    """`Repeater(searcher, repeat=len(seeds))` whose trial `i` of a draw has `seed`
    `seeds[i]` in its config."""

    def __init__(self, searcher, seeds: tuple[int, ...] | list[int]):
        super().__init__(searcher, repeat=len(seeds), set_index=True)
        self.seeds = list(seeds)
        self._at_budget: dict[tuple[str, float], dict[str, float]] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            config["seed"] = self.seeds[config.pop(TRIAL_INDEX)]
        return config

    def _primary(self, trial_id: str) -> str | None:
        group = self._trial_id_to_group.get(trial_id)
        return group.primary_trial_id if group else None

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """BOHB learns from results at budgets (`hyperband_info`): the searcher gets a
        draw's once every seed reported that budget, the mean over them."""
        budget = (result.get("hyperband_info") or {}).get("budget")
        group = self._trial_id_to_group.get(trial_id)
        if budget is None or group is None or self.searcher.metric not in result:
            return
        scores = self._at_budget.setdefault((group.primary_trial_id, budget), {})
        scores[trial_id] = result[self.searcher.metric]
        if len(scores) == group.max_trials:
            self.searcher.on_trial_result(group.primary_trial_id, {
                **result, self.searcher.metric: float(np.nanmean(list(scores.values()))),
                "hyperband_info": {"budget": budget}})

    def on_pause(self, trial_id: str) -> None:
        """HyperBandForBOHB's call; the searcher knows a draw by its first trial."""
        if self._primary(trial_id) == trial_id and hasattr(self.searcher, "on_pause"):
            self.searcher.on_pause(trial_id)

    def on_unpause(self, trial_id: str) -> None:
        if self._primary(trial_id) == trial_id and hasattr(self.searcher, "on_unpause"):
            self.searcher.on_unpause(trial_id)

    def save(self, checkpoint_path: str) -> None:
        """The searcher's checkpoint and this repeater's groups, in one file (Ray's
        `Repeater` saves the searcher's only)."""
        self.searcher.save(checkpoint_path)
        inner = Path(checkpoint_path).read_bytes()
        with open(checkpoint_path, "wb") as file:
            pickle.dump({"searcher": inner, "repeater": self.get_state()}, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            saved = pickle.load(file)
        with tempfile.TemporaryDirectory() as directory:
            inner = Path(directory, "searcher.pkl")
            inner.write_bytes(saved["searcher"])
            self.searcher.restore(str(inner))
        self.set_state(saved["repeater"])
