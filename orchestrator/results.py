"""Results of a sweep: one table of all trials, in CSV and markdown, and PNG plots.

Files in `<sweep_dir>/results/`: `trials.csv` (every config column and final metric),
`trials.md` (the search space's key columns), `reliability.json` (reliability-diagram bins
per trial) and `plots/*.png`. `python -m orchestrator.report SWEEP_DIR` redraws the table
and plots from these files alone.
"""

from __future__ import annotations

import json
import math
from numbers import Number
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.session import FINAL_FILE
from search_spaces import SearchSpace

RESULTS_DIR = "results"
HIDDEN_CONFIG = ("data_dir",)
TUNE_BOOKKEEPING = ("config", "date", "hostname", "node_ip", "pid", "timestamp", "done",
                    "time_this_iter_s", "time_since_restore", "iterations_since_restore",
                    "checkpoint_dir_name", "should_checkpoint")


def _final_artifacts(result) -> dict | None:
    """The `final.json` of a trial's last checkpoint (Tune's, or Ray Train's by path)."""
    path = None
    if result.checkpoint is not None:
        path = result.checkpoint.path
    elif result.metrics and result.metrics.get("checkpoint_path"):
        path = result.metrics["checkpoint_path"]
    if path is None:
        return None
    final = Path(path) / FINAL_FILE
    return json.loads(final.read_text()) if final.exists() else None


def collect_results(result_grid) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per trial: its config, its last reported metrics and its status.

    Status is the loop's own (`completed`, `diverged`), `error` when the trial raised
    (after its retries), and `incomplete` when it stopped without a final report.
    """
    rows, reliability = [], {}
    for result in result_grid:
        config = {k: v for k, v in (result.config or {}).items() if k not in HIDDEN_CONFIG}
        metrics = {k: v for k, v in (result.metrics or {}).items()
                   if k not in TUNE_BOOKKEEPING and (isinstance(v, (Number, str)) or v is None)}
        row = {**config, **metrics}
        if result.error is not None:
            row["status"] = "error"
            row["error"] = str(result.error).strip().splitlines()[-1][:300]
        elif metrics.get("status") in (None, "running"):
            row["status"] = "incomplete"
        row["trial_dir"] = str(result.path)
        rows.append(row)
        artifacts = _final_artifacts(result)
        if artifacts and row.get("trial_id"):
            reliability[row["trial_id"]] = artifacts.get("reliability")
    return pd.DataFrame(rows), reliability


def write_results(table: pd.DataFrame, reliability: dict[str, Any], space: SearchSpace,
                  sweep_dir: str | Path) -> Path:
    """Write trials.csv, trials.md, reliability.json and the plots; return the results dir."""
    out = Path(sweep_dir) / RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    table = sort_table(table, space)
    table.to_csv(out / "trials.csv", index=False)
    (out / "reliability.json").write_text(json.dumps(reliability))
    render_outputs(table, reliability, space, out)
    return out


def sort_table(table: pd.DataFrame, space: SearchSpace) -> pd.DataFrame:
    keys = [k for k in space.table_keys if k in table.columns]
    return table.sort_values(keys, kind="stable").reset_index(drop=True) if keys else table


def markdown_table(table: pd.DataFrame, space: SearchSpace) -> str:
    """The key columns of every trial as a markdown table (floats to 4 digits)."""
    columns = [k for k in space.table_keys if k in table.columns]
    columns += [m for m in space.table_metrics if m in table.columns]
    columns += [c for c in ("status", "diverged_epoch", "error") if c in table.columns]
    return sort_table(table, space)[columns].to_markdown(index=False, floatfmt=".4f")


def render_outputs(table: pd.DataFrame, reliability: dict[str, Any], space: SearchSpace,
                   out: Path) -> None:
    (out / "trials.md").write_text(f"# {space.name}\n\n{markdown_table(table, space)}\n")
    plot_metrics(table, space, out / "plots")
    plot_reliability(table, reliability, space, out / "plots")


def _groups(table: pd.DataFrame, keys: tuple[str, ...]):
    keys = [k for k in keys if k in table.columns]
    if not keys:
        yield (), table
        return
    for values, group in table.groupby(keys, sort=True, dropna=False):
        yield tuple(zip(keys, values if isinstance(values, tuple) else (values,))), group


def _label(pairs) -> str:
    return ", ".join(f"{k}={v}" for k, v in pairs) or "all trials"


def plot_metrics(table: pd.DataFrame, space: SearchSpace, out: Path) -> list[Path]:
    """One PNG per plot metric: metric against `plot_x`, a panel per `plot_panels` value,
    a line per `plot_lines` value (colour by the first key, line style by the rest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    if space.plot_x not in table.columns:
        return written
    panels = list(_groups(table, space.plot_panels))
    line_keys = [k for k in space.plot_lines if k in table.columns]
    colour_values = sorted(table[line_keys[0]].dropna().unique()) if line_keys else []
    style_values = (sorted({tuple(r) for r in table[line_keys[1:]].itertuples(index=False)})
                    if len(line_keys) > 1 else [()])
    styles = ["-", "--", ":", "-."]
    for metric in space.plot_metrics:
        if metric not in table.columns:
            continue
        cols = min(len(panels), 4)
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
        for ax, (panel, group) in zip(axes.flat, panels):
            for pairs, line in _groups(group, tuple(line_keys)):
                values = dict(pairs)
                line = line.sort_values(space.plot_x)
                colour = (f"C{colour_values.index(values[line_keys[0]])}" if line_keys else "C0")
                style_key = tuple(values[k] for k in line_keys[1:])
                style = styles[style_values.index(style_key) % len(styles)]
                ax.plot(line[space.plot_x], line[metric], style, color=colour, marker="o",
                        markersize=3, label=_label(pairs))
            ax.set_xscale("log", base=2)
            ax.set_title(_label(panel), fontsize=9)
            ax.set_xlabel(space.plot_x)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)),
                       fontsize=8, frameon=False)
        fig.suptitle(f"{space.name}: {metric}")
        fig.tight_layout(rect=(0, 0.08, 1, 0.95))
        path = out / f"{metric}_vs_{space.plot_x}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_reliability(table: pd.DataFrame, reliability: dict[str, Any], space: SearchSpace,
                     out: Path) -> list[Path]:
    """Reliability diagrams, one PNG per panel: rows by the first line key (e.g. model),
    columns by `plot_x`; where several trials share a cell, the first in table order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    if not reliability or "trial_id" not in table.columns or space.plot_x not in table.columns:
        return written
    row_key = next((k for k in space.plot_lines if k in table.columns), None)
    for panel, group in _groups(table, space.plot_panels):
        group = group[group["trial_id"].isin(list(reliability))]
        if group.empty:
            continue
        row_values = sorted(group[row_key].unique()) if row_key else [None]
        col_values = sorted(group[space.plot_x].unique())
        fig, axes = plt.subplots(len(row_values), len(col_values), squeeze=False,
                                 figsize=(2.2 * len(col_values), 2.3 * len(row_values)))
        for r, row_value in enumerate(row_values):
            for c, col_value in enumerate(col_values):
                ax = axes[r][c]
                cell = group[group[space.plot_x] == col_value]
                if row_key:
                    cell = cell[cell[row_key] == row_value]
                ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
                if not cell.empty:
                    trial = cell.iloc[0]
                    bins = reliability[trial["trial_id"]]
                    edges = bins["bin_edges"]
                    width = edges[1] - edges[0]
                    acc = [0.0 if a is None or a != a else a for a in bins["accuracy"]]
                    ax.bar(edges[:-1], acc, width=width, align="edge", edgecolor="black",
                           linewidth=0.4, alpha=0.8)
                    ece = trial.get("test_ece", float("nan"))
                    ax.text(0.04, 0.88, f"ECE {ece:.3f}", fontsize=7, transform=ax.transAxes)
                ax.set_xlim(0, 1)
                ax.set_ylim(0, 1)
                ax.tick_params(labelsize=6)
                ax.set_title(f"{row_key}={row_value}, {space.plot_x}={col_value}"
                             if row_key else f"{space.plot_x}={col_value}", fontsize=7)
        fig.suptitle(f"reliability (accuracy per confidence bin): {_label(panel)}", fontsize=9)
        fig.tight_layout()
        slug = "_".join(f"{k}={v}" for k, v in panel) or "all"
        path = out / f"reliability_{slug}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def load_results(sweep_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    out = Path(sweep_dir) / RESULTS_DIR
    table = pd.read_csv(out / "trials.csv")
    reliability_path = out / "reliability.json"
    reliability = json.loads(reliability_path.read_text()) if reliability_path.exists() else {}
    return table, reliability
