"""The CIFAR classifiers of document 003 (Appendix C): DenseNet-BC-100 (k = 12) and Wide
ResNet-28-10, each behind per-channel standardization of its inputs and with the interface
our scores use: `features(x)` (penultimate), `head` (the last linear layer), `feature_maps`
and `head_from_feature_maps` (what ASH, SCALE and RankFeat reshape), and `feature_layers`
(the intermediate layers of Lee et al.'s Mahalanobis detector).

DenseNet-BC-100 is torchvision's `DenseNet` with the CIFAR stem (one 3x3 convolution with
24 = 2k channels, no pooling; Huang et al. 2017): three dense blocks of 16 bottleneck layers,
compression 0.5, dropout 0.2; as in 003, its features go through tanh "to ensure the
extracted features are bounded". Wide ResNet-28-10 is pytorch-ood's `WideResNet` (depth 28,
widen factor 10, dropout 0.3; Zagoruyko & Komodakis 2016). Both take 32x32 inputs.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class Standardize(nn.Module):
    """(x - mean) / std per channel, the statistics of the training inputs (buffers: they
    travel in the checkpoint; `fit` sets them)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    def fit(self, x_train: torch.Tensor) -> Standardize:
        self.mean.copy_(x_train.mean(dim=(0, 2, 3), keepdim=True))
        self.std.copy_(x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _check_input(input_shape: tuple[int, ...], name: str) -> None:
    if len(input_shape) != 3 or input_shape[1:] != (32, 32):
        raise ValueError(f"{name} takes (C, 32, 32) images (CIFAR), got {input_shape}")


class DenseNetBC100(nn.Module):
    """DenseNet-BC-100, k = 12, on 32x32 inputs; features = tanh(pooled maps), 342-d."""

    provides = ("logits", "features", "feature_maps")
    # Lee et al.'s DenseNet layers (their `feature_list`): the stem, each dense block's
    # transition; the last, the final block through BN-ReLU, is the penultimate `features`
    feature_layers = ("maps.conv0", "maps.transition1", "maps.transition2")

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int,
                 growth_rate: int = 12, layers_per_block: int = 16, drop_rate: float = 0.2):
        super().__init__()
        from torchvision.models import DenseNet

        _check_input(input_shape, "DenseNet-BC-100")
        channels = input_shape[0]
        stem = 2 * growth_rate
        net = DenseNet(growth_rate=growth_rate, block_config=(layers_per_block,) * 3,
                       num_init_features=stem, bn_size=4, drop_rate=drop_rate,
                       num_classes=num_classes)
        # The CIFAR stem replaces ImageNet's 7x7 stride-2 convolution, BN, ReLU and pooling.
        blocks = [(name, module) for name, module in net.features.named_children()
                  if name not in ("conv0", "norm0", "relu0", "pool0")]
        self.standardize = Standardize(channels)
        self.maps = nn.Sequential(OrderedDict(
            [("conv0", nn.Conv2d(channels, stem, 3, padding=1, bias=False)), *blocks]))
        self.head = net.classifier

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.maps(self.standardize(x)))

    def head_from_feature_maps(self, maps: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(F.adaptive_avg_pool2d(maps, 1).flatten(1)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F.adaptive_avg_pool2d(self.feature_maps(x), 1).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class WideResNet28(nn.Module):
    """Wide ResNet-28-10 (pytorch-ood's `WideResNet`) on 32x32 inputs; 640-d features."""

    provides = ("logits", "features", "feature_maps")
    # the stem and each residual group, as Lee et al.'s ResNet layers; the third group is
    # read through the final BN-ReLU, as the penultimate `features`
    feature_layers = ("net.conv1", "net.block1", "net.block2")

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int,
                 depth: int = 28, widen_factor: int = 10, drop_rate: float = 0.3):
        super().__init__()
        from pytorch_ood.model import WideResNet

        _check_input(input_shape, "Wide ResNet-28-10")
        self.standardize = Standardize(input_shape[0])
        self.net = WideResNet(num_classes, depth=depth, widen_factor=widen_factor,
                              drop_rate=drop_rate, in_channels=input_shape[0])
        self.head = self.net.fc

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.feature_maps(self.standardize(x))

    def head_from_feature_maps(self, maps: torch.Tensor) -> torch.Tensor:
        return self.net.forward_feature_maps(maps)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(self.standardize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
