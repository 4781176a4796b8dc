"""A classifier's train loop (FFN or GFFN, documents 004 / the thesis; NOTES.md A) and its
default final stage: test accuracy, calibration and the OOD scores of `ood_scores`. The
studies on a trained classifier (feature_gmm, failure_prediction, ood_baselines) reuse the
loop with their own final stage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from workloads.data import load_trial_data
from workloads.evaluation.examples import EXAMPLES, Examples
from workloads.evaluation.ood_evaluation import Progress, no_progress, resolve_scores
from workloads.models import build_classifier, feature_cached
from workloads.models.factory import classifier_options
from workloads.training.epochs import (
    AUGMENTATIONS,
    classifier_optimizer,
    evaluate_split,
    final_evaluation,
    load_optimizer_state,
    train_one_epoch,
)
from workloads.training.loop import EpochLoop, Worker, unwrap
from workloads.training.losses import classifier_loss
from workloads.training.lr_scaling import scaled_lr

# final_stage(model, data, config, progress=...) -> (final metrics, final artifacts)
FinalStage = Callable[..., tuple[dict[str, Any], dict[str, Any]]]


def classifier_final_stage(model: nn.Module, data, config: dict[str, Any],
                           progress: Progress = no_progress):
    """Test accuracy, calibration and the OOD scores of `ood_scores` (MSP and ln Z by
    default); the reliability bins as the artifact."""
    model = feature_cached(model)  # the scores share one forward pass per input chunk
    scores = resolve_scores(model, config.get("ood_scores", "msp+lnz"),
                            {"lnz": {"kind": config["log_partition"]}})
    examples = Examples(data)
    final, reliability = final_evaluation(model, data, num_bins=config["num_bins"],
                                          scores=scores, progress=progress, examples=examples)
    return final, {"reliability": reliability, EXAMPLES: examples.frame()}


class ClassifierLoop(EpochLoop):
    """FFN or GFFN classifier training under budget A (early stopping on the validation
    accuracy after `patience` epochs, at most `max_epochs_a`; the best epoch's weights are
    evaluated) or budget B (`epochs_b` epochs; the last weights).

    Reports every epoch `train_loss`, `train_acc_running`, `lr`, `val_acc`, `val_nll`; the
    last report adds the final stage's metrics and `train_acc` on the full training set.
    The optimizer and schedule are `classifier_optimizer`'s (Adam by default);
    `augment="translate_flip"` augments training batches; models with a `standardize`
    layer get the training inputs' channel statistics. `final_stage` (default
    `classifier_final_stage`) evaluates the trained model.
    """

    best = ("val_acc", "max")
    nan_when_diverged = ("val_acc", "val_nll")
    validation_metrics = ("val_acc", "val_nll")

    def __init__(self, config: dict[str, Any], worker: Worker,
                 final_stage: FinalStage = classifier_final_stage):
        budget = config["budget"]
        if budget not in ("A", "B"):
            raise ValueError(f"budget must be 'A' or 'B', got {budget!r}")
        self.config, self.worker, self.stage = config, worker, final_stage
        self.data = data = load_trial_data(config)
        model = build_classifier(config["arch"], data.input_shape, data.num_classes,
                                 **classifier_options(config))
        if hasattr(model, "standardize"):
            model.standardize.fit(data.x_train)
        self.model = worker.prepare_model(model)
        self.augment = AUGMENTATIONS[config.get("augment", "none")]
        self.loss = classifier_loss(config["model"])
        self.lr = scaled_lr(config["lr"], config["batch_size"],
                            config["reference_batch_size"], config["lr_scaling"])
        self.optimizer, self.scheduler = classifier_optimizer(self.model, config, self.lr)
        self.epochs = config["max_epochs_a"] if budget == "A" else config["epochs_b"]
        self.patience = config["patience"] if budget == "A" else None
        self.keep_best_weights = budget == "A"

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        kind = self.config["log_partition"]
        stats = train_one_epoch(self.model, self.optimizer,
                                lambda logits, y: self.loss(logits, y, kind),
                                self.data.x_train, self.data.y_train,
                                self.config["batch_size"], epoch, seed=self.config["seed"],
                                rank=self.worker.rank, world_size=self.worker.world_size,
                                device=self.worker.device, augment=self.augment)
        if self.scheduler is not None:
            self.scheduler.step()
        return {"steps": stats.steps, "train_loss": stats.loss,
                "train_acc_running": stats.accuracy, "scaled_lr": self.lr}

    def validate(self, epoch: int, state: dict[str, Any]) -> dict[str, Any]:
        val = evaluate_split(unwrap(self.model), self.data.x_val, self.data.y_val)
        return {"val_acc": val["acc"], "val_nll": val["nll"]}

    def state_dict(self) -> dict[str, Any]:
        state = {"model": unwrap(self.model).state_dict(),
                 "optimizer": self.optimizer.state_dict()}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"], self.scheduler,
                             state.get("scheduler"))

    def final_stage(self, model, state, progress):
        # the stage's scores and the training accuracy share one forward pass per input chunk
        model = feature_cached(model)
        final, artifacts = self.stage(model, self.data, self.config, progress=progress)
        train = evaluate_split(model, self.data.x_train, self.data.y_train)
        return {**final, "train_acc": train["acc"]}, artifacts


LOOP = ClassifierLoop
