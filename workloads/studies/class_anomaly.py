"""The class-anomaly study (thesis Tables 3.2/3.3, NOTES.md G): train one baseline on one
normal class, then the AUROC of its score against the other classes.

`method` gradcon or ocgan trains `workloads.models.gradcon` / `.ocgan`
(`workloads.training.class_anomaly`); `method` flow is the thesis' own approximate mass:
the generative loop with the trial's flow keys (alpha 2), its OOD stage scoring
`ood_scores` (log p(x), -AM) against `other_classes`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from workloads.data import load_trial_data
from workloads.evaluation.examples import EXAMPLES, Examples
from workloads.evaluation.ood_evaluation import Progress, evaluate_ood, no_progress
from workloads.models.factory import build_anomaly_model
from workloads.studies.generative import GenerativeLoop
from workloads.training.class_anomaly import (
    anomaly_optimizers,
    reconstruction_mse,
    train_anomaly_epoch,
)
from workloads.training.epochs import load_optimizer_state
from workloads.training.loop import EpochLoop, Worker

# The OOD score of each baseline's model, with its parameters from the config.
SCORES = {"gradcon": lambda config: {"gradcon": {"beta": config["gradcon_beta"]}},
          "ocgan": lambda config: {"ocgan": {}}}


class AnomalyLoop(EpochLoop):
    """GradCon or OCGAN on the normal class `normal_class` of `dataset` for `epochs`.

    Reports every epoch `train_loss` and the method's loss parts `train_<part>` (GradCon:
    recon, grad_loss; OCGAN: recon, classifier, disc_latent, disc_visual, gen_latent,
    gen_visual) and `val_recon_mse` (per pixel, the normal class's validation inputs). The
    last report adds `test_recon_mse` and the OOD stage's
    `ood_<score>_other_classes_<metric>` (score `gradcon` or `ocgan`: the negated anomaly
    score); the final checkpoint keeps the weights (GradCon's reference gradients among
    them) and the `ood` rows. A non-finite loss or validation error ends the trial as
    diverged.
    """

    diverges_on = ("train_loss", "val_recon_mse")
    nan_when_diverged = ("val_recon_mse",)
    validation_metrics = ("val_recon_mse",)

    def __init__(self, config: dict[str, Any], worker: Worker):
        if config.get("normal_class", -1) < 0:
            raise ValueError("class_anomaly trains on one normal class: set normal_class >= 0")
        if worker.world_size > 1:
            raise ValueError("GradCon and OCGAN train on one worker (num_workers = 1)")
        self.config, self.worker = config, worker
        self.data = load_trial_data(config)
        self.model = worker.prepare_model(build_anomaly_model(config, self.data.input_shape))
        self.optimizers = anomaly_optimizers(self.model, config)
        self.epochs = config["epochs"]

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        parts = train_anomaly_epoch(self.model, self.optimizers, self.data.x_train,
                                    self.config, epoch, self.worker.device)
        return {"steps": parts.pop("steps"), "train_loss": parts.pop("loss"),
                **{f"train_{k}": v for k, v in parts.items()}}

    def validate(self, epoch: int, state: dict[str, Any]) -> dict[str, Any]:
        return {"val_recon_mse": reconstruction_mse(self.model, self.data.x_val)}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(),
                "optimizers": {name: o.state_dict() for name, o in self.optimizers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        for name, optimizer in self.optimizers.items():
            load_optimizer_state(optimizer, state["optimizers"][name])  # the config's lr

    def final_stage(self, model, state, progress):
        return anomaly_final_stage(model, self.data, self.config, progress=progress)


def class_anomaly_loop(config: dict[str, Any], worker: Worker) -> EpochLoop:
    """The study's loop: GradCon / OCGAN, or the generative loop for `method` flow."""
    if config["method"] == "flow":
        return GenerativeLoop(config, worker)
    return AnomalyLoop(config, worker)


class_anomaly_loop.loop_class = (  # which loop a config gets (workloads.studies.loop_class)
    lambda config: GenerativeLoop if config["method"] == "flow" else AnomalyLoop)



LOOP = class_anomaly_loop

def anomaly_final_stage(model: nn.Module, data, config: dict[str, Any],
                        progress: Progress = no_progress):
    """A trained GradCon or OCGAN: the OOD stage of its score (the normal class's test
    inputs against every test input of the other classes) and `test_recon_mse`."""
    examples = Examples(data)
    ood = evaluate_ood(model, data, SCORES[config["method"]](config), progress=progress,
                       examples=examples)
    return ({**ood.flat_metrics(), "test_recon_mse": reconstruction_mse(model, data.x_test)},
            {"ood": ood.rows, EXAMPLES: examples.frame()})
