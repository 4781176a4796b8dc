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
from orchestrator.tune.schedulers import POPULATION
from orchestrator.tune.search import Search, rung_milestones
from search_spaces import SearchSpace

BEST_FILE = "best.json"
SEARCH_FILE = "search.md"
SHOWN_TRIALS = 10


def _plain(value: Any) -> Any:
    """A JSON value of a pandas / numpy cell."""
    return value.item() if hasattr(value, "item") else value


def search_of(settings: dict[str, Any]) -> dict[str, Any] | None:
    """The search record (`Search.settings`) of a sweep's settings when it is not a grid
    (searched keys, or a scheduler); None for a grid."""
    record = settings.get("search")
    return record if record and Search.of(record).is_search else None


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


def _value_at(epochs: pd.DataFrame, trial_ids: list[str], metric: str,
              epoch: int) -> float | None:
    """The mean of `metric` over the trials `trial_ids` at `epoch` (their reported epochs,
    `epochs`); None when one of them has no value there."""
    if epochs.empty or metric not in epochs:
        return None
    at = epochs[epochs["trial_id"].astype(str).isin(trial_ids) & (epochs["epoch"] == epoch)]
    values = at.drop_duplicates("trial_id", keep="last")[metric]
    return float(values.mean()) if len(values) == len(trial_ids) and values.notna().all() \
        else None


def _draws(done: pd.DataFrame, keys: list[str]):
    groups = done.groupby(keys, dropna=False, sort=False) if keys else [((), done)]
    for values, group in groups:
        yield (values if isinstance(values, tuple) else (values,)), group


def best_configurations(table: pd.DataFrame, record: dict[str, Any],
                        epochs: pd.DataFrame | None = None) -> dict[str, Any] | None:
    """best.json's content for the trials `table` of a sweep whose search is `record`
    (`Search.settings`), with the trials' reported epochs `epochs` (the long table
    `epochs`); None when no completed or stopped trial reported the metric.

    A draw (the values of the searched keys in one grid cell, over its seeds) is compared
    at one budget: a draw whose trials all completed by its value at their ends (the mean
    over seeds of each one's last report); any other by the mean over its seeds at the
    furthest epoch every seed reached. Draws that completed rank first, then those that
    went further, then by value: draws of a rank are compared at the same epoch, never a
    mean across epochs. A population's search (pbt, pb2) has no draws: its result is each
    trial's schedule (`population_result`)."""
    metric, mode = record["metric"], record["mode"]
    if metric not in table or "status" not in table:
        return None
    done = table[table["status"].isin(["completed", "stopped"]) & table[metric].notna()]
    if done.empty or "epoch" not in done:
        return None
    epochs = pd.DataFrame() if epochs is None else epochs
    summary = {"metric": metric, "mode": mode, "searched": list(record["searched"]),
               "fixed": record.get("fixed", {}),
               "search": {k: record[k] for k in ("algorithm", "scheduler", "num_samples")}}
    sign = 1 if mode == "max" else -1
    if record["scheduler"] in POPULATION:
        return {**summary, **population_result(done, metric, sign)}
    searched = list(record["searched"])
    grid = [k for k in record["grid"] if k in done.columns and k not in searched]
    carried, by = (searched, grid) if searched else (grid, [])
    keys = [*by, *carried]
    rows = []
    for values, group in _draws(done, keys):
        config = {k: _plain(v) for k, v in zip(keys, values)}
        trial_ids = [str(t) for t in group.get("trial_id", [])]
        completed = bool((group["status"] == "completed").all())
        epoch = int(group["epoch"].min())
        value = float(group[metric].mean()) if completed or group["epoch"].nunique() == 1 \
            else _value_at(epochs, trial_ids, metric, epoch)
        if value is None:  # no record of the epochs: the seeds that reached `epoch` only
            value = float(group.loc[group["epoch"] == epoch, metric].mean())
        rows.append({"config": {k: config[k] for k in by},
                     "values": {k: config[k] for k in carried},
                     "value": value, "trials": len(group), "completed": completed,
                     "epochs": epoch, "compared_at": "end" if completed else f"epoch {epoch}",
                     "trial_ids": trial_ids})

    def rank(row: dict[str, Any]) -> tuple:  # furthest first (as the scheduler judged)
        return (row["completed"], row["epochs"], sign * row["value"])

    cells: dict[str, dict[str, Any]] = {}
    for row in rows:  # per combination of `by`, the best draw (the first of equals)
        cell = json.dumps(row["config"], sort_keys=True)
        if cell not in cells or rank(row) > rank(cells[cell]):
            cells[cell] = row
    best = max(cells.values(), key=rank)
    return {**summary, "by": by,
            "best": {"config": {**best["config"], **best["values"]}, "value": best["value"],
                     "compared_at": best["compared_at"], "trial_ids": best["trial_ids"]},
            "per_configuration": list(cells.values())}


def population_result(done: pd.DataFrame, metric: str, sign: int) -> dict[str, Any]:
    """A population's result (pbt, pb2): every trial with its schedule (`schedule`: the
    values it trained with, from which epoch, cloned from which trial) and its last value;
    the best trial's schedule as `best`. No draws, no `per_configuration`: the values a
    trial ends with are not the ones that trained its weights, so `--set-from` refuses
    such a file (orchestrator.tune.overrides.apply_best)."""
    trials = []
    for _, row in done.iterrows():
        trials.append({"trial_id": str(row.get("trial_id", "")), "value": float(row[metric]),
                       "epochs": int(row["epoch"]), "status": row["status"],
                       "schedule": row.get("schedule") if isinstance(row.get("schedule"), str)
                       else ""})
    trials.sort(key=lambda t: (t["status"] == "completed", t["epochs"], sign * t["value"]),
                reverse=True)
    return {"by": [], "best": {"config": {}, **trials[0]}, "population": trials,
            "per_configuration": []}


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
    search = Search.of(record)
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


def schedules(best: dict[str, Any] | None, metric: str) -> pd.DataFrame:
    """A population's trials (best.json's `population`), best first: each one's last
    value and its schedule (its lineage: the trials it was cloned from, from which epoch,
    with which values)."""
    if not best or "population" not in best:
        return pd.DataFrame()
    return pd.DataFrame([{"trial_id": t["trial_id"], "status": t["status"],
                          "epochs": t["epochs"], metric: t["value"],
                          "schedule": t["schedule"]} for t in best["population"]])


def write_search_report(table: pd.DataFrame, record: dict[str, Any], out: Path,
                        grid: bool, epochs: pd.DataFrame | None = None,
                        ) -> dict[str, pd.DataFrame]:
    """best.json in `out` (the results dir); for a search also search.md and its plots.
    `epochs`: the trials' reported epochs (the long table `epochs`), where draws stopped at
    different epochs are compared. Returns the search's tables by name (for the W&B summary
    run)."""
    best = best_configurations(table, record, epochs)
    (out / BEST_FILE).unlink(missing_ok=True)
    if best is not None:
        (out / BEST_FILE).write_text(json.dumps(best, indent=2))
    if grid:
        return {}
    tables = {"best_trials": best_trials(table, record), "rungs": rungs(table, record),
              "schedules": schedules(best, record["metric"])}
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
    if not tables["schedules"].empty:
        lines += ["", f"## Schedules of the population ({record['scheduler']}; best.json)", "",
                  "Each trial's values and from which epoch it trained with them; a segment "
                  "of another trial is the lineage it was cloned from (its weights and "
                  "optimizer state up to that epoch), as the trial's own checkpoints record "
                  "it. The result of a population is the best trial's schedule, not one "
                  "value per key.", "", tables["schedules"].to_markdown(index=False)]
    elif best is None:
        lines += ["", "## Best per configuration (best.json)", "",
                  "No trial completed: no best configuration."]
    else:
        lines += ["", "## Best per configuration (best.json)", "",
                  "A draw whose trials all completed is compared at their ends; one stopped "
                  "early at the furthest epoch all its seeds reached (`compared at`).", "",
                  pd.DataFrame([{**r["config"], **r["values"], record["metric"]: r["value"],
                                 "compared at": r["compared_at"], "trials": r["trials"]}
                                for r in best["per_configuration"]]).to_markdown(index=False)]
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
    if "population" in best:
        top = best["best"]
        return (f"[sweep] best on {best['metric']} ({best['mode']}): trial {top['trial_id']} "
                f"-> {top['value']:.4g}, schedule {top['schedule']} ({path}; a schedule, "
                f"not one value per key)")
    values = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in best["best"]["config"].items()) or "(one configuration)"
    cells = len(best["per_configuration"])
    per = f"; best per configuration for {cells}" if cells > 1 else ""
    return (f"[sweep] best on {best['metric']} ({best['mode']}): {values} -> "
            f"{best['best']['value']:.4g} ({path}{per})")
