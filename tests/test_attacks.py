"""Attacks: inside the eps-ball and [0, 1], stronger than no attack, seeded reproducibly,
and AutoAttack run stage by stage on the same batches equals one pyautoattack call."""

import pytest
import torch

from workloads.attacks import (
    AttackError,
    adaptive_loss,
    apgd,
    autoattack,
    autoattack_stage,
    autoattack_stages,
    cross_entropy_loss,
    fgsm,
    pgd,
)
from workloads.datasets import load_digits
from workloads.diglm import DIGLM
from workloads.flows import build_flow
from workloads.models import MLPClassifier
from workloads.training import fit_classifier

EPS = 0.1


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = load_digits()
    model = MLPClassifier(data.input_shape, 10, width=64)
    fit_classifier(model, data.x_train, data.y_train, epochs=10)
    return model, data.x_test[:120], data.y_test[:120]


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("name,norm", [("fgsm", "Linf"), ("bim", "Linf"), ("pgd", "Linf"),
                                       ("pgd", "L2"), ("apgd", "Linf"), ("apgd", "L2")])
def test_attacks_stay_in_the_ball_and_lower_accuracy(trained, name, norm):
    model, x, y = trained
    eps = EPS if norm == "Linf" else 0.5

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        if name == "fgsm":
            return fgsm(model, x, y, eps)
        if name == "bim":
            return pgd(model, x, y, eps, steps=10, random_start=False)
        if name == "pgd":
            return pgd(model, x, y, eps, steps=10, norm=norm, generator=g)
        return apgd(model, x, y, eps, n_iter=30, norm=norm, generator=g)

    x_adv = run(0)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "Linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.2
    assert torch.equal(run(0), x_adv)  # the same generator seed, the same examples


def test_apgd_is_at_least_as_strong_as_pgd(trained):
    model, x, y = trained
    g = torch.Generator().manual_seed(0)
    strong = apgd(model, x, y, EPS, n_iter=50, generator=g)
    weak = pgd(model, x, y, EPS, steps=5, generator=torch.Generator().manual_seed(0))
    assert accuracy(model, strong, y) <= accuracy(model, weak, y)


def test_autoattack_stages_on_the_same_batches_equal_one_serial_call(trained):
    model, x, y = trained
    serial = autoattack(model, x, y, EPS, version="custom", attacks=["apgd-ce"], seed=0,
                        batch_size=50)
    flags = model(x).argmax(1) == y
    staged = x.clone()
    for stage in autoattack_stages("custom", ["apgd-ce"]):
        survivors = flags.nonzero().flatten()
        for start in range(0, len(survivors), 50):  # pyautoattack's batching of survivors
            part = survivors[start:start + 50]
            adv = autoattack_stage(model, x[part], y[part], stage, EPS, version="custom",
                                   attacks=["apgd-ce"], seed=0)
            fooled = model(adv).argmax(1) != y[part]
            staged[part[fooled]] = adv[fooled]
            flags[part[fooled]] = False
    assert torch.equal(flags, model(serial).argmax(1) == y)
    assert torch.equal(staged, serial)
    assert flags.float().mean() < accuracy(model, x, y)


def test_adaptive_loss_subtracts_lambda_am():
    torch.manual_seed(0)
    model = DIGLM(build_flow("vector", (1, 8, 8), levels=17, num_couplings=2, hidden=16), 10)
    x = load_digits().x_test[:6]
    y = torch.arange(6)
    plain = cross_entropy_loss(model, x, y)
    mass = model.approximate_mass(x)
    assert torch.allclose(adaptive_loss(2.0)(model, x, y), plain - 2.0 * mass, atol=1e-5)
    # differentiable in x through the AM term (double backprop)
    x_adv = apgd(model, x, y, EPS, n_iter=5, loss_fn=adaptive_loss(1.0),
                 generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= EPS + 1e-6


def test_bad_settings_are_named_errors(trained):
    model, x, y = trained
    with pytest.raises(AttackError):
        pgd(model, x, y, EPS, norm="L1")
    with pytest.raises(AttackError):
        fgsm(model, x, y, 0.0)
    with pytest.raises(AttackError):
        autoattack_stages("custom", ["nope"])
    with pytest.raises(AttackError):
        autoattack(model, x.flatten(1), y, EPS, version="custom", attacks=["apgd-ce"])
