"""Evaluate any classifier: a researcher's own model (`MODULE:FACTORY`, a checkpoint), every
detector it can serve, clean and under adaptive attack on the attack pool, near and far OOD,
with intervals (`python -m orchestrator.evaluate`; the evaluation itself:
`workloads.evaluation.detector_evaluation`).

Writes `<out>/`: `evaluation.csv` (every row: score x OOD set or group x setting x eps),
`evaluation.md` (a detector per row: ID accuracy, AUROC [95%] clean and attacked, near and
far), `evaluation.png` (each detector clean and attacked), `summary.json` (the model's
provenance: factory, checkpoint SHA-256; what was not attacked or failed, and why),
`provenance.json`, and the attack units (`units/`, reused by `--resume`); a W&B run.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from orchestrator.errors import UsageError
from workloads.evaluation.detector_evaluation import (
    DetectorPlan,
    accuracy,
    detector_frame,
    plan_detectors,
    servable_scores,
)
from workloads.evaluation.uncertainty import interval_text


def build_model(spec: str, kwargs: dict[str, Any]) -> nn.Module:
    """`package.module:factory` called with `kwargs`; the model it returns must be an
    `nn.Module` (bad input: UsageError naming the spec)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"--model {spec}: expected MODULE:FACTORY, e.g. "
                         f"torchvision.models:resnet18")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"--model {spec}: {error}") from None
    try:
        model = factory(**kwargs)
    except TypeError as error:
        raise UsageError(f"--model {spec}: {error}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"--model {spec}: returned a {type(model).__name__}, not an nn.Module")
    return model


def load_weights(model: nn.Module, path: Path) -> str:
    """Load a checkpoint (read with `weights_only=True`: it cannot run code) into `model`:
    a state dict, or a dict holding one under `state_dict` or `model`. Returns its SHA-256."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"--checkpoint {path}: cannot be read safely "
                         f"({type(error).__name__}: {detail})") from None
    if isinstance(state, dict):
        state = state.get("state_dict", state.get("model", state))
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).strip().splitlines()[:2]
        raise UsageError(f"--checkpoint {path}: does not fit the model ({' '.join(first)})"
                         [:400]) from None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _cell(rows: pd.DataFrame) -> str:
    if rows.empty:
        return ""
    row = rows.iloc[0]
    return interval_text(row.auroc, row.auroc_lo, row.auroc_hi)


def summary_markdown(frame: pd.DataFrame, eps_values: list[float], title: str,
                     id_accuracy: float) -> str:
    """evaluation.md: a row per detector; AUROC [95%] clean and, per eps, with both the ID
    and the OOD inputs attacked, for each group of OOD sets (near, far, other where
    present)."""
    groups = [g for g in ("near", "far", "other")
              if (frame.ood_set == f"group:{g}").any()]
    lines = []
    for score, rows in frame.groupby("score", sort=False):
        line = {"detector": score}
        for group in groups:
            part = rows[rows.ood_set == f"group:{group}"]
            line[f"clean {group}"] = _cell(part[part.setting == "clean"])
            for eps in eps_values:
                hit = part[(part.setting == "both_attacked") & (part.eps == eps)]
                line[f"attacked {group} (eps {eps:.4g})"] = _cell(hit) or "not attacked"
        lines.append(line)
    table = pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True)
    return (f"# {title}\n\nID test accuracy {id_accuracy:.4f}. AUROC with its 95% bootstrap "
            f"interval (ID positive); a group is the mean over its OOD sets. Attacked: APGD "
            f"on each detector's own score moves the OOD inputs to look in-distribution and "
            f"the ID inputs to look OOD.\n\n{table}\n")


def plot_evaluation(frame: pd.DataFrame, path: Path) -> Path:
    """Each detector's AUROC (all OOD sets) clean and under attack at each eps."""
    from orchestrator.reports.plots import pyplot, save_figure

    plt = pyplot()
    rows = frame[frame.ood_set == "group:all"]
    scores = list(dict.fromkeys(rows.score))
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(scores) + 2), 4))
    settings = [("clean", math.nan)] + [("both_attacked", e) for e in
                                        sorted(rows.eps.dropna().unique())]
    width = 0.8 / len(settings)
    for i, (setting, eps) in enumerate(settings):
        part = rows[(rows.setting == setting) & ((rows.eps == eps) if eps == eps
                                                  else rows.eps.isna())].set_index("score")
        values = [part.auroc.get(s, math.nan) for s in scores]
        ax.bar([j + i * width for j in range(len(scores))], values, width,
               label="clean" if setting == "clean" else f"attacked, eps {eps:.3g}")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(scores))], scores, rotation=45,
                  ha="right")
    ax.set_ylabel("AUROC (mean over OOD sets)")
    ax.axhline(0.5, color="grey", linewidth=0.8)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def evaluate_model(model: nn.Module, data, provenance: dict[str, Any], out: Path,
                   scores: list[str] | None, eps_values: list[float], n: int,
                   attack_config: dict[str, Any], pool_args: dict[str, Any],
                   resume: bool = False, wandb_mode: str | None = None,
                   resamples: int = 1000) -> pd.DataFrame:
    """The job: plan, attack on the pool, write the files and a W&B run. `model` is served
    to the detectors already (e.g. a `ForeignClassifier`). Returns the rows."""
    from orchestrator.pools.attack import AttackPool, run_score_attacks
    from orchestrator.pools.base import start_ray
    from orchestrator.reports.provenance import write_provenance
    from orchestrator.tracking import runs

    names = scores or servable_scores(model)
    plan: DetectorPlan = plan_detectors(model, data, names, {}, eps_values, n)
    out.mkdir(parents=True, exist_ok=True)
    write_provenance(out, [], None)
    mode = runs.resolve_mode(wandb_mode)
    runs.prepare_environment(mode)
    config = {**attack_config, **provenance, "dataset": data.name, "n": n,
              "eps": eps_values, "scores": list(plan.scores), **pool_args}
    run = runs.JobRun(mode, "evaluate", out.name, out.name, config, out,
                      run_id=f"evaluate-{hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:10]}")
    for name, why in plan.failed.items():
        print(f"[evaluate] {name}: cannot serve this model ({why})", flush=True)
    for name, why in plan.not_attacked.items():
        print(f"[evaluate] {name}: evaluated clean only ({why})", flush=True)
    started = time.perf_counter()
    attacked: dict[str, torch.Tensor] = {}
    if plan.attacks:
        start_ray()
        print(f"[evaluate] {len(plan.attacks)} attacks ({len(plan.scores) - len(plan.not_attacked)}"
              f" scores x {len(plan.inputs)} input sets x {len(eps_values)} eps) on "
              f"{pool_args['num_actors']} actors -> {out}", flush=True)
        try:
            with AttackPool(model, **pool_args) as pool:
                attacked = run_score_attacks(pool, plan.attacks, plan.scores, attack_config,
                                             out, resume, label="evaluate").score
        except BaseException:
            run.finish(failed=True)
            raise
    frame = detector_frame(model, plan, data.name, eps_values, attacked, resamples,
                           attack_config.get("seed", 0))
    id_accuracy = accuracy(model, data.x_test, data.y_test)
    frame.to_csv(out / "evaluation.csv", index=False)
    title = f"{provenance.get('model', 'model')} on {data.name}"
    markdown = summary_markdown(frame, eps_values, title, id_accuracy)
    (out / "evaluation.md").write_text(markdown)
    figure = plot_evaluation(frame, out / "evaluation.png")
    summary = {**provenance, "dataset": data.name, "ood_sets": [k for k in plan.inputs
                                                                if k != "id"],
               "id_accuracy": id_accuracy, "n": n, "eps": eps_values,
               "scores": list(plan.scores), "not_attacked": plan.not_attacked,
               "failed": plan.failed, "seconds": time.perf_counter() - started}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    run.table("evaluation", frame)
    run.image("evaluation", figure)
    run.finish({"id_accuracy": id_accuracy})
    print("\n" + markdown)
    print(f"[evaluate] results: {out}/evaluation.md, evaluation.csv, evaluation.png")
    return frame
