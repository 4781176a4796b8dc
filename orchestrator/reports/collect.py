"""Results of a sweep: collected from Ray Tune, written to files, read back.

Files in `<sweep_dir>/results/`: `trials.csv` (every config column and final metric),
`trials.md` (the search space's key columns), `reliability.json` (reliability-diagram bins
per trial), `examples.parquet` (every trial's per-example outputs:
`workloads.evaluation.examples`), and for sweeps with an OOD stage `ood.csv` (long
format: trial x score x OOD set), `ood.md` (Table-3.1-style tables) and `samples.json`
(log p(x) and AM values for the histograms), with the training-time diagnostic
`diagnostic.csv` (trial x epoch x score x OOD set), and every other long table the trials'
final stages leave (`<name>.csv`; the `.md` table and plot of each that the search space
declares in `result_tables`); PNGs in `plots/`.
`python -m orchestrator.report SWEEP_DIR` redraws the
tables and plots from these files alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from numbers import Number
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs

from orchestrator.reports.aggregate import (
    SEED,
    aggregate_over_seeds,
    aggregated_markdown,
    config_columns,
)
from orchestrator.reports.plots import (
    plot_diagnostic,
    plot_metrics,
    plot_reliability,
    plot_result_table,
    plot_score_histograms,
)
from orchestrator.reports.tables import (
    markdown_table,
    ood_markdown,
    result_table_markdown,
    sort_table,
)
from orchestrator.tune.session import EXAMPLES_FILE, FINAL_FILE
from orchestrator.tune.storage import long_tables, read_examples, read_final_artifacts
from search_spaces import SearchSpace, expand_setup

SWEEP_FILE = "sweep.json"  # what the sweep was asked (name, profile, overrides, storage)
RESULTS_DIR = "results"
HIDDEN_CONFIG = ("data_dir", "schedule_keys")
TUNE_BOOKKEEPING = ("config", "date", "hostname", "node_ip", "pid", "timestamp", "done",
                    "time_this_iter_s", "time_since_restore", "iterations_since_restore",
                    "checkpoint_dir_name", "should_checkpoint", "reported_at")

NOT_LONG_TABLES = ("trials", "aggregated")  # the results/*.csv that are not long tables


@dataclass
class Artifacts:
    """What trials leave beside their metrics, from their final checkpoints."""

    reliability: dict[str, Any] = field(default_factory=dict)  # trial_id -> bins
    samples: dict[str, Any] = field(default_factory=dict)      # trial_id -> score -> set
    # long tables by name: ood (trial x score x OOD set), diagnostic (x epoch), and the
    # study's own (`SearchSpace.result_tables`)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    # every trial's per-example outputs (`workloads.evaluation.examples`), with `trial_id`
    examples: pd.DataFrame = field(default_factory=pd.DataFrame)

    def table(self, name: str) -> pd.DataFrame:
        return self.tables.get(name, pd.DataFrame())

    @property
    def ood(self) -> pd.DataFrame:
        return self.table("ood")

    @property
    def diagnostic(self) -> pd.DataFrame:
        return self.table("diagnostic")


def _final_checkpoint(result, filesystem) -> tuple[pyarrow.fs.FileSystem, str | None]:
    """Where a trial's last checkpoint is: Tune's, or Ray Train's (its path in the storage
    `filesystem` among the metrics)."""
    if result.checkpoint is not None:
        return result.checkpoint.filesystem, result.checkpoint.path
    return (filesystem or pyarrow.fs.LocalFileSystem(),
            (result.metrics or {}).get("checkpoint_path"))


def _final_artifacts(result, filesystem) -> dict | None:
    """The `final.json` of a trial's last checkpoint."""
    return read_final_artifacts(*_final_checkpoint(result, filesystem), FINAL_FILE)


EPOCHS_TABLE = "epochs"  # a search's long table: trial x epoch, its validation metrics


def epoch_rows(result, trial_id: str) -> list[dict[str, Any]]:
    """Every epoch a trial reported (Tune's record of its reports, read back from its
    result.json): `epoch`, `train_loss` and the validation metrics; the epochs a report
    carried in `earlier_epochs` included."""
    frame = result.metrics_dataframe
    if frame is None or "epoch" not in frame:
        return []
    wanted = [c for c in frame.columns if c in ("epoch", "train_loss") or c.startswith("val_")]
    rows = []
    for _, report in frame.iterrows():
        earlier = report.get("earlier_epochs")
        for metrics in [*(earlier if isinstance(earlier, list) else []), report]:
            row = {k: metrics.get(k) for k in wanted}
            if row.get("epoch") is not None and pd.notna(row["epoch"]):
                rows.append({"trial_id": trial_id, **row, "epoch": int(row["epoch"])})
    return rows


TRIAL_DIR_ID = re.compile(r"_([0-9a-f]{5}_\d{5})_")  # Tune's <trainable>_<id>_<n>_<tag>


def _trial_id(result) -> str:
    """The trial id in a result's directory name (a trial that reported nothing)."""
    match = TRIAL_DIR_ID.search(str(result.path).rstrip("/").rsplit("/", 1)[-1])
    return match.group(1) if match else ""


def schedule_text(schedule: list[dict[str, Any]]) -> str:
    """A trial's schedule (orchestrator.tune.epochs.record_schedule) in one cell:
    "lr=0.0179 from epoch 1 (trial d0d77_00004); lr=0.0215 from epoch 13 (d0d77_00005)"."""
    def values(segment):
        return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in segment.items() if k not in ("from_epoch", "trial_id"))
    return "; ".join(f"{values(s)} from epoch {s['from_epoch']} ({s['trial_id']})"
                     for s in schedule)


def collect_results(result_grid, filesystem=None, stopped_early: bool = False,
                    epochs: bool = False, interrupted: Collection[str] = (),
                    ) -> tuple[pd.DataFrame, Artifacts]:
    """One row per trial (its config, its last reported metrics and its status), and the
    trials' final artifacts, read from the storage `filesystem` (pyarrow; None: local).
    With `epochs` (a search), the long table `epochs` of every trial's reported epochs.

    Status is the loop's own (`completed`, `diverged`), `error` when the trial raised
    (after its retries), and without a final report `interrupted` for the trials of
    `interrupted` (Tune had not ended them when the fit was interrupted), `stopped` when
    `stopped_early` (a scheduler ends trials), else `incomplete`.
    """
    rows, artifacts, examples = [], Artifacts(), []
    long_rows: dict[str, list[dict]] = {}
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
            row["status"] = (
                "interrupted" if (metrics.get("trial_id") or _trial_id(result)) in interrupted
                else "stopped" if stopped_early and metrics.get("status") == "running"
                else "incomplete")
        row["trial_dir"] = str(result.path)
        rows.append(row)
        final = _final_artifacts(result, filesystem)
        trial_id = row.get("trial_id")
        if epochs and trial_id:
            long_rows.setdefault(EPOCHS_TABLE, []).extend(epoch_rows(result, trial_id))
        if not final or not trial_id:
            continue
        if final.get("schedule"):
            row["schedule"] = schedule_text(final["schedule"])
        if final.get("reliability"):
            artifacts.reliability[trial_id] = final["reliability"]
        if final.get("samples"):
            artifacts.samples[trial_id] = final["samples"]
        for name, table_rows in long_tables(final).items():
            long_rows.setdefault(name, []).extend({"trial_id": trial_id, **r}
                                                  for r in table_rows)
        frame = read_examples(*_final_checkpoint(result, filesystem), EXAMPLES_FILE)
        if frame is not None:
            examples.append(frame.assign(trial_id=trial_id))
    artifacts.tables = {name: pd.DataFrame(r) for name, r in long_rows.items() if r}
    if examples:
        artifacts.examples = pd.concat(examples, ignore_index=True)
    return pd.DataFrame(rows), artifacts


def ood_long_table(table: pd.DataFrame, ood: pd.DataFrame, space: SearchSpace,
                   settings: dict[str, Any]) -> pd.DataFrame:
    """The rows of a long table (OOD, diagnostic, ...) with the trial's key columns, every
    other config value that varies across the sweep, and its seed in front."""
    if ood.empty:
        return ood
    varying = [c for c in config_columns(table, settings) if table[c].nunique() > 1]
    keys = list(dict.fromkeys(k for k in ("trial_id", *space.table_keys, *varying, SEED)
                              if k in table.columns))
    return table[keys].merge(ood, on="trial_id", how="right")


def write_results(table: pd.DataFrame, artifacts: Artifacts, space: SearchSpace,
                  sweep_dir: str | Path, settings: dict[str, Any]) -> Path:
    """Write trials.csv, ood.csv, reliability.json, samples.json, aggregated.csv (over
    seeds), the markdown tables and the plots; return the results dir. `settings`: the
    sweep's config keys and values (sweep.json), which tell configuration from results."""
    out = Path(sweep_dir) / RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    table = sort_table(table, space)
    table.to_csv(out / "trials.csv", index=False)
    (out / "reliability.json").write_text(json.dumps(artifacts.reliability))
    if not artifacts.examples.empty:
        artifacts.examples.to_parquet(out / EXAMPLES_FILE, index=False)
    for name, frame in list(artifacts.tables.items()):
        artifacts.tables[name] = ood_long_table(table, frame, space, settings)
        artifacts.tables[name].to_csv(out / f"{name}.csv", index=False)
    if not artifacts.ood.empty:
        (out / "samples.json").write_text(json.dumps(artifacts.samples))
    render_outputs(table, artifacts, space, out, settings)
    return out


def render_outputs(table: pd.DataFrame, artifacts: Artifacts, space: SearchSpace,
                   out: Path, settings: dict[str, Any]) -> pd.DataFrame:
    """The aggregated table, the markdown tables and the plots, from the table and
    artifacts alone; returns the aggregated table."""
    (out / "trials.md").write_text(f"# {space.name}\n\n{markdown_table(table, space)}\n")
    aggregated = aggregate_over_seeds(table, settings, artifacts.examples,
                                      tuple(space.table_metrics))
    aggregated.to_csv(out / "aggregated.csv", index=False)
    keys = [k for k in space.table_keys if k in aggregated.columns]
    (out / "aggregated.md").write_text(
        f"# {space.name}: over seeds (mean [95% interval over seeds and test inputs: t "
        f"over the seeds plus the test inputs' resampling variance; (t): a t-interval "
        f"over seeds alone])\n\n"
        f"{aggregated_markdown(aggregated, keys, list(space.table_metrics))}\n")
    plot_metrics(table, space, out / "plots")
    plot_reliability(table, artifacts.reliability, space, out / "plots")
    if not artifacts.ood.empty:
        (out / "ood.md").write_text(ood_markdown(table, artifacts.ood, space))
        plot_score_histograms(table, artifacts.samples, space, out / "plots")
    if not artifacts.diagnostic.empty:
        plot_diagnostic(artifacts.diagnostic, table, settings, out / "plots")
    for spec in space.result_tables:
        rows = artifacts.table(spec.name)
        if rows.empty:
            continue
        if spec.columns:
            (out / f"{spec.name}.md").write_text(result_table_markdown(rows, spec, space))
        if spec.plot is not None:
            plot_result_table(rows, spec, space, out / "plots")
    return aggregated


def recorded_settings(record: dict[str, Any], space: SearchSpace) -> dict[str, Any]:
    """The config keys and values of a sweep (its sweep.json `settings`; for a sweep from
    before they were recorded, its profile's)."""
    if record.get("settings"):
        return record["settings"]
    profile = space.profile(record.get("profile", "local"))
    return {**profile.config, **profile.grid, "seed": 0}


def load_results(sweep_dir: str | Path) -> tuple[pd.DataFrame, Artifacts]:
    out = Path(sweep_dir) / RESULTS_DIR
    table = pd.read_csv(out / "trials.csv")
    artifacts = Artifacts()
    if (out / "reliability.json").exists():
        artifacts.reliability = json.loads((out / "reliability.json").read_text())
    if (out / "samples.json").exists():
        artifacts.samples = json.loads((out / "samples.json").read_text())
    artifacts.tables = {path.stem: pd.read_csv(path) for path in sorted(out.glob("*.csv"))
                        if path.stem not in NOT_LONG_TABLES}
    if (out / EXAMPLES_FILE).exists():
        artifacts.examples = pd.read_parquet(out / EXAMPLES_FILE)
    return table, artifacts

def status_counts(table: pd.DataFrame) -> str:
    """"3 diverged, 1 error": how the trials of `table` ended."""
    counts = table["status"].value_counts().sort_index() if "status" in table else {}
    return ", ".join(f"{n} {status}" for status, n in counts.items()) or "no trials"
