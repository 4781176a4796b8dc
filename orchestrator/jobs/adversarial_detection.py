"""Adversarial-input detection (document 003, Figures 4-5, its appendix tables): FGSM and
BIM examples of a finished trial's classifier, generated on the attack pool, detected by
each score (`python -m orchestrator.attack SWEEP --trial ID --target adversarial`).

Protocol (Lee et al. 2018, which 003 compares against): the clean inputs are the test
inputs the classifier gets right; the adversarial inputs are their attacked versions that
it gets wrong. Clean is the positive class (higher score = more in-distribution); AUROC,
AUPR-in, AUPR-out and FPR95 per score, attack and eps. 003 calls the ball "l1"; FGSM and BIM
are L-inf attacks (NOTES.md F), as here.

Writes `SWEEP_DIR/attacks/<trial>-adversarial-<time>/`: `adversarial.csv`, `adversarial.md`,
`adversarial.png` (AUROC against eps per score, a panel per attack), `summary.json`, the
units of each attack (`<attack>-eps<eps>/units/`, reused by --resume) and a W&B run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from orchestrator.errors import UsageError
from orchestrator.jobs.trial import job_directory, open_job_run, record_provenance, sweep_loop
from orchestrator.pools.attack import AttackPool
from orchestrator.pools.base import start_ray
from orchestrator.reports.job_plots import plot_adversarial_detection
from orchestrator.reports.tables import adversarial_markdown
from workloads.data import Dataset
from workloads.evaluation.metrics import ood_metrics
from workloads.scores import OODScore, batched_logits
from workloads.studies import fitted_scores

ATTACKS = ("fgsm", "bim")


def detection_scores(model: nn.Module, data: Dataset, trial: dict[str, Any],
                     requested: str | None, loop: str) -> dict[str, OODScore]:
    """The scores to detect with, fitted as the trial's study fits them
    (`workloads.studies.fitted_scores`): `requested` (names joined by +), else the trial's
    own `ood_scores`."""
    try:
        return fitted_scores(loop, model, data, trial,
                             requested or trial.get("ood_scores") or "all")
    except ValueError as error:
        raise UsageError(str(error)) from None


def clean_scores(model: nn.Module, scores: dict[str, OODScore], x: torch.Tensor,
                 y: torch.Tensor) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Which clean inputs the classifier gets right, and each score on those: the positive
    side of every attack's detection, computed once."""
    right = batched_logits(model, x).argmax(1) == y
    return right, {name: score(model, x[right]).double().numpy()
                   for name, score in scores.items()}


def detection_rows(model: nn.Module, scores: dict[str, OODScore], right: torch.Tensor,
                   clean: dict[str, np.ndarray], y: torch.Tensor,
                   x_adv: torch.Tensor) -> list[dict[str, Any]]:
    """One row per score: the clean inputs classified right (`right`, their scores `clean`)
    against their adversarial versions classified wrong."""
    fooled = right & (batched_logits(model, x_adv).argmax(1) != y)
    rows = []
    for name, score in scores.items():
        row: dict[str, Any] = {"score": name, "n_clean": int(right.sum()),
                               "n_adversarial": int(fooled.sum())}
        if fooled.any():
            row.update(ood_metrics(clean[name], score(model, x_adv[fooled]).double().numpy()))
        rows.append(row)
    return rows


def detect_adversarial(sweep_dir: Path, trial_id: str, model: nn.Module, data: Dataset,
                       trial: dict[str, Any], config: dict[str, Any], scores: str | None,
                       n: int, pool_args: dict[str, Any], resume: bool = False,
                       wandb_mode: str | None = None) -> pd.DataFrame:
    """The job: for each attack of `ATTACKS` and each eps of `config["eps"]`, attack the
    first `n` test inputs on the pool and score clean against adversarial; write the files
    above. Returns the table."""
    detectors = detection_scores(model, data, trial, scores, sweep_loop(sweep_dir))
    x, y = data.x_test[:n], data.y_test[:n]
    name = f"{trial_id}-adversarial"
    out = job_directory(sweep_dir, "attacks", name, resume)
    record_provenance(out, sweep_dir, trial.get("data_dir"))
    run = open_job_run(wandb_mode, "attack", name, sweep_dir,
                       {**config, "trial": trial_id, "target": "adversarial", "n": len(x),
                        "scores": list(detectors), **pool_args}, out)
    start_ray()
    print(f"[attack] {name}: {len(x)} test inputs, {'/'.join(ATTACKS)} at eps "
          f"{', '.join(f'{e:.4g}' for e in config['eps'])}, {len(detectors)} scores, "
          f"{pool_args['num_actors']} actors -> {out}", flush=True)
    right, clean = clean_scores(model, detectors, x, y)
    rows, seconds = [], 0.0
    try:
        with AttackPool(model, **pool_args) as pool:
            for attack in ATTACKS:
                for eps in config["eps"]:
                    stage = {**config, "attack": attack, "eps": eps}
                    result = pool.run(x, y, stage, out / f"{attack}-eps{eps:.6g}",
                                      resume=resume)
                    seconds += result.seconds
                    for row in detection_rows(model, detectors, right, clean, y,
                                              result.x_adv):
                        rows.append({"attack": attack, "eps": eps, **row,
                                     "robust_accuracy": result.robust_accuracy[attack]})
                    run.log({f"robust_accuracy/{attack}": result.robust_accuracy[attack],
                             "eps": eps}, x_axis="eps")
    except BaseException:
        run.finish(failed=True)
        raise
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "adversarial.csv", index=False)
    markdown = adversarial_markdown(frame, f"trial {trial_id} ({data.name}), L-inf, BIM "
                                           f"{config['steps']} steps, first {len(x)} test "
                                           f"inputs")
    (out / "adversarial.md").write_text(markdown)
    figure = plot_adversarial_detection(frame, out / "adversarial.png")
    summary = {"trial": trial_id, **config, "attacks": list(ATTACKS), "n": len(x),
               "scores": list(detectors), "seconds": seconds, "dataset": data.name}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    run.table("adversarial", frame)
    run.image("adversarial", figure)
    run.finish({f"auroc/{r.attack}/{r.eps:.4g}/{r.score}": r.auroc
                for r in frame.itertuples() if "auroc" in frame})
    print("\n" + markdown)
    print(f"[attack] {len(ATTACKS) * len(config['eps'])} attacks in {seconds:.1f} s; "
          f"results: {out}/adversarial.md, adversarial.csv, adversarial.png")
    return frame
