"""A sweep's trials aggregated over seeds: per configuration (every config value but the
seed), the number of seeds and each metric's mean, standard deviation and 95% t-interval
(`workloads.evaluation.uncertainty.t_interval`); for the metrics a table shows, with the
trials' per-example outputs, the 95% interval over seeds and test inputs
(`workloads.evaluation.resampling.seed_mean_intervals`: `<metric>_boot_lo`, `_boot_hi`)."""

from __future__ import annotations

import pandas as pd

from workloads.evaluation.resampling import dataset_key, seed_mean_intervals
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


def aggregate_over_seeds(table: pd.DataFrame, settings: dict,
                         examples: pd.DataFrame | None = None,
                         shown: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per configuration of the completed trials: its config values, `seeds` (how
    many), and `<metric>_mean`, `_std`, `_lo`, `_hi` for every metric; with per-example
    outputs (`examples`), `<metric>_boot_lo`, `_boot_hi` for the metrics of `shown` that
    have a per-example form, over seeds and test inputs."""
    frames = ({t: f for t, f in examples.groupby("trial_id")}
              if examples is not None and not examples.empty else {})
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
        wanted = [m for m in shown if m in metrics]
        if wanted and "trial_id" in group and group["trial_id"].isin(frames).all():
            datasets = [dataset_key(r) for r in group.to_dict("records")]
            bins = int(group["num_bins"].iloc[0]) if "num_bins" in group else 15
            for metric, (lo, hi) in seed_mean_intervals(
                    [frames[t] for t in group["trial_id"]], datasets, wanted,
                    bins).items():
                row.update({f"{metric}_boot_lo": lo, f"{metric}_boot_hi": hi})
        rows.append(row)
    # With no completed trial: the header alone (a file with no columns cannot be read)
    return pd.DataFrame(rows, columns=None if rows else [*keys, "seeds"])


def aggregated_markdown(aggregated: pd.DataFrame, keys: list[str], metrics: list[str]) -> str:
    """The configurations as a markdown table: `keys`, the seed count, and for each of
    `metrics` its mean and 95% interval over seeds and test inputs, or where it has none
    its t-interval over seeds, marked `(t)`."""
    lines = []
    for _, row in aggregated.iterrows():
        line = {k: row[k] for k in keys if k in row}
        line["seeds"] = int(row["seeds"])
        for metric in metrics:
            boot = f"{metric}_boot_lo" in row and pd.notna(row[f"{metric}_boot_lo"])
            if boot:
                line[metric] = interval_text(row[f"{metric}_mean"], row[f"{metric}_boot_lo"],
                                             row[f"{metric}_boot_hi"])
            elif f"{metric}_mean" in row:
                text = interval_text(row[f"{metric}_mean"], row[f"{metric}_lo"],
                                     row[f"{metric}_hi"])
                line[metric] = text + (" (t)" if "[" in text else "")
        lines.append(line)
    return pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True)
