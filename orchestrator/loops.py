"""Train loops: a config dict in, per-epoch metrics and checkpoints out through a `Session`.

Each loop serves both training paths (Tune in-process and Ray Train DDP); see session.py.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from orchestrator.session import Session
from workloads.datasets import load_dataset
from workloads.losses import classifier_loss
from workloads.lr_scaling import scaled_lr
from workloads.models import build_classifier
from workloads.training import evaluate_split, final_evaluation, train_one_epoch


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # DDP keeps the model in .module


def train_classifier(config: dict[str, Any], session: Session) -> None:
    """FFN or GFFN classifier training under budget A (early stopping) or B (fixed epochs).

    Reports every epoch: `epoch`, `train_loss`, `train_acc_running`, `val_acc`, `val_nll`,
    `steps`, `lr`, `status`, `train_seconds` (optimizer steps only) and `loop_seconds`
    (wall time of this run of the loop, data loading included). The last report adds the
    final test metrics (see `workloads.training.final_evaluation`), `train_acc` on the full
    training set and `best_epoch`. A non-finite loss ends the trial with `status="diverged"`.
    """
    loop_started = time.perf_counter()
    torch.manual_seed(config["seed"])
    data = load_dataset(config["dataset"], config.get("data_dir"), download=False,
                        seed=config["data_seed"])
    model = build_classifier(config["arch"], data.input_shape, data.num_classes)
    model = session.prepare_model(model)
    kind = config["log_partition"]
    loss = classifier_loss(config["model"])

    def loss_fn(logits, targets):
        return loss(logits, targets, kind)

    lr = scaled_lr(config["lr"], config["batch_size"], config["reference_batch_size"],
                   config["lr_scaling"])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    budget = config["budget"]
    if budget not in ("A", "B"):
        raise ValueError(f"budget must be 'A' or 'B', got {budget!r}")
    max_epochs = config["max_epochs_a"] if budget == "A" else config["epochs_b"]

    state, final_artifacts = session.restore()
    finished = state is not None and "final_metrics" in state and (
        budget == "A" or state["epoch"] + 1 >= max_epochs)
    if finished:
        # Restarted after its final checkpoint was written: report the result again.
        session.report(state["final_metrics"], state=state, final=final_artifacts)
        return
    if state is None:
        state = {"epoch": -1, "steps": 0, "best_val_acc": -1.0, "best_epoch": -1,
                 "best_model": None, "train_seconds": 0.0}
    else:
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])

    for epoch in range(state["epoch"] + 1, max_epochs):
        started = time.perf_counter()
        stats = train_one_epoch(model, optimizer, loss_fn, data.x_train, data.y_train,
                                config["batch_size"], epoch, seed=config["seed"],
                                rank=session.rank, world_size=session.world_size,
                                device=session.device)
        state["train_seconds"] += time.perf_counter() - started
        state["steps"] += stats.steps
        state["epoch"] = epoch
        metrics = {"epoch": epoch + 1, "train_loss": stats.loss,
                   "train_acc_running": stats.accuracy, "steps": state["steps"], "lr": lr,
                   "train_seconds": state["train_seconds"],
                   "loop_seconds": time.perf_counter() - loop_started}
        if not math.isfinite(stats.loss):
            session.report({**metrics, "val_acc": math.nan, "val_nll": math.nan,
                            "status": "diverged", "diverged_epoch": epoch + 1})
            return
        val = evaluate_split(_unwrap(model), data.x_val, data.y_val)
        metrics.update(val_acc=val["acc"], val_nll=val["nll"])
        if val["acc"] > state["best_val_acc"]:
            state.update(best_val_acc=val["acc"], best_epoch=epoch)
            if budget == "A":
                state["best_model"] = copy.deepcopy(_unwrap(model).state_dict())
        patience_over = budget == "A" and epoch - state["best_epoch"] >= config["patience"]
        state["model"] = _unwrap(model).state_dict()
        state["optimizer"] = optimizer.state_dict()
        if not (patience_over or epoch + 1 == max_epochs):
            save = (epoch + 1) % config.get("checkpoint_every", 1) == 0
            session.report({**metrics, "status": "running"}, state=state if save else None)
            continue
        # Budget A evaluates the weights of the best validation epoch; B the last weights.
        evaluated = _unwrap(model)
        if budget == "A":
            evaluated = copy.deepcopy(evaluated)
            evaluated.load_state_dict(state["best_model"])
        final, reliability = final_evaluation(evaluated, data, num_bins=config["num_bins"],
                                              scores={"msp": {}, "lnz": {"kind": kind}})
        train = evaluate_split(evaluated, data.x_train, data.y_train)
        metrics.update(final, train_acc=train["acc"], best_epoch=state["best_epoch"] + 1,
                       epochs=epoch + 1, status="completed",
                       loop_seconds=time.perf_counter() - loop_started)
        state["final_metrics"] = metrics
        session.report(metrics, state=state, final={"reliability": reliability})
        return


LOOPS: dict[str, Callable[[dict[str, Any], Session], None]] = {
    "classifier": train_classifier,
}
