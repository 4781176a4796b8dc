"""Strided convolution stacks for the class-anomaly autoencoders (GradCon, OCGAN; NOTES.md G).

Every layer is a 4x4 convolution of stride 2 and padding 2, as in GradCon's official
convolutional autoencoder (Kwon et al. 2020, `models.py` of olivesgatech/gradcon-anomaly):
a side of s pixels becomes s // 2 + 1 (MNIST: 28 -> 15 -> 8 -> 5 -> 3). The decoder's
transposed convolutions take each side back to its encoder size exactly (an output padding
of s mod 2), so one stack fits 8x8 digits, 28x28 MNIST and 32x32 CIFAR-10 alike.

`ARCHES` names the channel widths: `paper` is the official (32, 32, 64, 64), a 64 x 3 x 3
code for MNIST; `small` is ours for 8x8 digits, (32, 32, 8), an 8 x 2 x 2 = 32-dimensional
code (the official 4 layers would leave a 64 x 2 x 2 code, larger than the 64-pixel input).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

ARCHES: dict[str, tuple[int, ...]] = {"small": (32, 32, 8), "paper": (32, 32, 64, 64)}
KERNEL, STRIDE, PADDING = 4, 2, 2


def encoder_sizes(size: int, layers: int) -> list[int]:
    """The side of the input and of each encoder layer's output: s -> s // 2 + 1."""
    sizes = [size]
    for _ in range(layers):
        sizes.append((sizes[-1] + 2 * PADDING - KERNEL) // STRIDE + 1)
    return sizes


def down_stack(in_channels: int, widths: tuple[int, ...],
               activation: Callable[[], nn.Module] = nn.ReLU) -> nn.Sequential:
    """Convolutions `in_channels` -> widths[0] -> ... -> widths[-1], each followed by
    `activation`."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip((in_channels, *widths[:-1]), widths):
        layers += [nn.Conv2d(c_in, c_out, KERNEL, STRIDE, PADDING), activation()]
    return nn.Sequential(*layers)


def up_stack(out_channels: int, widths: tuple[int, ...], size: int) -> nn.Sequential:
    """The mirror of `down_stack(out_channels, widths)` for inputs of side `size`: transposed
    convolutions widths[-1] -> ... -> widths[0] -> `out_channels`, ReLU between them and a
    sigmoid at the end (pixels in [0, 1]). Its transposed convolutions sit at the even
    indices (`up[2 * i]`), the layers GradCon constrains."""
    sizes = encoder_sizes(size, len(widths))
    channels = (*reversed(widths), out_channels)
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
        target = sizes[len(widths) - 1 - i]
        layers += [nn.ConvTranspose2d(c_in, c_out, KERNEL, STRIDE, PADDING,
                                      output_padding=target % 2),
                   nn.ReLU() if i < len(widths) - 1 else nn.Sigmoid()]
    return nn.Sequential(*layers)
