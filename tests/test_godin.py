"""Generalized ODIN (Hsu et al. 2020; thesis section 3.3.2): the decomposed-confidence head
by hand, and the score's input step and eps selection on validation data."""

import math

import pytest
import torch

from workloads.data import load_dataset, noise_ood_sets
from workloads.evaluation.metrics import ood_metrics
from workloads.models import build_classifier
from workloads.models.godin import DeconfHead
from workloads.scores import build_score, capabilities, fit_score
from workloads.training.epochs import fit_classifier


def test_godin_refuses_a_classifier_whose_features_is_a_method():
    """G-ODIN keeps `base.features` as its body: a bound method would leave the base's
    layers unregistered (never put in eval mode, not in the state dict)."""
    from torch import nn

    from workloads.models.godin import GODIN

    class MethodFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Linear(4, 3), nn.Linear(3, 2)

        def features(self, x):
            return self.body(x)

    with pytest.raises(TypeError, match="features"):
        GODIN(MethodFeatures())


def test_deconf_head_is_cosine_over_a_gate_by_hand():
    torch.manual_seed(0)
    head = DeconfHead(4, 3).eval()  # eval: BN uses its running stats (mean 0, var 1)
    f = torch.randn(5, 4)
    w = head.class_vectors.weight
    cosine = torch.stack([torch.stack([(f[n] @ w[k]) / (f[n].norm() * w[k].norm())
                                       for k in range(3)]) for n in range(5)])
    linear, bn = head.gate[0], head.gate[1]
    z = (f @ linear.weight.T + linear.bias) / math.sqrt(1 + bn.eps) * bn.weight + bn.bias
    gate = torch.sigmoid(z)
    assert torch.allclose(head.h(f), cosine, atol=1e-6)
    assert torch.allclose(head.g(f), gate, atol=1e-6)
    assert torch.allclose(head(f), cosine / gate, atol=1e-5)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = load_dataset("digits")
    model = build_classifier("godin_mlp", data.input_shape, data.num_classes, width=64)
    return fit_classifier(model, data.x_train, data.y_train, epochs=15), data


def test_godin_picks_the_eps_that_maximizes_the_validation_score(trained):
    model, data = trained
    assert "godin" in capabilities(model)
    score = fit_score("godin", {}, model, data)
    assert set(score.validation_means) == set(score.EPS_GRID)  # the paper's six values
    assert score.epsilon == max(score.validation_means, key=score.validation_means.get)
    # the step by hand: x - eps sign(-grad max_i h_i(x)) = x + eps sign(grad max_i h_i)
    x = data.x_test[:16].clone().requires_grad_(True)
    top = model.head.h(model.features(x)).max(dim=1).values
    (grad,) = torch.autograd.grad(top.sum(), x)
    stepped = data.x_test[:16] + score.epsilon * grad.sign()
    with torch.no_grad():
        expected = model.head.h(model.features(stepped)).max(dim=1).values
    assert torch.allclose(score(model, data.x_test[:16]), expected, atol=1e-5)
    with torch.no_grad():  # the step raises the validation score above the plain max h
        plain = model.head.h(model.features(data.x_val)).max(dim=1).values.mean().item()
    assert score.validation_means[score.epsilon] > plain
    inputs = data.x_test[:8].clone().requires_grad_(True)  # attacks follow the step
    (grad,) = torch.autograd.grad(score.forward(model, inputs).sum(), inputs)
    assert grad.abs().sum() > 0


def test_godin_separates_noise_from_digits(trained):
    model, data = trained
    score = fit_score("godin", {}, model, data)
    noise = noise_ood_sets(len(data.x_test), data.input_shape, seed=3)["uniform_noise"]
    metrics = ood_metrics(score(model, data.x_test).numpy(), score(model, noise).numpy())
    assert metrics["auroc"] > 0.9
    with pytest.raises(ValueError, match="godin"):
        from workloads.evaluation.ood_evaluation import resolve_scores

        resolve_scores(build_classifier("mlp", data.input_shape, 10), "godin")
    assert build_score("godin").epsilon is None
