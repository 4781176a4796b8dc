"""Feature purification (003 Appendix B, eq. 9) against a step computed by hand."""

import math

import pytest
import torch
from conftest import train_digits_classifier

from workloads.adversarial.purification import bits_per_dim, purification_effect, purify_features
from workloads.scores import build_score


@pytest.fixture(scope="module")
def trained():
    return train_digits_classifier()


def test_one_step_is_eq_9_by_hand(trained):
    """With one diagonal Gaussian (mu, precision p), grad_F BPD = p (F - mu) / (D ln 2); the
    first step from F = F_ref has no proximity term: F_1 = F_ref - eps p (F_ref - mu)/(D ln 2)."""
    model, data = trained
    gmm = build_score("gmm", components=1).fit(model, data.x_train, data.y_train)
    with torch.no_grad():
        reference = model.features(data.x_test[:20]).double()
    mu = torch.tensor(gmm.mixture.means_[0])
    precision = torch.tensor(gmm.mixture.precisions_[0])
    dim, eps = reference.shape[1], 0.1
    expected = reference - eps * precision * (reference - mu) / (dim * math.log(2))
    got = purify_features(reference, gmm.log_density, eps=eps, nu=0.5, steps=1)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    # a second step adds the pull back to F_ref: 2 nu (F_1 - F_ref)
    second = expected - eps * (precision * (expected - mu) / (dim * math.log(2))
                               + 2 * 0.5 * (expected - reference))
    assert torch.allclose(purify_features(reference, gmm.log_density, eps, 0.5, steps=2),
                          second, rtol=1e-10, atol=1e-12)


def test_purification_lowers_bpd_and_nu_keeps_features_close(trained):
    model, data = trained
    gmm = build_score("gmm", components=5).fit(model, data.x_train, data.y_train)
    with torch.no_grad():
        reference = model.features(data.x_test).double()
    dim = reference.shape[1]
    free = purify_features(reference, gmm.log_density, eps=0.01, nu=0.0)
    held = purify_features(reference, gmm.log_density, eps=0.01, nu=1.0)
    bpd = {name: bits_per_dim(gmm.log_density(f), dim).mean().item()
           for name, f in (("ref", reference), ("free", free), ("held", held))}
    assert bpd["free"] < bpd["held"] < bpd["ref"]
    assert (held - reference).norm() < (free - reference).norm()


def test_purification_effect_counts_fixes_and_new_mistakes(trained):
    model, data = trained
    gmm = build_score("gmm", components=5).fit(model, data.x_train, data.y_train)
    effect = purification_effect(model, gmm.log_density, data.x_test, data.y_test,
                                 eps=0.1, nu=0.01)
    n = len(data.y_test)
    assert effect["accuracy_after"] - effect["accuracy_before"] == pytest.approx(
        (effect["fixed"] - effect["broken"]) / n)
    with torch.no_grad():
        assert effect["accuracy_before"] == pytest.approx(
            (model(data.x_test).argmax(1) == data.y_test).double().mean().item())
    # no steps: nothing moves
    still = purification_effect(model, gmm.log_density, data.x_test, data.y_test, 0.1, 0.01,
                                steps=0)
    assert still["fixed"] == still["broken"] == 0


def test_purification_runs_the_model_in_eval_mode_in_chunks_and_leaves_it_as_found():
    """On a classifier with batch norm and dropout handed over in train mode (as a caller
    may leave it), the features are taken in eval mode: the same counts as from the model
    in eval mode, whatever the chunk size, twice; every mode, parameter and buffer is left
    as found. (The old code ran `model.features(x)` in whatever mode the model was in:
    dropout on, batch statistics, running statistics overwritten.)"""
    from conftest import BNDropoutNet, assert_model_unchanged, model_state

    from workloads.data import load_dataset
    from workloads.training.epochs import fit_classifier


    torch.manual_seed(0)
    data = load_dataset("digits")
    model = fit_classifier(BNDropoutNet(), data.x_train, data.y_train, epochs=3)
    gmm = build_score("gmm", components=2).fit(model, data.x_train, data.y_train)
    x, y = data.x_test[:100], data.y_test[:100]
    reference = purification_effect(model, gmm.log_density, x, y, 0.1, 0.1, steps=3)
    model.train()
    before = model_state(model)
    for batch_size in (1024, 7):
        got = purification_effect(model, gmm.log_density, x, y, 0.1, 0.1, steps=3,
                                  batch_size=batch_size)
        assert got == pytest.approx(reference, rel=1e-9), batch_size
    assert_model_unchanged(model, before)
