"""The class-anomaly loop (thesis Tables 3.2/3.3, NOTES.md G): train one baseline on one
normal class, then the AUROC of its score against the other classes.

`method` gradcon or ocgan trains `workloads.models.gradcon` / `.ocgan` here; `method` flow
is the thesis' own approximate mass: `train_generative` with the trial's flow keys (alpha
2), its OOD stage scoring `ood_scores` (log p(x), -AM) against `other_classes`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from orchestrator.tune.session import Session
from workloads.class_anomaly import anomaly_optimizers, reconstruction_mse, train_anomaly_epoch
from workloads.data import load_trial_data
from workloads.models.factory import build_anomaly_model
from workloads.ood_evaluation import evaluate_ood, no_progress

# The OOD score of each baseline's model, with its parameters from the config.
SCORES = {"gradcon": lambda config: {"gradcon": {"beta": config["gradcon_beta"]}},
          "ocgan": lambda config: {"ocgan": {}}}


def train_class_anomaly(config: dict[str, Any], session: Session) -> None:
    """GradCon or OCGAN on the normal class `normal_class` of `dataset` for `epochs`
    (`workloads.class_anomaly`); `method` flow hands the trial to `train_generative`.

    Reports every epoch: `epoch`, `train_loss` and the method's loss parts `train_<part>`
    (GradCon: recon, grad_loss; OCGAN: recon, classifier, disc_latent, disc_visual,
    gen_latent, gen_visual), `val_recon_mse` (per pixel, the normal class's validation
    inputs), `steps`, `status`, `train_seconds`, `loop_seconds`. The last report adds
    `test_recon_mse` and the OOD stage's `ood_<score>_other_classes_<metric>` and
    `auroc_<score>` (score `gradcon` or `ocgan`: the negated anomaly score); the final
    checkpoint keeps the weights (GradCon's reference gradients among them) and the `ood`
    rows. A non-finite loss ends the trial with `status="diverged"`.
    """
    from orchestrator.tune.loops import CheckpointClock, train_generative  # loops imports us

    if config["method"] == "flow":
        train_generative(config, session)
        return
    if config.get("normal_class", -1) < 0:
        raise ValueError("class_anomaly trains on one normal class: set normal_class >= 0")
    if session.world_size > 1:
        raise ValueError("GradCon and OCGAN train on one worker (num_workers = 1)")
    loop_started = time.perf_counter()
    clock = CheckpointClock(config)
    torch.manual_seed(config["seed"])
    data = load_trial_data(config)
    model = session.prepare_model(build_anomaly_model(config, data.input_shape))
    optimizers = anomaly_optimizers(model, config)

    state, final_artifacts = session.restore()
    if state is not None and "final_metrics" in state:
        session.report(state["final_metrics"], state=state, final=final_artifacts)
        return
    if state is None:
        state = {"epoch": -1, "steps": 0, "train_seconds": 0.0}
    else:
        model.load_state_dict(state["model"])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])

    for epoch in range(state["epoch"] + 1, config["epochs"]):
        started = time.perf_counter()
        parts = train_anomaly_epoch(model, optimizers, data.x_train, config, epoch,
                                    session.device)
        state["train_seconds"] += time.perf_counter() - started
        state["steps"] += parts.pop("steps")
        state["epoch"] = epoch
        metrics = {"epoch": epoch + 1, "train_loss": parts.pop("loss"),
                   **{f"train_{k}": v for k, v in parts.items()}, "steps": state["steps"],
                   "train_seconds": state["train_seconds"]}
        metrics["val_recon_mse"] = reconstruction_mse(model, data.x_val)
        metrics["loop_seconds"] = time.perf_counter() - loop_started
        if not (math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_recon_mse"])):
            session.report({**metrics, "val_recon_mse": math.nan, "status": "diverged",
                            "diverged_epoch": epoch + 1})
            return
        state["model"] = model.state_dict()
        state["optimizers"] = {name: o.state_dict() for name, o in optimizers.items()}
        if epoch + 1 < config["epochs"]:
            session.report({**metrics, "status": "running"},
                           state=state if clock.due(epoch) else None)
            continue
        session.progress("final stage")
        final_metrics, final = anomaly_final_stage(model, data, config,
                                                   progress=session.progress)
        metrics.update(final_metrics, epochs=epoch + 1, status="completed",
                       loop_seconds=time.perf_counter() - loop_started)
        state["final_metrics"] = metrics
        session.report(metrics, state=state, final=final)
        return


def anomaly_final_stage(model: nn.Module, data, config: dict[str, Any],
                        progress: Callable[[str], None] = no_progress):
    """A trained GradCon or OCGAN: the OOD stage of its score (the normal class's test
    inputs against every test input of the other classes) and `test_recon_mse`."""
    ood = evaluate_ood(model, data, SCORES[config["method"]](config), progress=progress)
    return ({**ood.flat_metrics(), "test_recon_mse": reconstruction_mse(model, data.x_test)},
            {"ood": ood.rows})
