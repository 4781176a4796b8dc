"""The flow density (NOTES.md B): `Flow` puts a body (`VectorRealNVP` or the multi-scale
`ImageRealNVP`) behind the pixel preprocessing and over a standard normal base, and gives
log p(x) of pixel inputs in [0, 1]:

    x --PixelEmbedding--> (0, 1)^D --LogitTransform--> R^D --body--> z ~ N(0, I)

Every step's log-determinant is counted, so log p(x) is a density in pixel space, where
attacks and Langevin chains move.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from workloads.models.flows.preprocessing import LogitTransform, PixelEmbedding, dequantize
from workloads.models.flows.transforms import CompositeTransform, FlowInputError, Transform


class Flow(nn.Module):
    """log p(x) = log N(f(x); 0, I) + log|det df/dx|, with f = body o preprocessing.

    `levels` (pixel grid size; None for continuous data such as tabular features) turns on
    the pixel preprocessing: `PixelEmbedding` with the dequantization `convention`, then a
    `LogitTransform`. `forward(x)` is `log_prob(x)`, so a DDP-wrapped flow returns log p.
    """

    provides = ("log_prob",)  # what OOD scores can use (workloads.scores)

    def __init__(self, body: Transform, input_shape: tuple[int, ...], levels: int | None = 256,
                 convention: str = "centred", logit_lambda: float = 0.05):
        super().__init__()
        self.body = body
        self.input_shape = tuple(input_shape)
        self.dim = math.prod(self.input_shape)
        self.levels, self.convention = levels, convention
        self.preprocess = (CompositeTransform([PixelEmbedding(levels, convention),
                                               LogitTransform(logit_lambda)])
                           if levels is not None else None)

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z = f(x) (flat) and log|det df/dx|."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise FlowInputError(f"expected inputs of shape (N, "
                                 f"{', '.join(map(str, self.input_shape))}), got "
                                 f"{tuple(x.shape)}")
        total = x.new_zeros(x.shape[0])
        if self.preprocess is not None:
            x, total = self.preprocess(x)
        z, logabsdet = self.body(x)
        return z, total + logabsdet

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z ** 2).sum(dim=1) - 0.5 * self.dim * math.log(2 * math.pi)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, logabsdet = self.transform(x)
        return self.base_log_prob(z) + logabsdet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x)

    def dequantize(self, x: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """Training inputs: `x` plus this flow's dequantization noise (identity without
        pixel preprocessing)."""
        if self.levels is None:
            return x
        return dequantize(x, self.levels, self.convention, generator)

    def bits_per_dim(self, log_prob: torch.Tensor) -> torch.Tensor:
        """Bits/dim of the discrete pixels from log p of their dequantized values: the
        probability of a pixel bin is ~ p(x) / (levels-1)^D (see `dequantize`)."""
        if self.levels is None:
            return bits_per_dim(log_prob, self.dim)
        return bits_per_dim(log_prob - self.dim * math.log(self.levels - 1), self.dim)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = next(self.parameters()).device
        z = torch.randn(n, self.dim, generator=generator).to(device)
        x, _ = self.body.inverse(z)
        if self.preprocess is not None:
            x, _ = self.preprocess.inverse(x)
        return x.reshape(n, *self.input_shape)


def bits_per_dim(log_prob: torch.Tensor, dim: int) -> torch.Tensor:
    """-log2 p(x) / D."""
    return -log_prob / (dim * math.log(2.0))
