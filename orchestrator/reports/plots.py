"""A sweep's plots: each metric against the swept key, reliability diagrams, and the
histograms of log p(x) and AM (ID against each OOD set)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.reports.aggregate import config_columns
from orchestrator.reports.tables import trial_label
from search_spaces import ResultTable, ScoreBars, ScoreCurves, SearchSpace
from workloads.evaluation.uncertainty import t_interval


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    """Write `fig` to `path` and free it."""
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def _groups(table: pd.DataFrame, keys: tuple[str, ...]):
    keys = [k for k in keys if k in table.columns]
    if not keys:
        yield (), table
        return
    for values, group in table.groupby(keys, sort=True, dropna=False):
        yield tuple(zip(keys, values if isinstance(values, tuple) else (values,))), group


def _label(pairs) -> str:
    return ", ".join(f"{k}={v}" for k, v in pairs) or "all trials"


def points_over_seeds(line: pd.DataFrame, x: str, metric: str,
                      apart: tuple[str, ...] = ()) -> pd.DataFrame:
    """x, the `apart` keys, mean, std, lo, hi, n of `metric` over the trials of one plotted
    line (seeds): a point per x and per value of the `apart` keys (a searched lr: each
    draw is its own point, never averaged with another draw)."""
    keys = [x, *apart]
    rows = [{**dict(zip(["x", *apart], values if isinstance(values, tuple) else (values,))),
             **t_interval(group[metric].to_numpy())}
            for values, group in line.groupby(keys, sort=True, dropna=False)]
    return pd.DataFrame(rows, columns=["x", *apart, "mean", "std", "lo", "hi", "n"])


def unplotted_keys(table: pd.DataFrame, space: SearchSpace) -> tuple[str, ...]:
    """The keys that name a trial (`table_keys`, with a search's searched keys) but are
    neither x, a line nor a panel of the plots, and differ between the trials of `table`."""
    placed = (space.plot_x, *space.plot_lines, *space.plot_panels)
    return tuple(k for k in space.table_keys if k not in placed and k in table.columns
                 and table[k].nunique(dropna=False) > 1)


def _finish_panels(fig, axes, used: int, title: str, path: Path, ncol: int) -> Path:
    """Blank the unused panels, put the first panel's legend under the figure, title it and
    save it to `path`."""
    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(ncol, len(labels)),
                   fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    return save_figure(fig, path, dpi=110)


def plot_metrics(table: pd.DataFrame, space: SearchSpace, out: Path) -> list[Path]:
    """One PNG per plot metric: metric against `plot_x`, a panel per `plot_panels` value,
    a line per `plot_lines` value (colour by the first key, line style by the rest); with
    several seeds, the line is their mean and a band their 95% t-interval. Trials that
    differ in another key that names them (`unplotted_keys`: a search's draws of lr) are
    never averaged: each is its own unconnected marker (the mean over its seeds; marker
    shape, not line style, by the other line keys), and the title says so."""
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if space.plot_x not in table.columns:
        return written
    table = table[table[space.plot_x].notna()]  # a trial that never started has no config
    panels = list(_groups(table, space.plot_panels))
    line_keys = [k for k in space.plot_lines if k in table.columns]
    colour_values = sorted(table[line_keys[0]].dropna().unique()) if line_keys else []
    style_values = (sorted({tuple(r) for r in table[line_keys[1:]].itertuples(index=False)})
                    if len(line_keys) > 1 else [()])
    styles = ["-", "--", ":", "-."]
    apart = unplotted_keys(table, space)
    note = f" (a point per {', '.join(apart)}, not averaged)" if apart else ""
    for metric in space.plot_metrics:
        if metric not in table.columns:
            continue
        cols = min(len(panels), 4)
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
        for ax, (panel, group) in zip(axes.flat, panels):
            for pairs, line in _groups(group, tuple(line_keys)):
                values = dict(pairs)
                points = points_over_seeds(line, space.plot_x, metric, apart)
                colour = (f"C{colour_values.index(values[line_keys[0]])}" if line_keys else "C0")
                kind = style_values.index(tuple(values[k] for k in line_keys[1:]))
                style, marker = (("none", "os^D"[kind % 4]) if apart else
                                 (styles[kind % len(styles)], "o"))
                ax.plot(points.x, points["mean"], linestyle=style, color=colour, marker=marker,
                        markersize=3, label=_label(pairs))
                if points["lo"].notna().any() and not apart:  # seeds: their 95% t-interval
                    ax.fill_between(points.x, points["lo"], points["hi"], color=colour,
                                    alpha=0.15, linewidth=0)
            if space.plot_log_x:
                ax.set_xscale("log", base=2)
            ax.set_title(_label(panel), fontsize=9)
            ax.set_xlabel(space.plot_x)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
        written.append(_finish_panels(fig, axes, len(panels), f"{space.name}: {metric}{note}",
                                      out / f"{metric}_vs_{space.plot_x}.png", ncol=4))
    return written


def _pooled_bins(trials: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Bin edges and accuracy per bin of several trials' reliability data pooled: counts
    summed, each bin's accuracy weighted by its count (0 where a bin is empty)."""
    import numpy as np

    counts = np.array([t["count"] for t in trials], dtype=float)
    accuracy = np.nan_to_num(np.array([[np.nan if a is None else a for a in t["accuracy"]]
                                       for t in trials], dtype=float))
    total = counts.sum(axis=0)
    pooled = np.divide((counts * accuracy).sum(axis=0), total, out=np.zeros_like(total),
                       where=total > 0)
    return trials[0]["bin_edges"], pooled.tolist()


def plot_reliability(table: pd.DataFrame, reliability: dict[str, Any], space: SearchSpace,
                     out: Path) -> list[Path]:
    """Reliability diagrams, one PNG per panel: rows by the first line key (e.g. model),
    columns by `plot_x`; the trials that share a cell (seeds) are pooled, bin by bin."""
    plt = pyplot()
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
                    edges, acc = _pooled_bins([reliability[t] for t in cell["trial_id"]])
                    ax.bar(edges[:-1], acc, width=edges[1] - edges[0], align="edge",
                           edgecolor="black", linewidth=0.4, alpha=0.8)
                    ece = cell["test_ece"].mean() if "test_ece" in cell else float("nan")
                    seeds = f" ({len(cell)} seeds)" if len(cell) > 1 else ""
                    ax.text(0.04, 0.88, f"ECE {ece:.3f}{seeds}", fontsize=7,
                            transform=ax.transAxes)
                ax.set_xlim(0, 1)
                ax.set_ylim(0, 1)
                ax.tick_params(labelsize=6)
                ax.set_title(f"{row_key}={row_value}, {space.plot_x}={col_value}"
                             if row_key else f"{space.plot_x}={col_value}", fontsize=7)
        fig.suptitle(f"reliability (accuracy per confidence bin): {_label(panel)}", fontsize=9)
        fig.tight_layout()
        slug = "_".join(f"{k}={v}" for k, v in panel) or "all"
        path = out / f"reliability_{slug}.png"
        save_figure(fig, path)
        written.append(path)
    return written


def plot_score_histograms(table: pd.DataFrame, samples: dict[str, Any], space: SearchSpace,
                          out: Path) -> list[Path]:
    """One PNG per trial (with several seeds, the trials of the first seed): a row per score
    of the space's `histogram_labels` that the trial sampled (log p(x) and AM (log10) by
    default), a column per OOD set, each panel the ID test values against that set's."""
    import numpy as np

    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    by_id = table.set_index("trial_id") if "trial_id" in table.columns else None
    if by_id is not None and "seed" in by_id.columns and by_id["seed"].nunique() > 1:
        first = set(by_id.index[by_id["seed"] == by_id["seed"].min()])
        samples = {k: v for k, v in samples.items() if k in first}
    labels = space.histogram_labels
    for trial_id, per_score in samples.items():
        scores = [s for s in labels if s in per_score]
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
        title = trial_label(trial, space) if trial is not None else trial_id
        fig.suptitle(f"{space.name}: {title}", fontsize=9)
        fig.tight_layout()
        path = out / f"hist_{trial_id}.png"
        save_figure(fig, path)
        written.append(path)
    return written


def plot_diagnostic(diagnostic: pd.DataFrame, table: pd.DataFrame, settings: dict[str, Any],
                    out: Path) -> list[Path]:
    """The training-time diagnostic (thesis Fig. 3.3 / 3.17): per score, AUROC against epoch,
    a panel per OOD set, a line per configuration (the config values that vary, e.g.
    alpha and dequantization; mean over seeds with its 95% band)."""
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    lines = [c for c in config_columns(table, settings)
             if c in diagnostic.columns and diagnostic[c].nunique() > 1]
    for score, rows in diagnostic.groupby("score", sort=True):
        sets = sorted(rows.ood_set.unique())
        cols = min(len(sets), 4)
        n_rows = math.ceil(len(sets) / cols)
        fig, axes = plt.subplots(n_rows, cols, figsize=(4.2 * cols, 3.4 * n_rows),
                                 squeeze=False)
        for ax, ood_set in zip(axes.flat, sets):
            for i, (pairs, line) in enumerate(_groups(rows[rows.ood_set == ood_set],
                                                      tuple(lines))):
                points = points_over_seeds(line, "epoch", "auroc")
                ax.plot(points.x, points["mean"], color=f"C{i % 10}", marker="o",
                        markersize=2, label=_label(pairs))
                if points["lo"].notna().any():
                    ax.fill_between(points.x, points["lo"], points["hi"], color=f"C{i % 10}",
                                    alpha=0.15, linewidth=0)
            ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
            ax.set_title(ood_set, fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"AUROC of {score}")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        written.append(_finish_panels(fig, axes, len(sets),
                                      f"OOD AUROC during training: {score}",
                                      out / f"diagnostic_{score}.png", ncol=5))
    return written


def plot_score_bars(rows: pd.DataFrame, bars: ScoreBars, space: SearchSpace,
                    path: Path) -> Path:
    """Bars per score (mean over seeds, each seed a dot): a row of panels per configuration,
    a panel per metric of `bars`."""
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = tuple(k for k in space.table_keys if k in rows.columns)
    configs = list(_groups(rows, keys))
    cols = len(bars.metrics)
    fig, axes = plt.subplots(len(configs), cols, figsize=(4.6 * cols, 3.2 * len(configs)),
                             squeeze=False)
    for row, (pairs, group) in enumerate(configs):
        scores = sorted(group.score.unique())
        for col, (metric, label) in enumerate(bars.metrics):
            ax = axes[row][col]
            for i, score in enumerate(scores):
                values = group.loc[group.score == score, metric].dropna()
                ax.bar(i, values.mean(), color=f"C{i % 10}", alpha=0.7)
                ax.plot([i] * len(values), values, "k.", markersize=4)
            ax.set_xticks(range(len(scores)), scores, rotation=30, ha="right", fontsize=8)
            ax.set_ylim(0, 1.02)
            ax.set_ylabel(label)
            ax.set_title(_label(pairs) or "all trials", fontsize=9)
            ax.grid(alpha=0.3, axis="y")
    return _finish_panels(fig, axes, len(configs) * cols, bars.title, path, ncol=4)


def plot_score_curves(rows: pd.DataFrame, curves: ScoreCurves, space: SearchSpace,
                      path: Path) -> Path:
    """A line per score, `y` against `x` of `curves` (mean over seeds at each x), a panel
    per configuration (e.g. failure prediction's precision-recall curves)."""
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = tuple(k for k in space.table_keys if k in rows.columns)
    configs = list(_groups(rows, keys))
    cols = min(len(configs), 3)
    n_rows = math.ceil(len(configs) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(max(4.6 * cols, 7.5), 3.8 * n_rows + 0.8),
                             squeeze=False)
    for ax, (pairs, group) in zip(axes.flat, configs):
        for i, (score, line) in enumerate(group.groupby("score", sort=True)):
            mean = line.groupby(curves.x)[curves.y].mean()
            ax.plot(mean.index, mean.to_numpy(), color=f"C{i % 10}", label=score)
        ax.set_xlabel(curves.x_label)
        ax.set_ylabel(curves.y_label)
        ax.set_ylim(0, 1.02)
        ax.set_title(_label(pairs), fontsize=9)
        ax.grid(alpha=0.3)
    return _finish_panels(fig, axes, len(configs), curves.title, path, ncol=3)


def plot_result_table(rows: pd.DataFrame, spec: ResultTable, space: SearchSpace,
                      out: Path) -> Path:
    """`plots/<name>.png` of a study's long table, as its `ResultTable.plot` says."""
    draw = plot_score_bars if isinstance(spec.plot, ScoreBars) else plot_score_curves
    return draw(rows, spec.plot, space, out / f"{spec.name}.png")
