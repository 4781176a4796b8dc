"""Classifiers: an MLP for 8x8/vector inputs and a small CNN for images (the GFFN study), and
the CIFAR networks of document 003 (`cifar_classifiers`) and the dropout networks of
document 001 (`dropout_classifiers`), and either of the first two with G-ODIN's head
(`godin`).

The MLP and CNN have neither batch norm nor dropout: the GFFN protocol (NOTES.md A) forbids
both, since their effect depends on the batch size being swept.

Each classifier names its intermediate layers in `feature_layers` (module names; their
outputs, maps averaged over space, are the layers of Lee et al.'s Mahalanobis detector,
`workloads.scores.mahalanobis`, beside the penultimate `features`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from workloads.models.cifar_classifiers import DenseNetBC100, WideResNet28
from workloads.models.dropout_classifiers import DropoutMLP, LeNet
from workloads.models.godin import GODIN


class MLPClassifier(nn.Module):
    """Flatten, then `depth` hidden ReLU layers of `width` units, then K logits."""

    provides = ("logits", "features")  # what OOD scores can use (workloads.scores)

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 256,
                 depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        size = math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(size, num_classes)
        # every hidden layer but the last (the penultimate `features`): Lee et al.'s layers
        self.feature_layers = hidden_layers(self.features)[:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def hidden_layers(features: nn.Sequential) -> tuple[str, ...]:
    """The names of the ReLUs of `features` (as `model.get_submodule` takes them)."""
    return tuple(f"features.{i}" for i, m in enumerate(features) if isinstance(m, nn.ReLU))


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks (32, 64 channels) with max-pooling, then a 128-unit MLP head.

    Works for 28x28 and 32x32 inputs with any channel count; no batch norm, no dropout.
    """

    provides = ("logits", "features", "feature_maps")
    MAPS = 6  # self.features[:MAPS] is the convolutional part (feature maps B x 64 x H/4 x W/4)
    feature_layers = ("features.2", "features.5")  # each conv block (after its pooling)

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, width: int = 128):
        super().__init__()
        channels, height, width_px = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (height // 4) * (width_px // 4), width), nn.ReLU(),
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional block's output (what ASH, SCALE and RankFeat reshape)."""
        return self.features[:self.MAPS](x)

    def head_from_feature_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """The logits from `feature_maps(x)`: head(features) = head_from_feature_maps(maps)."""
        return self.head(self.features[self.MAPS:](maps))


class GODINMLP(GODIN):
    """The MLP with G-ODIN's decomposed-confidence head (thesis Table 3.1 baseline)."""

    provides = ("logits", "features", "godin")

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, **kwargs):
        base = MLPClassifier(input_shape, num_classes, **kwargs)
        super().__init__(base)
        self.feature_layers = base.feature_layers  # `features` is the base's


class GODINCNN(GODIN):
    """The small CNN with G-ODIN's decomposed-confidence head."""

    provides = ("logits", "features", "godin")

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, **kwargs):
        super().__init__(SmallCNN(input_shape, num_classes, **kwargs))
        self.feature_layers = SmallCNN.feature_layers


CLASSIFIERS = {"mlp": MLPClassifier, "cnn": SmallCNN, "densenet100": DenseNetBC100,
               "wrn28_10": WideResNet28, "dropout_mlp": DropoutMLP, "lenet": LeNet,
               "godin_mlp": GODINMLP, "godin_cnn": GODINCNN}


def build_classifier(name: str, input_shape: tuple[int, ...], num_classes: int,
                     **kwargs) -> nn.Module:
    """Build a classifier by registry name (`CLASSIFIERS`)."""
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier '{name}'; known: {', '.join(CLASSIFIERS)}")
    if name in ("cnn", "godin_cnn") and (len(input_shape) != 3 or input_shape[1] < 8):
        raise ValueError(f"the CNN needs (C, H, W) images of at least 8x8, got {input_shape}")
    return CLASSIFIERS[name](input_shape, num_classes, **kwargs)
