"""Ray Tune's trial schedulers, by name, each made to do what its name promises on our
trials (`--scheduler`; the flags are resolved once into `orchestrator.tune.search.Search`).

- asha / median: `ASHAScheduler` / `MedianStoppingRule` on the reported `epoch`; by default
  one per grid cell (`PerCell`: trials of model=ffn are not stopped by model=gffn's rungs
  or median; the seeds and draws of one cell are compared); the trials they end are
  `stopped`.
- hyperband: `HyperBandScheduler` with one fix (`hyperband_scheduler`), across the grid;
  with `--search bohb`, BOHB's own `HyperBandForBOHB`, with the same fix.
- pbt / pb2: `PopulationBasedTraining` / `PB2` (Parker-Holder et al. 2020: the explore step
  a GP-bandit over the searched ranges, for small populations), asynchronous, on the
  trials' running epochs only (`population_based`), the searched values kept within their
  distributions (`WithinDistributions`). The perturbed config takes effect in the trial
  because every loop loads a checkpoint under its config's hyperparameters
  (`workloads.training.epochs.load_optimizer_state`).
"""

from __future__ import annotations

import json
from typing import Any

from search_spaces import Distribution, Profile

STOPPING = ("asha", "hyperband", "median")  # the schedulers that end trials early
POPULATION = ("pbt", "pb2")                 # the schedulers that clone and perturb trials
PAUSING = ("hyperband", *POPULATION)        # the schedulers that pause trials to run others
SCHEDULERS = ("fifo", *STOPPING, *POPULATION)
# A config key: the keys whose values a population's trial records as its schedule, "+"
# joined (orchestrator.tune.epochs.record_schedule)
SCHEDULE_KEYS = "schedule_keys"


def trial_scheduler(search, profile: Profile):
    """The Tune scheduler of `search.scheduler` (a `Search`) on the reported `epoch`;
    None: FIFO."""
    from ray.tune import schedulers

    name = search.scheduler
    if name == "asha":
        def make():
            return schedulers.ASHAScheduler(
                time_attr="epoch", max_t=search.max_t, grace_period=search.grace_period,
                reduction_factor=search.reduction_factor or 4)
    elif name == "median":
        def make():
            return schedulers.MedianStoppingRule(
                time_attr="epoch", grace_period=search.grace_period,
                min_samples_required=3)
    elif name == "hyperband":  # --search bohb: BOHB's own (Tune's HyperBandForBOHB)
        return hyperband_scheduler(bohb=search.algorithm == "bohb")(
            time_attr="epoch", max_t=search.max_t, reduction_factor=search.reduction_factor or 3)
    elif name in POPULATION:
        return population_based(name, profile.search, search.perturbation_interval)
    else:
        return None
    return per_cell()(make, search.cells) if search.cells else make()


def population_based(name: str, searched: dict[str, Distribution], interval: int):
    """PBT (`name` "pbt") or PB2 ("pb2") over the searched keys, perturbing every
    `interval` epochs, that explores among running trials only.

    Ray's asynchronous PBT decides on every result, the last one included: a trial that
    reported its final epoch could be "exploited" and restarted from a donor's checkpoint
    under a new config, and a donor that had just reported its final epoch (not yet marked
    finished) could hand on its final checkpoint; the clone then re-reported the donor's
    final results under another config. Here a trial's last report (`status` other than
    "running") is never acted on and takes the trial out of the population."""
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
    from ray.tune.schedulers.pb2 import PB2

    explore = WithinDistributions(searched)
    if name == "pb2":
        base = PB2
        options = {"hyperparam_bounds": {k: list(d.corners()) for k, d in searched.items()}}
    else:
        base = PopulationBasedTraining
        options = {"hyperparam_mutations": {  # a list: PBT shifts along it
            k: list(d.args) if d.kind == "choice" else sampler(d) for k, d in searched.items()}}

    class RunningOnly(base):
        def on_trial_result(self, tune_controller, trial, result):
            if result.get("status", "running") != "running":
                self._trial_state[trial].last_score = None  # out of the quantiles
                return TrialScheduler.CONTINUE
            return super().on_trial_result(tune_controller, trial, result)

    RunningOnly.__name__ = base.__name__
    return RunningOnly(time_attr="epoch", perturbation_interval=interval, synch=False,
                       custom_explore_fn=explore, **options)


def sampler(distribution: Distribution):
    """Ray Tune's sampler of a `Distribution`."""
    from ray import tune

    if distribution.kind == "choice":
        return tune.choice(list(distribution.args))
    return getattr(tune, distribution.kind)(*distribution.args)


class WithinDistributions:
    """PBT's explore step multiplies a value by 0.8 or 1.2 (Ray's `perturbation_factors`),
    which can leave its distribution, and PB2's proposes floats: this puts a searched
    range's value back within its bounds (low..high; randint: low..high-1, an integer)."""

    def __init__(self, distributions: dict[str, Distribution]):
        self.distributions = dict(distributions)

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for key, distribution in self.distributions.items():
            if distribution.kind != "choice" and key in config:
                low, high = distribution.corners()
                value = min(max(config[key], low), high)
                config[key] = int(round(value)) if distribution.kind == "randint" else value
        return config


def per_cell():
    """A scheduler that keeps one scheduler per grid cell (the trial's values of the grid
    keys, the seed aside): a trial is compared with the trials of its own cell only. For
    schedulers that stop trials and never pause them (ASHA, the median rule); the next
    trial to run is FIFO's."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class PerCell(FIFOScheduler):
        def __init__(self, make, keys: tuple[str, ...]):
            super().__init__()
            self.make, self.keys = make, tuple(keys)
            self.cells: dict[str, TrialScheduler] = {}

        def set_search_properties(self, metric, mode, **spec) -> bool:
            self._metric, self._mode = metric or self._metric, mode or self._mode
            return all(s.set_search_properties(metric, mode, **spec)
                       for s in self.cells.values())

        def _of(self, trial) -> TrialScheduler:
            from search_spaces import expand_setup

            config = expand_setup(trial.config or {})
            cell = json.dumps([config.get(k) for k in self.keys], default=str)
            if cell not in self.cells:
                self.cells[cell] = scheduler = self.make()
                scheduler.set_search_properties(self._metric, self._mode)
            return self.cells[cell]

        def on_trial_add(self, tune_controller, trial):
            self._of(trial).on_trial_add(tune_controller, trial)

        def on_trial_error(self, tune_controller, trial):
            self._of(trial).on_trial_error(tune_controller, trial)

        def on_trial_result(self, tune_controller, trial, result):
            return self._of(trial).on_trial_result(tune_controller, trial, result)

        def on_trial_complete(self, tune_controller, trial, result):
            self._of(trial).on_trial_complete(tune_controller, trial, result)

        def on_trial_remove(self, tune_controller, trial):
            self._of(trial).on_trial_remove(tune_controller, trial)

        def debug_string(self) -> str:
            return f"{len(self.cells)} cells of " + ", ".join(
                s.debug_string() for s in self.cells.values())

    return PerCell


def hyperband_scheduler(bohb: bool = False):
    """Ray's `HyperBandScheduler` (`bohb`: its `HyperBandForBOHB`, which pauses a trial at a
    milestone without waiting for its bracket to fill, and tells BOHB), with one fix. A
    trial paused at its bracket's milestone waits for the bracket's other trials; when the
    last of them ends without its final result reaching `on_trial_result` (its function
    returned as it reported, so Tune stops it and calls `on_trial_remove`), Ray does not
    process the bracket (it is finished, or was halved once before: `is_being_processed` is
    never reset), so the paused trials are never stopped nor resumed and the sweep waits
    forever (Ray 2.60; seen in CI with hyperopt under hyperband). Here a removed trial
    always gets its bracket processed, outside the processing it may itself be part of."""
    from ray.tune.schedulers import HyperBandForBOHB, HyperBandScheduler

    class HyperBand(HyperBandForBOHB if bohb else HyperBandScheduler):
        _processing = False

        def _process_bracket(self, tune_controller, bracket) -> str:
            self._processing = True
            try:
                return super()._process_bracket(tune_controller, bracket)
            finally:
                self._processing = False

        def on_trial_remove(self, tune_controller, trial) -> None:
            bracket, _ = self._trial_info[trial]
            bracket.cleanup_trial(trial)
            if not self._processing:
                self._process_bracket(tune_controller, bracket)

    return HyperBand
