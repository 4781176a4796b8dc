"""DIGLM: a flow with a linear softmax head on its latent z (Nalisnick et al. 2019, "Hybrid
models with deep and invertible features"; NOTES.md C).

    p(y | x) = softmax(W f(x) + b),   log p(x) from the flow,
    loss = -log p(y|x) + beta * (-log p(x) + alpha * ||grad_x log p(x)||_2)   (eq. 4.13)

beta = 0.1; alpha = 0 is the thesis' "naive" model, alpha = 2 the "penalized" one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workloads.models.flows.density import Flow
from workloads.models.flows.regularizer import approximate_mass, penalized_nll


class DIGLM(nn.Module):
    """`forward(x)` gives the logits (so every classifier score applies);
    `forward(x, with_log_prob=True)` gives `(logits, log p(x))` from one pass of the flow."""

    provides = ("logits", "features", "log_prob")

    def __init__(self, flow: Flow, num_classes: int):
        super().__init__()
        self.flow = flow
        self.num_classes = num_classes
        self.head = nn.Linear(flow.dim, num_classes)

    def forward(self, x: torch.Tensor, with_log_prob: bool = False):
        z, logabsdet = self.flow.transform(x)
        logits = self.head(z)
        if not with_log_prob:
            return logits
        return logits, self.flow.base_log_prob(z) + logabsdet

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The latent z = f(x): the input of the linear head."""
        return self.flow.transform(x)[0]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).argmax(dim=1)

    def approximate_mass(self, x: torch.Tensor) -> torch.Tensor:
        return approximate_mass(self.flow.log_prob, x)


def diglm_objective(model, x: torch.Tensor, y: torch.Tensor, alpha: float, beta: float = 0.1,
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """mean_x [ -log p(y|x) + beta * (-log p(x) + alpha * ||grad_x log p(x)||_2) ] (eq. 4.13)
    and its parts: `ce`, `nll`, `am` (NaN when alpha = 0), `correct` (count).

    `model` is a DIGLM, possibly DDP-wrapped: it is called once, with `with_log_prob=True`.
    """
    x = x.detach().requires_grad_(True)
    logits, log_prob = model(x, with_log_prob=True)
    ce = F.cross_entropy(logits, y)
    generative, parts = penalized_nll(log_prob, x, alpha)
    parts.update(ce=ce.detach(), correct=(logits.detach().argmax(1) == y).sum().float())
    return ce + beta * generative, parts
