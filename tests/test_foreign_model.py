"""A researcher's own classifier served to the detectors (workloads.models.foreign): the parts
found by hooks reproduce its logits, what it cannot serve is named, and nothing of it changes."""

import pytest
import torch
import torchvision
from torch import nn

from workloads.models.foreign import ForeignClassifier
from workloads.models.modes import module_modes
from workloads.scores import build_score
from workloads.scores.base import capabilities


def snapshot(model: nn.Module):
    return ([(type(m).__name__, flag) for m, flag in module_modes(model)],
            {k: v.clone() for k, v in model.state_dict().items()})


def unchanged(model: nn.Module, before) -> bool:
    modes, state = snapshot(model)
    return modes == before[0] and state.keys() == before[1].keys() and all(
        torch.equal(state[k], before[1][k]) for k in state)


def test_a_torchvision_resnet_serves_features_and_feature_maps_found_by_hooks():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.train()
    model.layer2.eval()  # modes that differ between modules are kept as found
    x = torch.randn(6, 3, 32, 32)
    before = snapshot(model)
    wrapped = ForeignClassifier(model, x[:4])
    assert unchanged(model, before)  # batch norm statistics and modes untouched
    assert wrapped.provides == ("logits", "features", "feature_maps")
    assert wrapped.head is model.fc and not wrapped.unavailable
    model.eval()
    with torch.no_grad():
        logits = model(x)
        features = wrapped.features(x)
        maps = wrapped.feature_maps(x)
    assert features.shape == (6, 512) and maps.shape == (6, 512, 1, 1)
    torch.testing.assert_close(wrapped.head(features), logits)
    torch.testing.assert_close(wrapped.head_from_feature_maps(maps), logits)
    # the features keep the graph: a detector on them can be attacked
    x.requires_grad_(True)
    wrapped.features(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert sum(1 for _ in wrapped.parameters()) == sum(1 for _ in model.parameters())


def test_what_a_model_cannot_serve_is_named():
    x = torch.randn(4, 3, 32, 32)
    densenet = ForeignClassifier(torchvision.models.densenet121(num_classes=10), x)
    assert densenet.provides == ("logits", "features")  # it pools with a function
    assert "feature_maps" in densenet.unavailable

    class Scaled(nn.Module):  # logits changed after the last linear layer
        def __init__(self):
            super().__init__()
            self.body, self.out = nn.Flatten(), nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            return 2 * self.out(self.body(x))

    scaled = ForeignClassifier(Scaled(), x)
    assert scaled.provides == ("logits",)
    assert "changes the output of its last linear layer (out)" in scaled.unavailable["features"]

    class NoLinear(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10]

    assert ForeignClassifier(NoLinear(), x).unavailable["features"] == \
        "the model calls no nn.Linear layer"
    with pytest.raises(ValueError, match="not nn.Linear"):
        ForeignClassifier(Scaled(), x, head="body")

    class PerToken(nn.Module):  # the head applied to each row, then averaged
        def __init__(self):
            super().__init__()
            self.out, self.unused = nn.Linear(32, 10), nn.Linear(32, 10)

        def forward(self, x):
            return self.out(x.mean(1)).mean(1)

    tokens = ForeignClassifier(PerToken(), x)
    assert tokens.provides == ("logits",) and not hasattr(tokens, "features")
    assert "has shape (4, 32, 32), not batch x features" in tokens.unavailable["features"]
    assert "needs the features" in tokens.unavailable["feature_maps"]
    with pytest.raises(ValueError, match="not called by the model's forward"):
        ForeignClassifier(PerToken(), x, head="unused")


def test_detectors_on_a_foreign_model_with_dropout_and_batch_norm_leave_it_as_found():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5),
                          nn.Linear(8, 5))
    model.train()
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 5, (64,))
    wrapped = ForeignClassifier(model, x[:8])
    assert {"logits", "features", "dropout"} <= capabilities(wrapped)
    before = snapshot(model)
    for name in ("msp", "energy", "mahalanobis", "mc_dropout", "vim"):
        score = build_score(name).fit(wrapped, x, y)
        assert torch.isfinite(score(wrapped, x[:8])).all(), name
    assert unchanged(model, before)
