"""Normalizing flows (NOTES.md B): transforms in the style of nflows, RealNVP for vectors and
images, pixel preprocessing, and the approximate mass (AM) regularizer.

Every `Transform` maps x -> y and returns `(y, logabsdet)`, with `inverse` alongside;
composites are built from parts. RealNVP's affine coupling (Dinh et al. 2017, "Density
estimation using Real NVP"):

    y_a = x_a,   y_b = x_b * exp(s(x_a)) + t(x_a),   log|det dy/dx| = sum s(x_a)

`Flow` puts a body (`VectorRealNVP` or the multi-scale `ImageRealNVP`) behind the pixel
preprocessing and over a standard normal base, and gives log p(x) of pixel inputs in [0, 1]:

    x --PixelEmbedding--> (0, 1)^D --LogitTransform--> R^D --body--> z ~ N(0, I)

Every step's log-determinant is counted, so log p(x) is a density in pixel space, where
attacks and Langevin chains move.
"""

from __future__ import annotations

import math

import torch
from torch import nn

DEQUANTIZATIONS = ("centred", "start")


class FlowInputError(ValueError):
    """An input the flow cannot take: the wrong shape, or one that must require grad."""


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


# --- pixel preprocessing ------------------------------------------------------------------

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


# --- RealNVP for vectors ------------------------------------------------------------------

class AffineCoupling(Transform):
    """RealNVP affine coupling on vectors: features where `mask` is 1 pass through and
    condition the scale and shift of the others. The scale is tanh-bounded for stability;
    SiLU keeps grad_x log p smooth for the AM regularizer and Langevin chains."""

    def __init__(self, mask: torch.Tensor, hidden: int = 128, depth: int = 2):
        super().__init__()
        self.register_buffer("mask", mask.float())
        dim = mask.numel()
        layers: list[nn.Module] = []
        size = dim
        for _ in range(depth):
            layers += [nn.Linear(size, hidden), nn.SiLU()]
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


class VectorRealNVP(CompositeTransform):
    """RealNVP for vectors: `num_couplings` affine couplings with alternating even/odd
    masks. Inputs of any shape (N, ...) are flattened to (N, dim); outputs are flat."""

    def __init__(self, dim: int, num_couplings: int = 6, hidden: int = 128, depth: int = 2):
        even = (torch.arange(dim) % 2 == 0)
        super().__init__([AffineCoupling(even if i % 2 == 0 else ~even, hidden, depth)
                          for i in range(num_couplings)])
        self.dim = dim

    def forward(self, x):
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise FlowInputError(f"expected {self.dim} features, got {flat.shape[1]}")
        return super().forward(flat)


# --- RealNVP for images (multi-scale) -----------------------------------------------------

class ResidualNet(nn.Module):
    """The s/t network of an image coupling: a 3x3 conv in, `num_blocks` residual blocks
    (SiLU, conv, SiLU, conv), a zero-initialised 3x3 conv out (the coupling starts as the
    identity)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, num_blocks: int):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(
            nn.SiLU(), nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.SiLU(), nn.Conv2d(hidden, hidden, 3, padding=1)) for _ in range(num_blocks))
        self.head = nn.Sequential(nn.SiLU(), nn.Conv2d(hidden, out_channels, 3, padding=1))
        nn.init.zeros_(self.head[1].weight)
        nn.init.zeros_(self.head[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


def checkerboard(height: int, width: int, parity: int, device=None) -> torch.Tensor:
    """A (1, 1, H, W) mask of 1s where (row + column + parity) is even."""
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    return ((rows + cols + parity) % 2 == 0).float()[None, None]


class ImageCoupling(Transform):
    """Affine coupling on (N, C, H, W) images with a `checkerboard` mask (spatial, any C)
    or a `channel` mask (first or second half of the channels; C >= 2)."""

    def __init__(self, channels: int, mask: str, parity: int, hidden: int, num_blocks: int):
        super().__init__()
        if mask not in ("checkerboard", "channel"):
            raise ValueError(f"mask must be 'checkerboard' or 'channel', got {mask!r}")
        self.channels, self.mask, self.parity = channels, mask, parity
        if mask == "checkerboard":
            self.net = ResidualNet(channels + 1, 2 * channels, hidden, num_blocks)
            self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        else:
            half = channels // 2
            self.split = (half, channels - half) if parity == 0 else (channels - half, half)
            self.net = ResidualNet(self.split[0], 2 * self.split[1], hidden, num_blocks)
            self.scale = nn.Parameter(torch.ones(1, self.split[1], 1, 1))

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise FlowInputError(f"expected (N, {self.channels}, H, W) inputs, got "
                                 f"{tuple(x.shape)}")

    def _channel_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = x.split(self.split, dim=1)
        return (a, b) if self.parity == 0 else (b, a)  # (conditioning, transformed)

    def _channel_join(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b] if self.parity == 0 else [b, a], dim=1)

    def _checkerboard_scale_shift(self, x: torch.Tensor):
        """(mask, s, t): s and t from the masked pixels (and the mask), zero on them."""
        b = checkerboard(x.shape[2], x.shape[3], self.parity, x.device).to(x.dtype)
        raw_s, t = self.net(torch.cat([x * b, b.expand(x.shape[0], 1, -1, -1)], 1)).chunk(2, 1)
        return b, self.scale * torch.tanh(raw_s) * (1 - b), t * (1 - b)

    def _channel_scale_shift(self, a: torch.Tensor):
        raw_s, t = self.net(a).chunk(2, dim=1)
        return self.scale * torch.tanh(raw_s), t

    def forward(self, x):
        self._check(x)
        if self.mask == "checkerboard":
            b, s, t = self._checkerboard_scale_shift(x)
            return x * b + (1 - b) * (x * torch.exp(s) + t), s.flatten(1).sum(1)
        a, rest = self._channel_parts(x)
        s, t = self._channel_scale_shift(a)
        return self._channel_join(a, rest * torch.exp(s) + t), s.flatten(1).sum(1)

    def inverse(self, y):
        self._check(y)
        if self.mask == "checkerboard":
            b, s, t = self._checkerboard_scale_shift(y)
            return y * b + (1 - b) * ((y - t) * torch.exp(-s)), -s.flatten(1).sum(1)
        a, rest = self._channel_parts(y)
        s, t = self._channel_scale_shift(a)
        return self._channel_join(a, (rest - t) * torch.exp(-s)), -s.flatten(1).sum(1)


class Squeeze(Transform):
    """(C, H, W) -> (4C, H/2, W/2): each 2x2 spatial block becomes 4 channels; log|det| = 0."""

    def forward(self, x):
        n, c, h, w = x.shape
        x = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(n, c * 4, h // 2, w // 2), x.new_zeros(n)

    def inverse(self, y):
        n, c, h, w = y.shape
        y = y.reshape(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(n, c // 4, h * 2, w * 2), y.new_zeros(n)


class ImageRealNVP(Transform):
    """Multi-scale RealNVP (Dinh et al. 2017, section 3.6; NOTES.md B). Each scale but the
    last: 3 couplings with alternating checkerboard masks, squeeze, 3 couplings with
    alternating channel masks, then half of the channels are factored out to z. The last
    scale: 4 checkerboard couplings. Outputs are flat (N, C*H*W): factored-out parts first."""

    def __init__(self, input_shape: tuple[int, int, int], num_scales: int = 2,
                 num_blocks: int = 4, hidden: int = 64):
        super().__init__()
        channels, height, width = input_shape
        if num_scales < 1:
            raise ValueError("num_scales must be >= 1")
        step = 2 ** (num_scales - 1)
        if height % step or width % step:
            raise FlowInputError(f"{height}x{width} images cannot be squeezed "
                                 f"{num_scales - 1} times")
        self.input_shape = tuple(input_shape)
        self.scales = nn.ModuleList()
        self.factored_shapes: list[tuple[int, int, int]] = []
        for scale in range(num_scales):
            last = scale == num_scales - 1
            parts: list[Transform] = [
                ImageCoupling(channels, "checkerboard", i % 2, hidden, num_blocks)
                for i in range(4 if last else 3)]
            if not last:
                parts.append(Squeeze())
                channels, height, width = channels * 4, height // 2, width // 2
                parts += [ImageCoupling(channels, "channel", i % 2, hidden, num_blocks)
                          for i in range(3)]
                self.factored_shapes.append((channels // 2, height, width))
                channels = channels - channels // 2
            self.scales.append(CompositeTransform(parts))
        self.final_shape = (channels, height, width)

    def forward(self, x):
        if tuple(x.shape[1:]) != self.input_shape:
            raise FlowInputError(f"expected (N, {', '.join(map(str, self.input_shape))}) "
                                 f"inputs, got {tuple(x.shape)}")
        total = x.new_zeros(x.shape[0])
        out = []
        for index, scale in enumerate(self.scales):
            x, logabsdet = scale(x)
            total = total + logabsdet
            if index < len(self.factored_shapes):
                half = self.factored_shapes[index][0]
                out.append(x[:, :half].flatten(1))
                x = x[:, half:]
        out.append(x.flatten(1))
        return torch.cat(out, dim=1), total

    def inverse(self, z):
        shapes = [*self.factored_shapes, self.final_shape]
        sizes = [math.prod(s) for s in shapes]
        parts = [p.reshape(-1, *s) for p, s in zip(z.split(sizes, dim=1), shapes)]
        total = z.new_zeros(z.shape[0])
        x = parts[-1]
        for index in reversed(range(len(self.scales))):
            if index < len(self.factored_shapes):
                x = torch.cat([parts[index], x], dim=1)
            x, logabsdet = self.scales[index].inverse(x)
            total = total + logabsdet
        return x, total


# Architectures of NOTES.md B (after Kirichenko et al. 2020); training settings live in the
# alpha_flow search space. `hidden` is not stated in the documents: 64 channels.
IMAGE_FLOW_PRESETS: dict[str, dict[str, int]] = {
    "fashionmnist": {"num_scales": 2, "num_blocks": 6, "hidden": 64},
    "cifar10": {"num_scales": 3, "num_blocks": 8, "hidden": 64},
}


# --- the density model --------------------------------------------------------------------

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


def build_flow(kind: str, input_shape: tuple[int, ...], levels: int | None,
               convention: str = "centred", logit_lambda: float = 0.05,
               **body_kwargs) -> Flow:
    """A `Flow` with a `vector` body (num_couplings, hidden, depth) or an `image` body
    (num_scales, num_blocks, hidden; or `preset` = a key of IMAGE_FLOW_PRESETS)."""
    if kind == "vector":
        body: Transform = VectorRealNVP(math.prod(input_shape), **body_kwargs)
    elif kind == "image":
        preset = body_kwargs.pop("preset", None)
        if preset:
            if preset not in IMAGE_FLOW_PRESETS:
                raise ValueError(f"unknown flow preset '{preset}'; known: "
                                 f"{', '.join(IMAGE_FLOW_PRESETS)}")
            body_kwargs = {**IMAGE_FLOW_PRESETS[preset]}
        if len(input_shape) != 3:
            raise FlowInputError(f"the image flow needs (C, H, W) inputs, got {input_shape}")
        body = ImageRealNVP(input_shape, **body_kwargs)
    else:
        raise ValueError(f"unknown flow '{kind}'; known: vector, image")
    return Flow(body, input_shape, levels, convention, logit_lambda)


def bits_per_dim(log_prob: torch.Tensor, dim: int) -> torch.Tensor:
    """-log2 p(x) / D."""
    return -log_prob / (dim * math.log(2.0))


# --- approximate mass (NOTES.md B) --------------------------------------------------------

def approximate_mass(log_prob_fn, x: torch.Tensor, create_graph: bool = False,
                     differentiable_in_x: bool = False) -> torch.Tensor:
    """AM(x) = ||grad_x log p(x)||_2 per example (NOTES.md B, eq. 3.32); higher = more OOD.

    By default `x` is detached first: AM is a value, as detectors and scores need.
    With `create_graph=True` the result is differentiable in the model's parameters (double
    backpropagation), as the regularized objective needs. With `differentiable_in_x=True`
    the input gradient is taken of `x` itself, which must require grad (the very tensor an
    attack differentiates), with `create_graph`: AM keeps its graph to `x`, and
    `torch.autograd.grad(AM.sum(), x)` is the Hessian-vector product H g / ||g|| that an
    adaptive attack on the AM detector follows (NOTES.md C).
    """
    with torch.enable_grad():
        if differentiable_in_x:
            if not x.requires_grad:
                raise FlowInputError("differentiable_in_x needs an input that requires grad")
            create_graph = True
        else:
            x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_prob_fn(x).sum(), x, create_graph=create_graph)
    return grad.reshape(grad.shape[0], -1).norm(dim=1)


def penalized_nll(log_prob: torch.Tensor, x: torch.Tensor,
                  alpha: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """mean [ -log p(x) + alpha * ||grad_x log p(x)||_2 ] from `log_prob` computed on `x`
    (which requires grad), and its parts `nll` and `am` (NaN when alpha = 0: not computed).

    The input gradient uses `torch.autograd.grad` with `create_graph=True` (double
    backprop). It touches no parameter's `.grad`, so DDP's hooks fire once, in the final
    `backward()`, and the regularizer trains under Ray Train's DDP like any loss.
    """
    nll = -log_prob.mean()
    if alpha == 0:
        return nll, {"nll": nll.detach(), "am": torch.full_like(nll.detach(), math.nan)}
    (grad,) = torch.autograd.grad(log_prob.sum(), x, create_graph=True)
    mass = grad.reshape(grad.shape[0], -1).norm(dim=1).mean()
    return nll + alpha * mass, {"nll": nll.detach(), "am": mass.detach()}


def flow_objective(log_prob_fn, x: torch.Tensor,
                   alpha: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The regularized objective of NOTES.md B (eq. 3.35) on a batch, and its parts.

    `log_prob_fn` is called once, on `x`: pass a DDP-wrapped `Flow` itself so that Ray
    Train synchronises the gradients.
    """
    x = x.detach().requires_grad_(True)
    return penalized_nll(log_prob_fn(x), x, alpha)


def am_regularized_nll(log_prob_fn, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """The loss of `flow_objective` alone."""
    return flow_objective(log_prob_fn, x, alpha)[0]
