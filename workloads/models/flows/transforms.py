"""Flow transforms in the style of nflows: a `Transform` maps x -> y and returns
`(y, logabsdet)`, with `inverse` alongside; composites are built from parts. RealNVP's affine
coupling (Dinh et al. 2017, "Density estimation using Real NVP"; NOTES.md B):

    y_a = x_a,   y_b = x_b * exp(s(x_a)) + t(x_a),   log|det dy/dx| = sum s(x_a)

`VectorRealNVP` (MLP couplings) and the multi-scale `ImageRealNVP` (checkerboard and channel
couplings, squeeze, factor-out) are composites of them.
"""

from __future__ import annotations

import math

import torch
from torch import nn


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
