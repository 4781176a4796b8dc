"""Scores of a density model (NOTES.md B): log p(x) and the negated approximate mass."""

from __future__ import annotations

from workloads.models.flows.regularizer import approximate_mass
from workloads.scores.base import OODScore, register_score


@register_score("log_px")
class LogLikelihood(OODScore):
    """log p(x) of a density model (flow, DIGLM), in nats; bits/dim = -log p(x) / (D ln 2)
    (+ a constant) ranks inputs identically, so it is not a separate score (NOTES.md B, E)."""

    requires = ("log_prob",)

    def __init__(self, batch_size: int = 512):
        self.batch_size = batch_size

    def forward(self, model, x):
        return model.log_prob(x)


@register_score("neg_am")
class NegativeApproximateMass(OODScore):
    """-AM(x) = -||grad_x log p(x)||_2 (NOTES.md B, eq. 3.32): AM is high off the data
    manifold, so its negation is higher in distribution. Differentiable in x by double
    backprop when x requires grad (`approximate_mass(..., differentiable_in_x=True)`)."""

    requires = ("log_prob",)

    def __init__(self, batch_size: int = 256):
        self.batch_size = batch_size

    def forward(self, model, x):
        return -approximate_mass(model.log_prob, x, differentiable_in_x=x.requires_grad)
