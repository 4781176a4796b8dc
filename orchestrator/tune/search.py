"""Searching what the documents leave unstated (a base learning rate, a flow's size): Ray
Tune's own search algorithms and trial schedulers, by name, resolved once into a `Search`
that the experiment, the console, the reports and best.json all read.

`--set lr=loguniform(1e-4,1e-2)` makes a key searched (`Profile.search`), `--num-samples N`
draws N values; `--search` picks who draws them and `--scheduler` who stops or perturbs
trials (orchestrator.tune.schedulers):

- random: Tune's `BasicVariantGenerator`, each draw run on every grid combination and seed
  (`constant_grid_search`: the seeds of a draw share its values), at most
  `--max-concurrent-trials` at once (it is the generator's own limit: Tune applies its
  `max_concurrent_trials` to other searchers only);
- optuna / hyperopt / bohb: `OptunaSearch` (TPE) / `HyperOptSearch` / `TuneBOHB` (under
  its own scheduler, `HyperBandForBOHB`: `--scheduler` hyperband or left out), which draw
  every value of a trial themselves: no grid key may have more than one value but the seed,
  whose seeds run each draw (Tune's `Repeater`: orchestrator.tune.repeater; the draw's
  value the mean over them). They draw their first `--startup-draws` values at random
  (Ray's defaults: optuna 10, hyperopt 20, bohb the searched keys + 1), start at the
  `--start-at` points, and run at most max(1, num_samples // 4) draws at once (each with
  its seeds) unless `--max-concurrent-trials` says: a `ConcurrencyLimiter`, so that later
  draws follow earlier results, on a cluster too;
- asha / median / hyperband: `ASHAScheduler` / `MedianStoppingRule` / `HyperBandScheduler`
  on the trials' reported `epoch` (`time_attr="epoch"`), `grace_period` and
  `reduction_factor` as Ray defines them, `max_t` the trials' own epoch count; asha and
  median compare a trial within its grid cell (`cells`; `--across-grid`: every trial);
  trials they end are `stopped`. Ray Tune keeps no scheduler state across a `--resume` (it
  rebuilds the scheduler as it started): ASHA judges the resumed trials against empty
  rungs, and HyperBand cannot resume at all;
- pbt / pb2: asynchronous Population Based Training, which every quarter of the trials'
  epochs (`perturbation_interval`) has a running trial of the bottom quarter clone a
  running one of the top: its latest checkpoint and config, the searched values then
  resampled or scaled by 0.8 / 1.2 (pbt) or chosen by PB2's GP bandit within their ranges
  (pb2), kept within their distributions; the population is `--num-samples`, and no grid
  key may have more than one value (a clone would take it too). Its result is a schedule
  per trial (reports/search.py: the lineage).

A scheduler decides on every epoch's report (`report_seconds` 0) and, where it pauses or
clones trials, from their checkpoints: hyperband's trials checkpoint every epoch, pbt's and
pb2's at each perturbation (`scheduler_settings`). The search and scheduler are seeded
(`--search-seed`, default 0): the same command draws the same values. `--time-budget-s`
ends the sweep after so many seconds (Tune's `time_budget_s`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.errors import UsageError
from orchestrator.tune.schedulers import (
    PAUSING,
    POPULATION,
    SCHEDULE_KEYS,
    SCHEDULERS,
    STOPPING,
    sampler,
)
from orchestrator.tune.searchers import MODEL_BASED, STARTUP_DRAWS, searcher_settings
from search_spaces import Profile, SearchSpace

__all__ = ["SCHEDULERS", "SEARCHERS", "Search", "resolve_search"]

SEARCHERS = ("random", *MODEL_BASED)
EXTRA = "pip install 'robustness-lab[search]'"  # the optional searchers' packages
PACKAGES = {"optuna": ("optuna",), "hyperopt": ("hyperopt",),
            "bohb": ("hpbandster", "ConfigSpace")}


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
    """How a sweep's trials are drawn, stopped or perturbed, and on which validation
    metric: every search setting, resolved once (`resolve_search`) and recorded in
    sweep.json (`settings`, which a resume must not change); the experiment, the console,
    the reports and best.json read it."""
    algorithm: str = "random"
    scheduler: str = "fifo"
    metric: str = ""
    mode: str = "max"
    grace_period: int = 1
    reduction_factor: float | None = None  # None: Ray's default (ASHA 4, HyperBand 3)
    max_t: int = 0                         # the trials' most epochs (any scheduler)
    num_samples: int = 1
    searched: dict[str, str] = field(default_factory=dict)  # key -> its distribution
    grid: tuple[str, ...] = ()             # keys whose values differ between trials
    fixed: dict[str, Any] = field(default_factory=dict)  # grid keys of the profile held
    cells: tuple[str, ...] = ()            # asha / median: compared within these keys' cell
    perturbation_interval: int = 0         # pbt / pb2: epochs between perturbations
    seed: int = 0                          # the searcher's and scheduler's
    seeds: tuple[int, ...] = ()            # a model-based searcher's: each draw's trials
    startup_draws: int = 0                 # a model-based searcher's random first draws
    start_at: tuple[dict[str, Any], ...] = ()  # the first draws (--start-at)
    time_budget_s: float | None = None     # the sweep ends after so many seconds

    @property
    def stops_trials(self) -> bool:
        return self.scheduler in STOPPING

    @property
    def perturbs(self) -> bool:
        return self.scheduler in POPULATION

    @property
    def is_search(self) -> bool:
        """Searched keys or a scheduler: not a grid, whose every trial is a fixed
        configuration run to its end (what the documents' claims compare)."""
        return bool(self.searched) or self.scheduler != "fifo"

    def settings(self) -> dict[str, Any]:
        """What sweep.json records (a resume must not change it; the reports read it)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def of(cls, record: dict[str, Any]) -> Search:
        """The `Search` of a sweep.json record (one written before a field existed gets
        that field's default)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v
                  for k, v in record.items() if k in fields}
        return cls(**values)


def scheduler_settings(search: Search) -> dict[str, Any]:
    """Config values a scheduler needs of every trial: a report per epoch; a checkpoint per
    epoch where trials are paused (hyperband); where they are cloned and perturbed (pbt,
    pb2), a checkpoint at each perturbation (every `perturbation_interval` epochs: where a
    trial is paused or cloned; a checkpoint a donor hands on is then at most a few
    intervals old, not a few epochs) and the keys whose values the trial's schedule records
    (orchestrator.tune.epochs.record_schedule)."""
    if search.scheduler == "fifo":
        return {}
    if search.perturbs:
        return {"report_seconds": 0.0, "checkpoint_every": search.perturbation_interval,
                SCHEDULE_KEYS: "+".join(search.searched)}
    every_epoch = {"checkpoint_every": 1} if search.scheduler == "hyperband" else {}
    return {"report_seconds": 0.0, **every_epoch}


def _check_installed(algorithm: str) -> None:
    """A searcher whose package is absent: one line naming the extra to install."""
    import importlib.util

    missing = [p for p in PACKAGES.get(algorithm, ()) if importlib.util.find_spec(p) is None]
    if missing:
        them = ("the package " + missing[0] + ", which is" if len(missing) == 1 else
                "the packages " + " and ".join(missing) + ", which are")
        raise UsageError(f"--search {algorithm} needs {them} not installed: {EXTRA}")


def _check_metric(space: SearchSpace, profile: Profile, metric: str) -> None:
    """`metric` must be reported every epoch by every trial (a validation metric, or
    `train_loss`): checked before Ray starts."""
    from workloads.studies import loop_class

    reported = None
    for config in profile.checked_configs():
        offered = loop_class(space.loop, config).epoch_metrics(config)
        reported = [m for m in (reported or offered) if m in offered]
    if reported is not None and metric not in reported:
        raise UsageError(f"--metric {metric}: not reported every epoch by the trials of "
                         f"'{space.name}'; use one of {', '.join(reported)}")


def resolve_search(space: SearchSpace, profile: Profile, *, algorithm: str = "random",
                   scheduler: str | None = None, metric: str | None = None,
                   mode: str | None = None, grace_period: int | None = None,
                   reduction_factor: float | None = None, resume: bool = False,
                   across_grid: bool = False, seed: int = 0,
                   base: Profile | None = None, startup_draws: int | None = None,
                   start_at: Sequence[str] = (),
                   time_budget_s: float | None = None) -> Search:
    """The `Search` of the sweep's flags, checked before Ray starts (bad input: UsageError
    naming the flag). `base` is the profile before the user's overrides: its grid keys that
    the search holds at one value are recorded (`fixed`), so that `--set-from` applies the
    values found only where they were found. `scheduler` None: fifo (bohb: hyperband)."""
    if algorithm == "bohb" and scheduler not in (None, "hyperband"):
        raise UsageError(f"--search bohb with --scheduler {scheduler}: BOHB decides with its "
                         f"own HyperBand (Tune's HyperBandForBOHB); leave --scheduler out "
                         f"or give --scheduler hyperband")
    scheduler = scheduler or ("hyperband" if algorithm == "bohb" else "fifo")
    metric = metric or space.metric
    if metric.startswith("test_"):
        raise UsageError(f"--metric {metric}: a test-set metric; a search picks on "
                         f"validation metrics (the space's own: {space.metric})")
    _check_metric(space, profile, metric)
    mode = mode or (space.mode if metric == space.metric else None)
    if mode is None:
        raise UsageError(f"--metric {metric}: give --mode max or --mode min")
    if profile.num_samples < 1:
        raise UsageError("--num-samples must be >= 1")
    if not profile.search and (profile.num_samples > 1 or algorithm != "random"
                               or scheduler in POPULATION):
        what = ("--num-samples" if profile.num_samples > 1 else
                f"--search {algorithm}" if algorithm != "random" else f"--scheduler {scheduler}")
        raise UsageError(f"{what}: no key is searched; give one a distribution, e.g. "
                         f"--set 'lr=loguniform(1e-4,1e-2)' (for repeats use --seeds)")
    _check_installed(algorithm)
    if algorithm != "random" and scheduler in POPULATION:
        raise UsageError(f"--search {algorithm} with --scheduler {scheduler}: Ray Tune's "
                         f"{scheduler.upper()} draws its own values (its population is "
                         f"--num-samples random draws); use --search random")
    if scheduler == "pb2":
        categorical = [k for k, d in profile.search.items() if d.kind == "choice"]
        if categorical:
            raise UsageError(f"--scheduler pb2: {', '.join(categorical)} searched with "
                             f"choice(...); PB2 explores numeric ranges only (uniform, "
                             f"loguniform, randint): use --scheduler pbt")
    searcher = searcher_settings(profile, algorithm, startup_draws, start_at)
    grid = {k: len(v) for k, v in profile.grid.items()
            if len(v) > 1 and not (k == "seed" and searcher.get("seeds"))}
    if (algorithm != "random" or scheduler in POPULATION) and grid:
        what = (f"--search {algorithm} draws" if algorithm != "random" else
                f"--scheduler {scheduler} copies, in each trial it clones,")
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
    if grace_period is not None and scheduler not in ("asha", "median"):
        raise UsageError(f"--grace-period: only asha and median use it, not --scheduler "
                         f"{scheduler}")
    if reduction_factor is not None and scheduler not in ("asha", "hyperband"):
        raise UsageError(f"--reduction-factor: only asha and hyperband use it, not "
                         f"--scheduler {scheduler}")
    if across_grid and scheduler not in ("asha", "median"):
        raise UsageError(f"--across-grid: only asha and median compare trials within a grid "
                         f"cell, not --scheduler {scheduler}")
    grace_period = 1 if grace_period is None else grace_period
    if grace_period < 1:
        raise UsageError("--grace-period must be >= 1 epoch")
    if reduction_factor is not None and not reduction_factor > 1:
        raise UsageError("--reduction-factor must be > 1")
    if time_budget_s is not None and not 0 < time_budget_s < math.inf:
        raise UsageError("--time-budget-s must be a positive number of seconds")
    epochs = 0
    if scheduler != "fifo":
        counts = [max_epochs(config) for config in profile.checked_configs()]
        if None in counts:
            raise UsageError(f"--scheduler {scheduler}: the trials of '{space.name}' do not "
                             f"say their epochs")
        epochs = max(counts)
        if scheduler in ("asha", "median") and grace_period >= epochs:
            raise UsageError(f"--grace-period {grace_period}: the trials run at most "
                             f"{epochs} epochs; {scheduler} would stop none")
        if scheduler in POPULATION and epochs < 2:
            raise UsageError(f"--scheduler {scheduler}: the trials run {epochs} epoch; a "
                             f"population needs at least 2 to perturb between")
    configs = profile.trial_configs()
    varying = tuple(k for k in dict.fromkeys(k for c in configs for k in c)
                    if k != "seed" and len({repr(c.get(k)) for c in configs}) > 1)
    held = {k: profile.config[k] for k in (base.grid if base else {})
            if k != "seed" and k in profile.config and k not in profile.search}
    cells = varying if scheduler in ("asha", "median") and not across_grid else ()
    return Search(algorithm, scheduler, metric, mode, grace_period, reduction_factor, epochs,
                  num_samples=profile.num_samples,
                  searched={k: str(d) for k, d in profile.search.items()}, grid=varying,
                  fixed=held, cells=cells,
                  perturbation_interval=max(1, epochs // 4) if scheduler in POPULATION else 0,
                  seed=seed, time_budget_s=time_budget_s, **searcher)


def param_space(profile: Profile, search: Search, data_dir: str) -> dict[str, Any]:
    """Tune's param_space: the fixed values, the grid (`grid_search`; a one-value grid key
    as a fixed value, which optuna and hyperopt accept; the seed of a searcher's repeats
    is its `SeedRepeater`'s) and the searched keys' samplers."""
    from ray import tune

    grid = {k: v[0] if len(v) == 1 and search.algorithm != "random" else tune.grid_search(v)
            for k, v in profile.grid.items() if not (k == "seed" and search.seeds)}
    return {**profile.config, **scheduler_settings(search), "data_dir": data_dir, **grid,
            **{k: sampler(d) for k, d in profile.search.items()}}


def quiet_searcher(search: Search) -> None:
    """Optuna logs a line per study and warns when a resumed trial reports an epoch again,
    BOHB's kernel densities (statsmodels) warn of a future default on every fit, and PB2's
    Gaussian process (scikit-learn) that a kernel parameter sits at its bound on most
    fits: none of it is for the console."""
    if search.scheduler == "pb2":
        import warnings

        warnings.filterwarnings("ignore", module="sklearn.gaussian_process")
    if search.algorithm == "bohb":
        import warnings

        warnings.filterwarnings("ignore", message="After 0.17 or January 2028",
                                category=FutureWarning)
    if search.algorithm == "optuna":
        import warnings

        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", message="The reported value is ignored")


def local_resources(search: Search, need: dict[str, float],
                    max_concurrent: int | None) -> dict[str, float]:
    """`ray.init`'s resources for a local Ray that runs at most `max_concurrent` trials of
    `need` at once under a scheduler that pauses trials (its paused trials must exist: see
    `search_algorithm`); {} otherwise (Ray's own count of the machine)."""
    if not max_concurrent or search.scheduler not in PAUSING:
        return {}
    resources = {"num_cpus": max_concurrent * need.get("CPU", 0)}
    if need.get("GPU"):
        resources["num_gpus"] = max_concurrent * need["GPU"]
    return resources


def search_algorithm(search: Search, max_concurrent: int | None = None):
    """The Tune searcher of `search.algorithm` (seeded), from its first points
    (`start_at`) and with its random first draws (`startup_draws`; 0: Ray's default), each
    draw run once per seed of `search.seeds` (`SeedRepeater`). `max_concurrent` caps the
    trials running at once: Tune applies its own `max_concurrent_trials` to a `Searcher` (a
    `ConcurrencyLimiter`), but our random search is Tune's `BasicVariantGenerator`, which
    Tune leaves alone, so the generator gets the cap itself -- but under a scheduler that
    pauses trials (hyperband, pbt, pb2), whose paused trials the generator counts as
    running: a population must exist whole to take turns (`local_resources` caps those)."""
    points = [dict(point) for point in search.start_at] or None
    startup = search.startup_draws or STARTUP_DRAWS.get(search.algorithm)
    if search.algorithm == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        sampler_ = optuna.samplers.TPESampler(n_startup_trials=startup, seed=search.seed)
        searcher = OptunaSearch(sampler=sampler_, points_to_evaluate=points)
    elif search.algorithm == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        searcher = HyperOptSearch(points_to_evaluate=points, n_initial_points=startup,
                                  random_state_seed=search.seed)
    elif search.algorithm == "bohb":
        import numpy as np
        from ray.tune.search.bohb import TuneBOHB

        np.random.seed(search.seed)  # hpbandster draws from numpy's global generator
        searcher = TuneBOHB(bohb_config={"min_points_in_model": startup},
                            points_to_evaluate=points, seed=search.seed)
    else:
        from ray.tune.search import BasicVariantGenerator

        cap = 0 if search.scheduler in PAUSING else max_concurrent or 0
        return BasicVariantGenerator(constant_grid_search=True, random_state=search.seed,
                                     max_concurrent=cap)
    if search.seeds:
        from orchestrator.tune.repeater import SeedRepeater

        searcher = SeedRepeater(searcher, search.seeds)
    return searcher


def rung_milestones(search: Search) -> list[int]:
    """The epochs at which the scheduler compares trials, as Ray's ASHA forms its rungs:
    grace_period x reduction_factor^k for k < int(log(max_t / grace_period) /
    log(reduction_factor) + 1) (HyperBand's brackets start at factor^k, so grace 1)."""
    factor = search.reduction_factor or (4 if search.scheduler == "asha" else 3)
    grace = search.grace_period if search.scheduler == "asha" else 1
    rungs = int(math.log(search.max_t / grace) / math.log(factor) + 1)
    return [int(grace * factor ** k) for k in range(rungs)]
