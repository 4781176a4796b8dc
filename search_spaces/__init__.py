"""Named sweeps. One module per sweep declares `SPACE`: what is swept, in three profiles.

A profile is declarative: fixed `config` values, a `grid` of swept values (every
combination is one trial) and the resources of one trial. The grid key `setup` is special:
its values are dicts of keys that change together (e.g. a dataset and its learning rate),
merged into the trial's config by `expand_setup`. `smoke` is the smallest real run
(tests, CI), `local` the default (embedded data, minutes on a laptop) and `paper` the
documents' full protocol (real datasets, GPUs).
"""

from __future__ import annotations

import importlib
import itertools
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PROFILES = ("smoke", "local", "paper")


@dataclass(frozen=True)
class Distribution:
    """A searched value, drawn per trial as Ray Tune's sampler of the same name draws it:
    `loguniform(low, high)`, `uniform(low, high)`, `randint(low, high)` (an integer in
    [low, high): high excluded, as `tune.randint`), `choice(a, b, ...)`."""
    kind: str
    args: tuple[Any, ...]

    def corners(self) -> list[Any]:
        """The values a check must accept: the bounds (the largest integer for randint),
        or every choice."""
        if self.kind == "choice":
            return list(self.args)
        low, high = self.args
        return [low, high - 1] if self.kind == "randint" else [low, high]

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.args
        low, high = self.args
        return low <= value < high if self.kind == "randint" else low <= value <= high

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(map(str, self.args))})"


@dataclass(frozen=True)
class Profile:
    config: dict[str, Any]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    num_workers: int = 1           # data-parallel workers per trial (Ray Train)
    gpus_per_worker: float = 0.0   # fractional values share a GPU between workers
    cpus_per_worker: int = 1
    description: str = ""
    seeds: int = 1                 # training runs per configuration (`--seeds` overrides)
    # searched keys (`--set lr=loguniform(1e-4,1e-2)`) and how many draws (`--num-samples`),
    # each draw run on every grid combination
    search: dict[str, Distribution] = field(default_factory=dict)
    num_samples: int = 1

    def num_trials(self) -> int:
        count = self.num_samples
        for values in self.grid.values():
            count *= len(values)
        return count

    def trial_configs(self) -> list[dict[str, Any]]:
        """The config of every grid combination (`setup` merged in), in the order Tune's
        grid search forms them; searched keys are not in it (see `checked_configs`)."""
        keys = list(self.grid)
        combos = itertools.product(*(self.grid[k] for k in keys)) if keys else [()]
        return [expand_setup({**self.config, **dict(zip(keys, values))}) for values in combos]

    def checked_configs(self) -> list[dict[str, Any]]:
        """Every grid combination with each searched key at each of its `corners`: the
        configs a check before Ray starts must accept (for a grid, `trial_configs`)."""
        keys = list(self.search)
        corners = itertools.product(*(self.search[k].corners() for k in keys))
        return [{**config, **dict(zip(keys, values))}
                for values in corners for config in self.trial_configs()]


# --- claims: what a document says, as a comparison over a sweep's results ------------------

@dataclass(frozen=True)
class Compare:
    """`metric` is lower where `key` = `low` than where `key` = `high`, seed by seed, in every
    cell of the other config values (`every`) or on average over the cells."""
    metric: str
    key: str
    low: Any
    high: Any
    every: bool = True
    where: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CompareMetrics:
    """Metric `lower` is below metric `higher` in the same trials, in every configuration
    (`every`) or on average over the configurations. `lower` may name several metrics (a
    baseline's variants): the strongest of them -- the highest mean over seeds, per
    configuration -- is the one compared."""
    lower: str | tuple[str, ...]
    higher: str
    every: bool = True
    where: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Trend:
    """`metric` falls (`direction` -1) or rises (+1) as `key` grows: the least-squares slope
    of the metric on log2(key), per cell of the other config values and seed, averaged."""
    metric: str
    key: str
    direction: int = -1
    where: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Threshold:
    """`metric` is below (`below`) or above `value`, in every configuration (`every`), in
    at least one, or on average over the configurations (`mean`: a table's "average" row)."""
    metric: str
    value: float
    below: bool = True
    every: bool = True
    where: dict[str, Any] = field(default_factory=dict)
    mean: bool = False


@dataclass(frozen=True)
class Claim:
    """A claim of one of the documents that a sweep tests. `data` says whose results decide
    it: the sweep's trials, or the `defense` job run on them."""
    id: str
    statement: str           # as the document puts it
    source: str              # document file and table / figure / section
    test: Compare | CompareMetrics | Trend | Threshold
    data: str = "trials"


# --- a study's own results: extra tables and plots, the documents' tables beside ours -------

@dataclass(frozen=True)
class ScoreBars:
    """A figure of bars per score: for each configuration a row of panels, one per metric
    `(column, label)` (mean over seeds, each seed a dot)."""
    metrics: tuple[tuple[str, str], ...]
    title: str


@dataclass(frozen=True)
class ScoreCurves:
    """A figure of a line per score, `y` against `x` (mean over seeds at each x), a panel per
    configuration."""
    x: str
    y: str
    x_label: str
    y_label: str
    title: str


@dataclass(frozen=True)
class ResultTable:
    """Rows a study's final stage leaves under `name` in its final artifacts (one row per
    trial x ...). Every sweep writes them to `results/<name>.csv` with the trial's keys;
    with `columns`, the report also writes `<name>.md`: a row per configuration (the
    space's `table_keys`) and value of `by`, a cell per column computed from the group's
    rows over seeds (`columns`: label -> cell(rows)); with `plot`, `plots/<name>.png`."""
    name: str
    title: str = ""
    note: str = ""                       # text under the title; "{seeds}": the seed count
    by: tuple[str, ...] = ()
    columns: dict[str, Callable[[Any], str]] = field(default_factory=dict)
    plot: ScoreBars | ScoreCurves | None = None


@dataclass(frozen=True)
class SweepResults:
    """What a `Beside` table reads of a finished sweep: its trials, its OOD rows (trial x
    score x OOD set), the ID dataset, and its other long tables by name (pandas frames)."""
    trials: Any
    ood: Any
    dataset: str
    tables: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Beside:
    """A document's table beside ours in the sweep's REPRODUCTION.md, under `heading`:
    `render(results)` (a `SweepResults`) gives its markdown, "" where the sweep has no
    rows for it."""
    heading: str
    render: Callable[[SweepResults], str]


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    loop: str                      # the train loop: a key of workloads.studies.LOOPS
    metric: str                    # Tune's metric for picking the best trial
    mode: str                      # "max" or "min"
    profiles: dict[str, Profile]
    table_keys: tuple[str, ...] = ()     # config columns that identify a trial in reports
    table_metrics: tuple[str, ...] = ()  # final metrics shown in the markdown table
    plot_x: str = ""                     # x axis of the report's plots
    plot_log_x: bool = True              # log2 x axis (batch sizes); False for alpha
    plot_lines: tuple[str, ...] = ()     # config keys that make separate lines
    plot_panels: tuple[str, ...] = ()    # config keys that make separate panels
    plot_metrics: tuple[str, ...] = ()   # one figure per metric
    choices: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # allowed values
    positive: tuple[str, ...] = ()       # numeric keys that must be > 0
    claims: tuple[Claim, ...] = ()       # the documents' claims this sweep tests
    count_lists: tuple[str, ...] = ()    # keys holding positive integers joined by "+"
    result_tables: tuple[ResultTable, ...] = ()  # the study's long tables beyond `ood`
    # the scores whose values a trial keeps (`samples`) drawn as histograms, with their axes
    histogram_labels: dict[str, str] = field(default_factory=lambda: {
        "log_px": "log p(x) [nats]", "am": "log10 AM(x)"})
    beside: tuple[Beside, ...] = ()      # the documents' tables beside ours
    # keys a searched value found at one of their values holds for at all (`--set-from`
    # applies it there; any other key the search held fixed must match)
    carried_across: tuple[str, ...] = ()

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise KeyError(f"sweep '{self.name}' has no profile '{name}'; "
                           f"known: {', '.join(self.profiles)}")
        return self.profiles[name]


SETUP = "setup"


def expand_setup(config: dict[str, Any]) -> dict[str, Any]:
    """The config with its `setup` dict (if any) merged in; setup values win."""
    if SETUP not in config:
        return dict(config)
    rest = {k: v for k, v in config.items() if k != SETUP}
    return {**rest, **config[SETUP]}


def sweep_names() -> list[str]:
    """Names of all sweeps: the modules of this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_search_space(name: str) -> SearchSpace:
    if name not in sweep_names():
        raise KeyError(name)
    return importlib.import_module(f"{__name__}.{name}").SPACE
