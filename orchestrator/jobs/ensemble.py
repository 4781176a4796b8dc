"""Deep ensembles of a finished sweep (`python -m orchestrator.ensemble SWEEP_DIR`): the
completed trials of each configuration, one per seed, become the members of one ensemble
(`workloads.evaluation.ensemble`), evaluated on the test split and the OOD sets.

Writes `SWEEP_DIR/ensemble/ensemble-<time>/`: `ensemble.csv` (per configuration: members,
ensemble and mean member accuracy, NLL, ECE), `failure.csv` (per configuration and score:
AUPR-error, AUPR-success, AUROC, FPR95), `ood.csv` (per configuration, score and OOD set),
`ensemble.md` and a W&B run in the sweep's group.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from orchestrator.errors import UsageError
from orchestrator.jobs.trial import (
    job_directory,
    load_trial_model,
    open_job_run,
    read_trials,
    record_provenance,
)
from orchestrator.reports.aggregate import config_columns
from orchestrator.reports.collect import SWEEP_FILE, recorded_settings
from search_spaces import get_search_space
from workloads.evaluation.ensemble import evaluate_ensemble


def configurations(sweep_dir: Path) -> list[tuple[dict, list[str]]]:
    """(config values, trial ids) of each configuration with two or more completed seeds."""
    table = read_trials(sweep_dir)
    record = json.loads((Path(sweep_dir) / SWEEP_FILE).read_text())
    space = get_search_space(record["name"])
    settings = recorded_settings(record, space)
    done = table[table.get("status", "completed") == "completed"]
    # the configuration: the sweep's key columns and every other config value that varies
    keys = list(dict.fromkeys([*(k for k in space.table_keys if k in done.columns),
                               *(c for c in config_columns(done, settings)
                                 if done[c].nunique(dropna=False) > 1)]))
    groups = done.groupby(keys, dropna=False, sort=True) if keys else [((), done)]
    found = []
    for values, group in groups:
        values = values if isinstance(values, tuple) else (values,)
        if len(group) >= 2:
            found.append((dict(zip(keys, values)), list(group.trial_id)))
    if not found:
        raise UsageError(f"{sweep_dir}: no configuration has two completed seeds to ensemble "
                         f"(run the sweep with --seeds M, M >= 2)")
    return found


def build_ensembles(sweep_dir: Path, data_dir: str | None = None,
                    wandb_mode: str | None = None) -> pd.DataFrame:
    """The job: evaluate every configuration's ensemble; write the files above."""
    groups = configurations(sweep_dir)
    out = job_directory(sweep_dir, "ensemble", "ensemble", resume=False)
    record_provenance(out, sweep_dir, data_dir)
    run = open_job_run(wandb_mode, "ensemble", "ensemble", sweep_dir,
                       {"configurations": len(groups)}, out)
    rows, failure_rows, ood_rows = [], [], []
    try:
        for config, trial_ids in groups:
            members, data = [], None
            for trial_id in trial_ids:  # the members differ in their seed only: one dataset
                model, data, _ = load_trial_model(sweep_dir, trial_id, data_dir, data)
                members.append(model)
            metrics, failure, ood = evaluate_ensemble(members, data)
            label = ", ".join(f"{k}={v}" for k, v in config.items()) or "all trials"
            print(f"[ensemble] {label}: {len(members)} members, accuracy "
                  f"{metrics['test_acc']:.4f} (members {metrics['member_test_acc']:.4f})",
                  flush=True)
            rows.append({**config, **metrics, "trials": "+".join(trial_ids)})
            failure_rows += [{**config, **r} for r in failure]
            ood_rows += [{**config, **r} for r in ood]
    except BaseException:
        run.finish(failed=True)
        raise
    table, failure, ood = pd.DataFrame(rows), pd.DataFrame(failure_rows), pd.DataFrame(ood_rows)
    table.to_csv(out / "ensemble.csv", index=False)
    failure.to_csv(out / "failure.csv", index=False)
    ood.to_csv(out / "ood.csv", index=False)
    keys = [c for c in table.columns if c in groups[0][0]]
    ood_mean = (ood.pivot_table(index=keys, columns="score", values="auroc", aggfunc="mean")
                .reset_index() if keys and not ood.empty
                else ood.groupby("score").auroc.mean().to_frame().T if not ood.empty
                else pd.DataFrame())
    markdown = "\n".join([
        "# Deep ensembles: the seeds of each configuration averaged\n",
        table.drop(columns="trials").to_markdown(index=False, floatfmt=".4f"),
        "\n## Failure prediction (errors positive)\n",
        failure.to_markdown(index=False, floatfmt=".4f"),
        "\n## OOD detection: mean AUROC over the OOD sets\n",
        ood_mean.to_markdown(index=False, floatfmt=".4f") if not ood_mean.empty else "none",
        ""])
    (out / "ensemble.md").write_text(markdown)
    run.table("ensemble", table)
    run.table("failure", failure)
    if not ood.empty:
        run.table("ood", ood)
    run.finish({"configurations": len(table)})
    print("\n" + markdown)
    print(f"[ensemble] results: {out}/ensemble.md, ensemble.csv, failure.csv, ood.csv")
    return table
