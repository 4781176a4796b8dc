"""Lee et al.'s Mahalanobis detector (`mahalanobis_lee`, workloads/scores/mahalanobis.py),
part by part against hand computations and references: the layers read by hooks, the
per-layer scores (numpy; pytorch-ood's MultiMahalanobis), the input step (a transcription
of the reference code's `get_Mahalanobis_score`; pytorch-ood's MahalanobisODIN), the
one-layer eps-0 case (our `mahalanobis`), the tuning of eps and the layer weights
(recomputed), and the model left as found. Digits, a small BN + dropout CNN: seconds."""

import contextlib
import copy
import dataclasses
from functools import partial

import numpy as np
import pytest
import pytorch_ood.detector as pood
import torch
import torch.nn.functional as F
from conftest import assert_model_unchanged, model_state
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegressionCV
from torch import nn

from workloads.data import load_dataset
from workloads.models import FeatureCache, build_classifier
from workloads.models.cifar_classifiers import DenseNetBC100, WideResNet28
from workloads.models.modes import evaluating
from workloads.scores import build_score, fit_score
from workloads.scores.mahalanobis import capturing, feature_layer_names, layer_features
from workloads.training.epochs import fit_classifier


class BatchNormDropoutNet(nn.Module):
    """Two conv blocks with batch norm (the declared layers), a dense layer with batch norm
    and dropout (the penultimate features), the class layer."""

    provides = ("logits", "features")
    feature_layers = ("block1", "block2")

    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1, stride=2),
                                    nn.BatchNorm2d(12), nn.ReLU())
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(12 * 4 * 4, 16), nn.BatchNorm1d(16),
                                   nn.Tanh(), nn.Dropout(0.3))
        self.head = nn.Linear(16, 10)

    def features(self, x):
        return self.dense(self.block2(self.block1(x)))

    def forward(self, x):
        return self.head(self.features(x))


class PenultimateOnly(BatchNormDropoutNet):
    feature_layers = ()


@pytest.fixture(scope="module")
def data():
    full = load_dataset("digits")
    return dataclasses.replace(full, x_train=full.x_train[:600], y_train=full.y_train[:600],
                               x_val=full.x_val[:120], y_val=full.y_val[:120])


@pytest.fixture(scope="module")
def model(data):
    torch.manual_seed(0)
    return fit_classifier(BatchNormDropoutNet(), data.x_train, data.y_train, epochs=4)


def no_hooks(model):
    return all(not m._forward_hooks for m in model.modules())


def pooled(t):
    return t.mean((2, 3)) if t.dim() == 4 else t


# --- layers ---------------------------------------------------------------------------------

def test_layer_features_are_the_declared_modules_outputs_pooled(model, data):
    x = data.x_test[:10]
    with torch.no_grad():
        got = layer_features(model, x)
        block1 = model.block1(x)
        block2 = model.block2(block1)
        expected = [block1.mean((2, 3)), block2.mean((2, 3)), model.features(x)]
        via_cache = layer_features(FeatureCache(model), x)  # looked through, hooks run
    assert feature_layer_names(model) == ("block1", "block2", "features")
    assert [f.shape for f in got] == [(10, 8), (10, 12), (10, 16)]
    for a, b, c in zip(got, expected, via_cache):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert no_hooks(model)
    assert feature_layer_names(PenultimateOnly()) == ("features",)


def test_hooks_are_removed_on_errors_too(model, data):
    class Unrun(BatchNormDropoutNet):
        feature_layers = ("block1", "head")  # the head is not part of features(x)

    class Unknown(BatchNormDropoutNet):
        feature_layers = ("block1", "nope")

    for cls, error in ((Unrun, RuntimeError), (Unknown, AttributeError)):
        broken = cls()
        with pytest.raises(error):
            layer_features(broken.eval(), data.x_test[:4])
        assert no_hooks(broken)
    with pytest.raises(KeyError), capturing(model, ["block1"]) as captured:
        assert not no_hooks(model)
        captured["nope"]
    assert no_hooks(model)


def test_our_classifiers_declare_layers_that_resolve():
    """Each declared layer runs in `features(x)` and gives one vector per input."""
    cases = [("mlp", (1, 8, 8), {"width": 16, "depth": 3}, [16, 16, 16]),
             ("cnn", (1, 8, 8), {"width": 16}, [32, 64, 16]),
             ("godin_mlp", (1, 8, 8), {"width": 16}, [16, 16]),
             ("godin_cnn", (1, 8, 8), {"width": 16}, [32, 64, 16]),
             ("dropout_mlp", (1, 8, 8), {"width": 16}, [16, 16]),
             ("lenet", (1, 28, 28), {}, [20, 50, 500])]
    for name, shape, kwargs, widths in cases:
        net = build_classifier(name, shape, 10, **kwargs).eval()
        with torch.no_grad():
            features = layer_features(net, torch.rand(3, *shape))
        assert [tuple(f.shape) for f in features] == [(3, w) for w in widths], name
        assert no_hooks(net)


def test_densenet_and_wrn_declare_lee_et_al_layers():
    """DenseNet-BC-100: the stem, each transition (compression 0.5), the final features;
    WRN-28-10: the stem, the first two residual groups, the third through BN-ReLU."""
    x = torch.rand(2, 3, 32, 32)
    for net, widths in ((DenseNetBC100((3, 32, 32), 10), [24, 108, 150, 342]),
                        (WideResNet28((3, 32, 32), 10), [16, 160, 320, 640])):
        net.eval()
        before = model_state(net)
        with torch.no_grad():
            features = layer_features(net, x)
            penultimate = net.features(x)
        assert [tuple(f.shape) for f in features] == [(2, w) for w in widths]
        assert torch.allclose(features[-1], penultimate)
        assert no_hooks(net)
        assert_model_unchanged(net, before)
    dense = DenseNetBC100((3, 32, 32), 10).eval()
    with torch.no_grad():  # a declared layer's output by hand: maps up to transition1
        by_hand = dense.maps[:3](dense.standardize(x)).mean((2, 3))
        assert torch.allclose(layer_features(dense, x)[1], by_hand)


# --- per-layer scores -----------------------------------------------------------------------

@contextlib.contextmanager
def float64_default():
    """pytorch-ood allocates its means and covariances in the default dtype."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(default)


def numpy_layer_score(train, labels, queries):
    means = np.stack([train[labels == c].mean(0) for c in np.unique(labels)])
    centred = train - means[labels]
    precision = np.linalg.pinv(centred.T @ centred / len(train), hermitian=True)
    return np.max([-np.einsum("nd,de,ne->n", queries - m, precision, queries - m)
                   for m in means], axis=0)


@pytest.fixture(scope="module")
def fitted(model, data):
    return fit_score("mahalanobis_lee", {"eps_grid": (0.0, 0.01, 0.002)}, model, data)


def test_per_layer_scores_equal_numpy_and_pytorch_ood(model, data, fitted):
    x = torch.cat([data.x_test[:40], data.ood["uniform_noise"][:20]])
    with torch.no_grad(), evaluating(model):
        train = [f.double() for f in layer_features(model, data.x_train)]
        queries = [f.double() for f in layer_features(model, x)]
    ours = fitted.layer_scores_of(model, x, epsilon=0.0)
    labels = data.y_train.numpy()
    for layer, (f, q) in enumerate(zip(train, queries)):
        expected = numpy_layer_score(f.numpy(), labels, q.numpy())
        assert np.allclose(ours[:, layer].numpy(), expected, rtol=1e-8)
    # pytorch-ood: covariance N * Sigma + 1e-6 I, score min_c d / 2: ours = -2 N theirs, to
    # the ridge (2e-5 of the smallest eigenvalue of N * Sigma here)
    with float64_default():
        detector = pood.MultiMahalanobis([nn.Identity()] * len(train)).fit_structured(
            train, data.y_train)
        for layer in range(len(train)):
            detector.alpha = [float(i == layer) for i in range(len(train))]
            theirs = detector.predict_structured(queries)
            assert torch.allclose(ours[:, layer], -2 * len(train[0]) * theirs, rtol=1e-4)


def reference_step(features_of, sample_mean, precision, data, magnitude):
    """lib_generation.get_Mahalanobis_score of Lee et al.'s code for one layer (its input
    normalization's std = 1: our models standardize inside), in today's torch: the input
    after the step and the score there (their -0.5 d)."""
    data = data.clone().requires_grad_(True)
    out_features = features_of(data)
    gaussian_score = 0
    for i in range(len(sample_mean)):
        zero_f = out_features.data - sample_mean[i]
        term_gau = -0.5 * torch.mm(torch.mm(zero_f, precision), zero_f.t()).diag()
        gaussian_score = term_gau.view(-1, 1) if i == 0 else torch.cat(
            (gaussian_score, term_gau.view(-1, 1)), 1)
    sample_pred = gaussian_score.max(1)[1]
    batch_sample_mean = sample_mean.index_select(0, sample_pred)
    zero_f = out_features - batch_sample_mean
    pure_gau = -0.5 * torch.mm(torch.mm(zero_f, precision), zero_f.t()).diag()
    loss = torch.mean(-pure_gau)
    loss.backward()
    assert (data.grad != 0).all()  # where their sign(0) = +1 and ours 0 could differ
    gradient = torch.ge(data.grad.data, 0)
    gradient = (gradient.float() - 0.5) * 2
    temp_inputs = torch.add(data.data, gradient, alpha=-magnitude)
    with torch.no_grad():
        noise = features_of(temp_inputs)
        scores = torch.stack([-0.5 * torch.mm(torch.mm(noise - m, precision),
                                              (noise - m).t()).diag() for m in sample_mean], 1)
    return temp_inputs, scores.max(1).values


def test_input_step_is_the_reference_codes_and_raises_the_closest_class(model, data, fitted):
    x = torch.cat([data.x_test[:30], data.ood["natural_patches"][:30]])
    eps = 0.005
    reference_model = copy.deepcopy(model)  # their backward() fills parameter gradients
    for layer, gaussian in enumerate(fitted.gaussians):
        with evaluating(model):
            ours = fitted.preprocessed(model, x, layer, eps)
            before = fitted.layer_score(model, x, layer).detach()
            after = fitted.layer_score(model, ours, layer).detach()

        def features_of(inputs, layer=layer):
            return layer_features(reference_model, inputs)[layer].double()

        stepped, their_score = reference_step(features_of, gaussian.means, gaussian.precision,
                                              x, eps)
        assert torch.equal(ours, stepped)
        assert torch.allclose(after, 2 * their_score, rtol=1e-6)
        # the step raises M_l, the (negative) distance to the closest class
        assert (after > before).float().mean() > 0.95
    # pytorch-ood's MahalanobisODIN on the penultimate layer: the same step (its precision
    # is ours / N up to a 1e-6 ridge: the same closest class and signs)
    odin = pood.MahalanobisODIN(lambda inputs: reference_model.features(inputs).double(), eps=eps)
    with float64_default():
        odin.fit_features(layer_features(reference_model, data.x_train)[-1].detach().double(),
                          data.y_train)
        theirs = odin._odin_preprocess(x, "cpu")
    with evaluating(model):
        ours = fitted.preprocessed(model, x, len(fitted.gaussians) - 1, eps)
    assert torch.equal(ours, theirs)


def test_one_layer_at_eps_0_ranks_as_mahalanobis(model, data):
    """A model without `feature_layers`: the penultimate layer only; at eps 0 its layer
    score is our `mahalanobis` and the regression's weight is positive, so the two rank
    the inputs alike."""
    single = PenultimateOnly()
    single.load_state_dict(model.state_dict())
    single.eval()
    lee = fit_score("mahalanobis_lee", {"eps_grid": (0.0,)}, single, data)
    plain = fit_score("mahalanobis", {}, single, data)
    x = torch.cat([data.x_test, data.ood["uniform_noise"], data.ood["natural_patches"]])
    assert lee.layers == ("features",) and lee.epsilon == 0.0
    layer = lee.layer_scores_of(single, x)[:, 0]
    assert torch.allclose(layer, plain(single, x).double(), rtol=1e-5)
    assert lee.weights.shape == (1,) and lee.weights[0] > 0
    # one pair of the 1080 swapped would be 1 - 1e-8
    rho = spearmanr(lee(single, x).numpy(), plain(single, x).numpy()).statistic
    assert rho == pytest.approx(1.0, abs=1e-12)


# --- tuning on ID validation vs FGSM --------------------------------------------------------

def auroc_by_pairs(positive, negative):
    """P(positive > negative) + P(tie) / 2 over all pairs."""
    diff = positive[:, None] - negative[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


@pytest.mark.filterwarnings("ignore::FutureWarning")  # scikit-learn 1.9's new defaults
def test_eps_and_weights_maximise_the_validation_auroc(model, data, fitted):
    """Recomputed: FGSM by hand (CE against the true label, one signed step of 0.05,
    clipped to [0, 1]); for each eps, LogisticRegressionCV on the first half's per-layer
    scores (standardized), AUROC of its log-odds on the second half; the fitted eps has
    the largest, and the score is that regression's log-odds."""
    x_val, y_val = data.x_val, data.y_val
    inputs = x_val.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(inputs), y_val, reduction="sum"),
                                  inputs)
    x_adv = (x_val + 0.05 * grad.sign()).clamp(0, 1)
    assert torch.equal(fitted.adversarial(model, x_val, y_val), x_adv)
    half = len(x_val) // 2
    aurocs, regressions = {}, {}
    for eps in (0.0, 0.01, 0.002):
        clean = fitted.layer_scores_of(model, x_val, eps).numpy()
        adv = fitted.layer_scores_of(model, x_adv, eps).numpy()
        train = np.r_[clean[:half], adv[:half]]
        mean, std = train.mean(0), train.std(0)
        regression = LogisticRegressionCV(scoring="accuracy").fit(
            (train - mean) / std, np.r_[np.ones(half), np.zeros(half)])
        weights = regression.coef_[0] / std
        bias = regression.intercept_[0] - weights @ mean
        aurocs[eps] = auroc_by_pairs(clean[half:] @ weights + bias, adv[half:] @ weights + bias)
        regressions[eps] = (weights, bias)
    assert fitted.validation_auroc == pytest.approx(aurocs, abs=1e-12)
    best = max(aurocs.values())
    assert fitted.epsilon == next(eps for eps, a in aurocs.items() if a == best)
    weights, bias = regressions[fitted.epsilon]
    assert np.allclose(fitted.weights.numpy(), weights) and fitted.bias == pytest.approx(bias)
    x = data.x_test[:50]
    expected = fitted.layer_scores_of(model, x).numpy() @ weights + bias
    assert np.allclose(fitted(model, x).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_fit_needs_validation_data(model, data):
    with pytest.raises(ValueError, match="held-out"):
        build_score("mahalanobis_lee").fit(model, data.x_train, data.y_train)
    with pytest.raises(ValueError, match="20 or more"):
        build_score("mahalanobis_lee").fit(model, data.x_train, data.y_train,
                                           data.x_val[:10], data.y_val[:10])


# --- the model as found ---------------------------------------------------------------------

def test_model_left_exactly_as_found_and_gradients_pass_through(data):
    """Fit, scoring and an attack's gradient leave every flag (a dropout layer left in
    train mode stays so), parameter, buffer and parameter gradient as they were, and no
    hook behind; the score is differentiable in x through the input steps."""
    torch.manual_seed(1)
    net = fit_classifier(BatchNormDropoutNet(), data.x_train, data.y_train, epochs=1)
    net.dense[4].train()  # MC-dropout-like mixed modes
    for p in net.parameters():
        p.grad = None  # training left the last step's
    for wrapped in (net, FeatureCache(net)):
        before = model_state(net)
        score = fit_score("mahalanobis_lee", {"eps_grid": (0.0, 0.002)}, wrapped, data)
        score.epsilon = 0.002  # the graph through the steps whatever was chosen
        values = score(wrapped, data.x_test[:20])
        x = data.x_test[:8].clone().requires_grad_(True)
        with evaluating(wrapped):
            (grad,) = torch.autograd.grad(score.forward(wrapped, x).sum(), x)
        assert torch.isfinite(values).all() and torch.isfinite(grad).all()
        assert grad.abs().sum() > 0
        assert_model_unchanged(net, before)
        assert net.dense[4].training and not net.dense[2].training
        assert all(p.grad is None for p in net.parameters())
        assert no_hooks(net)
    step = partial(score.preprocessed, net, layer=0, epsilon=0.002)
    with evaluating(net):  # straight through: d step(x) / dx = identity
        x = data.x_test[:4].clone().requires_grad_(True)
        (through,) = torch.autograd.grad(step(x).sum(), x)
    assert torch.equal(through, torch.ones_like(x))
