"""Generalized ODIN's classifier (Hsu et al. 2020; thesis section 3.3.2, eq. 3.4-3.6): the
logits are a ratio f_i(x) = h_i(x) / g(x) of a class term h_i, the cosine similarity of the
penultimate features f^p(x) with a class vector w_i, and a domain term g(x) =
sigmoid(BN(w_g f^p(x) + b_g)), a learned temperature that plays p(d_in | x). Trained with
cross-entropy on f, h learns to behave like p(y, d_in | x); the OOD score is max_i h_i(x)
after an input step (`workloads.scores.softmax.GeneralizedODIN`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DeconfHead(nn.Module):
    """f(features) = h(features) / g(features): cosine class similarities over a
    batch-normalized sigmoid gate."""

    def __init__(self, features: int, num_classes: int):
        super().__init__()
        self.class_vectors = nn.Linear(features, num_classes, bias=False)
        self.gate = nn.Sequential(nn.Linear(features, 1), nn.BatchNorm1d(1), nn.Sigmoid())

    def h(self, features: torch.Tensor) -> torch.Tensor:
        """(N, K) cosine similarities of the features with the class vectors."""
        return F.normalize(features, dim=1) @ F.normalize(self.class_vectors.weight, dim=1).T

    def g(self, features: torch.Tensor) -> torch.Tensor:
        """(N, 1) the domain gate in (0, 1)."""
        return self.gate(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.h(features) / self.g(features)


class GODIN(nn.Module):
    """A classifier whose last layer is replaced by the `DeconfHead` of G-ODIN: `features`
    are the base classifier's, `head` the decomposed-confidence head. Hsu et al. (2020, section
    4) train it with SGD and weight decay on every parameter but the class vectors of h
    (as in the public implementations, e.g. OpenOOD's `GodinTrainer`); `no_weight_decay`
    names them for `workloads.training.epochs.classifier_optimizer`."""

    no_weight_decay = ("head.class_vectors.weight",)

    def __init__(self, base: nn.Module):
        super().__init__()
        if not isinstance(base.features, nn.Module):  # a method would leave its layers out
            raise TypeError(f"G-ODIN takes a classifier whose `features` is a module; "
                            f"{type(base).__name__}.features is not")
        self.features = base.features
        self.head = DeconfHead(base.head.in_features, base.head.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
