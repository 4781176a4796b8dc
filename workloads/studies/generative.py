"""The thesis' flows and DIGLMs with the approximate-mass regularizer (NOTES.md B, C): the
objective, the train loop (`GenerativeLoop`), the training-time AUROC diagnostic (Fig. 3.3 /
3.17) and the final stage (test density metrics, a DIGLM's accuracy, the OOD stage, the
likelihood ratio's background model). Used by alpha_flow, alpha_diglm and class_anomaly's
flow."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from workloads.data import load_trial_data
from workloads.evaluation.examples import EXAMPLES, Examples
from workloads.evaluation.ood_evaluation import (
    Progress,
    evaluate_ood,
    no_progress,
    ood_auroc_snapshot,
    resolve_scores,
)
from workloads.models import DIGLM, Flow, build_generative_model
from workloads.models.diglm import diglm_objective
from workloads.models.flows import flow_objective
from workloads.scores import build_score
from workloads.training.background import train_background
from workloads.training.epochs import (
    classifier_test_metrics,
    evaluate_split,
    load_optimizer_state,
    seeded_generator,
    train_epoch,
)
from workloads.training.loop import EpochLoop, Worker, unwrap


def flow_of(model: nn.Module) -> Flow:
    """The flow of a flow or a DIGLM (DDP-wrapped or not)."""
    model = unwrap(model)
    return model.flow if isinstance(model, DIGLM) else model


def _density_metrics(model: nn.Module, x: torch.Tensor, seed: int,
                     prefix: str) -> dict[str, float]:
    """Mean bits/dim of the dequantized inputs (fixed noise), mean log p and AM of the clean
    inputs."""
    flow = flow_of(model)
    log_px = build_score("log_px")
    noisy = flow.dequantize(x, seeded_generator(seed, -1))
    return {f"{prefix}_bpd": flow.bits_per_dim(log_px(model, noisy)).mean().item(),
            f"{prefix}_log_px": log_px(model, x).mean().item(),
            f"{prefix}_am": (-build_score("neg_am")(model, x)).mean().item()}


def generative_objective(flow: Flow, noise: torch.Generator, alpha: float,
                         beta: float | None):
    """The batch objective of `train_epoch`: dequantize with `noise`, then the flow loss
    (beta None) or the DIGLM loss."""

    def objective(model, xb, yb):
        xb = flow.dequantize(xb, noise)
        if beta is None:
            return flow_objective(model, xb, alpha)
        return diglm_objective(model, xb, yb, alpha, beta)

    return objective


DIAGNOSTIC_SCORES = ("log_px", "neg_am")


def _diagnostic(model: nn.Module, data, config: dict[str, Any], epoch: int,
                history: list[dict[str, Any]]) -> dict[str, float]:
    """The training-time diagnostic (thesis Fig. 3.3 / 3.17): AUROC of log p(x) and -AM
    against each OOD set on `diagnostic_samples` inputs, appended to `history` (kept in the
    checkpoint, drawn at the end) and returned as `diag_auroc_<score>_<set>` metrics."""
    scores = {name: build_score(name) for name in DIAGNOSTIC_SCORES}
    rows = ood_auroc_snapshot(model, data, scores, config.get("diagnostic_samples", 256))
    history += [{"epoch": epoch, **row} for row in rows]
    return {f"diag_auroc_{r['score']}_{r['ood_set']}": r["auroc"] for r in rows}


def diagnostic_endpoints(history: list[dict[str, Any]]) -> dict[str, float]:
    """`diag_auroc_<score>_first` / `_last`: the diagnostic's AUROC (mean over OOD sets) at
    its first and last snapshot, the quantities of the thesis's Fig. 3.17 claim that the AM
    ordering degrades during training."""
    if not history:
        return {}
    frame: dict[tuple[str, int], list[float]] = {}
    for row in history:
        frame.setdefault((row["score"], row["epoch"]), []).append(row["auroc"])
    first, last = min(r["epoch"] for r in history), max(r["epoch"] for r in history)
    return {f"diag_auroc_{score}_{end}": float(sum(v) / len(v))
            for (score, epoch), v in frame.items()
            for end, at in (("first", first), ("last", last)) if epoch == at}

class GenerativeLoop(EpochLoop):
    """RealNVP flow (`model="flow"`) or DIGLM (`model="diglm"`) with the AM regularizer.

    Flow loss: -log p(x) + alpha * AM(x) (NOTES.md B, eq. 3.35). DIGLM loss: -log p(y|x) +
    beta * (-log p(x) + alpha * AM(x)) (NOTES.md C, eq. 4.13). Inputs get dequantization
    noise by the `dequantization` convention ("centred" or "start"), recorded in the config.

    Reports every epoch `train_loss`, `train_nll`, `train_am` (alpha > 0), `train_acc` /
    `train_ce` (DIGLM), `lr`, `val_bpd`, `val_log_px`, `val_am`, `val_acc` (DIGLM). The last
    report adds the test metrics and the OOD stage's `ood_<score>_<set>_<metric>`; the final
    artifacts keep the `ood` rows (long format) and `samples` (log p(x), AM) for the report.
    With `diagnostic_every` = k > 0, every k-th epoch also reports `diag_auroc_<score>_<set>`
    (log p(x) and -AM on `diagnostic_samples` inputs; `_diagnostic`), kept as `diagnostic`
    rows for the AUROC-versus-epoch plot. With `background_mu` > 0 a background model is
    trained after the trial's model (`_background_model`) and the OOD stage adds the
    likelihood ratio (`likelihood_ratio`) to the requested scores. A non-finite loss or
    validation bits/dim ends the trial as diverged.
    """

    diverges_on = ("train_loss", "val_bpd")
    nan_when_diverged = ("val_bpd",)
    validation_metrics = ("val_bpd", "val_log_px", "val_am")

    @classmethod
    def epoch_metrics(cls, config: dict[str, Any]) -> tuple[str, ...]:
        diglm = ("val_acc",) if config.get("model") == "diglm" else ()
        return (*super().epoch_metrics(config), *diglm)

    def __init__(self, config: dict[str, Any], worker: Worker):
        self.config, self.worker = config, worker
        self.data = data = load_trial_data(config)
        model = build_generative_model(config, data.input_shape, data.levels, data.num_classes)
        self.diglm = isinstance(model, DIGLM)
        self.model = worker.prepare_model(model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config["lr"],
                                          weight_decay=config.get("weight_decay", 0.0))
        self.epochs = config["epochs"]

    def initial_state(self) -> dict[str, Any]:
        return {"diagnostic": []}

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        config, worker = self.config, self.worker
        objective = generative_objective(
            flow_of(self.model), seeded_generator(config["seed"], epoch, worker.rank),
            config["alpha"], config["beta"] if self.diglm else None)
        stats = train_epoch(self.model, self.optimizer, objective, self.data.x_train,
                            self.data.y_train, config["batch_size"], epoch,
                            seed=config["seed"], rank=worker.rank,
                            world_size=worker.world_size, device=worker.device,
                            max_grad_norm=config.get("max_grad_norm"))
        metrics = {"steps": stats.steps, "train_loss": stats.loss,
                   **{f"train_{k}": v for k, v in stats.parts.items() if math.isfinite(v)},
                   "lr": config["lr"]}
        if self.diglm:
            metrics["train_acc"] = stats.accuracy
        return metrics

    def validate(self, epoch: int, state: dict[str, Any]) -> dict[str, Any]:
        config, model = self.config, unwrap(self.model)
        metrics = _density_metrics(model, self.data.x_val, config["seed"], "val")
        if self.diglm:
            metrics["val_acc"] = evaluate_split(model, self.data.x_val, self.data.y_val)["acc"]
        every = config.get("diagnostic_every", 0)
        if (every > 0 and (epoch + 1) % every == 0 and self.worker.rank == 0
                and math.isfinite(metrics["val_bpd"])):
            metrics.update(_diagnostic(model, self.data, config, epoch + 1,
                                       state["diagnostic"]))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"model": unwrap(self.model).state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])  # the config's lr (PBT)

    def final_stage(self, model, state, progress):
        metrics, artifacts = generative_final_stage(model, self.data, self.config,
                                                    progress=progress)
        metrics.update(diagnostic_endpoints(state["diagnostic"]))
        artifacts["diagnostic"] = state["diagnostic"]
        return metrics, artifacts



LOOP = GenerativeLoop

def generative_final_stage(model: nn.Module, data, config: dict[str, Any],
                           progress: Progress = no_progress):
    """A trained flow or DIGLM: test bits/dim, log p(x) and AM (`test_*`), a DIGLM's test
    accuracy and calibration, and the OOD stage of `ood_scores` (with `score_params`); with
    `background_mu` > 0, a background model trained first and the likelihood ratio added."""
    final: dict[str, Any] = {}
    examples = Examples(data)
    metrics = _density_metrics(model, data.x_test, config["seed"], "test")
    if isinstance(model, DIGLM):
        test, final["reliability"] = classifier_test_metrics(model, data, config["num_bins"],
                                                             examples)
        metrics.update(test)
    requested, params = config["ood_scores"], dict(config.get("score_params") or {})
    if config.get("background_mu", 0) > 0:  # the likelihood ratio's background model
        progress("training the background model")
        device = next(model.parameters()).device
        background, history = _background_model(config, data, device)
        params["likelihood_ratio"] = {"background": background}
        names = list(resolve_scores(model, requested))
        requested = "+".join(dict.fromkeys([*names, "likelihood_ratio"]))
        metrics["background_train_nll"] = history[-1].loss
    ood = evaluate_ood(model, data, resolve_scores(model, requested, params),
                       progress=progress, examples=examples)
    metrics.update(ood.flat_metrics())
    final.update(ood=ood.rows, samples=ood.samples, **{EXAMPLES: examples.frame()})
    return metrics, final


def _background_model(config: dict[str, Any], data, device):
    """Ren et al.'s background model for the likelihood ratio: a fresh flow of the trial's
    architecture (a DIGLM's flow for a DIGLM) trained for `background_epochs` (default: the
    trial's epochs) on training inputs with a fraction `background_mu` of pixels replaced
    at random, L2 `background_weight_decay` (`workloads.training.background`)."""
    torch.manual_seed(config["seed"] + 1)
    flow = build_generative_model({**config, "model": "flow"}, data.input_shape, data.levels,
                                  data.num_classes).to(device)
    history = train_background(flow, data.x_train, config["background_mu"],
                               config.get("background_epochs") or config["epochs"],
                               config["lr"], config["batch_size"],
                               config.get("background_weight_decay", 0.0), config["seed"],
                               device)
    return flow.eval(), history
