"""What a sweep found: `best.json` (every sweep) and, for a search (searched keys or a
scheduler that stops trials), `search.md` and its plots.

best.json holds the best configuration on the sweep's validation metric (the value of its
last report; never a test metric), among the completed trials, a draw's seeds averaged:
overall (`best`), and per configuration of the grid (`per_configuration`: the values of
the searched keys that did best for each combination of the grid keys `by`). Without
searched keys, the best grid values themselves. `--set-from best.json` starts a sweep at
them (orchestrator.tune.overrides.apply_best).

search.md: the best trials (completed and stopped), how many trials reached each rung of
the scheduler, and `plots/search_<key>.png`, the metric against each searched key (log x
for a loguniform key), each trial a dot coloured by its status.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.reports.aggregate import SEED
from orchestrator.reports.plots import pyplot, save_figure
from orchestrator.tune.search import Search, rung_milestones
from search_spaces import SearchSpace

BEST_FILE = "best.json"
SEARCH_FILE = "search.md"
SHOWN_TRIALS = 10


def _plain(value: Any) -> Any:
    """A JSON value of a pandas / numpy cell."""
    return value.item() if hasattr(value, "item") else value


def search_of(settings: dict[str, Any]) -> dict[str, Any] | None:
    """The search record (`search_record`) of a sweep's settings when it is not a grid
    (searched keys, or a scheduler); None for a grid."""
    record = settings.get("search")
    if record and (record["searched"] or record["scheduler"] != "fifo"):
        return record
    return None


def with_searched_keys(space: SearchSpace, settings: dict[str, Any]) -> SearchSpace:
    """`space` whose reports also name a trial by its searched keys (`table_keys`)."""
    searched = [k for k in (settings.get("search") or {}).get("searched", {})
                if k not in space.table_keys]
    return replace(space, table_keys=(*space.table_keys, *searched)) if searched else space


def search_text(record: dict[str, Any]) -> str:
    """"searched lr ~ loguniform(0.0001, 0.1) (random, 8 draws), scheduler asha"."""
    searched = ", ".join(f"{k} ~ {v}" for k, v in record["searched"].items())
    drawn = (f"searched {searched} ({record['algorithm']}, {record['num_samples']} draws)"
             if searched else "searched nothing")
    return f"{drawn}, scheduler {record['scheduler']}"


def best_configurations(table: pd.DataFrame, record: dict[str, Any]) -> dict[str, Any] | None:
    """best.json's content for the trials `table` of a sweep whose search is `record`
    (`search_record`); None when no completed or stopped trial reported the metric."""
    metric, mode = record["metric"], record["mode"]
    if metric not in table or "status" not in table:
        return None
    done = table[table["status"].isin(["completed", "stopped"]) & table[metric].notna()]
    if done.empty or "epoch" not in done:
        return None
    searched = list(record["searched"])
    grid = [k for k in record["grid"] if k in done.columns and k not in searched]
    carried, by = (searched, grid) if searched else (grid, [])
    keys = [*by, *carried]
    groups = done.groupby(keys, dropna=False, sort=False) if keys else [((), done)]
    rows = []
    for values, group in groups:
        values = values if isinstance(values, tuple) else (values,)
        config = {k: _plain(v) for k, v in zip(keys, values)}
        rows.append({"config": {k: config[k] for k in by},
                     "values": {k: config[k] for k in carried},
                     "value": float(group[metric].mean()), "trials": len(group),
                     "completed": bool((group["status"] == "completed").all()),
                     "epochs": int(group["epoch"].min()),
                     "trial_ids": [str(t) for t in group.get("trial_id", [])]})
    sign = 1 if mode == "max" else -1

    def rank(row: dict[str, Any]) -> tuple:  # furthest first (as the scheduler judged)
        return (row["completed"], row["epochs"], sign * row["value"])

    cells: dict[str, dict[str, Any]] = {}
    for row in rows:  # per combination of `by`, the best draw (the first of equals)
        cell = json.dumps(row["config"], sort_keys=True)
        if cell not in cells or rank(row) > rank(cells[cell]):
            cells[cell] = row
    best = max(cells.values(), key=rank)
    return {"metric": metric, "mode": mode, "searched": searched, "by": by,
            "search": {k: record[k] for k in ("algorithm", "scheduler", "num_samples")},
            "best": {"config": {**best["config"], **best["values"]}, "value": best["value"],
                     "trial_ids": best["trial_ids"]},
            "per_configuration": list(cells.values())}


def best_trials(table: pd.DataFrame, record: dict[str, Any]) -> pd.DataFrame:
    """The SHOWN_TRIALS best trials that reported the metric (completed or stopped), best
    first: their status, last epoch, the searched and grid keys, and the metric."""
    metric = record["metric"]
    if metric not in table:
        return pd.DataFrame()
    shown = table[table[metric].notna() & table["status"].isin(["completed", "stopped"])]
    columns = [c for c in ("trial_id", "status", "epoch", *record["searched"],
                           *record["grid"], SEED, metric) if c in shown.columns]
    return (shown.sort_values(metric, ascending=record["mode"] == "min")
            [list(dict.fromkeys(columns))].head(SHOWN_TRIALS))


def rungs(table: pd.DataFrame, record: dict[str, Any]) -> pd.DataFrame:
    """For a scheduler that stops trials: per rung (an epoch it compares trials at), how
    many trials reached it and how many were stopped before the next."""
    if record["scheduler"] not in ("asha", "hyperband") or "epoch" not in table:
        return pd.DataFrame()
    search = Search(**{k: record[k] for k in Search.__dataclass_fields__})
    milestones = rung_milestones(search)
    epochs = table["epoch"].fillna(0)
    stopped = table["status"] == "stopped"
    rows = []
    for i, milestone in enumerate(milestones):
        following = milestones[i + 1] if i + 1 < len(milestones) else math.inf
        rows.append({"rung (epoch)": milestone, "trials reached": int((epochs >= milestone).sum()),
                     "stopped there": int((stopped & (epochs >= milestone)
                                           & (epochs < following)).sum())})
    return pd.DataFrame(rows)


def plot_searched(table: pd.DataFrame, record: dict[str, Any], out: Path) -> list[Path]:
    """plots/search_<key>.png per searched key: the metric of every trial against the key's
    value (log x for loguniform), coloured by status."""
    plt = pyplot()
    metric, paths = record["metric"], []
    if metric not in table:
        return paths
    out.mkdir(parents=True, exist_ok=True)
    for key, distribution in record["searched"].items():
        if key not in table:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for status, group in table[table[metric].notna()].groupby("status", sort=True):
            ax.scatter(group[key], group[metric], label=f"{status} ({len(group)})", alpha=0.8)
        if distribution.startswith("loguniform"):
            ax.set_xscale("log")
        ax.set_xlabel(f"{key} ~ {distribution}")
        ax.set_ylabel(f"{metric} (last report)")
        ax.set_title(f"{metric} against {key}: {record['algorithm']}, {record['scheduler']}")
        ax.legend()
        fig.tight_layout()
        paths.append(save_figure(fig, out / f"search_{key}.png"))
    return paths


def write_search_report(table: pd.DataFrame, record: dict[str, Any], out: Path,
                        grid: bool) -> dict[str, pd.DataFrame]:
    """best.json in `out` (the results dir); for a search also search.md and its plots.
    Returns the search's tables by name (for the W&B summary run)."""
    best = best_configurations(table, record)
    (out / BEST_FILE).unlink(missing_ok=True)
    if best is not None:
        (out / BEST_FILE).write_text(json.dumps(best, indent=2))
    if grid:
        return {}
    tables = {"best_trials": best_trials(table, record), "rungs": rungs(table, record)}
    searched = ", ".join(f"{k} ~ {v}" for k, v in record["searched"].items()) or "none"
    lines = [f"# Search: {record['algorithm']}, scheduler {record['scheduler']}",
             "", f"Searched: {searched}; {record['num_samples']} draws. Decided on "
             f"{record['metric']} ({record['mode']}), the validation metric.", "",
             f"## The {SHOWN_TRIALS} best trials", "",
             tables["best_trials"].to_markdown(index=False) if not tables["best_trials"].empty
             else "No trial reported the metric."]
    if not tables["rungs"].empty:
        lines += ["", f"## Rungs of {record['scheduler']} (grace period "
                      f"{record['grace_period']}, max_t {record['max_t']})", "",
                  tables["rungs"].to_markdown(index=False)]
    lines += ["", "## Best per configuration (best.json)", ""]
    if best is None:
        lines.append("No trial completed: no best configuration.")
    else:
        lines.append(pd.DataFrame([{**r["config"], **r["values"], record["metric"]: r["value"],
                                    "trials": r["trials"]}
                                   for r in best["per_configuration"]]).to_markdown(index=False))
    (out / SEARCH_FILE).write_text("\n".join(lines) + "\n")
    plot_searched(table, record, out / "plots")
    return {name: frame for name, frame in tables.items() if not frame.empty}


def best_line(out: Path) -> str:
    """The console's line on best.json: "[sweep] best on val_acc (max): lr=0.003 -> 0.97
    (results/best.json; 4 configurations)"."""
    path = out / BEST_FILE
    if not path.exists():
        return "[sweep] no completed trial reported the metric: no best.json"
    best = json.loads(path.read_text())
    values = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in best["best"]["config"].items()) or "(one configuration)"
    cells = len(best["per_configuration"])
    per = f"; best per configuration for {cells}" if cells > 1 else ""
    return (f"[sweep] best on {best['metric']} ({best['mode']}): {values} -> "
            f"{best['best']['value']:.4g} ({path}{per})")
