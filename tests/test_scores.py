"""OOD scores: closed forms against hand computations, documented directions, and each score
ranking digits above an obvious OOD set (uniform noise) on a small trained model."""

import math

import numpy as np
import pytest
import torch
from conftest import BNDropoutNet, assert_model_unchanged, model_state
from torch import nn

from workloads.data import load_digits, noise_ood_sets
from workloads.evaluation.metrics import mann_whitney, ood_metrics
from workloads.models import DIGLM, MLPClassifier
from workloads.models.flows import VectorRealNVP, build_flow, flow_objective
from workloads.scores import OOD_SCORES, applicable_scores, build_score, fit_score
from workloads.scores.base import CPU_CHUNK, batched_logits, penultimate_features
from workloads.training.epochs import fit_classifier, train_epoch


class FixedLogits(nn.Module):
    """A 'model' whose features are its input and whose head is the identity."""

    def __init__(self):
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Identity()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, x):
        return self.head(self.features(x)) + 0 * self.anchor


def test_closed_form_scores_match_hand_computation():
    model = FixedLogits()
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    assert torch.allclose(build_score("max_logit")(model, logits), torch.tensor([2.0, 0.5]))
    msp = build_score("msp")(model, logits)
    assert msp[0].item() == pytest.approx(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))
    assert msp[1].item() == pytest.approx(1 / 3)
    energy = build_score("energy", temperature=2.0)(model, logits)
    assert energy[0].item() == pytest.approx(2 * math.log(math.exp(1) + 1 + math.exp(-0.5)))
    assert energy[1].item() == pytest.approx(2 * (0.25 + math.log(3)))
    lnz = build_score("lnz", kind="softplus")(model, logits)
    assert lnz[1].item() == pytest.approx(3 * math.log1p(math.exp(0.5)))


def test_mahalanobis_matches_numpy():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 3))
    labels = np.repeat([0, 1, 2], 20)
    features[labels == 1] += 3
    model = FixedLogits()
    score = build_score("mahalanobis").fit(model, torch.tensor(features).float(),
                                           torch.tensor(labels))
    queries = rng.normal(size=(5, 3))
    means = np.stack([features[labels == c].mean(0) for c in range(3)])
    centred = features - means[labels]
    precision = np.linalg.inv(centred.T @ centred / len(features))
    expected = np.max([-np.einsum("nd,de,ne->n", queries - m, precision, queries - m)
                       for m in means], axis=0)
    got = score(model, torch.tensor(queries).float()).numpy()
    assert np.allclose(got, expected, rtol=1e-4)


def test_mc_dropout_is_zero_uncertainty_without_noise_and_needs_dropout():
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(p=0.0), nn.Linear(8, 3))
    x = torch.randn(10, 4)
    assert torch.allclose(build_score("mc_dropout", kind="variation_ratio")(model, x),
                          torch.zeros(10))
    assert torch.allclose(build_score("mc_dropout", kind="mutual_information")(model, x),
                          torch.zeros(10), atol=1e-6)
    probs = model(x).softmax(1)
    entropy = -(probs * probs.log()).sum(1)
    assert torch.allclose(build_score("mc_dropout", kind="predictive_entropy")(model, x),
                          -entropy, atol=1e-5)
    with pytest.raises(ValueError, match="no dropout"):
        build_score("mc_dropout")(nn.Linear(4, 3), x)
    with pytest.raises(ValueError):
        build_score("mc_dropout", kind="nope")


def test_mann_whitney_on_separated_and_identical_scores():
    separated = mann_whitney(np.arange(10, 20), np.arange(0, 10))
    assert separated["auroc"] == 1.0 and separated["p_value"] < 1e-3
    same = mann_whitney(np.ones(10), np.ones(10))
    assert same["auroc"] == 0.5 and same["p_value"] > 0.4


@pytest.fixture(scope="module")
def trained():
    """A dropout MLP trained for a few epochs on digits, and uniform-noise OOD inputs."""
    torch.manual_seed(0)
    data = load_digits()
    model = nn.Sequential()
    model.features = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(),
                                   nn.Dropout(0.2), nn.Linear(128, 64), nn.ReLU())
    model.head = nn.Linear(64, 10)
    fit_classifier(model, data.x_train, data.y_train, epochs=15, lr=3e-3)
    ood = noise_ood_sets(len(data.x_test), data.input_shape, seed=3)["uniform_noise"]
    return model, data, ood


SCORE_PARAMS = {"msp": {}, "msp_calibrated": {}, "max_logit": {}, "energy": {}, "lnz": {},
                "odin": {"temperature": 1000.0, "epsilon": 0.002},
                "mahalanobis": {"epsilon": 0.001},  # with input preprocessing
                "mc_dropout": {"passes": 10}, "gmm": {"components": 10}}


DENSITY_SCORE_PARAMS = {"log_px": {}, "neg_am": {}}


def test_every_registered_score_is_covered():
    """Ours here; pytorch-ood's adapted detectors in tests/test_pytorch_ood_scores.py."""
    from workloads.scores.pytorch_ood_detectors import PytorchOODScore

    ours = {n for n, cls in OOD_SCORES.items() if not issubclass(cls, PytorchOODScore)}
    corrections = {"input_complexity", "typicality"}  # tests/test_likelihood_corrections.py
    corrections |= {"likelihood_ratio"}
    failure = {"confidnet", "laplace"}  # tests/test_failure_prediction.py
    godin = {"godin"}  # tests/test_godin.py
    lee = {"mahalanobis_lee"}  # tests/test_mahalanobis.py
    generative = {"iwae", "gradcon", "ocgan"}  # tests/test_vae_ood.py, test_class_anomaly.py
    assert set(SCORE_PARAMS) | set(DENSITY_SCORE_PARAMS) | corrections | failure | godin \
        | lee | generative == ours


def test_density_scores_match_a_standard_normal():
    """An untrained vector flow without preprocessing is the identity: p = N(0, I), so
    log p(x) = -|x|^2/2 - D/2 log 2 pi and AM(x) = |x| in closed form."""
    from workloads.models.flows import Flow

    flow = Flow(VectorRealNVP(5), (5,), levels=None)
    x = torch.randn(7, 5)
    expected = -0.5 * (x ** 2).sum(1) - 2.5 * math.log(2 * math.pi)
    assert torch.allclose(build_score("log_px")(flow, x), expected, atol=1e-5)
    assert torch.allclose(build_score("neg_am")(flow, x), -x.norm(dim=1), atol=1e-5)
    # the direction: a far-away point scores lower on both
    far = torch.full((1, 5), 6.0)
    assert build_score("log_px")(flow, far) < build_score("log_px")(flow, torch.zeros(1, 5))
    assert build_score("neg_am")(flow, far) < build_score("neg_am")(flow, 0.1 * far)


def test_applicable_scores_follow_what_models_provide():
    flow = build_flow("vector", (1, 8, 8), levels=17)
    assert applicable_scores(flow) == ["log_px", "neg_am"]
    diglm = applicable_scores(DIGLM(flow, 10))
    assert {"msp", "energy", "odin", "mahalanobis", "gmm", "log_px", "neg_am"} <= set(diglm)
    assert "mc_dropout" not in diglm and "lnz" not in diglm  # no dropout; lnz = energy(T=1)
    assert "log_px" not in applicable_scores(MLPClassifier((1, 8, 8), 10))
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), nn.Linear(8, 3))
    assert "mc_dropout" in applicable_scores(model)


@pytest.fixture(scope="module")
def trained_flow():
    """A vector RealNVP trained for a few epochs on digits, and uniform-noise OOD inputs."""
    torch.manual_seed(0)
    data = load_digits()
    flow = build_flow("vector", data.input_shape, levels=data.levels, num_couplings=4,
                      hidden=64)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)

    def objective(model, xb, yb):
        return flow_objective(model, model.dequantize(xb, generator), alpha=0.0)

    for epoch in range(8):
        train_epoch(flow, optimizer, objective, data.x_train, data.y_train, 64, epoch)
    ood = noise_ood_sets(len(data.x_test), data.input_shape, seed=3)["uniform_noise"]
    return flow, data, ood


@pytest.mark.parametrize("name", sorted(DENSITY_SCORE_PARAMS))
def test_density_score_ranks_in_distribution_above_noise(trained_flow, name):
    flow, data, ood = trained_flow
    score = build_score(name, **DENSITY_SCORE_PARAMS[name])
    score_id, score_ood = score(flow, data.x_test), score(flow, ood)
    assert torch.isfinite(score_id).all() and torch.isfinite(score_ood).all()
    assert ood_metrics(score_id.numpy(), score_ood.numpy())["auroc"] > 0.8


@pytest.mark.parametrize("name", sorted(SCORE_PARAMS))
def test_score_ranks_in_distribution_above_noise(trained, name):
    model, data, ood = trained
    score = fit_score(name, SCORE_PARAMS[name], model, data)
    score_id, score_ood = score(model, data.x_test), score(model, ood)
    assert score_id.shape == (len(data.x_test),)
    assert torch.isfinite(score_id).all() and torch.isfinite(score_ood).all()
    # Higher means more in-distribution: ID must score above noise.
    assert ood_metrics(score_id.numpy(), score_ood.numpy())["auroc"] > 0.8


def test_gmm_density_in_torch_equals_sklearns_score_samples():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(size=(80, 4)), rng.normal(3, 0.5, size=(40, 4))])
    model = FixedLogits()
    score = build_score("gmm", components=3).fit(model, torch.tensor(features).float(),
                                                 torch.zeros(120, dtype=torch.long))
    queries = rng.normal(1, 2, size=(10, 4)).astype(np.float32)
    ours = score(model, torch.tensor(queries)).double().numpy()
    expected = score.mixture.score_samples(queries.astype(np.float64))
    assert np.allclose(ours, expected, rtol=1e-6, atol=1e-4)


def test_every_differentiable_score_has_an_input_gradient_and_forward_equals_call():
    """`forward` is what attacks on detectors follow: for each score of a DIGLM (all but
    MC dropout, which says why not), it keeps its graph to x and gives the scores `__call__`
    gives."""
    torch.manual_seed(0)
    data = load_digits()
    model = DIGLM(build_flow("vector", data.input_shape, data.levels, num_couplings=2,
                             hidden=16), 10).eval()
    x = data.x_test[:8]
    for name in [*applicable_scores(model), "lnz"]:
        score = build_score(name).fit(model, data.x_train[:200], data.y_train[:200])
        inputs = x.clone().requires_grad_(True)
        values = score.forward(model, inputs)
        (grad,) = torch.autograd.grad(values.sum(), inputs)
        assert grad.abs().sum() > 0, name
        assert torch.allclose(values.detach(), score(model, x), rtol=1e-4, atol=1e-4), name
    assert OOD_SCORES["mc_dropout"].not_differentiable
    from workloads.scores.pytorch_ood_detectors import PytorchOODScore

    assert OOD_SCORES["input_complexity"].not_differentiable
    assert OOD_SCORES["laplace"].not_differentiable
    assert all(cls.not_differentiable is None for n, cls in OOD_SCORES.items()
               if n not in ("mc_dropout", "input_complexity", "laplace")
               and not issubclass(cls, PytorchOODScore))
    assert all(cls.not_differentiable for cls in OOD_SCORES.values()
               if issubclass(cls, PytorchOODScore))


def test_an_explicit_laplace_prior_precision_is_honoured_even_zero():
    """`prior_precision=0.0` (a flat prior) was turned into 1.0 by `or`; a negative one is
    refused. With None the precision is fitted by marginal likelihood."""
    from conftest import train_digits_classifier

    model, data = train_digits_classifier(epochs=2)
    flat = build_score("laplace", prior_precision=0.0).fit(model, data.x_train, data.y_train)
    assert float(flat.laplace.prior_precision) == 0.0
    fixed = build_score("laplace", prior_precision=3.0).fit(model, data.x_train, data.y_train)
    assert float(fixed.laplace.prior_precision) == 3.0
    with pytest.raises(ValueError, match="prior_precision"):
        build_score("laplace", prior_precision=-1.0)


def test_cpu_evaluation_runs_in_small_chunks_with_the_same_outputs():
    """On the CPU, logits, features and a score's values come in chunks of `CPU_CHUNK` (a
    DenseNet evaluates 2.4x faster than in chunks of 1,024), equal up to float rounding to
    one chunk of everything, and the model (batch norm, dropout) is left as found."""
    torch.manual_seed(0)
    model, x = BNDropoutNet(), torch.randn(100, 1, 8, 8)
    model.features[2].running_mean.normal_()  # BN statistics that matter in eval mode
    before = model_state(model)
    chunks = []
    model.features.register_forward_pre_hook(lambda module, args: chunks.append(len(args[0])))
    logits = batched_logits(model, x)
    assert chunks == [CPU_CHUNK] * 3 + [100 - 3 * CPU_CHUNK]
    torch.testing.assert_close(logits, batched_logits(model, x, batch_size=len(x)))
    torch.testing.assert_close(penultimate_features(model, x),
                               penultimate_features(model, x, batch_size=len(x)))
    msp = build_score("msp")
    assert torch.equal(msp(model, x), logits.softmax(dim=1).max(dim=1).values)
    assert_model_unchanged(model, before)
