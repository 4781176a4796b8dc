"""Monte-Carlo dropout uncertainty as a score (NOTES.md E; document 001)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workloads.models.modes import dropout_layers, evaluating
from workloads.scores.base import OODScore, _device, register_score


@register_score("mc_dropout")
class MCDropout(OODScore):
    """Monte-Carlo dropout (Gal & Ghahramani 2016; NOTES.md E): `passes` stochastic forward
    passes with dropout on; the score is the negated uncertainty `kind`:
    `variation_ratio` (1 - share of the modal prediction), `predictive_entropy` (entropy of
    the mean softmax) or `mutual_information` (predictive entropy - mean entropy)."""

    KINDS = ("variation_ratio", "predictive_entropy", "mutual_information")
    requires = ("logits", "dropout")
    not_differentiable = ("stochastic: each call draws new dropout masks (an attack would need "
                          "an expectation over masks), and the variation ratio counts votes")

    def __init__(self, kind: str = "predictive_entropy", passes: int = 20, seed: int = 0):
        if kind not in self.KINDS:
            raise ValueError(f"unknown MC-dropout kind '{kind}'; known: {', '.join(self.KINDS)}")
        self.kind, self.passes, self.seed = kind, passes, seed

    def __call__(self, model, x):
        dropouts = dropout_layers(model)
        if not dropouts:
            raise ValueError(f"{type(model).__name__} has no dropout layers for MC dropout")
        device = _device(model)
        torch.manual_seed(self.seed)
        with torch.no_grad(), evaluating(model, train=dropouts):  # batch norm stays in eval
            probs = torch.stack([model(x.to(device)).softmax(dim=1).cpu()
                                 for _ in range(self.passes)])  # (T, N, K)
        mean = probs.mean(0)
        if self.kind == "variation_ratio":
            votes = F.one_hot(probs.argmax(2), probs.shape[2]).sum(0)
            uncertainty = 1.0 - votes.max(1).values.float() / self.passes
        else:
            entropy_of_mean = -(mean * mean.clamp_min(1e-12).log()).sum(1)
            uncertainty = entropy_of_mean
            if self.kind == "mutual_information":
                mean_entropy = -(probs * probs.clamp_min(1e-12).log()).sum(2).mean(0)
                uncertainty = entropy_of_mean - mean_entropy
        return -uncertainty
