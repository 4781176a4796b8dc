"""Scores of the class-anomaly baselines (thesis Tables 3.2/3.3, NOTES.md G): each model's
anomaly score, negated so that higher means "more like the normal class" as every OOD score.

- `gradcon`: -L(x) + beta * mean_i cos(dL(x)/dW_i, g_i) of a `GradConAE` (Kwon et al. 2020;
  `workloads.models.gradcon`), beta = 0.12 by default (the official eval.py).
- `ocgan`: -MSE(De(En(x)), x) of an `OCGAN` (Perera et al. 2019; `workloads.models.ocgan`).
"""

from __future__ import annotations

import torch

from workloads.models.gradcon import gradcon_scores
from workloads.models.ocgan import ocgan_scores
from workloads.scores.base import OODScore, register_score


@register_score("gradcon")
class GradConScore(OODScore):
    """GradCon's score: reconstruction error and the cosine of each input's own decoder
    gradients with the training gradients' running mean. Differentiable in x through
    `torch.func`'s per-example gradients."""

    requires = ("gradcon",)
    batch_size = 256

    def __init__(self, beta: float = 0.12):
        self.beta = beta

    def forward(self, model, x: torch.Tensor) -> torch.Tensor:
        return gradcon_scores(model, x, self.beta)


@register_score("ocgan")
class OCGANScore(OODScore):
    """OCGAN's score: the negated reconstruction MSE of the clean input."""

    requires = ("ocgan",)

    def forward(self, model, x: torch.Tensor) -> torch.Tensor:
        return ocgan_scores(model, x)
