"""Attack a finished trial's classifier on the attack pool (`python -m orchestrator.attack`).

Writes `SWEEP_DIR/attacks/<trial>-<attack>-<time>/`: `summary.json` (robust accuracy after
each stage, samples/s), `samples.csv` (per sample: label, clean and adversarial prediction,
robust flag, the stage that fooled it, L-inf and L2 perturbation), `x_adv.pt`, `attack.png`
(robust accuracy per stage and examples) and the finished units (`units/`, reused by
--resume); one W&B run per attack, in the sweep's group.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from orchestrator.jobs.trial import job_directory, open_job_run, record_provenance
from orchestrator.pools.attack import AttackPool, AttackResult
from orchestrator.pools.base import start_ray
from orchestrator.reports.job_plots import plot_attack
from workloads.data import Dataset


def per_sample_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor, result) -> pd.DataFrame:
    """One row per attacked sample: label, predictions, robust flag, what fooled it, and the
    perturbation's size."""
    with torch.no_grad():
        clean_pred, adv_pred = model(x).argmax(1), model(result.x_adv).argmax(1)
    delta = (result.x_adv - x).flatten(1)
    return pd.DataFrame({"label": y.numpy(), "clean_pred": clean_pred.numpy(),
                         "adv_pred": adv_pred.numpy(), "robust": result.robust.numpy(),
                         "fooled_by": result.fooled_by,
                         "linf": delta.abs().max(1).values.numpy(),
                         "l2": delta.norm(dim=1).numpy()})


def attack_classifier(sweep_dir: Path, trial_id: str, model: nn.Module, data: Dataset,
                      trial: dict[str, Any], config: dict[str, Any], n: int,
                      pool_args: dict[str, Any], resume: bool = False,
                      wandb_mode: str | None = None) -> AttackResult:
    """The job: the attack of `config` (`pools.attack.attack_stages`) on the first `n` test
    inputs of the trial (`trial`: its config), on a pool of `pool_args`; writes the files
    above and the W&B run."""
    x, y = data.x_test[:n], data.y_test[:n]
    name = f"{trial_id}-{config['attack']}"
    out = job_directory(sweep_dir, "attacks", name, resume)
    record_provenance(out, sweep_dir, trial.get("data_dir"))
    run = open_job_run(wandb_mode, "attack", name, sweep_dir,
                       {**config, "trial": trial_id, "n": len(x), **pool_args}, out)
    start_ray()
    print(f"[attack] {name}: {len(x)} test inputs, eps {config['eps']:.4g} "
          f"({config['norm']}), {pool_args['num_actors']} actors -> {out}", flush=True)
    try:
        with AttackPool(model, **pool_args) as pool:
            result = pool.run(x, y, config, out, resume=resume,
                              on_progress=lambda m: run.log(m, x_axis="samples_attacked"))
    except BaseException:
        run.finish(failed=True)
        raise
    samples = per_sample_table(model, x, y, result)
    samples.to_csv(out / "samples.csv", index_label="index")
    torch.save(result.x_adv, out / "x_adv.pt")
    summary = {"trial": trial_id, **config, "n": len(x), "stages": result.stages,
               "robust_accuracy": result.robust_accuracy, "seconds": result.seconds,
               "samples_per_s": result.samples_per_second,
               "units_computed": result.units_computed, "units_loaded": result.units_loaded,
               "units_by_node": result.units_by_node, "dataset": trial.get("dataset")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    figure = plot_attack(summary, x, samples, result.x_adv, out / "attack.png")
    run.table("samples", samples)
    run.image("attack", figure)
    run.finish({f"robust_accuracy/{k}": v for k, v in result.robust_accuracy.items()}
               | {"samples_per_s": result.samples_per_second})
    print(json.dumps(result.robust_accuracy))
    print(f"[attack] {len(x)} samples in {result.seconds:.1f} s "
          f"({result.samples_per_second:.1f} samples/s); results: {out}/summary.json, "
          f"samples.csv, x_adv.pt, attack.png")
    return result
