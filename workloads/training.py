"""One epoch of training and the final evaluation, in plain PyTorch.

The orchestrator's train loops (Ray Tune in-process or Ray Train DDP) and the benchmark's
plain sequential loop both call these, so every path trains with the same code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from workloads.data import Dataset, iterate_minibatches
from workloads.metrics import accuracy, classifier_calibration, nll
from workloads.ood_evaluation import evaluate_ood
from workloads.scores import batched_logits
from workloads.uncertainty import bootstrap_ece_interval

# objective(model, x_batch, y_batch) -> (loss, {name: detached sum-able tensor})
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor],
                     tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class EpochStats:
    loss: float       # mean training loss over the epoch's global batches (NaN/inf: diverged)
    accuracy: float   # training accuracy on the examples seen, in train mode (NaN if none)
    steps: int        # optimizer steps taken this epoch
    parts: dict[str, float] = field(default_factory=dict)  # mean of each objective part


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective,
                x: torch.Tensor, y: torch.Tensor, batch_size: int, epoch: int,
                seed: int = 0, rank: int = 0, world_size: int = 1,
                device: torch.device | str = "cpu",
                max_grad_norm: float | None = None) -> EpochStats:
    """Train over one epoch of global batches of `batch_size`, this worker's share of each.

    The objective's parts are averaged over batches (and workers), except `correct`, a
    count that becomes the accuracy. With several workers the returned figures are those of
    the global batches.
    """
    model.train()
    loss_sum = torch.zeros((), device=device)
    part_sums: dict[str, torch.Tensor] = {}
    seen = steps = 0
    for index in iterate_minibatches(len(x), batch_size, epoch, seed, rank, world_size):
        xb, yb = x[index].to(device, non_blocking=True), y[index].to(device, non_blocking=True)
        loss, parts = objective(model, xb, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        loss_sum += loss.detach()
        for key, value in parts.items():
            part_sums[key] = part_sums.get(key, torch.zeros((), device=device)) + value
        seen += len(yb)
        steps += 1
    if steps == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {len(x)} training examples")
    keys = sorted(part_sums)
    totals = torch.stack([loss_sum, torch.tensor(float(seen), device=device),
                          *[part_sums[k].float() for k in keys]])
    if world_size > 1:  # the global batch's loss is the mean of the workers' losses
        torch.distributed.all_reduce(totals)
    batches = steps * world_size
    parts = {k: (totals[2 + i] / batches).item() for i, k in enumerate(keys) if k != "correct"}
    correct = (totals[2 + keys.index("correct")] / totals[1]).item() if "correct" in keys \
        else math.nan
    return EpochStats(loss=(totals[0] / batches).item(), accuracy=correct, steps=steps,
                      parts=parts)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                    x: torch.Tensor, y: torch.Tensor, batch_size: int, epoch: int,
                    seed: int = 0, rank: int = 0, world_size: int = 1,
                    device: torch.device | str = "cpu") -> EpochStats:
    """`train_epoch` for a classifier whose loss is `loss_fn(logits, targets)`."""

    def objective(model, xb, yb):
        logits = model(xb)
        return loss_fn(logits, yb), {"correct": (logits.detach().argmax(1) == yb).sum()}

    return train_epoch(model, optimizer, objective, x, y, batch_size, epoch, seed, rank,
                       world_size, device)


def fit_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int,
                   batch_size: int = 32, lr: float = 1e-3) -> nn.Module:
    """Train a classifier with Adam and the standard (FFN) loss for `epochs` epochs and
    return it in eval mode: the small trained model of tests, benchmarks and notebooks."""
    from workloads.losses import ffn_loss

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        train_one_epoch(model, optimizer, ffn_loss, x, y, batch_size, epoch)
    return model.eval()


def evaluate_split(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy and NLL on one labelled split."""
    logits = batched_logits(model, x)
    return {"acc": accuracy(logits, y), "nll": nll(logits, y)}


def classifier_test_metrics(model: nn.Module, data: Dataset,
                            num_bins: int = 15) -> tuple[dict[str, float], dict]:
    """Test accuracy, NLL, ECE (with a 95% bootstrap interval over the test inputs), MCE,
    and the reliability-diagram bins."""
    logits = batched_logits(model, data.x_test)
    calib = classifier_calibration(logits, data.y_test, num_bins)
    confidence, prediction = logits.softmax(dim=1).max(dim=1)
    ece_lo, ece_hi = bootstrap_ece_interval(confidence.numpy(),
                                            (prediction == data.y_test).numpy(), num_bins)
    metrics = {"test_acc": accuracy(logits, data.y_test), "test_nll": nll(logits, data.y_test),
               "test_ece": calib.ece, "test_ece_lo": ece_lo, "test_ece_hi": ece_hi,
               "test_mce": calib.mce}
    reliability = {"bin_edges": calib.bin_edges, "accuracy": calib.bin_accuracy,
                   "confidence": calib.bin_confidence, "count": calib.bin_count}
    return metrics, reliability


def final_evaluation(model: nn.Module, data: Dataset,
                     scores: dict[str, dict] | None = None,
                     num_bins: int = 15) -> tuple[dict[str, float], dict]:
    """Test accuracy, NLL, ECE, MCE and OOD metrics per (score, OOD set).

    `scores` maps registered OOD score names to their parameters (default: MSP and ln Z);
    scores that need it are fitted on the training split first.

    Returns flat scalar metrics (`test_acc`, `ood_<score>_<set>_auroc`, the mean AUROC per
    score `auroc_<score>`, ...) and the reliability-diagram bins.
    """
    metrics, reliability = classifier_test_metrics(model, data, num_bins)
    ood = evaluate_ood(model, data, scores or {"msp": {}, "lnz": {}})
    metrics.update(ood.flat_metrics())
    return metrics, reliability
