"""Energy-bounded fine-tuning with outliers (Liu et al. 2020, "Energy-based Out-of-distribution
Detection"; thesis section 3.3.4, eq. 3.20-3.21; NOTES.md E).

A pretrained classifier f is fine-tuned on ID batches and outlier batches with

    L = CE(ID) + lambda * ( mean_in max(0, E(x_in) - m_in)^2 + mean_out max(0, m_out - E(x_out))^2 )

where E(x) = -logsumexp_k f_k(x) (eq. 3.15 at T = 1): ID energies are pushed below m_in,
outlier energies above m_out. The loss is pytorch-ood's `EnergyRegularizedLoss` (outliers
labelled -1; each hinge term averaged over its own samples, as the paper);
tests/test_ood_baselines.py checks it against the formula by hand.

Liu et al.'s CIFAR-10 fine-tuning (their section 4.1 and code, github.com/wetliu/energy_ood):
10 epochs from a pretrained WRN, SGD with Nesterov momentum 0.9, weight decay 5e-4, lr 1e-3
annealed per step by a cosine to 1e-6, batches of 128 ID and 256 outlier images (one forward
pass on their concatenation), lambda = 0.1, m_in = -23, m_out = -5. Outlier batches are drawn
here uniformly with replacement from the outlier set (theirs: a shuffled pass over it).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from workloads.data import iterate_minibatches
from workloads.models.modes import evaluating

OUTLIER = -1  # the label pytorch-ood gives an outlier


def energy(logits: torch.Tensor) -> torch.Tensor:
    """E(x) = -logsumexp_k f_k(x), per example (thesis eq. 3.15, T = 1)."""
    return -torch.logsumexp(logits, dim=1)


def energy_bounded_loss(logits_in: torch.Tensor, targets: torch.Tensor,
                        logits_out: torch.Tensor, m_in: float, m_out: float,
                        weight: float) -> torch.Tensor:
    """Eq. 3.20 with 3.21: cross-entropy of the ID batch plus `weight` (lambda) times the two
    squared hinges on the energies, each a mean over its own batch."""
    # Imported on use, as in workloads/scores/pytorch_ood_detectors.py (start-up time).
    from pytorch_ood.loss import EnergyRegularizedLoss

    loss = EnergyRegularizedLoss(alpha=weight, margin_in=m_in, margin_out=m_out)
    labels = torch.cat([targets, torch.full((len(logits_out),), OUTLIER,
                                            dtype=targets.dtype, device=targets.device)])
    return loss(torch.cat([logits_in, logits_out]), labels)


@torch.no_grad()
def mean_energy(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> float:
    """Mean E(x) of `model` (in eval mode; its modes left as found) over the inputs `x`."""
    device = next(model.parameters()).device
    with evaluating(model):
        total = sum(energy(model(x[i:i + batch_size].to(device))).sum().item()
                    for i in range(0, len(x), batch_size))
    return total / len(x)


def finetune_with_outliers(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                           outliers: torch.Tensor, *, epochs: int, lr: float,
                           batch_size: int, outlier_batch_size: int, m_in: float,
                           m_out: float, weight: float, momentum: float = 0.9,
                           weight_decay: float = 5e-4, final_lr: float = 1e-6,
                           seed: int = 0) -> list[dict[str, float]]:
    """Fine-tune `model` in place with `energy_bounded_loss`: SGD (Nesterov) whose lr falls
    from `lr` to `final_lr` by a cosine over all steps (Liu et al.'s schedule). Each step
    takes an ID batch of `batch_size` and `outlier_batch_size` outliers drawn at random, in
    one forward pass. Returns one record per epoch: mean `loss`, `ce`, and the mean energy
    of the ID (`energy_in`) and outlier (`energy_out`) batches. Everything random (the
    batches, the outliers drawn, dropout's masks) follows `seed`; the caller's random state
    is left as it was."""
    if batch_size > len(x):  # the last incomplete batch is dropped: no step at all
        raise ValueError(f"energy fine-tuning: batch size {batch_size} exceeds the {len(x)} "
                         f"training inputs")
    device = torch.device(next(model.parameters()).device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _finetune(model, x, y, outliers, epochs, lr, batch_size, outlier_batch_size,
                         m_in, m_out, weight, momentum, weight_decay, final_lr, seed, device)


def _finetune(model, x, y, outliers, epochs, lr, batch_size, outlier_batch_size, m_in, m_out,
              weight, momentum, weight_decay, final_lr, seed, device):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                nesterov=momentum > 0, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total = max(epochs * steps_per_epoch, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (
        final_lr + (lr - final_lr) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    ) / lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        model.train()
        sums = {"loss": 0.0, "ce": 0.0, "energy_in": 0.0, "energy_out": 0.0}
        steps = 0
        for index in iterate_minibatches(len(x), batch_size, epoch, seed):
            picked = torch.randint(len(outliers), (outlier_batch_size,), generator=generator)
            xb, yb = x[index].to(device), y[index].to(device)
            logits = model(torch.cat([xb, outliers[picked].to(device)]))
            logits_in, logits_out = logits[:len(xb)], logits[len(xb):]
            loss = energy_bounded_loss(logits_in, yb, logits_out, m_in, m_out, weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                sums["loss"] += loss.item()
                sums["ce"] += nn.functional.cross_entropy(logits_in, yb).item()
                sums["energy_in"] += energy(logits_in).mean().item()
                sums["energy_out"] += energy(logits_out).mean().item()
            steps += 1
        history.append({"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()}})
    model.eval()
    return history
