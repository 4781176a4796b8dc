"""Classifiers with dropout for the failure-prediction study of document 001: a LeNet for
MNIST (the course's `LeNet`: two 5x5 convolutions of 20 and 50 channels with max-pooling, a
500-unit layer, dropout, the class layer) and an MLP with dropout for the embedded digits.
Dropout is the last layer of `features` (identity in eval mode), so MC dropout
(`workloads.scores.dropout`) samples the class layer's input. `feature_layers` names the
intermediate layers of Lee et al.'s Mahalanobis detector (`workloads.scores.mahalanobis`)."""

from __future__ import annotations

import math

import torch
from torch import nn


class DropoutMLP(nn.Module):
    """Flatten, then `depth` hidden ReLU layers of `width` units each followed by dropout
    with probability `dropout`, then K logits."""

    provides = ("logits", "features", "dropout")

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 256,
                 depth: int = 2, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        size = math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU(), nn.Dropout(dropout)]
            size = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(size, num_classes)
        # every hidden layer but the last (the penultimate `features`): Lee et al.'s layers
        self.feature_layers = tuple(f"features.{i}" for i, m in enumerate(layers)
                                    if isinstance(m, nn.ReLU))[:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class LeNet(nn.Module):
    """LeNet with dropout on 28x28 (or 32x32) images: conv 5x5 (20) -> max-pool -> conv 5x5
    (50) -> max-pool -> 500 ReLU units -> dropout -> K logits."""

    provides = ("logits", "features", "dropout")
    feature_layers = ("features.2", "features.5")  # each conv block (after its pooling)

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int,
                 dropout: float = 0.5):
        super().__init__()
        if len(input_shape) != 3 or input_shape[1] < 28 or input_shape[2] < 28:
            raise ValueError(f"LeNet takes (C, 28, 28) or larger images, got {input_shape}")
        channels, height, width = input_shape
        side = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(channels, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(50 * side[0] * side[1], 500), nn.ReLU(),
            nn.Dropout(dropout))
        self.head = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
