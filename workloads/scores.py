"""OOD scores: small units with one signature, found through a registry (NOTES.md E).

Every score is `score(model, x, **params) -> Tensor` of shape (N,), and a higher score
means "more in-distribution". Register new ones with `@register_score("name")`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from workloads.losses import log_partition

OODScore = Callable[..., torch.Tensor]
OOD_SCORES: dict[str, OODScore] = {}


def register_score(name: str) -> Callable[[OODScore], OODScore]:
    def decorate(fn: OODScore) -> OODScore:
        if name in OOD_SCORES:
            raise ValueError(f"OOD score '{name}' is registered twice")
        OOD_SCORES[name] = fn
        return fn
    return decorate


def get_score(name: str) -> OODScore:
    if name not in OOD_SCORES:
        raise KeyError(f"unknown OOD score '{name}'; known: {', '.join(sorted(OOD_SCORES))}")
    return OOD_SCORES[name]


@torch.no_grad()
def batched_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits of `model` on `x`, in eval mode, computed in chunks on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size].to(device)).float().cpu()
                     for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


@register_score("msp")
def max_softmax_probability(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Max softmax probability (MSP / MCP; Hendrycks & Gimpel 2017)."""
    return batched_logits(model, x).softmax(dim=1).max(dim=1).values


@register_score("lnz")
def log_partition_score(model: nn.Module, x: torch.Tensor,
                        kind: str = "logsumexp") -> torch.Tensor:
    """ln Z(x), the GFFN's unnormalized log p(x) (NOTES.md A)."""
    return log_partition(batched_logits(model, x), kind)
