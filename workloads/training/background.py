"""The background model of the likelihood ratio (Ren et al. 2019; document 002, section
2.4.4; NOTES.md E): a density model of the same family trained on inputs whose pixels are
each replaced, with probability mu, by a value drawn uniformly from the pixel grid. The
perturbation destroys the semantic content the in-distribution model also learns, so the
ratio log p_model(x) - log p_background(x) cancels the population-level statistics (local
smoothness, background pixels) that make likelihoods rank some OOD sets above the data.
Ren et al. also train it with L2 regularization (`weight_decay`)."""

from __future__ import annotations

import torch
from torch import nn

from workloads.models.flows import Flow, flow_objective
from workloads.training.epochs import EpochStats, train_epoch


def perturb_pixels(x: torch.Tensor, mu: float, levels: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """`x` (values k / (levels - 1)) with each value replaced with probability `mu` by one of
    the `levels` grid values, uniformly (Ren et al.'s mutation)."""
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"mu must be in [0, 1], got {mu}")
    mask = torch.rand(x.shape, generator=generator) < mu
    random = torch.randint(0, levels, x.shape, generator=generator).to(x.dtype) / (levels - 1)
    return torch.where(mask.to(x.device), random.to(x.device), x)


def train_background(flow: Flow, x_train: torch.Tensor, mu: float, epochs: int, lr: float,
                     batch_size: int, weight_decay: float = 0.0, seed: int = 0,
                     device: torch.device | str = "cpu") -> list[EpochStats]:
    """Train `flow` (fresh, the in-distribution model's architecture) by maximum likelihood
    on perturbed, dequantized training inputs, new perturbations every epoch; returns the
    epochs' statistics. Adam with `weight_decay` as L2."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr, weight_decay=weight_decay)

    def objective(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor):
        noisy = perturb_pixels(xb.cpu(), mu, flow.levels, generator).to(xb.device)
        return flow_objective(model, flow.dequantize(noisy, generator), 0.0)

    history = [train_epoch(flow, optimizer, objective, x_train, x_train.new_zeros(len(x_train)),
                           batch_size, epoch, seed, device=device) for epoch in range(epochs)]
    return history
