"""One epoch of classifier training and the final evaluation, in plain PyTorch.

The orchestrator's train loop (Ray Tune in-process or Ray Train DDP) and the benchmark's
plain sequential loop both call these, so every path trains with the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from workloads.datasets import Dataset, iterate_minibatches
from workloads.metrics import accuracy, classifier_calibration, nll, ood_metrics
from workloads.scores import batched_logits, build_score


@dataclass
class EpochStats:
    loss: float       # mean training loss over the epoch's global batches (NaN/inf: diverged)
    accuracy: float   # training accuracy on the examples seen, in train mode
    steps: int        # optimizer steps taken this epoch


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                    x: torch.Tensor, y: torch.Tensor, batch_size: int, epoch: int,
                    seed: int = 0, rank: int = 0, world_size: int = 1,
                    device: torch.device | str = "cpu") -> EpochStats:
    """Train over one epoch of global batches of `batch_size`, this worker's share of each;
    with several workers the returned loss and accuracy are those of the global batches."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = steps = 0
    for index in iterate_minibatches(len(x), batch_size, epoch, seed, rank, world_size):
        xb, yb = x[index].to(device, non_blocking=True), y[index].to(device, non_blocking=True)
        logits = model(xb)
        loss = loss_fn(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()
        correct += (logits.detach().argmax(1) == yb).sum()
        seen += len(yb)
        steps += 1
    if steps == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {len(x)} training examples")
    totals = torch.stack([loss_sum, correct, torch.tensor(float(seen), device=device)])
    if world_size > 1:  # the global batch's loss is the mean of the workers' losses
        torch.distributed.all_reduce(totals)
    return EpochStats(loss=(totals[0] / (steps * world_size)).item(),
                      accuracy=(totals[1] / totals[2]).item(), steps=steps)


def evaluate_split(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy and NLL on one labelled split."""
    logits = batched_logits(model, x)
    return {"acc": accuracy(logits, y), "nll": nll(logits, y)}


def final_evaluation(model: nn.Module, data: Dataset,
                     scores: dict[str, dict] | None = None,
                     num_bins: int = 15) -> tuple[dict[str, float], dict]:
    """Test accuracy, NLL, ECE, MCE and OOD metrics per (score, OOD set).

    `scores` maps registered OOD score names to their parameters (default: MSP and ln Z);
    scores that need it are fitted on the training split first.

    Returns flat scalar metrics (`test_acc`, `ood_<score>_<set>_auroc`, the mean AUROC per
    score `auroc_<score>`, ...) and the reliability-diagram bins.
    """
    logits = batched_logits(model, data.x_test)
    calib = classifier_calibration(logits, data.y_test, num_bins)
    metrics = {"test_acc": accuracy(logits, data.y_test), "test_nll": nll(logits, data.y_test),
               "test_ece": calib.ece, "test_mce": calib.mce}
    for score_name, params in (scores or {"msp": {}, "lnz": {}}).items():
        score = build_score(score_name, **params).fit(model, data.x_train, data.y_train)
        score_id = score(model, data.x_test).numpy()
        aurocs = []
        for ood_name, x_ood in data.ood.items():
            n = min(len(score_id), len(x_ood))  # balanced ID/OOD counts
            result = ood_metrics(score_id[:n], score(model, x_ood[:n]).numpy())
            for key, value in result.items():
                metrics[f"ood_{score_name}_{ood_name}_{key}"] = value
            aurocs.append(result["auroc"])
        if aurocs:
            metrics[f"auroc_{score_name}"] = float(sum(aurocs) / len(aurocs))
    reliability = {"bin_edges": calib.bin_edges, "accuracy": calib.bin_accuracy,
                   "confidence": calib.bin_confidence, "count": calib.bin_count}
    return metrics, reliability

