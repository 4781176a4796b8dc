"""What a train loop supplies to the epoch driver: build the model and optimizers, one
training epoch, one validation, the state to checkpoint, the weights to evaluate and the
final stage. Everything the loops share -- restore, the epochs, divergence, the best
validation epoch, early stopping, the checkpoint clock, the reports, rank 0's final stage
and the others' wait -- is the driver's (`orchestrator.tune.epochs.run_epochs`), written
once.

A loop is plain PyTorch. Its `worker` is anything with `rank`, `world_size`, `device` and
`prepare_model(model)` (an `orchestrator.tune.session.Session`: in a notebook,
`LocalSession()`; under Ray Train, DDP on N workers).
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

import torch
from torch import nn

from workloads.evaluation.ood_evaluation import Progress


class Worker(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def prepare_model(self, model: nn.Module) -> nn.Module: ...


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (DDP keeps it in `.module`), or the model itself."""
    return getattr(model, "module", model)


class EpochLoop:
    """One train loop's parts. A subclass sets `model` (the prepared model: DDP-wrapped on N
    workers), `epochs` and the class attributes that apply, and implements the methods.

    Class attributes (the driver reads them):
    - `diverges_on`: metrics whose non-finite value ends the trial with
      `status="diverged"` (validation runs only after a finite training loss);
    - `nan_when_diverged`: validation metrics reported as NaN in that last report;
    - `best`: (validation metric, "max" or "min"): the driver keeps `best_<metric>` and
      `best_epoch` in the state and reports `best_epoch` at the end; None: no best epoch;
    - `keep_best_weights`: the final stage evaluates the best epoch's weights (a copy kept
      in the state), not the last ones;
    - `patience`: stop after this many epochs without a better `best` (None: never);
    - `epochs_metric`: the name of the final report's epoch count;
    - `validation_metrics`: what `validate` reports every epoch (a search decides on one of
      these or on `train_loss`: `epoch_metrics`).
    """

    diverges_on: tuple[str, ...] = ("train_loss",)
    nan_when_diverged: tuple[str, ...] = ()
    best: tuple[str, str] | None = None
    keep_best_weights: bool = False
    patience: int | None = None
    epochs_metric: str = "epochs"
    validation_metrics: tuple[str, ...] = ()

    model: nn.Module
    epochs: int

    @classmethod
    def epoch_metrics(cls, config: dict[str, Any]) -> tuple[str, ...]:
        """The metrics every epoch of a trial of `config` reports that a search can decide
        on: `train_loss` and the validation metrics."""
        return ("train_loss", *cls.validation_metrics)

    def initial_state(self) -> dict[str, Any]:
        """Extra entries of a fresh trial's state (the driver adds epoch, steps, seconds and
        the best epoch's entries)."""
        return {}

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch (0-based): its `steps` and metrics (`train_loss`, ...)."""
        raise NotImplementedError

    def validate(self, epoch: int, state: dict[str, Any]) -> dict[str, Any]:
        """The validation metrics of the model after `epoch` (with a finite training loss)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the driver's entries: weights, optimizers."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put the weights and optimizers of a checkpoint's state back."""
        raise NotImplementedError

    def evaluated(self, state: dict[str, Any]) -> nn.Module:
        """The model the final stage evaluates, in eval mode: the best validation epoch's
        weights (a copy) with `keep_best_weights`, else the last ones."""
        model = unwrap(self.model)
        if self.keep_best_weights:
            model = copy.deepcopy(model)
            model.load_state_dict(state["best_model"])
        return model.eval()

    def final_stage(self, model: nn.Module, state: dict[str, Any],
                    progress: Progress) -> tuple[dict[str, Any], dict[str, Any]]:
        """The trained model's evaluation: (final metrics, final artifacts for final.json)."""
        raise NotImplementedError
