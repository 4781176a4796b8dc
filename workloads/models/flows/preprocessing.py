"""Pixel preprocessing of flows (NOTES.md B, C): dequantization noise and its convention, the
affine embedding of pixels into (0, 1), and RealNVP's logit transform.

    x --PixelEmbedding--> (0, 1)^D --LogitTransform--> R^D
"""

from __future__ import annotations

import math

import torch

from workloads.models.flows.transforms import Transform

DEQUANTIZATIONS = ("centred", "start")


def dequantize(x: torch.Tensor, levels: int, convention: str,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization noise of one grid step 1/(levels-1) (NOTES.md C, cautions).

    `start`: x + U(0, step), so a clean pixel sits at the lower edge of its noise bin.
    `centred`: x + U(-step/2, step/2), so it sits in the middle. Both give the same
    training distribution; they differ in where clean inputs land in it.
    """
    if convention not in DEQUANTIZATIONS:
        raise ValueError(f"dequantization must be one of {DEQUANTIZATIONS}, got {convention!r}")
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    if convention == "centred":
        noise = noise - 0.5
    return x + noise / (levels - 1)


class PixelEmbedding(Transform):
    """The affine map y = a x + b that sends the dequantized support of pixels on a grid of
    `levels` values into (0, 1): a = (L-1)/L and b = 0 (`start`) or 1/(2L) (`centred`).
    log|det| = D log a."""

    def __init__(self, levels: int, convention: str):
        super().__init__()
        if convention not in DEQUANTIZATIONS:
            raise ValueError(f"dequantization must be one of {DEQUANTIZATIONS}, "
                             f"got {convention!r}")
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        self.levels, self.convention = levels, convention
        self.scale = (levels - 1) / levels
        self.shift = 0.0 if convention == "start" else 0.5 / levels

    def _logabsdet(self, x: torch.Tensor) -> torch.Tensor:
        dim = x[0].numel()
        return x.new_full((x.shape[0],), dim * math.log(self.scale))

    def forward(self, x):
        return x * self.scale + self.shift, self._logabsdet(x)

    def inverse(self, y):
        return (y - self.shift) / self.scale, -self._logabsdet(y)


class LogitTransform(Transform):
    """y -> logit(lam + (1 - 2 lam) y) (RealNVP's preprocessing; lam keeps the logit finite
    at 0 and 1). log|det| = sum log(1 - 2 lam) - log s - log(1 - s), s = lam + (1-2 lam) y."""

    def __init__(self, lam: float = 0.05):
        super().__init__()
        if not 0 < lam < 0.5:
            raise ValueError(f"logit lambda must be in (0, 0.5), got {lam}")
        self.lam = lam

    def _logabsdet(self, s: torch.Tensor) -> torch.Tensor:
        terms = math.log(1 - 2 * self.lam) - torch.log(s) - torch.log1p(-s)
        return terms.reshape(s.shape[0], -1).sum(dim=1)

    def forward(self, x):
        s = self.lam + (1 - 2 * self.lam) * x
        return torch.log(s) - torch.log1p(-s), self._logabsdet(s)

    def inverse(self, y):
        s = torch.sigmoid(y)
        return (s - self.lam) / (1 - 2 * self.lam), -self._logabsdet(s)
