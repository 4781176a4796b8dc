"""Searching what the documents leave unstated (a base learning rate, a flow's size): Ray
Tune's own search algorithms and trial schedulers, by name.

`--set lr=loguniform(1e-4,1e-2)` makes a key searched (`Profile.search`), `--num-samples N`
draws N values; `--search` picks who draws them and `--scheduler` who stops trials early:

- random: Tune's `BasicVariantGenerator`, each draw run on every grid combination and seed
  (`constant_grid_search`: the seeds of a draw share its values);
- optuna / hyperopt: `OptunaSearch` (TPE) / `HyperOptSearch`, which draw every value of a
  trial themselves: no grid key may have more than one value;
- asha / hyperband: `ASHAScheduler` / `HyperBandScheduler` on the trials' reported `epoch`
  (`time_attr="epoch"`), `grace_period` and `reduction_factor` as Ray defines them, `max_t`
  the trials' own epoch count; trials they end are `stopped`. Ray Tune keeps no
  scheduler state across a `--resume` (it rebuilds the scheduler as it started): ASHA
  judges the resumed trials against empty rungs, and HyperBand cannot resume at all;
- pbt: `PopulationBasedTraining`, which every quarter of the trials' epochs
  (`perturbation_interval`) has a trial of the bottom quarter clone one of the top's latest
  checkpoint and config, its searched values resampled or scaled by 0.8 / 1.2 (kept within
  their distribution); the population is `--num-samples` (best all running at once), and
  no grid key may have more than one value (a clone would take it too).

A scheduler decides on every epoch's report (`report_seconds` 0) and, where it pauses or
clones trials (hyperband, pbt), from a checkpoint of every epoch (`checkpoint_every` 1).
The search and scheduler are seeded (0): the same command draws the same values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.errors import UsageError
from search_spaces import Distribution, Profile, SearchSpace

SEARCHERS = ("random", "optuna", "hyperopt")
SCHEDULERS = ("fifo", "asha", "hyperband", "pbt")
STOPPING = ("asha", "hyperband")  # the schedulers that end trials before their last epoch
SEED = 0


def max_epochs(config: dict[str, Any]) -> int | None:
    """The most epochs a trial of `config` runs (budget A's cap, budget B's count, or
    `epochs`); None when the config does not say."""
    if config.get("budget") == "B" and "epochs_b" in config:
        return config["epochs_b"]
    if config.get("budget") == "A" and "max_epochs_a" in config:
        return config["max_epochs_a"]
    return config["epochs"] if isinstance(config.get("epochs"), int) else None


@dataclass(frozen=True)
class Search:
    """How a sweep's trials are drawn and stopped, and on which validation metric."""
    algorithm: str = "random"
    scheduler: str = "fifo"
    metric: str = ""
    mode: str = "max"
    grace_period: int = 1
    reduction_factor: float | None = None  # None: Ray's default (ASHA 4, HyperBand 3)
    max_t: int = 0                         # the trials' most epochs (asha, hyperband, pbt)

    @property
    def stops_trials(self) -> bool:
        return self.scheduler in STOPPING

    def settings(self) -> dict[str, Any]:
        """What sweep.json records (a resume must not change it)."""
        return asdict(self)


def search_record(profile: Profile, search: Search) -> dict[str, Any]:
    """A sweep's search as sweep.json records it (in its settings: a resume must not change
    it) and its reports read it: the `Search`, the draws, each searched key's
    distribution, and the grid keys whose values differ between trials (the seed aside)."""
    configs = profile.trial_configs()
    grid = [k for k in dict.fromkeys(k for c in configs for k in c)
            if k != "seed" and len({repr(c.get(k)) for c in configs}) > 1]
    return {**search.settings(), "num_samples": profile.num_samples,
            "searched": {k: str(d) for k, d in profile.search.items()}, "grid": grid}


def is_grid(profile: Profile, search: Search) -> bool:
    """Every trial of a grid is a fixed configuration run to its end: what the documents'
    claims compare. Searched keys or a scheduler that stops trials make a search."""
    return not profile.search and search.scheduler == "fifo"


def sampler(distribution: Distribution):
    """Ray Tune's sampler of a `Distribution`."""
    from ray import tune

    if distribution.kind == "choice":
        return tune.choice(list(distribution.args))
    return getattr(tune, distribution.kind)(*distribution.args)


def scheduler_settings(search: Search) -> dict[str, Any]:
    """Config values a scheduler needs of every trial: a report per epoch; a checkpoint per
    epoch where trials are paused or cloned."""
    if search.scheduler == "fifo":
        return {}
    every_epoch = {"checkpoint_every": 1} if search.scheduler in ("hyperband", "pbt") else {}
    return {"report_seconds": 0.0, **every_epoch}


def resolve_search(space: SearchSpace, profile: Profile, algorithm: str, scheduler: str,
                   metric: str | None, mode: str | None, grace_period: int,
                   reduction_factor: float | None, resume: bool = False) -> Search:
    """The `Search` of the sweep's flags, checked before Ray starts (bad input: UsageError
    naming the flag)."""
    metric = metric or space.metric
    if metric.startswith("test_"):
        raise UsageError(f"--metric {metric}: a test-set metric; a search picks on "
                         f"validation metrics (the space's own: {space.metric})")
    mode = mode or (space.mode if metric == space.metric else None)
    if mode is None:
        raise UsageError(f"--metric {metric}: give --mode max or --mode min")
    if profile.num_samples < 1:
        raise UsageError("--num-samples must be >= 1")
    if not profile.search and (profile.num_samples > 1 or algorithm != "random"
                               or scheduler == "pbt"):
        what = ("--num-samples" if profile.num_samples > 1 else
                f"--search {algorithm}" if algorithm != "random" else "--scheduler pbt")
        raise UsageError(f"{what}: no key is searched; give one a distribution, e.g. "
                         f"--set 'lr=loguniform(1e-4,1e-2)' (for repeats use --seeds)")
    if algorithm != "random" and scheduler == "pbt":
        raise UsageError(f"--search {algorithm} with --scheduler pbt: Ray Tune's PBT draws "
                         f"its own values (its population is --num-samples random draws); "
                         f"use --search random")
    grid = {k: len(v) for k, v in profile.grid.items() if len(v) > 1}
    if (algorithm != "random" or scheduler == "pbt") and grid:
        what = (f"--search {algorithm} draws" if algorithm != "random" else
                "--scheduler pbt copies, in each trial it clones,")
        keys = ", ".join(f"{k} ({n} values)" for k, n in grid.items())
        them = "it" if len(grid) == 1 else "them"
        raise UsageError(f"{what} every value of a trial, but {keys} "
                         f"{'is a grid' if len(grid) == 1 else 'are grids'}: fix {them} "
                         f"with --set KEY=VALUE, search {them} with choice(...), or use "
                         f"--search random and --scheduler fifo or asha")
    if resume and scheduler == "hyperband":
        raise UsageError("--resume: a hyperband search cannot resume (Ray Tune rebuilds a "
                         "scheduler as it was at the start, and HyperBand's lost brackets "
                         "then wait forever); start it again, or search with asha")
    if grace_period < 1:
        raise UsageError("--grace-period must be >= 1 epoch")
    if reduction_factor is not None and not reduction_factor > 1:
        raise UsageError("--reduction-factor must be > 1")
    epochs = 0
    if scheduler != "fifo":
        counts = [max_epochs(config) for config in profile.checked_configs()]
        if None in counts:
            raise UsageError(f"--scheduler {scheduler}: the trials of '{space.name}' do not "
                             f"say their epochs")
        epochs = max(counts)
        if scheduler in STOPPING and grace_period >= epochs:
            raise UsageError(f"--grace-period {grace_period}: the trials run at most "
                             f"{epochs} epochs; {scheduler} would stop none")
    return Search(algorithm, scheduler, metric, mode, grace_period, reduction_factor, epochs)


def param_space(profile: Profile, search: Search, data_dir: str) -> dict[str, Any]:
    """Tune's param_space: the fixed values, the grid (`grid_search`; a one-value grid key
    as a fixed value, which optuna and hyperopt accept) and the searched keys' samplers."""
    from ray import tune

    grid = {k: v[0] if len(v) == 1 and search.algorithm != "random" else tune.grid_search(v)
            for k, v in profile.grid.items()}
    return {**profile.config, **scheduler_settings(search), "data_dir": data_dir, **grid,
            **{k: sampler(d) for k, d in profile.search.items()}}


def quiet_searcher(search: Search) -> None:
    """Optuna logs a line per study and warns when a resumed trial reports an epoch again:
    neither is for the console."""
    if search.algorithm == "optuna":
        import warnings

        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", message="The reported value is ignored")


def search_algorithm(search: Search):
    """The Tune searcher of `search.algorithm` (seeded)."""
    if search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=SEED)
    if search.algorithm == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(random_state_seed=SEED)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(constant_grid_search=True, random_state=SEED)


def trial_scheduler(search: Search, profile: Profile):
    """The Tune scheduler of `search.scheduler` on the reported `epoch`; None: FIFO."""
    from ray.tune import schedulers

    if search.scheduler == "asha":
        return schedulers.ASHAScheduler(
            time_attr="epoch", max_t=search.max_t, grace_period=search.grace_period,
            reduction_factor=search.reduction_factor or 4)
    if search.scheduler == "hyperband":
        return hyperband_scheduler()(time_attr="epoch", max_t=search.max_t,
                                     reduction_factor=search.reduction_factor or 3)
    if search.scheduler == "pbt":
        mutations = {k: list(d.args) if d.kind == "choice" else sampler(d)
                     for k, d in profile.search.items()}  # a list: PBT shifts along it
        return schedulers.PopulationBasedTraining(
            time_attr="epoch", perturbation_interval=max(1, search.max_t // 4),
            hyperparam_mutations=mutations, synch=False,
            custom_explore_fn=WithinDistributions(profile.search))
    return None


def hyperband_scheduler():
    """Ray's `HyperBandScheduler`, with one fix. A trial paused at its bracket's milestone
    waits for the bracket's other trials; when the last of them ends without its final
    result reaching `on_trial_result` (its function returned as it reported, so Tune stops
    it and calls `on_trial_remove`), Ray does not process the bracket (it is finished, or
    was halved once before: `is_being_processed` is never reset), so the paused trials are
    never stopped nor resumed and the sweep waits forever (Ray 2.60; seen in CI with
    hyperopt under hyperband). Here a removed trial always gets its bracket processed,
    outside the processing it may itself be part of."""
    from ray.tune.schedulers import HyperBandScheduler

    class HyperBand(HyperBandScheduler):
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


class WithinDistributions:
    """PBT's explore step multiplies a value by 0.8 or 1.2 (Ray's `perturbation_factors`),
    which can leave its distribution: this puts a searched range's value back within its
    bounds (low..high; randint: low..high-1)."""

    def __init__(self, distributions: dict[str, Distribution]):
        self.distributions = dict(distributions)

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for key, distribution in self.distributions.items():
            if distribution.kind != "choice" and key in config:
                low, high = distribution.corners()
                config[key] = min(max(config[key], low), high)
        return config


def rung_milestones(search: Search) -> list[int]:
    """The epochs at which the scheduler compares trials, as Ray's ASHA forms its rungs:
    grace_period x reduction_factor^k for k < int(log(max_t / grace_period) /
    log(reduction_factor) + 1) (HyperBand's brackets start at factor^k, so grace 1)."""
    factor = search.reduction_factor or (4 if search.scheduler == "asha" else 3)
    grace = search.grace_period if search.scheduler == "asha" else 1
    rungs = int(math.log(search.max_t / grace) / math.log(factor) + 1)
    return [int(grace * factor ** k) for k in range(rungs)]
