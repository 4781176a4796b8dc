"""The failure_prediction study's baselines at their strongest (issue 37, item 3; document
001, NOTES.md G): ODIN against Liang et al.'s code (facebookresearch/odin, code/calData.py)
with its eps chosen on in-distribution validation inputs by Hsu et al.'s criterion (brute
force over the grid); MC dropout as ConfidNet's code evaluates it (valeoai/ConfidNet,
confidnet/learners/default_learner.py, mode "mc_dropout"; errors of the averaged
prediction); ConfidNet's kept epoch ("last" or "best_val"); the claim against MC dropout's
strongest variant."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import BNDropoutNet, assert_model_unchanged, model_state
from sklearn.metrics import average_precision_score

from search_spaces import get_search_space
from workloads.data import load_digits, noise_ood_sets
from workloads.evaluation.mistake_detection import evaluate_mistakes
from workloads.evaluation.ood_evaluation import evaluate_ood
from workloads.models.modes import dropout_layers
from workloads.scores import build_score, fit_score
from workloads.scores.softmax import ODIN
from workloads.studies.failure_prediction import MC_DROPOUT_KINDS, failure_scores
from workloads.training.epochs import fit_classifier


@pytest.fixture(scope="module")
def data():
    full = load_digits()
    return dataclasses.replace(full, x_test=full.x_test[:120], y_test=full.y_test[:120],
                               ood=noise_ood_sets(60, full.input_shape, seed=1))


@pytest.fixture(scope="module")
def model(data):
    """A digits classifier with batch norm and dropout (0.5), briefly trained: its running
    statistics far from their initial values, its MC-averaged predictions not always the
    deterministic ones."""
    torch.manual_seed(0)
    return fit_classifier(BNDropoutNet(), data.x_train, data.y_train, epochs=3).eval()


# --- ODIN ----------------------------------------------------------------------------------

def liang_reference(net, images, temperature, eps):
    """Their `testDataIn`, one image at a time: the label is the argmax of the plain
    outputs; the cross-entropy of outputs / T at that label back-propagated; the gradient
    binarized by `torch.ge(grad, 0)` to {-1, +1}; x - eps * that (their division by the
    channel std maps the step to pixel units; our inputs are pixels); the max softmax of
    net(x') / T. Also returns whether some gradient component was exactly 0 (where `ge`
    steps and `sign` does not)."""
    scores, zero = [], False
    for image in images:
        inputs = image[None].clone().requires_grad_(True)
        outputs = net(inputs)
        labels = outputs.detach().argmax(dim=1)
        loss = F.cross_entropy(outputs / temperature, labels)
        loss.backward()
        zero |= bool((inputs.grad == 0).any())
        gradient = (torch.ge(inputs.grad, 0).to(inputs.dtype) - 0.5) * 2
        stepped = inputs.detach() - eps * gradient
        with torch.no_grad():
            scores.append((net(stepped) / temperature).softmax(dim=1).max(dim=1).values)
    return torch.cat(scores), zero


@pytest.mark.parametrize("temperature, eps", [(1000.0, 0.0014), (1000.0, 0.004), (1.0, 0.01),
                                              (10.0, 0.0)])
def test_odin_is_liang_et_als_score(model, data, temperature, eps):
    """In float64 (no rounding can flip a gradient's sign between a batch and one image)."""
    net = BNDropoutNet().double()
    net.load_state_dict(model.state_dict())
    net.eval()
    x = torch.cat([data.x_test[:40], data.ood["uniform_noise"][:20]]).double()
    theirs, zero = liang_reference(net, x, temperature, eps)
    assert not zero  # no component where their ge and our sign differ
    ours = build_score("odin", temperature=temperature, epsilon=eps)(net, x)
    assert torch.allclose(ours.double(), theirs, rtol=0, atol=1e-7), (temperature, eps)


def brute_force_eps(model, x_val, temperature, grid):
    """Hsu et al.'s criterion by hand: each eps's mean ODIN score over the validation
    inputs, the largest (the first on ties)."""
    means = [build_score("odin", temperature=temperature, epsilon=eps)(model, x_val)
             .double().mean().item() for eps in grid]
    return grid[int(np.argmax(means))], means


def test_odin_tunes_eps_on_the_validation_inputs_only(model, data):
    grid = (0.0, 0.001, 0.003, 0.02, 0.3)
    poisoned = dataclasses.replace(  # no other split can have been read
        data, x_train=torch.full_like(data.x_train, float("nan")),
        x_test=torch.full_like(data.x_test, float("nan")),
        ood={k: torch.full_like(v, float("nan")) for k, v in data.ood.items()})
    score = fit_score("odin", {"epsilon": "tuned", "eps_grid": grid}, model, poisoned)
    expected, means = brute_force_eps(model, data.x_val, 1000.0, grid)
    assert score.fit_split == "validation"
    assert score.epsilon == expected
    assert list(score.validation_means) == list(grid)
    assert np.allclose(list(score.validation_means.values()), means, rtol=0, atol=1e-12)
    fixed = build_score("odin", epsilon=expected)
    assert torch.equal(score(model, data.x_test), fixed(model, data.x_test))


def test_odin_default_grid_is_liang_et_als_search_with_zero(model, data):
    assert np.allclose(ODIN.EPS_GRID, np.linspace(0.0, 0.004, 21), rtol=0, atol=1e-15)
    score = fit_score("odin", {"epsilon": "tuned"}, model, data)
    expected, _ = brute_force_eps(model, data.x_val, 1000.0, ODIN.EPS_GRID)
    assert score.epsilon == expected and score.epsilon in ODIN.EPS_GRID


def test_the_validation_score_cannot_choose_odins_temperature(model, data):
    """max_k softmax(f/T)_k falls as T grows: the mean validation score would always pick
    the smallest T, so T stays at Liang et al.'s 1000."""
    for eps in (0.0, 0.002):
        means = [build_score("odin", temperature=t, epsilon=eps)(model, data.x_val)
                 .double().mean().item() for t in (1.0, 2.0, 10.0, 100.0, 1000.0)]
        assert all(a > b for a, b in zip(means, means[1:])), (eps, means)


def test_odin_eps_settings():
    assert build_score("odin", epsilon="0.002").epsilon == 0.002  # `--set` over "tuned"
    assert build_score("odin", epsilon=0.0).epsilon == 0.0
    with pytest.raises(RuntimeError, match="fitted"):
        build_score("odin", epsilon="tuned")(BNDropoutNet().eval(), torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="tuned"):
        build_score("odin", epsilon="best")


@pytest.mark.parametrize("train_mode", [False, True])
def test_odin_tuning_leaves_the_model_as_found(model, data, train_mode):
    x = torch.cat([data.x_test[:30], data.ood["gaussian_noise"][:20]])
    expected = fit_score("odin", {"epsilon": "tuned"}, model, data)
    model.train(train_mode)
    try:
        before = model_state(model)
        score = fit_score("odin", {"epsilon": "tuned"}, model, data)
        values = score(model, x)
        assert_model_unchanged(model, before)
        assert score.epsilon == expected.epsilon  # scored in eval mode either way
        assert torch.allclose(values, expected(model, x), rtol=1e-6, atol=1e-7)
    finally:
        model.eval()


# --- MC dropout as ConfidNet's code evaluates it ---------------------------------------------

def confidnet_mc_dropout(model, x, samples, seed):
    """Their `evaluate(mode="mc_dropout")`: dropout kept on at test time, `samples` outputs
    (logits) averaged, probs = softmax(mean), confidence sum p log(p + 1e-9), pred the
    argmax; the masks seeded as our sampler seeds them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.eval()
        for layer in dropout_layers(model):
            layer.train()
        try:
            with torch.no_grad():
                outputs = torch.zeros(samples, x.shape[0], 10)
                for i in range(samples):
                    outputs[i] = model(x)
        finally:
            model.eval()
    probs = F.softmax(outputs.mean(0), dim=1)
    confidence = (probs * torch.log(probs + 1e-9)).sum(dim=1)
    return confidence, probs.max(dim=1, keepdim=True)[1].squeeze(1)


def test_mc_dropout_avg_is_confidnets_computation(model, data):
    x = data.x_test
    confidence, pred = confidnet_mc_dropout(model, x, 20, 3)
    before = model_state(model)
    score = build_score("mc_dropout", kind="averaged_prediction", passes=20, seed=3)
    assert score.predicts and not build_score("mc_dropout", kind="predictive_entropy").predicts
    assert torch.allclose(score(model, x), confidence, rtol=0, atol=1e-6)
    assert torch.equal(score.predict(model, x), pred)
    assert score.predict(model, x).dtype == torch.long and pred.shape == (len(x),)
    assert_model_unchanged(model, before)


STUDY = {"confidnet_epochs": 1, "confidnet_lr": 1e-3, "odin_temperature": 1000.0,
         "odin_eps": 0.0}  # what `failure_scores` reads besides MC dropout's settings


def test_mc_dropout_avg_is_evaluated_against_its_own_prediction(model, data):
    """AUPR-error and n_wrong as their `Metrics` computes them: errors of the averaged
    prediction, `average_precision_score(errors, -confidence)`; the other kinds keep the
    deterministic model's errors."""
    config = {**STUDY, "mc_passes": 20, "seed": 5}
    scores = failure_scores(model, data, config, "mc_dropout")
    assert set(scores) == {f"mc_dropout_{short}" for short in MC_DROPOUT_KINDS.values()}
    rows = {r["score"]: r for r in evaluate_mistakes(model, data, scores)}
    confidence, pred = confidnet_mc_dropout(model, data.x_test, 20, 5)
    errors = (pred != data.y_test).numpy()
    with torch.no_grad():
        deterministic = (model(data.x_test).argmax(1) != data.y_test).numpy()
    assert (errors != deterministic).any()  # the two sets of errors differ on this model
    assert rows["mc_dropout_avg"]["n_wrong"] == errors.sum()
    assert rows["mc_dropout_avg"]["aupr_error"] == pytest.approx(
        average_precision_score(errors, -confidence.numpy()), abs=1e-6)
    for short in ("vr", "entropy", "mi"):
        assert rows[f"mc_dropout_{short}"]["n_wrong"] == deterministic.sum(), short


def test_the_four_variants_and_the_prediction_share_one_draw_of_the_passes(model, data):
    calls = []
    hooks = [layer.register_forward_hook(lambda m, i, o: calls.append(m.training))
             for layer in dropout_layers(model)]
    config = {**STUDY, "mc_passes": 4, "seed": 0}
    try:
        scores = failure_scores(model, data, config, "mc_dropout")
        evaluate_mistakes(model, data, scores)
        evaluate_ood(model, data, scores, resamples=0)
    finally:
        for hook in hooks:
            hook.remove()
    assert sum(calls) == 4 * (1 + len(data.ood)), sum(calls)


# --- ConfidNet's kept epoch ----------------------------------------------------------------

FAST = {"epochs": 4, "lr": 1e-3, "width": 32, "seed": 0}


def _given_aupr(monkeypatch, values):
    import workloads.scores.confidnet as confidnet

    it = iter(values)
    monkeypatch.setattr(confidnet, "failure_metrics", lambda *a: {"aupr_error": next(it)})


def _head(score):
    return {k: v.clone() for k, v in score.head.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_confidnet_keeps_the_last_or_the_best_validation_epoch(model, data, monkeypatch):
    """Validation AUPR-errors given by hand peak at epoch 2 of 4: "best_val" keeps the head
    a 2-epoch fit ends with (the same seed, the same trajectory), "last" the 4th epoch's."""
    _given_aupr(monkeypatch, [0.2, 0.6, 0.4, 0.1])
    best = fit_score("confidnet", {**FAST, "epoch": "best_val"}, model, data)
    _given_aupr(monkeypatch, [0.2, 0.6, 0.4, 0.1])
    last = fit_score("confidnet", {**FAST, "epoch": "last"}, model, data)
    _given_aupr(monkeypatch, [0.0, 0.0])
    two = fit_score("confidnet", {**FAST, "epochs": 2, "epoch": "last"}, model, data)
    _given_aupr(monkeypatch, [0.1, 0.2, 0.3, 0.4])  # best_val at a rising curve: the last
    rising = fit_score("confidnet", {**FAST, "epoch": "best_val"}, model, data)
    assert (best.best_epoch, last.best_epoch, two.best_epoch, rising.best_epoch) == (2, 4, 2, 4)
    assert _same(_head(best), _head(two))
    assert _same(_head(last), _head(rising)) and not _same(_head(last), _head(best))
    assert last.val_aupr_error == [0.2, 0.6, 0.4, 0.1]  # still recorded every epoch


def test_confidnet_last_applies_to_the_fine_tuning_too(model, data, monkeypatch):
    _given_aupr(monkeypatch, [0.5, 0.1, 0.1, 0.1, 0.9, 0.1, 0.1])
    score = fit_score("confidnet", {**FAST, "finetune_epochs": 3, "epoch": "last"}, model,
                      data)
    assert (score.best_epoch, score.finetune_best_epoch) == (4, 3)
    with pytest.raises(ValueError, match="best_val"):
        build_score("confidnet", epoch="best")


def test_the_study_passes_its_choices_to_the_scores(model, data):
    config = {**get_search_space("failure_prediction").profile("smoke").config,
              "confidnet_epochs": 1}
    assert config["confidnet_epoch"] == "last" and config["odin_eps"] == "tuned"
    scores = failure_scores(model, data, config, "confidnet+odin")
    assert scores["confidnet"].epoch == "last"
    assert scores["odin"].epsilon in ODIN.EPS_GRID and scores["odin"].validation_means
    paper = get_search_space("failure_prediction").profile("paper").config
    assert paper["confidnet_epoch"] == "best_val"


# --- the claims ----------------------------------------------------------------------------

def test_confidnet_is_compared_with_mc_dropouts_strongest_variant():
    space = get_search_space("failure_prediction")
    claims = {c.id: c for c in space.claims}
    lower = claims["confidnet_beats_mc_dropout"].test.lower
    assert set(lower) == {f"mistake_aupr_error_mc_dropout_{s}" for s in MC_DROPOUT_KINDS.values()}
    assert "strongest" in claims["confidnet_beats_mc_dropout"].statement
    assert "validation" in claims["odin_best_ood"].statement
    assert {"mistake_aupr_error_mc_dropout_avg", "auroc_mc_dropout_avg",
            "odin_epsilon"} <= set(space.table_metrics)
    for value in space.profile("local").config.values():
        assert isinstance(value, (str, float, int, bool)), value
