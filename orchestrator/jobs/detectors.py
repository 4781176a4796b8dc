"""OOD detectors clean and under adaptive attack, the job both paths share: a trial's model
(`python -m orchestrator.attack SWEEP --trial ID --target ood`, into
`SWEEP_DIR/attacks/<trial>-ood-<time>/`) and any model (`python -m orchestrator.evaluate`,
`jobs.evaluate_model`). Writes `evaluation.csv` (`detector_frame`'s rows), `evaluation.md`,
`evaluation.png`, `summary.json`, `examples.parquet` (one row per input: the classifier's
outputs on every test input, each detector's score clean and attacked per eps on the test
inputs and OOD inputs scored; schema: `workloads.evaluation.examples`) and the units
(`units/`, reused by --resume: a resumed run's files hold every unit, loaded or computed).

OpenOOD and RobustBench evaluate detectors on clean OOD sets only, and the thesis attacks
only its own AM detector (NOTES.md C). Here, for each score and eps, the OOD inputs are
moved within eps to raise the score (to look in-distribution) and the ID test inputs to
lower it (to look OOD); the detector's AUROC and FPR95 are reported clean, with the OOD
inputs attacked, and with both attacked. The attacks run on the attack pool
(`pools.attack.run_score_attacks`): deterministic under sharding, resumable. Every AUROC /
FPR95 has a 95% bootstrap interval; sets are grouped near / far where the dataset has
OpenOOD v1.5's split (`workloads.evaluation.detector_evaluation`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from orchestrator.errors import UsageError
from orchestrator.jobs.trial import (
    job_directory,
    open_job_run,
    record_provenance,
    trial_params,
)
from orchestrator.reports.job_plots import plot_evaluation
from orchestrator.reports.tables import evaluation_markdown
from workloads.data import Dataset
from workloads.evaluation.detector_evaluation import (
    ID,
    DetectorPlan,
    classifier_examples,
    detector_frame,
    plan_detectors,
)
from workloads.evaluation.ood_evaluation import resolve_scores
from workloads.scores import capabilities

EXAMPLES_FILE = "examples.parquet"  # the per-example outputs (`workloads.evaluation.examples`)


def default_scores(model: nn.Module) -> str:
    """Every applicable score of the default set, and ln Z where the model has logits."""
    names = list(resolve_scores(model, "all"))
    if "logits" in capabilities(model):
        names.append("lnz")
    return "+".join(names)


def evaluate_plan(model: nn.Module, plan: DetectorPlan, data, eps_values: list[float],
                  attack_config: dict[str, Any], pool_args: dict[str, Any], out: Path,
                  resume: bool, run, title: str, summary: dict[str, Any], label: str,
                  resamples: int = 1000) -> pd.DataFrame:
    """The evaluation both paths share (a trial's model: `orchestrator.attack --target
    ood`; any model: `orchestrator.evaluate`): attack on the pool (units in `out/units`,
    reused on `resume`), `detector_frame`'s rows, and `out/` evaluation.csv, evaluation.md,
    evaluation.png, summary.json (`summary` and what the run measured) and examples.parquet
    (`Examples.frame`: the clean scores and every unit's attacked ones, loaded or computed);
    the table, plot and worst attacked AUROC per detector go to `run` (a `JobRun`), which
    is finished. Returns the rows."""
    from orchestrator.pools.attack import AttackPool, run_score_attacks
    from orchestrator.pools.base import start_ray

    for name, why in plan.failed.items():
        print(f"[{label}] {name}: cannot be fitted on this model ({why})", flush=True)
    for name, why in plan.not_attacked.items():
        print(f"[{label}] {name}: evaluated clean only ({why})", flush=True)
    started = time.perf_counter()
    attacked: dict[str, torch.Tensor] = {}
    units = {"units_computed": 0, "units_loaded": 0, "units_by_node": {}}
    if plan.attacks:
        start_ray()
        eps_list = ", ".join(f"{e:.4g}" for e in eps_values)
        print(f"[{label}] {len(plan.scores) - len(plan.not_attacked)} scores x "
              f"{len(plan.inputs)} input sets x eps {eps_list}: {len(plan.attacks)} attacks "
              f"on {pool_args['num_actors']} actors -> {out}", flush=True)
        try:
            with AttackPool(model, **pool_args) as pool:
                result = run_score_attacks(pool, plan.attacks, plan.scores, attack_config,
                                           out, resume, label=label,
                                           on_progress=lambda m: run.log(
                                               m, x_axis="samples_attacked"))
        except BaseException:
            run.finish(failed=True)
            raise
        attacked = result.score
        units = {"units_computed": result.units_computed,
                 "units_loaded": result.units_loaded, "units_by_node": result.units_by_node}
    examples, id_accuracy = classifier_examples(model, data)
    frame = detector_frame(model, plan, data.name, eps_values, attacked, resamples,
                           attack_config.get("seed", 0), examples)
    frame.to_csv(out / "evaluation.csv", index=False)
    examples.frame().to_parquet(out / EXAMPLES_FILE, index=False)
    markdown = evaluation_markdown(frame, title, id_accuracy)
    (out / "evaluation.md").write_text(markdown)
    figure = plot_evaluation(frame, out / "evaluation.png")
    summary = {**summary, **attack_config, "dataset": data.name,
               "ood_sets": [k for k in plan.inputs if k != ID], "id_accuracy": id_accuracy,
               "n": len(plan.inputs[ID]), "eps": eps_values, "scores": list(plan.scores),
               "not_attacked": plan.not_attacked, "failed": plan.failed, **units,
               "seconds": time.perf_counter() - started}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    run.table("evaluation", frame)
    run.image("evaluation", figure)
    hit = frame[(frame.setting == "both_attacked") & (frame.ood_set == "group:all")]
    run.finish({"id_accuracy": id_accuracy,
                **{f"worst_auroc/{k}": v for k, v in hit.groupby("score").auroc.min().items()}})
    print("\n" + markdown)
    print(f"[{label}] results: {out}/evaluation.md, evaluation.csv, evaluation.png, "
          f"{EXAMPLES_FILE}")
    return frame


def attack_detectors(sweep_dir: Path, trial_id: str, model: nn.Module, data: Dataset,
                     config: dict[str, Any], scores: str | None, n: int,
                     pool_args: dict[str, Any], resume: bool = False,
                     wandb_mode: str | None = None) -> pd.DataFrame:
    """The job of `--target ood`: plan, then `evaluate_plan` with a W&B run in the sweep's
    group. `config` holds `eps` (a list), `steps`, `norm`,
    `seed` and `batch_size`; `scores` is None (every applicable score and lnz) or names
    joined by +. Returns the table."""
    params = trial_params(sweep_dir, trial_id).get("score_params") or {}
    try:
        names = resolve_scores(model, scores or default_scores(model),
                               params if isinstance(params, dict) else {})
        plan = plan_detectors(model, data, list(names), names, config["eps"], n,
                              progress=lambda text: print(f"[attack] {text}", flush=True))
    except ValueError as error:
        raise UsageError(str(error)) from None
    name = f"{trial_id}-ood"
    out = job_directory(sweep_dir, "attacks", name, resume)
    record_provenance(out, sweep_dir)
    run = open_job_run(wandb_mode, "attack", name, sweep_dir,
                       {**config, "trial": trial_id, "target": "ood", "n": n,
                        "scores": list(plan.scores), **pool_args}, out)
    title = f"trial {trial_id} ({data.name}), {config['norm']}, {config['steps']} APGD steps"
    return evaluate_plan(model, plan, data, config["eps"], config, pool_args, out, resume,
                         run, title, {"trial": trial_id}, "attack")
