"""ConfidNet (Corbière et al. 2019; document 001, Part II; NOTES.md G): an auxiliary head on
the frozen classifier's penultimate features regressing the true-class probability
TCP(x, y) = softmax(f(x))_y with a mean squared error; its output is the confidence score
(higher = more likely right). The document's head (`uncertainty1` .. `uncertainty5`) is
five linear layers, 400 units wide with ReLU between them and one output; we put a sigmoid
on the output so that it is in [0, 1] like the TCP, as Corbière et al. do."""

from __future__ import annotations

import torch
from torch import nn

from workloads.scores.base import OODScore, _device, penultimate_features, register_score


def confidnet_head(features: int, width: int = 400, layers: int = 5) -> nn.Sequential:
    """`layers` linear layers (`width` wide, ReLU between) from the features to one logit."""
    modules: list[nn.Module] = []
    size = features
    for _ in range(layers - 1):
        modules += [nn.Linear(size, width), nn.ReLU()]
        size = width
    modules.append(nn.Linear(size, 1))
    return nn.Sequential(*modules)


@register_score("confidnet")
class ConfidNet(OODScore):
    """sigmoid(head(features(x))), the head fitted by MSE to the TCP while the classifier
    stays frozen (`epochs` of Adam at `lr`, batches of `batch`), on the training split as
    Corbière et al. do, or with `split="validation"` on held-out inputs: a classifier that
    fits its training set leaves the head almost no errors to learn from there."""

    requires = ("logits", "features")
    in_default_set = False

    def __init__(self, epochs: int = 20, lr: float = 1e-4, batch: int = 128, width: int = 400,
                 seed: int = 0, split: str = "train"):
        if split not in ("train", "validation"):
            raise ValueError(f"confidnet split must be 'train' or 'validation', got {split!r}")
        self.epochs, self.lr, self.batch, self.width, self.seed = epochs, lr, batch, width, seed
        self.fit_split = split
        self.head: nn.Module | None = None
        self.losses: list[float] = []  # mean MSE per epoch

    def fit(self, model, x_train, y_train):
        features = penultimate_features(model, x_train)  # eval mode, no graph: frozen
        with torch.no_grad():
            tcp = model.head(features.to(_device(model))).softmax(dim=1).cpu()
            tcp = tcp.gather(1, y_train.view(-1, 1)).squeeze(1)
        generator = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        self.head = confidnet_head(features.shape[1], self.width).to(_device(model))
        optimizer = torch.optim.Adam(self.head.parameters(), lr=self.lr)
        for _ in range(self.epochs):
            order = torch.randperm(len(features), generator=generator)
            total = 0.0
            for start in range(0, len(order), self.batch):
                index = order[start:start + self.batch]
                f, target = features[index].to(_device(model)), tcp[index].to(_device(model))
                loss = ((torch.sigmoid(self.head(f)).squeeze(1) - target) ** 2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(index)
            self.losses.append(total / len(order))
        self.head.eval()
        return self

    def forward(self, model, x):
        if self.head is None:
            raise RuntimeError("confidnet must be fitted (its head trained) first")
        return torch.sigmoid(self.head(model.features(x))).squeeze(1)
