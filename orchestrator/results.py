"""Results of a sweep: one table of all trials, in CSV and markdown, and PNG plots.

Files in `<sweep_dir>/results/`: `trials.csv` (every config column and final metric),
`trials.md` (the search space's key columns), `reliability.json` (reliability-diagram bins
per trial), and for sweeps with an OOD stage `ood.csv` (long format: trial x score x OOD
set), `ood.md` (Table-3.1-style tables) and `samples.json` (log p(x) and AM values for the
histograms); PNGs in `plots/`. `python -m orchestrator.report SWEEP_DIR` redraws the
tables and plots from these files alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from numbers import Number
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.session import FINAL_FILE
from search_spaces import SearchSpace, expand_setup

RESULTS_DIR = "results"
HIDDEN_CONFIG = ("data_dir",)
TUNE_BOOKKEEPING = ("config", "date", "hostname", "node_ip", "pid", "timestamp", "done",
                    "time_this_iter_s", "time_since_restore", "iterations_since_restore",
                    "checkpoint_dir_name", "should_checkpoint")


OOD_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95", "tnr95")


@dataclass
class Artifacts:
    """What trials leave beside their metrics, from their final checkpoints."""

    reliability: dict[str, Any] = field(default_factory=dict)  # trial_id -> bins
    ood: pd.DataFrame = field(default_factory=pd.DataFrame)     # long format
    samples: dict[str, Any] = field(default_factory=dict)      # trial_id -> score -> set


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


def collect_results(result_grid) -> tuple[pd.DataFrame, Artifacts]:
    """One row per trial (its config, its last reported metrics and its status), and the
    trials' final artifacts.

    Status is the loop's own (`completed`, `diverged`), `error` when the trial raised
    (after its retries), and `incomplete` when it stopped without a final report.
    """
    rows, artifacts, ood_rows = [], Artifacts(), []
    for result in result_grid:
        config = {k: v for k, v in expand_setup(result.config or {}).items()
                  if k not in HIDDEN_CONFIG and not isinstance(v, dict)}
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
        final = _final_artifacts(result)
        trial_id = row.get("trial_id")
        if not final or not trial_id:
            continue
        if final.get("reliability"):
            artifacts.reliability[trial_id] = final["reliability"]
        if final.get("samples"):
            artifacts.samples[trial_id] = final["samples"]
        ood_rows += [{"trial_id": trial_id, **r} for r in final.get("ood", [])]
    artifacts.ood = pd.DataFrame(ood_rows)
    return pd.DataFrame(rows), artifacts


def ood_long_table(table: pd.DataFrame, ood: pd.DataFrame, space: SearchSpace) -> pd.DataFrame:
    """The OOD rows with the trial's key columns in front: trial x score x OOD set."""
    if ood.empty:
        return ood
    keys = [k for k in ("trial_id", *space.table_keys) if k in table.columns]
    return table[keys].merge(ood, on="trial_id", how="right")


def write_results(table: pd.DataFrame, artifacts: Artifacts, space: SearchSpace,
                  sweep_dir: str | Path) -> Path:
    """Write trials.csv, ood.csv, reliability.json, samples.json, the markdown tables and
    the plots; return the results dir."""
    out = Path(sweep_dir) / RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    table = sort_table(table, space)
    table.to_csv(out / "trials.csv", index=False)
    (out / "reliability.json").write_text(json.dumps(artifacts.reliability))
    if not artifacts.ood.empty:
        artifacts.ood = ood_long_table(table, artifacts.ood, space)
        artifacts.ood.to_csv(out / "ood.csv", index=False)
        (out / "samples.json").write_text(json.dumps(artifacts.samples))
    render_outputs(table, artifacts, space, out)
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


def _trial_label(trial: pd.Series, space: SearchSpace) -> str:
    return ", ".join(f"{k}={trial[k]}" for k in space.table_keys if k in trial.index)


def _cell(row: pd.Series) -> str:
    """AUROC/AUPR-in/TNR95 as the thesis prints them: .969/.969/1.0."""
    def short(value: float) -> str:
        if value != value:
            return "nan"
        text = f"{value:.3f}"
        return "1.0" if text == "1.000" else text.lstrip("0")

    return "/".join(short(row[m]) for m in ("auroc", "aupr_in", "tnr95"))


def ood_markdown(table: pd.DataFrame, ood: pd.DataFrame, space: SearchSpace) -> str:
    """Table-3.1-style report: per trial, rows ID -> OOD set, columns scores, cells
    AUROC/AUPR-in/TNR95; first a summary of AUROC for every trial and OOD set."""
    if ood.empty:
        return ""
    keys = [k for k in space.table_keys if k in ood.columns]
    summary = ood.pivot_table(index=[*keys, "ood_set"], columns="score", values="auroc",
                              sort=True).reset_index()
    parts = [f"# {space.name}: OOD detection\n",
             "In-distribution is the positive class; every pair uses balanced ID/OOD counts.\n",
             "## AUROC per trial and OOD set\n", summary.to_markdown(index=False,
                                                                    floatfmt=".3f"),
             "\n## Per trial: AUROC/AUPR-in/TNR95 (columns: scores)\n"]
    by_id = table.set_index("trial_id") if "trial_id" in table.columns else None
    for trial_id, rows in ood.groupby("trial_id", sort=False):
        trial = by_id.loc[trial_id] if by_id is not None and trial_id in by_id.index else None
        dataset = trial["dataset"] if trial is not None and "dataset" in trial.index else "ID"
        grid = rows.assign(cell=rows.apply(_cell, axis=1)).pivot_table(
            index="ood_set", columns="score", values="cell", aggfunc="first", sort=False)
        grid.index = [f"{dataset} -> {name}" for name in grid.index]
        label = _trial_label(trial, space) if trial is not None else trial_id
        parts += [f"### {label} (trial {trial_id})\n", grid.to_markdown(), ""]
    return "\n".join(parts) + "\n"


def render_outputs(table: pd.DataFrame, artifacts: Artifacts, space: SearchSpace,
                   out: Path) -> None:
    (out / "trials.md").write_text(f"# {space.name}\n\n{markdown_table(table, space)}\n")
    plot_metrics(table, space, out / "plots")
    plot_reliability(table, artifacts.reliability, space, out / "plots")
    if not artifacts.ood.empty:
        (out / "ood.md").write_text(ood_markdown(table, artifacts.ood, space))
        plot_score_histograms(table, artifacts.samples, space, out / "plots")


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
            if space.plot_log_x:
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


def plot_score_histograms(table: pd.DataFrame, samples: dict[str, Any], space: SearchSpace,
                          out: Path) -> list[Path]:
    """One PNG per trial: rows log p(x) and AM (log10), a column per OOD set, each panel
    the ID test values against that set's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    written = []
    by_id = table.set_index("trial_id") if "trial_id" in table.columns else None
    labels = {"log_px": "log p(x) [nats]", "am": "log10 AM(x)"}
    for trial_id, per_score in samples.items():
        scores = [s for s in ("log_px", "am") if s in per_score]
        if not scores:
            continue
        sets = [k for k in per_score[scores[0]] if k != "id"]
        fig, axes = plt.subplots(len(scores), len(sets), squeeze=False,
                                 figsize=(3.2 * len(sets), 2.6 * len(scores)))
        for r, score in enumerate(scores):
            for c, ood_set in enumerate(sets):
                ax = axes[r][c]
                values = [np.asarray(per_score[score]["id"], dtype=float),
                          np.asarray(per_score[score][ood_set], dtype=float)]
                if score == "am":
                    values = [np.log10(np.maximum(v, 1e-12)) for v in values]
                values = [v[np.isfinite(v)] for v in values]
                both = np.concatenate(values)
                if both.size:
                    # 0.5-99.5 percentile range: a few extreme OOD values would
                    # otherwise squeeze the ID histogram into one bar
                    low, high = np.percentile(both, [0.5, 99.5])
                    bins = np.linspace(low, high if high > low else low + 1, 41)
                    ax.hist(values[0], bins=bins, alpha=0.6, density=True, label="ID test")
                    ax.hist(values[1], bins=bins, alpha=0.6, density=True, label=ood_set)
                ax.set_xlabel(labels[score], fontsize=8)
                ax.set_title(f"ID vs {ood_set}", fontsize=8)
                ax.tick_params(labelsize=6)
                ax.legend(fontsize=6)
        trial = by_id.loc[trial_id] if by_id is not None and trial_id in by_id.index else None
        title = _trial_label(trial, space) if trial is not None else trial_id
        fig.suptitle(f"{space.name}: {title}", fontsize=9)
        fig.tight_layout()
        path = out / f"hist_{trial_id}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def load_results(sweep_dir: str | Path) -> tuple[pd.DataFrame, Artifacts]:
    out = Path(sweep_dir) / RESULTS_DIR
    table = pd.read_csv(out / "trials.csv")
    artifacts = Artifacts()
    if (out / "reliability.json").exists():
        artifacts.reliability = json.loads((out / "reliability.json").read_text())
    if (out / "ood.csv").exists():
        artifacts.ood = pd.read_csv(out / "ood.csv")
    if (out / "samples.json").exists():
        artifacts.samples = json.loads((out / "samples.json").read_text())
    return table, artifacts
