"""A sweep's trials aggregated over seeds: per configuration (every config value but the
seed), the number of seeds and each metric's mean, standard deviation and 95% t-interval
(`workloads.evaluation.uncertainty.t_interval`)."""

from __future__ import annotations

import pandas as pd

from workloads.evaluation.uncertainty import interval_text, t_interval

SEED = "seed"
# Columns of trials.csv that are neither configuration nor results.
BOOKKEEPING = ("trial_id", "trial_dir", "node_id", "worker_pid", "status", "error",
               "diverged_epoch", "data_dir", "experiment_tag")


def config_columns(table: pd.DataFrame, settings: dict) -> list[str]:
    """The configuration columns of `table`: the sweep's settings (sweep.json) present as
    columns, but the seed."""
    return [c for c in table.columns if c in settings and c != SEED and c not in BOOKKEEPING]


def metric_columns(table: pd.DataFrame, settings: dict) -> list[str]:
    """Numeric columns that are results: not configuration, seed or bookkeeping."""
    return [c for c in table.columns
            if c not in settings and c != SEED and c not in BOOKKEEPING
            and pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(
                table[c])]


def aggregate_over_seeds(table: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """One row per configuration of the completed trials: its config values, `seeds` (how
    many), and `<metric>_mean`, `_std`, `_lo`, `_hi` for every metric."""
    done = table[table["status"] == "completed"] if "status" in table else table
    keys = config_columns(done, settings)
    metrics = metric_columns(done, settings)
    rows = []
    groups = done.groupby(keys, dropna=False, sort=True) if keys else [((), done)]
    for values, group in groups:
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        row["seeds"] = len(group)
        for metric in metrics:
            stats = t_interval(group[metric].to_numpy())
            row.update({f"{metric}_{k}": stats[k] for k in ("mean", "std", "lo", "hi")})
        rows.append(row)
    # With no completed trial: the header alone (a file with no columns cannot be read)
    return pd.DataFrame(rows, columns=None if rows else [*keys, "seeds"])


def aggregated_markdown(aggregated: pd.DataFrame, keys: list[str], metrics: list[str]) -> str:
    """The configurations as a markdown table: `keys`, the seed count, and for each of
    `metrics` its mean and 95% t-interval over seeds."""
    lines = []
    for _, row in aggregated.iterrows():
        line = {k: row[k] for k in keys if k in row}
        line["seeds"] = int(row["seeds"])
        for metric in metrics:
            if f"{metric}_mean" in row:
                line[metric] = interval_text(row[f"{metric}_mean"], row[f"{metric}_lo"],
                                             row[f"{metric}_hi"])
        lines.append(line)
    return pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True)
