"""Training of the class-anomaly baselines, one epoch at a time (thesis Tables 3.2/3.3,
NOTES.md G): GradCon (`workloads.models.gradcon`) and OCGAN (`workloads.models.ocgan`) on
the training inputs of one normal class.

    optimizers = anomaly_optimizers(model, config)
    for epoch in range(config["epochs"]):
        parts = train_anomaly_epoch(model, optimizers, data.x_train, config, epoch, device)
    reconstruction_mse(model, data.x_val)

The config keys: `batch_size`, `seed`; GradCon's `gradcon_lr`, `gradcon_alpha`; OCGAN's
`ocgan_lr`, `ocgan_noise_std`, `ocgan_mining_steps`, `ocgan_mining_step_size`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workloads.data import iterate_minibatches
from workloads.models.gradcon import GradConAE, gradcon_step
from workloads.models.modes import evaluating
from workloads.models.ocgan import OCGAN, ocgan_optimizers, ocgan_step


def anomaly_optimizers(model: nn.Module, config: dict[str, Any],
                       ) -> dict[str, torch.optim.Optimizer]:
    """GradCon: one Adam (`gradcon_lr`); OCGAN: one Adam per part (`ocgan_lr`)."""
    if isinstance(model, GradConAE):
        return {"autoencoder": torch.optim.Adam(model.parameters(), lr=config["gradcon_lr"])}
    if isinstance(model, OCGAN):
        return ocgan_optimizers(model, config["ocgan_lr"])
    raise TypeError(f"not a class-anomaly model: {type(model).__name__}")


def train_anomaly_epoch(model: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                        x_train: torch.Tensor, config: dict[str, Any], epoch: int,
                        device: torch.device) -> dict[str, float]:
    """One epoch of seeded minibatches (the last incomplete batch dropped); the mean over
    its steps of each loss part of `gradcon_step` / `ocgan_step`, and `steps`. OCGAN's noise
    and latents are drawn from a generator seeded by (seed, epoch): a resumed trial draws
    what an uninterrupted one would."""
    model.train()
    generator = torch.Generator().manual_seed(config["seed"] * 100_003 + epoch)
    sums: dict[str, float] = {}
    steps = 0
    for index in iterate_minibatches(len(x_train), config["batch_size"], epoch,
                                     seed=config["seed"]):
        x = x_train[index].to(device)
        if isinstance(model, GradConAE):
            parts = gradcon_step(model, optimizers["autoencoder"], x, config["gradcon_alpha"])
        else:
            parts = ocgan_step(model, optimizers, x, generator, config["ocgan_noise_std"],
                               config["ocgan_mining_steps"], config["ocgan_mining_step_size"])
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
        steps += 1
    return {**{key: value / max(steps, 1) for key, value in sums.items()}, "steps": steps}


@torch.no_grad()
def reconstruction_mse(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> float:
    """Mean squared error per pixel of the model's reconstruction of `x` (eval mode)."""
    device = next(model.parameters()).device
    with evaluating(model):
        total = sum((model(x[i:i + batch_size].to(device)) - x[i:i + batch_size].to(device))
                    .pow(2).sum().item() for i in range(0, len(x), batch_size))
    return total / x.numel()
