"""Normalizing flows (NOTES.md B): transforms in the style of nflows, and a vector RealNVP.

Every `Transform` maps x -> y and returns `(y, logabsdet)`, with `inverse` alongside;
composites are built from parts. RealNVP's affine coupling (Dinh et al. 2017):

    y_a = x_a,   y_b = x_b * exp(s(x_a)) + t(x_a),   log|det dy/dx| = sum s(x_a)

This module holds the vector version (MLP couplings) for the 64-dimensional digits and tabular
data; the image version (multi-scale, squeeze, factor-out) is still to come (issue 3).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class FlowInputError(ValueError):
    """An input of the wrong shape for the flow."""


class Transform(nn.Module):
    """A bijection with a tractable log-determinant."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class CompositeTransform(Transform):
    """Apply transforms in order; log-determinants add up."""

    def __init__(self, transforms: list[Transform]):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x):
        total = x.new_zeros(x.shape[0])
        for transform in self.transforms:
            x, logabsdet = transform(x)
            total = total + logabsdet
        return x, total

    def inverse(self, y):
        total = y.new_zeros(y.shape[0])
        for transform in reversed(self.transforms):
            y, logabsdet = transform.inverse(y)
            total = total + logabsdet
        return y, total


class AffineCoupling(Transform):
    """RealNVP affine coupling on vectors: features where `mask` is 1 pass through and
    condition the scale and shift of the others. The scale is tanh-bounded for stability."""

    def __init__(self, mask: torch.Tensor, hidden: int = 128, depth: int = 2):
        super().__init__()
        self.register_buffer("mask", mask.float())
        dim = mask.numel()
        layers: list[nn.Module] = []
        size = dim
        for _ in range(depth):
            layers += [nn.Linear(size, hidden), nn.ReLU()]
            size = hidden
        last = nn.Linear(size, 2 * dim)
        nn.init.zeros_(last.weight)  # starts as the identity map
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)
        self.scale = nn.Parameter(torch.ones(dim))

    def _scale_shift(self, x_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_s, t = self.net(x_a).chunk(2, dim=1)
        free = 1.0 - self.mask
        return self.scale * torch.tanh(raw_s) * free, t * free

    def forward(self, x):
        if x.dim() != 2 or x.shape[1] != self.mask.numel():
            raise FlowInputError(f"expected (N, {self.mask.numel()}) inputs, got "
                                 f"{tuple(x.shape)}")
        s, t = self._scale_shift(x * self.mask)
        return x * self.mask + (1.0 - self.mask) * (x * torch.exp(s) + t), s.sum(dim=1)

    def inverse(self, y):
        s, t = self._scale_shift(y * self.mask)
        return y * self.mask + (1.0 - self.mask) * ((y - t) * torch.exp(-s)), -s.sum(dim=1)


class VectorRealNVP(nn.Module):
    """RealNVP for vectors: `num_couplings` affine couplings with alternating
    checkerboard-style masks over a standard normal base N(0, I)."""

    def __init__(self, dim: int, num_couplings: int = 6, hidden: int = 128, depth: int = 2):
        super().__init__()
        self.dim = dim
        even = (torch.arange(dim) % 2 == 0)
        self.transform = CompositeTransform([
            AffineCoupling(even if i % 2 == 0 else ~even, hidden, depth)
            for i in range(num_couplings)])

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise FlowInputError(f"expected {self.dim} features, got {flat.shape[1]}")
        return flat

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = log N(f(x); 0, I) + log|det df/dx|, per example."""
        z, logabsdet = self.transform(self._flat(x))
        base = -0.5 * (z ** 2).sum(dim=1) - 0.5 * self.dim * math.log(2 * math.pi)
        return base + logabsdet

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.dim, generator=generator,
                        device=next(self.parameters()).device)
        return self.transform.inverse(z)[0]


def bits_per_dim(log_prob: torch.Tensor, dim: int) -> torch.Tensor:
    """-log2 p(x) / D."""
    return -log_prob / (dim * math.log(2.0))


def approximate_mass(log_prob_fn, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """AM(x) = ||grad_x log p(x)||_2 per example (NOTES.md B, eq. 3.32); higher = more OOD.

    With `create_graph=True` the result is differentiable in the model's parameters (double
    backpropagation), as the regularized objective needs.
    """
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_prob_fn(x).sum(), x, create_graph=create_graph)
    return grad.reshape(grad.shape[0], -1).norm(dim=1)


def am_regularized_nll(log_prob_fn, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """mean_x [ -log p(x) + alpha * ||grad_x log p(x)||_2 ] (NOTES.md B, eq. 3.35)."""
    x = x.detach().requires_grad_(True)
    log_prob = log_prob_fn(x)
    if alpha == 0:
        return -log_prob.mean()
    (grad,) = torch.autograd.grad(log_prob.sum(), x, create_graph=True)
    mass = grad.reshape(grad.shape[0], -1).norm(dim=1)
    return (-log_prob + alpha * mass).mean()
