"""Feature purification (document 003, Appendix B, eq. 8-9; NOTES.md D): move a classifier's
penultimate features F towards low bits/dim under the feature GMM while keeping them close to
the extracted F_ref,

    F* = argmin_F BPD(F) + nu ||F - F_ref||^2                                   (eq. 8)
    F <- F - eps (grad_F BPD(F) + 2 nu (F - F_ref)),  100 steps                 (eq. 9)

then classify the purified features with the model's final layer. The document's grid is
eps in {0.1, 0.01} x nu in {0, 0.01, 0.1, 1}; it gains at most 0.6% accuracy (Table 4),
fixing some mistakes and making new ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from workloads.models.modes import evaluating
from workloads.scores.base import eval_chunk


def bits_per_dim(log_density: torch.Tensor, dim: int) -> torch.Tensor:
    """BPD = -log p(F) / (D ln 2)."""
    return -log_density / (dim * math.log(2))


def purify_features(features: torch.Tensor,
                    log_density: Callable[[torch.Tensor], torch.Tensor],
                    eps: float, nu: float, steps: int = 100) -> torch.Tensor:
    """`steps` steps of eq. 9 from F_ref = `features` (float64); each example on its own."""
    reference = features.detach().double().flatten(1)
    dim = reference.shape[1]
    f = reference.clone()
    for _ in range(steps):
        f.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(bits_per_dim(log_density(f), dim).sum(), f)
        f = (f - eps * (grad + 2 * nu * (f - reference))).detach()
    return f


def purification_effect(model: nn.Module, log_density: Callable[[torch.Tensor], torch.Tensor],
                        x: torch.Tensor, y: torch.Tensor, eps: float, nu: float,
                        steps: int = 100, batch_size: int | None = None) -> dict[str, float]:
    """Accuracy of `model` (which has `features` and `head`) on (x, y) before and after
    purifying its features, and how many predictions it fixes and breaks (Table 4). The
    model runs in eval mode (its modes are left as found), on its device, in chunks of
    `batch_size` inputs (default `eval_chunk`, the scores' chunks); each chunk's features are
    purified on that device."""
    device = next(model.parameters()).device
    batch_size = batch_size or eval_chunk(model)
    dtype = next(model.head.parameters()).dtype
    before, after = [], []
    with evaluating(model):
        for start in range(0, len(x), batch_size):
            with torch.no_grad():
                features = model.features(x[start:start + batch_size].to(device))
                before.append(model.head(features).argmax(dim=1).cpu())
            purified = purify_features(features, log_density, eps, nu, steps)
            with torch.no_grad():
                after.append(model.head(purified.to(dtype)).argmax(dim=1).cpu())
    y = y.cpu()
    right_before, right_after = torch.cat(before) == y, torch.cat(after) == y
    return {"eps": eps, "nu": nu, "accuracy_before": right_before.double().mean().item(),
            "accuracy_after": right_after.double().mean().item(),
            "fixed": int((~right_before & right_after).sum()),
            "broken": int((right_before & ~right_after).sum())}


def purification_table(model: nn.Module,
                       log_density: Callable[[torch.Tensor], torch.Tensor],
                       splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
                       eps_values: list[float], nu_values: list[float],
                       steps: int = 100) -> list[dict[str, float | str]]:
    """Table 4 of document 003: `purification_effect` for every (eps, nu) of the grid on
    each labelled split (e.g. validation and test), one row per split and setting."""
    return [{"split": split, **purification_effect(model, log_density, x, y, eps, nu, steps)}
            for split, (x, y) in splits.items() for eps in eps_values for nu in nu_values]
