"""Adaptive attacks on OOD detectors: every differentiable score of a trial's model, attacked
with APGD on the score itself (`python -m orchestrator.attack SWEEP --trial ID --target ood`).
Writes `SWEEP_DIR/attacks/<trial>-ood-<time>/`: `detectors.csv`, `detectors.md`,
`detectors.png`, `summary.json` and the units (`units/`, reused by --resume).

OpenOOD and RobustBench evaluate detectors on clean OOD sets only, and the thesis attacks
only its own AM detector (NOTES.md C). Here, for each score and eps, the OOD inputs are
moved within eps to raise the score (to look in-distribution) and the ID test inputs to
lower it (to look OOD); the detector's AUROC and FPR95 are reported clean, with the OOD
inputs attacked, and with both attacked. The attacks run on the attack pool
(`pools.attack.run_score_attacks`): deterministic under sharding, resumable.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
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
from orchestrator.pools.attack import AttackPool, ScoreAttackResult, run_score_attacks
from orchestrator.pools.base import start_ray
from orchestrator.reports.job_plots import plot_detectors
from orchestrator.reports.tables import detector_markdown
from workloads.adversarial.detector_attacks import ScoreAttack
from workloads.data import Dataset
from workloads.evaluation.ood_evaluation import ood_metrics_under_attack, resolve_scores
from workloads.scores import OODScore, capabilities, fit_score

ID = "id"  # the name of the in-distribution test inputs among the attacked sets


def default_scores(model: nn.Module) -> str:
    """Every applicable score of the default set, and ln Z where the model has logits."""
    names = list(resolve_scores(model, "all"))
    if "logits" in capabilities(model):
        names.append("lnz")
    return "+".join(names)


@dataclass
class DetectorAttackPlan:
    inputs: dict[str, torch.Tensor]   # "id" (test inputs) and each OOD set, cut to n
    scores: dict[str, OODScore]       # every requested score, fitted on the training split
    skipped: dict[str, str]           # requested scores that are not attacked, and why
    attacks: list[ScoreAttack]


def attack_name(score: str, inputs: str, eps: float) -> str:
    return f"{score}-{inputs}-eps{eps:.6g}"


def plan_detector_attacks(model: nn.Module, data: Dataset, requested: str,
                          params: dict[str, dict], eps_values: list[float],
                          n: int) -> DetectorAttackPlan:
    """Fit the requested scores and list the attacks: for each differentiable score and
    eps, the ID inputs pushed down and each OOD set pushed up. Raises ValueError for an
    unknown or inapplicable score name."""
    names = resolve_scores(model, requested, params)
    inputs = {ID: data.x_test[:n], **{k: v[:n] for k, v in data.ood.items()}}
    if len(inputs) == 1:
        raise ValueError(f"dataset '{data.name}' has no OOD sets to attack the detectors with")
    scores = {name: fit_score(name, p, model, data)
              for name, p in names.items()}
    skipped = {name: score.not_differentiable for name, score in scores.items()
               if score.not_differentiable}
    attacks = [ScoreAttack(attack_name(name, key, eps), name, x, -1 if key == ID else 1, eps)
               for name in scores if name not in skipped
               for eps in eps_values for key, x in inputs.items()]
    return DetectorAttackPlan(inputs, scores, skipped, attacks)


def detector_table(model: nn.Module, plan: DetectorAttackPlan, eps_values: list[float],
                   result: ScoreAttackResult) -> pd.DataFrame:
    """One row per (score, OOD set, eps): AUROC and FPR95 clean, with the OOD inputs
    attacked and with both attacked. Scores that are not attacked get their clean figures
    and the reason in `note`."""
    rows = []
    for name, score in plan.scores.items():
        clean = {key: score(model, x).double().numpy() for key, x in plan.inputs.items()}
        for ood_set in [k for k in plan.inputs if k != ID]:
            n = min(len(clean[ID]), len(clean[ood_set]))
            if name in plan.skipped:
                metrics = ood_metrics_under_attack(clean[ID][:n], clean[ID][:n],
                                                   clean[ood_set][:n], clean[ood_set][:n])
                rows.append({"score": name, "ood_set": ood_set, "eps": math.nan, "n": n,
                             "attacked": False, "note": plan.skipped[name],
                             **{k: v for k, v in metrics.items() if k.endswith("_clean")}})
                continue
            for eps in eps_values:
                attacked = {k: result.score[attack_name(name, k, eps)].double().numpy()
                            for k in (ID, ood_set)}
                metrics = ood_metrics_under_attack(clean[ID][:n], attacked[ID][:n],
                                                   clean[ood_set][:n], attacked[ood_set][:n])
                rows.append({"score": name, "ood_set": ood_set, "eps": eps, "n": n,
                             "attacked": True, "note": "", **metrics})
    return pd.DataFrame(rows)


def attack_detectors(sweep_dir: Path, trial_id: str, model: nn.Module, data: Dataset,
                     config: dict[str, Any], scores: str | None, n: int,
                     pool_args: dict[str, Any], resume: bool = False,
                     wandb_mode: str | None = None) -> pd.DataFrame:
    """The job: plan, attack on the pool, and write the table, markdown, plot, summary and
    a W&B run (in the sweep's group). `config` holds `eps` (a list), `steps`, `norm`,
    `seed` and `batch_size`; `scores` is None (every applicable score and lnz) or names
    joined by +. Returns the table."""
    params = trial_params(sweep_dir, trial_id).get("score_params") or {}
    try:
        plan = plan_detector_attacks(model, data, scores or default_scores(model),
                                     params if isinstance(params, dict) else {},
                                     config["eps"], n)
    except ValueError as error:
        raise UsageError(str(error)) from None
    name = f"{trial_id}-ood"
    out = job_directory(sweep_dir, "attacks", name, resume)
    record_provenance(out, sweep_dir)
    run = open_job_run(wandb_mode, "attack", name, sweep_dir,
                       {**config, "trial": trial_id, "target": "ood", "n": n,
                        "scores": list(plan.scores), **pool_args}, out)
    start_ray()
    eps_list = ", ".join(f"{e:.4g}" for e in config["eps"])
    print(f"[attack] {name}: {len(plan.scores) - len(plan.skipped)} scores x "
          f"{len(plan.inputs)} input sets x eps {eps_list}: {len(plan.attacks)} attacks "
          f"on {pool_args['num_actors']} actors -> {out}", flush=True)
    for score, why in plan.skipped.items():
        print(f"[attack] not attacked: {score} ({why})", flush=True)
    try:
        with AttackPool(model, **pool_args) as pool:
            result = run_score_attacks(pool, plan.attacks, plan.scores, config, out, resume,
                                       on_progress=lambda m: run.log(
                                           m, x_axis="samples_attacked"))
    except BaseException:
        run.finish(failed=True)
        raise
    frame = detector_table(model, plan, config["eps"], result)
    frame.to_csv(out / "detectors.csv", index=False)
    markdown = detector_markdown(frame, f"trial {trial_id} ({data.name}), {config['norm']}, "
                                        f"{config['steps']} APGD steps")
    (out / "detectors.md").write_text(markdown)
    figure = plot_detectors(frame, out / "detectors.png")
    summary = {"trial": trial_id, **config, "n": n, "scores": list(plan.scores),
               "not_attacked": plan.skipped, "seconds": result.seconds,
               "units_computed": result.units_computed, "units_loaded": result.units_loaded,
               "units_by_node": result.units_by_node, "dataset": data.name}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    run.table("detectors", frame)
    run.image("detectors", figure)
    worst = frame[frame.attacked].groupby("score").auroc_both_attacked.min()
    run.finish({f"worst_auroc/{k}": v for k, v in worst.items()})
    print("\n" + markdown)
    print(f"[attack] {len(plan.attacks)} attacks in {result.seconds:.1f} s; results: "
          f"{out}/detectors.md, detectors.csv, detectors.png")
    return frame
