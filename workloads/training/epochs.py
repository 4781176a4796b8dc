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
from workloads.evaluation.examples import Examples
from workloads.evaluation.metrics import accuracy, classifier_calibration, nll
from workloads.evaluation.ood_evaluation import evaluate_ood, no_progress
from workloads.evaluation.uncertainty import bootstrap_ece_interval
from workloads.scores import batched_logits

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
                    device: torch.device | str = "cpu",
                    augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> EpochStats:
    """`train_epoch` for a classifier whose loss is `loss_fn(logits, targets)`; `augment`
    transforms each batch first."""

    def objective(model, xb, yb):
        logits = model(augment(xb) if augment is not None else xb)
        return loss_fn(logits, yb), {"correct": (logits.detach().argmax(1) == yb).sum()}

    return train_epoch(model, optimizer, objective, x, y, batch_size, epoch, seed, rank,
                       world_size, device)


def seeded_generator(*seeds: int) -> torch.Generator:
    """A CPU generator seeded from a tuple (e.g. seed, epoch, rank): an epoch's noise
    (dequantization, posterior samples) that a resumed trial draws again the same."""
    return torch.Generator().manual_seed(hash(seeds) % 2**62)


def translate_and_flip(x: torch.Tensor, max_shift: int = 2,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """The Wide ResNet augmentation of document 003 (Appendix C): each image translated by up
    to `max_shift` pixels in each direction (zero padding) and flipped horizontally with
    probability 1/2."""
    n, _, height, width = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4)
    shifts = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator).tolist()
    flips = (torch.rand(n, generator=generator) < 0.5).tolist()
    out = torch.stack([padded[i, :, dy:dy + height, dx:dx + width]
                       for i, (dy, dx) in enumerate(shifts)])
    return torch.where(torch.tensor(flips, device=x.device).view(n, 1, 1, 1),
                       out.flip(3), out)


# the config's `augment`: the augmentation of a classifier's training batches
AUGMENTATIONS: dict[str, Callable | None] = {"none": None, "translate_flip": translate_and_flip}


def decay_groups(model: nn.Module, decay: float) -> list[dict]:
    """Optimizer parameter groups: the parameters named in the model's `no_weight_decay`
    (DDP's wrapper looked through) without weight decay, the others with `decay`."""
    module = getattr(model, "module", model)
    exempt = set(getattr(module, "no_weight_decay", ()))
    named = list(module.named_parameters())
    groups = [{"params": [p for n, p in named if n not in exempt], "weight_decay": decay}]
    if exempt:
        groups.append({"params": [p for n, p in named if n in exempt], "weight_decay": 0.0})
    return groups


def classifier_optimizer(model: nn.Module, config: dict,
                         lr: float) -> tuple[torch.optim.Optimizer,
                                             torch.optim.lr_scheduler.LRScheduler | None]:
    """Adam (the default, `optimizer="adam"`) or SGD (`"sgd"`, with `momentum`, `nesterov`),
    both with `weight_decay` (L2; default 0) on every parameter but those the model names in
    `no_weight_decay` (G-ODIN's h, `workloads.models.godin`); the learning rate divided by
    `1 / lr_gamma` (default 10) at each epoch of `lr_milestones` (joined by "+", e.g.
    "150+175"; default none: constant)."""
    name = config.get("optimizer", "adam")
    decay = float(config.get("weight_decay", 0.0))
    parameters = decay_groups(model, decay)
    if name == "adam":
        optimizer = torch.optim.Adam(parameters, lr=lr, weight_decay=decay)
    elif name == "sgd":
        momentum = float(config.get("momentum", 0.9))
        optimizer = torch.optim.SGD(parameters, lr=lr, momentum=momentum,
                                    nesterov=bool(config.get("nesterov", True)) and momentum > 0,
                                    weight_decay=decay)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")
    milestones = [int(m) for m in str(config.get("lr_milestones", "") or "").split("+")
                  if m.strip()]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones, gamma=float(config.get("lr_gamma", 0.1))) if milestones else None
    return optimizer, scheduler


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict,
                         scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                         saved_scheduler: dict | None = None) -> None:
    """Load a checkpoint's optimizer (and schedule) state into an optimizer built from the
    trial's *current* config, keeping the config's hyperparameters.

    `Optimizer.load_state_dict` restores the saved learning rate, weight decay, momentum...
    along with the moments. After a Population Based Training exploit (Jaderberg et al.
    2017; NOTES.md on the search) the checkpoint is another trial's and the config a
    perturbed one: loading it plainly would run the donor's learning rate under the new
    config's name (Ray's PBT examples reset `param_group["lr"]` after loading for this
    reason). Here every setting of each parameter group is the freshly built optimizer's,
    but the learning rate keeps the checkpoint's progress along its schedule: the new base
    rate times the saved rate / the saved base rate (`initial_lr`, which a schedule sets;
    1 without one). A resume of the same config is unchanged by this."""
    fresh = [{k: v for k, v in group.items() if k != "params"}
             for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    if scheduler is not None and saved_scheduler is not None:
        scheduler.load_state_dict(saved_scheduler)
    for group, settings in zip(optimizer.param_groups, fresh):
        base = settings.get("initial_lr", settings["lr"])
        saved_base = group.get("initial_lr", group["lr"])
        progress = group["lr"] / saved_base if saved_base else 1.0
        group.update({k: v for k, v in settings.items() if k not in ("lr", "initial_lr")})
        group["lr"] = base * progress
        if "initial_lr" in settings:
            group["initial_lr"] = base
    if scheduler is not None:
        scheduler.base_lrs = [group.get("initial_lr", group["lr"])
                              for group in optimizer.param_groups]
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def fit_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int,
                   batch_size: int = 32, lr: float = 1e-3) -> nn.Module:
    """Train a classifier with Adam and the standard (FFN) loss for `epochs` epochs and
    return it in eval mode: the small trained model of tests, benchmarks and notebooks."""
    from workloads.training.losses import ffn_loss

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        train_one_epoch(model, optimizer, ffn_loss, x, y, batch_size, epoch)
    return model.eval()


def evaluate_split(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy and NLL on one labelled split."""
    logits = batched_logits(model, x)
    return {"acc": accuracy(logits, y), "nll": nll(logits, y)}


def classifier_test_metrics(model: nn.Module, data: Dataset, num_bins: int = 15,
                            examples: Examples | None = None) -> tuple[dict[str, float], dict]:
    """Test accuracy, NLL, ECE (with a 95% bootstrap interval over the test inputs), MCE,
    and the reliability-diagram bins; each test input's prediction, correctness, confidence
    and NLL into `examples`."""
    logits = batched_logits(model, data.x_test)
    if examples is not None:
        examples.record_logits(logits)
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
                     scores: dict[str, dict] | None = None, num_bins: int = 15,
                     progress: Callable[[str], None] = no_progress,
                     examples: Examples | None = None) -> tuple[dict[str, float], dict]:
    """Test accuracy, NLL, ECE, MCE and OOD metrics per (score, OOD set); the per-example
    outputs into `examples`.

    `scores` maps registered OOD score names to their parameters (default: MSP and ln Z);
    scores that need it are fitted on the training split first.

    Returns flat scalar metrics (`test_acc`, `ood_<score>_<set>_auroc`, the mean AUROC per
    score `auroc_<score>`, ...) and the reliability-diagram bins. `progress` is told each
    OOD score as it starts.
    """
    metrics, reliability = classifier_test_metrics(model, data, num_bins, examples)
    ood = evaluate_ood(model, data, scores or {"msp": {}, "lnz": {}}, progress=progress,
                       examples=examples)
    metrics.update(ood.flat_metrics())
    return metrics, reliability
