"""Verdicts on the documents' claims (NOTES.md H) from a sweep's results.

Each claim of a search space is a comparison (`search_spaces.Compare`, `CompareMetrics`,
`Trend`, `Threshold`) that reduces, per seed, to a signed number whose sign is the claim:
a difference that should be negative, a slope in the claimed direction, a margin below a
threshold. Over the seeds that number gets a 95% t-interval
(`workloads.evaluation.uncertainty`), and the verdict is

- **holds**: the interval lies on the claim's side (every cell's, for an "every" claim);
- **refuted**: the interval excludes the claim (any cell's, for an "every" claim);
- **inconclusive**: otherwise, and always with a single seed (no interval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from orchestrator.reports.aggregate import BOOKKEEPING, SEED
from search_spaces import Claim, Compare, CompareMetrics, Threshold, Trend
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


def _per_seed(group: pd.DataFrame, quantity) -> pd.Series:
    """`quantity(rows of one seed)` for each seed of `group` (NaN where it cannot be had)."""
    seeds = group[SEED] if SEED in group else pd.Series(0, index=group.index)
    return pd.Series({s: quantity(rows) for s, rows in group.groupby(seeds)}, dtype=float)


def _quantities(claim: Claim, table: pd.DataFrame, config: list[str]) -> dict[str, pd.Series]:
    """Per cell, per seed: the claim's quantity, negative where the claim holds."""
    test = claim.test
    rows = _filtered(table, test.where)
    out: dict[str, pd.Series] = {}
    if isinstance(test, Compare):
        for name, group in _cells(rows, config, (test.key,)):
            def difference(seed_rows, test=test):
                low = seed_rows.loc[seed_rows[test.key] == test.low, test.metric]
                high = seed_rows.loc[seed_rows[test.key] == test.high, test.metric]
                return low.mean() - high.mean() if len(low) and len(high) else math.nan
            out[name] = _per_seed(group, difference)
    elif isinstance(test, CompareMetrics):
        for name, group in _cells(rows, config, ()):
            out[name] = _per_seed(group, lambda r, t=test: (r[t.lower] - r[t.higher]).mean())
    elif isinstance(test, Trend):
        for name, group in _cells(rows, config, (test.key,)):
            def slope(seed_rows, test=test):
                x = np.log2(seed_rows[test.key].to_numpy(dtype=float))
                y = seed_rows[test.metric].to_numpy(dtype=float)
                ok = np.isfinite(y)
                if ok.sum() < 2 or np.ptp(x[ok]) == 0:
                    return math.nan
                return -test.direction * np.polyfit(x[ok], y[ok], 1)[0]
            out[name] = _per_seed(group, slope)
    elif isinstance(test, Threshold):
        sign = 1 if test.below else -1
        for name, group in _cells(rows, config, ()):
            out[name] = _per_seed(group, lambda r, t=test, s=sign: s * (r[t.metric].mean()
                                                                        - t.value))
    else:
        raise TypeError(f"unknown claim test {type(test).__name__}")
    return out


def evaluate_claim(claim: Claim, table: pd.DataFrame, config: list[str]) -> Verdict:
    """The verdict on `claim` from `table` (one row per trial; `config`: its config
    columns)."""
    missing = [c for c in _columns_used(claim) if c not in table.columns]
    if missing:
        return Verdict(claim, INCONCLUSIVE, detail=f"no data: {', '.join(missing)} not in "
                                                  f"the results")
    cells = {k: v.dropna() for k, v in _quantities(claim, table, config).items()}
    cells = {k: v for k, v in cells.items() if len(v)}
    if not cells:
        where = " ".join(f"{k}={v}" for k, v in getattr(claim.test, "where", {}).items())
        return Verdict(claim, INCONCLUSIVE, detail="no trials to compare"
                       + (f" (with {where})" if where else ""))
    stats = {k: t_interval(v.to_numpy()) for k, v in cells.items()}
    sides = {k: _side(s["lo"], s["hi"]) for k, s in stats.items()}
    every = getattr(claim.test, "every", False)
    # the pooled quantity: per seed, the mean over cells
    pooled = pd.concat(cells.values(), axis=1).mean(axis=1)
    overall = t_interval(pooled.to_numpy())
    seeds = max(s["n"] for s in stats.values())
    every = every and not getattr(claim.test, "mean", False)
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
        overall = stats[decisive]
        detail += f"; shown: {decisive}" if len(stats) > 1 else ""
    return Verdict(claim, verdict, overall["mean"], overall["lo"], overall["hi"], seeds,
                   len(cells), detail, per_cell)


def _columns_used(claim: Claim) -> list[str]:
    test = claim.test
    used = {Compare: lambda t: [t.metric, t.key], CompareMetrics: lambda t: [t.lower, t.higher],
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
        return f"{test.lower} minus {test.higher}", 1.0, 0.0
    if isinstance(test, Trend):
        return (f"slope of {test.metric} per doubling of {test.key}",
                -float(test.direction), 0.0)
    which = ("mean over the configurations" if test.mean else
             f"{test.metric} of the {'worst' if test.every else 'best'} configuration")
    which = f"{test.metric} {which}" if test.mean else which
    return (f"{which}, vs {test.value:g}",
            1.0 if test.below else -1.0, test.value)


def natural_interval(verdict: Verdict) -> str:
    """The verdict's number and interval in the claim's own units."""
    _, scale, offset = quantity(verdict.claim)
    ends = sorted([scale * verdict.lo + offset, scale * verdict.hi + offset])
    return interval_text(scale * verdict.estimate + offset, *ends)


def verdict_markdown(verdicts: list[Verdict]) -> str:
    """One row per claim: the document's statement and source, our number with its 95%
    interval over seeds, the verdict and how many seeds it rests on."""
    rows = [{"claim": v.claim.statement, "source": v.claim.source,
             "quantity": quantity(v.claim)[0],
             "ours (mean [95% CI])": natural_interval(v), "verdict": f"**{v.verdict}**",
             "seeds": v.seeds, "detail": v.detail} for v in verdicts]
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)
