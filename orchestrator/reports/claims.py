"""Verdicts on the documents' claims (NOTES.md H) from a sweep's results.

Each claim of a search space is a comparison (`search_spaces.Compare`, `CompareMetrics`,
`Trend`, `Threshold`) that reduces, per seed, to a signed number whose sign is the claim:
a difference that should be negative, a slope in the claimed direction, a margin below a
threshold. That number gets a 95% interval over seeds and test inputs
(`claim_bootstrap`, `workloads.evaluation.resampling.combined_interval`): Student's t over
the seeds with two variance components, the spread of the per-seed numbers and the
variance of their mean over resamples of the test inputs (each test set drawn once per
replicate and shared by every trial scored on it, so the arms stay paired; every metric
recomputed from the trials' per-example outputs). Where a metric has no
per-example form (a p-value, a gain over a grid) or a trial left no per-example outputs,
it is the 95% t-interval over seeds (`workloads.evaluation.uncertainty`), and says so;
the t-interval over seeds is always shown beside. The verdict is

- **holds**: the interval lies on the claim's side (every cell's, for an "every" claim);
- **refuted**: the interval excludes the claim (any cell's, for an "every" claim);
- **inconclusive**: otherwise, and always with a single seed (nothing says how much
  another training run would move the number).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from orchestrator.reports.aggregate import BOOKKEEPING, SEED
from search_spaces import Claim, Compare, CompareMetrics, Threshold, Trend
from workloads.evaluation.resampling import (
    RESAMPLES,
    TrialMetrics,
    combined_interval,
    dataset_key,
    draw,
    test_sets_of,
)
from workloads.evaluation.uncertainty import interval_text, t_interval

HOLDS, REFUTED, INCONCLUSIVE = "holds", "refuted", "inconclusive"


@dataclass
class Verdict:
    claim: Claim
    verdict: str
    estimate: float = math.nan   # the claim's quantity: mean over seeds (negative = holds)
    lo: float = math.nan
    hi: float = math.nan
    seeds: int = 0
    cells: int = 0
    detail: str = ""
    per_cell: list[str] = field(default_factory=list)
    t_lo: float = math.nan  # the 95% t-interval over seeds alone, beside
    t_hi: float = math.nan
    covers: str = "seeds (t-interval)"  # what the verdict's interval (lo, hi) covers


def _side(lo: float, hi: float) -> str:
    """Verdict of one interval of a quantity the claim says is negative."""
    if math.isnan(lo) or math.isnan(hi):
        return INCONCLUSIVE
    return HOLDS if hi < 0 else REFUTED if lo > 0 else INCONCLUSIVE


def _filtered(table: pd.DataFrame, where: dict) -> pd.DataFrame:
    done = table[table["status"] == "completed"] if "status" in table else table
    for key, value in where.items():
        done = done[done[key] == value]
    return done


def _determined(table: pd.DataFrame, key: str, by: list[str]) -> bool:
    """Whether `key` takes one value for each combination of the `by` columns."""
    return bool(by) and bool((table.groupby(by, dropna=False)[key].nunique(dropna=False)
                              <= 1).all())


def _cells(table: pd.DataFrame, config: list[str], drop: tuple[str, ...]):
    """The groups of `table` that a claim is tested in: one per combination of the config
    columns that vary, but those in `drop` (what the claim compares) and those determined by
    the others (a scaled lr by lr_scaling and batch_size)."""
    keys = [k for k in config if k not in drop and k != SEED and table[k].nunique() > 1]
    for key in list(keys):
        others = [k for k in keys if k != key] + [k for k in drop if k in table]
        if _determined(table, key, others):
            keys.remove(key)
    if not keys:
        yield "all", table
        return
    for values, group in table.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        yield " ".join(f"{k}={v}" for k, v in zip(keys, values)), group


Values = Callable[[pd.DataFrame, str], np.ndarray]  # (rows, metric) -> (len(rows), R)


def observed(rows: pd.DataFrame, metric: str) -> np.ndarray:
    """The trials' own numbers: one column (R = 1)."""
    return rows[metric].to_numpy(dtype=np.float64)[:, None]


def _per_seed(group: pd.DataFrame, quantity) -> dict:
    """`quantity(rows of one seed)` (R values) for each seed of `group`."""
    seeds = group[SEED] if SEED in group else pd.Series(0, index=group.index)
    return {s: quantity(rows) for s, rows in group.groupby(seeds)}


def _slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of each column of y (n, R) on x (n,), over its finite values."""
    out = np.full(y.shape[1], math.nan)
    for r in range(y.shape[1]):
        ok = np.isfinite(y[:, r])
        if ok.sum() >= 2 and np.ptp(x[ok]) > 0:
            dx = x[ok] - x[ok].mean()
            out[r] = dx @ (y[ok, r] - y[ok, r].mean()) / (dx @ dx)
    return out


def strongest(claim_test: CompareMetrics, group: pd.DataFrame) -> str:
    """The metric `lower` names, or of several the one with the highest mean (the
    baseline's strongest variant in this group of trials)."""
    if isinstance(claim_test.lower, str):
        return claim_test.lower
    present = [m for m in claim_test.lower if m in group]
    return max(present, key=lambda m: group[m].mean() if group[m].notna().any() else -math.inf)


def _quantities(claim: Claim, table: pd.DataFrame, config: list[str],
                values: Values = observed) -> dict[str, dict]:
    """Per cell, per seed: the claim's quantity (R values: one per replicate of `values`),
    negative where the claim holds."""
    test = claim.test
    rows = _filtered(table, test.where)
    out: dict[str, dict] = {}
    if isinstance(test, Compare):
        for name, group in _cells(rows, config, (test.key,)):
            def difference(seed_rows, test=test):
                low = values(seed_rows[seed_rows[test.key] == test.low], test.metric)
                high = values(seed_rows[seed_rows[test.key] == test.high], test.metric)
                return (low.mean(axis=0) - high.mean(axis=0) if len(low) and len(high)
                        else np.nan)
            out[name] = _per_seed(group, difference)
    elif isinstance(test, CompareMetrics):
        for name, group in _cells(rows, config, ()):
            lower = strongest(test, group)
            out[name] = _per_seed(group, lambda r, t=test, lower=lower: (
                values(r, lower) - values(r, t.higher)).mean(axis=0))
    elif isinstance(test, Trend):
        for name, group in _cells(rows, config, (test.key,)):
            out[name] = _per_seed(group, lambda r, t=test: -t.direction * _slope(
                np.log2(r[t.key].to_numpy(dtype=float)), values(r, t.metric)))
    elif isinstance(test, Threshold):
        sign = 1 if test.below else -1
        for name, group in _cells(rows, config, ()):
            out[name] = _per_seed(group, lambda r, t=test, s=sign: s * (
                values(r, t.metric).mean(axis=0) - t.value))
    else:
        raise TypeError(f"unknown claim test {type(test).__name__}")
    return out


def _observed_cells(claim: Claim, table: pd.DataFrame, config: list[str]) -> dict:
    """Per cell, the claim's quantity per seed (a Series; seeds without one dropped)."""
    cells = {k: pd.Series({s: float(np.ravel(v)[0]) for s, v in per_seed.items()},
                          dtype=float).dropna()
             for k, per_seed in _quantities(claim, table, config).items()}
    return {k: v for k, v in cells.items() if len(v)}


def evaluate_claim(claim: Claim, table: pd.DataFrame, config: list[str],
                   examples: pd.DataFrame | None = None, resamples: int = RESAMPLES) -> Verdict:
    """The verdict on `claim` from `table` (one row per trial; `config`: its config
    columns). With the trials' per-example outputs (`examples`), its interval covers seeds
    and test inputs (`claim_bootstrap`); otherwise, or where a metric cannot be had from
    them, it is the t-interval over seeds."""
    missing = [c for c in _columns_used(claim) if c not in table.columns]
    if missing:
        return Verdict(claim, INCONCLUSIVE, detail=f"no data: {', '.join(missing)} not in "
                                                  f"the results")
    cells = _observed_cells(claim, table, config)
    if not cells:
        where = " ".join(f"{k}={v}" for k, v in getattr(claim.test, "where", {}).items())
        return Verdict(claim, INCONCLUSIVE, detail="no trials to compare"
                       + (f" (with {where})" if where else ""))
    t_stats = {k: t_interval(v.to_numpy()) for k, v in cells.items()}
    stats = {k: dict(v) for k, v in t_stats.items()}  # the verdict's: updated below
    # the pooled quantity: per seed, the mean over cells
    pooled = pd.concat(cells.values(), axis=1).mean(axis=1)
    t_overall = t_interval(pooled.to_numpy())
    overall = dict(t_overall)
    seeds = max(s["n"] for s in stats.values())
    boot, covers = claim_bootstrap(claim, table, config, examples, resamples,
                                   observed=cells)
    if boot is not None and seeds < 2:
        covers += "; one seed: no interval"
    if boot is not None:  # the verdict's intervals: over seeds and test inputs (NaN for a
        for key, (lo, hi) in boot.items():  # cell of one seed: no spread to measure)
            target = overall if key == POOLED else stats.get(key)
            if target is not None:
                target.update(lo=lo, hi=hi)
    sides = {k: _side(s["lo"], s["hi"]) for k, s in stats.items()}
    every = getattr(claim.test, "every", False) and not getattr(claim.test, "mean", False)
    if every:
        held = sum(v == HOLDS for v in sides.values())
        refuted = [k for k, v in sides.items() if v == REFUTED]
        verdict = REFUTED if refuted else HOLDS if held == len(sides) else INCONCLUSIVE
        detail = f"{held} of {len(sides)} cells hold" + (
            f"; refuted in {'; '.join(refuted[:4])}" + (" ..." if len(refuted) > 4 else "")
            if refuted else "")
    elif isinstance(claim.test, Threshold) and not claim.test.mean:  # "in at least one"
        held = [k for k, v in sides.items() if v == HOLDS]
        verdict = HOLDS if held else REFUTED if all(v == REFUTED for v in sides.values()) \
            else INCONCLUSIVE
        detail = f"holds in {len(held)} of {len(sides)} configurations"
    else:
        verdict = _side(overall["lo"], overall["hi"])
        detail = f"mean over {len(cells)} cells"
    _, scale, offset = quantity(claim)

    def natural(stat):
        ends = sorted([scale * stat["lo"] + offset, scale * stat["hi"] + offset])
        return interval_text(scale * stat["mean"] + offset, *ends)

    per_cell = [f"{k}: {natural(s)} ({sides[k]})" for k, s in stats.items()]
    if isinstance(claim.test, Threshold) and not claim.test.mean:
        # the configuration that decides: the worst for "every", else the best
        pick = max if every else min
        decisive = pick(stats, key=lambda k: stats[k]["mean"])
        overall, t_overall = stats[decisive], t_stats[decisive]
        detail += f"; shown: {decisive}" if len(stats) > 1 else ""
    return Verdict(claim, verdict, overall["mean"], overall["lo"], overall["hi"], seeds,
                   len(cells), detail, per_cell, t_overall["lo"], t_overall["hi"], covers)


POOLED = "(pooled over cells)"


class _NotFromExamples(LookupError):
    """A metric that per-example outputs do not give."""


def claim_bootstrap(claim: Claim, table: pd.DataFrame, config: list[str],
                    examples: pd.DataFrame | None, resamples: int = RESAMPLES, seed: int = 0,
                    observed: dict | None = None) -> tuple[dict | None, str]:
    """Intervals of the claim's quantity, per cell and pooled (`POOLED`), over seeds and
    test inputs (`workloads.evaluation.resampling.combined_interval`): the spread of the
    per-seed quantities, plus the variance of their mean over `resamples` replicates of
    the test inputs (seeds held fixed; each test set drawn once per replicate and shared by
    every trial scored on it; every metric recomputed from the per-example outputs).
    `observed`: the per-seed quantities per cell, if the caller has them
    (`_observed_cells`). None where that cannot be done, with the reason; else what the
    interval covers."""
    if examples is None or examples.empty or "trial_id" not in table:
        return None, "seeds (t-interval; no per-example outputs)"
    rows = _filtered(table, claim.test.where)
    frames = {t: f for t, f in examples.groupby("trial_id") if t in set(rows["trial_id"])}
    if missing := [t for t in rows["trial_id"] if t not in frames]:
        return None, f"seeds (t-interval; {len(missing)} trials without per-example outputs)"
    info = rows.set_index("trial_id")
    keys = {t: dataset_key(info.loc[t].to_dict()) for t in frames}
    draws = draw(test_sets_of(list(frames.values()), [keys[t] for t in frames]), resamples,
                 seed)
    metrics = {t: TrialMetrics(f, keys[t], draws,
                               int(info.at[t, "num_bins"]) if "num_bins" in info else 15)
               for t, f in frames.items()}
    cache: dict = {}

    def values(group: pd.DataFrame, metric: str) -> np.ndarray:
        for trial in group["trial_id"]:
            if (trial, metric) not in cache:
                cache[trial, metric] = metrics[trial].of(metric)
            if cache[trial, metric] is None:
                if pd.notna(info.at[trial, metric]):  # a number its examples cannot give
                    raise _NotFromExamples(metric)
                cache[trial, metric] = np.full(resamples, np.nan)  # a trial without it
        return np.array([cache[t, metric] for t in group["trial_id"]]).reshape(
            len(group), resamples)

    try:
        per_cell = _quantities(claim, table, config, values)
    except _NotFromExamples as error:
        return None, f"seeds (t-interval; {error.args[0]} has no per-example form)"
    if observed is None:
        observed = _observed_cells(claim, table, config)
    seeds = sorted({s for cell in observed.values() for s in cell.index})
    matrices = {}  # per cell: seeds x replicates, NaN where a seed has no quantity
    for cell in observed:
        matrix = np.full((len(seeds), resamples), np.nan)
        for position, s in enumerate(seeds):
            if s in observed[cell].index:
                matrix[position] = per_cell[cell][s]
        matrices[cell] = matrix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate with no finite seed
        intervals = {cell: combined_interval(observed[cell].to_numpy(),
                                             np.nanmean(m, axis=0))
                     for cell, m in matrices.items()}
        pooled = pd.concat(observed.values(), axis=1).mean(axis=1)
        per_seed = np.nanmean(np.stack(list(matrices.values())), axis=0)
        intervals[POOLED] = combined_interval(
            pooled.to_numpy(), np.nanmean(per_seed[[seeds.index(s) for s in pooled.index]],
                                          axis=0))
    return intervals, (f"seeds and test inputs (t over seeds + {resamples} resamples of "
                       f"the test inputs)")


def _named(metrics: str | tuple[str, ...]) -> list[str]:
    return [metrics] if isinstance(metrics, str) else list(metrics)


def _columns_used(claim: Claim) -> list[str]:
    test = claim.test
    used = {Compare: lambda t: [t.metric, t.key],
            CompareMetrics: lambda t: [*_named(t.lower), t.higher],
            Trend: lambda t: [t.metric, t.key], Threshold: lambda t: [t.metric]}[type(test)]
    return [*used(test), *test.where]


def config_of(table: pd.DataFrame, metrics: set[str]) -> list[str]:
    """Config columns of a results table that has no recorded settings (a job's table):
    the non-metric, non-bookkeeping columns."""
    return [c for c in table.columns if c not in metrics and c not in BOOKKEEPING
            and c != SEED]


def quantity(claim: Claim) -> tuple[str, float, float]:
    """What the claim compares, in its own units, and (scale, offset) that turn the signed
    quantity (negative = holds) into it: natural = scale * signed + offset."""
    test = claim.test
    if isinstance(test, Compare):
        return (f"{test.metric}: {test.key}={test.low} minus {test.key}={test.high}", 1.0, 0.0)
    if isinstance(test, CompareMetrics):
        lower = test.lower if isinstance(test.lower, str) else \
            f"the strongest of {', '.join(test.lower)}"
        return f"{lower} minus {test.higher}", 1.0, 0.0
    if isinstance(test, Trend):
        return (f"slope of {test.metric} per doubling of {test.key}",
                -float(test.direction), 0.0)
    which = ("mean over the configurations" if test.mean else
             f"{test.metric} of the {'worst' if test.every else 'best'} configuration")
    which = f"{test.metric} {which}" if test.mean else which
    return (f"{which}, vs {test.value:g}",
            1.0 if test.below else -1.0, test.value)


def natural_interval(verdict: Verdict, seeds_only: bool = False) -> str:
    """The verdict's number and interval in the claim's own units (`seeds_only`: the
    t-interval over seeds instead)."""
    _, scale, offset = quantity(verdict.claim)
    lo, hi = (verdict.t_lo, verdict.t_hi) if seeds_only else (verdict.lo, verdict.hi)
    ends = sorted([scale * lo + offset, scale * hi + offset])
    return interval_text(scale * verdict.estimate + offset, *ends)


def verdict_markdown(verdicts: list[Verdict]) -> str:
    """One row per claim: the document's statement and source, our number with the 95%
    interval the verdict uses and what it covers, the t-interval over seeds alone beside it,
    the verdict and how many seeds it rests on."""
    rows = [{"claim": v.claim.statement, "source": v.claim.source,
             "quantity": quantity(v.claim)[0],
             "ours (mean [95% CI])": natural_interval(v), "interval over": v.covers,
             "t-interval over seeds": natural_interval(v, seeds_only=True),
             "verdict": f"**{v.verdict}**", "seeds": v.seeds, "detail": v.detail}
            for v in verdicts]
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)
