"""Evaluate any classifier: a researcher's own model (`MODULE:FACTORY`, a checkpoint), every
detector it can serve, clean and under adaptive attack on the attack pool, near and far OOD,
with intervals (`python -m orchestrator.evaluate`; the evaluation itself:
`workloads.evaluation.detector_evaluation`).

Writes `<out>/`: `evaluation.csv` (every row: score x OOD set or group x setting x eps),
`evaluation.md` (a detector per row: ID accuracy, AUROC [95%] clean and attacked, near and
far), `evaluation.png` (each detector clean and attacked), `summary.json` (the model's
provenance: factory, checkpoint SHA-256; what was not attacked or failed, and why),
`examples.parquet` (one row per input: every detector's score clean and attacked per eps;
`workloads.evaluation.examples`), `provenance.json`, and the attack units (`units/`, reused
by `--resume`); a W&B run.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from orchestrator.errors import UsageError, first_line
from workloads.evaluation.detector_evaluation import (
    plan_detectors,
    servable_scores,
)


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
        raise UsageError(f"--checkpoint {path}: cannot be read safely "
                         f"({type(error).__name__}: {first_line(error, 200)})") from None
    if isinstance(state, dict):
        state = state.get("state_dict", state.get("model", state))
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).strip().splitlines()[:2]
        raise UsageError(f"--checkpoint {path}: does not fit the model ({' '.join(first)})"
                         [:400]) from None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def evaluate_model(model: nn.Module, data, provenance: dict[str, Any], out: Path,
                   scores: list[str] | None, eps_values: list[float], n: int,
                   attack_config: dict[str, Any], pool_args: dict[str, Any],
                   resume: bool = False, wandb_mode: str | None = None,
                   resamples: int = 1000) -> pd.DataFrame:
    """The job of `orchestrator.evaluate`: every score `model` can serve (or `scores`),
    planned, then `evaluate_plan`, with `provenance` (factory, checkpoint SHA-256) in the
    summary and the W&B run. `model` is served to the detectors already (e.g. a
    `ForeignClassifier`). Returns the rows."""
    from orchestrator.jobs.detectors import evaluate_plan
    from orchestrator.reports.provenance import write_provenance
    from orchestrator.tracking import runs

    try:
        plan = plan_detectors(model, data, scores or servable_scores(model), {}, eps_values, n,
                              progress=lambda text: print(f"[evaluate] {text}", flush=True))
    except ValueError as error:
        raise UsageError(str(error)) from None
    out.mkdir(parents=True, exist_ok=True)
    write_provenance(out, [], None)
    mode = runs.resolve_mode(wandb_mode)
    runs.prepare_environment(mode)
    config = {**attack_config, **provenance, "dataset": data.name, "n": n,
              "eps": eps_values, "scores": list(plan.scores), **pool_args}
    run_id = f"evaluate-{hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:10]}"
    run = runs.JobRun(mode, "evaluate", out.name, out.name, config, out, run_id=run_id)
    title = f"{provenance.get('model', 'model')} on {data.name}"
    return evaluate_plan(model, plan, data, eps_values, attack_config, pool_args, out,
                         resume, run, title, provenance, "evaluate", resamples)
