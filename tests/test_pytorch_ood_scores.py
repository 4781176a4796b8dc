"""pytorch-ood's post-hoc detectors behind our score interface, and our own scores checked
against their pytorch-ood counterparts on one trained model (the MLP and the CNN on digits)."""

import math

import pytest
import pytorch_ood.detector as pood
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from workloads.evaluation.metrics import ood_metrics
from workloads.evaluation.ood_evaluation import resolve_scores
from workloads.models import build_classifier
from workloads.scores import OOD_SCORES, build_score
from workloads.scores.pytorch_ood_detectors import PytorchOODScore

ADAPTED = sorted(n for n, cls in OOD_SCORES.items() if issubclass(cls, PytorchOODScore))


def _digits():
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16, dtype=torch.float32).reshape(-1, 1, 8, 8), torch.tensor(y)


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def trained(request):
    """A classifier trained for 30 epochs on 1,200 digits; the other 597 and uniform noise."""
    torch.manual_seed(0)
    x, y = _digits()
    model = build_classifier(request.param, (1, 8, 8), 10)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(30):
        for i in range(0, 1200, 64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            optimizer.step()
    model.eval()
    noise = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return model, x[:1200], y[:1200], x[1200:], noise


def _fitted_pood(detector, x_train, y_train):
    detector.fit(DataLoader(TensorDataset(x_train, y_train), batch_size=256))
    return detector


def test_the_adapter_covers_the_post_hoc_detectors_and_none_is_in_the_default_set():
    assert {"vim", "knn", "react", "ash", "dice", "gradnorm", "kl_matching", "she", "scale",
            "rankfeat", "gen", "entropy", "rmd", "nnguide", "openmax"} <= set(ADAPTED)
    assert not any(OOD_SCORES[n].in_default_set for n in ADAPTED)
    # ours stay the registered ones where we have them
    for ours in ("msp", "max_logit", "energy", "odin", "mahalanobis", "gmm", "mc_dropout"):
        assert not issubclass(OOD_SCORES[ours], PytorchOODScore)


def test_every_adapted_detector_scores_every_model_that_offers_what_it_needs(trained):
    model, x_train, y_train, x_test, noise = trained
    for name in ADAPTED:
        needs = set(OOD_SCORES[name].requires)
        if not needs <= set(model.provides):
            with pytest.raises(ValueError, match=f"'{name}' needs"):
                resolve_scores(model, name)
            continue
        score = build_score(name).fit(model, x_train, y_train)
        values = score(model, torch.cat([x_test, noise]))
        assert values.shape == (len(x_test) + len(noise),), name
        assert torch.isfinite(values).all(), name


def test_adapted_scores_are_pytorch_oods_negated(trained):
    """Higher = more in-distribution: our value is exactly minus pytorch-ood's."""
    model, x_train, y_train, x_test, _ = trained
    ours = build_score("vim").fit(model, x_train, y_train)(model, x_test)
    d = model.head.in_features // 2
    theirs = _fitted_pood(pood.ViM(model.features, d=d, w=model.head.weight.detach(),
                                   b=model.head.bias.detach()), x_train, y_train)
    assert torch.equal(ours, -theirs.predict(x_test))
    # and they detect noise on digits, as in their papers
    noise = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    auroc = ood_metrics(ours.numpy(), build_score("vim").fit(model, x_train, y_train)(
        model, noise).numpy())["auroc"]
    assert auroc > 0.9


def test_a_detector_that_needs_fitting_refuses_an_unfitted_call(trained):
    model, *_ = trained
    with pytest.raises(RuntimeError, match="must be fitted"):
        build_score("knn")(model, torch.rand(4, 1, 8, 8))


def test_feature_maps_compose_to_the_logits():
    model = build_classifier("cnn", (1, 8, 8), 10)
    x = torch.rand(5, 1, 8, 8)
    maps = model.feature_maps(x)
    assert maps.ndim == 4
    assert torch.allclose(model.head_from_feature_maps(maps), model(x))


# Our own scores against pytorch-ood's (NOTES.md D, E): identical values, or (where the two
# differ by a monotone map) identical rankings.

def test_msp_max_logit_and_energy_equal_pytorch_oods(trained):
    model, _, _, x_test, noise = trained
    x = torch.cat([x_test, noise])
    pairs = {"msp": pood.MaxSoftmax(model), "max_logit": pood.MaxLogit(model),
             "energy": pood.EnergyBased(model)}
    for name, theirs in pairs.items():
        ours = build_score(name)(model, x)
        assert torch.allclose(ours, -theirs.predict(x).detach(), atol=1e-6, rtol=1e-6), name
    t = 10.0
    ours = build_score("energy", temperature=t)(model, x)
    assert torch.allclose(ours, -pood.EnergyBased(model, t=t).predict(x).detach(), rtol=1e-6)


def test_odin_equals_pytorch_oods(trained):
    """The same step (raise log MSP at T = lower the CE of the predicted class at T), the same
    score (MSP at T of the stepped input)."""
    model, _, _, x_test, noise = trained
    x = torch.cat([x_test, noise])
    for temperature, eps in ((1000.0, 0.0014), (10.0, 0.01)):
        ours = build_score("odin", temperature=temperature, epsilon=eps)(model, x)
        theirs = -pood.ODIN(model, eps=eps, temperature=temperature).predict(x)
        # float32: a gradient component within rounding of 0 may take the other sign
        assert torch.allclose(ours, theirs, atol=1e-5), (temperature, eps)


def test_mahalanobis_ranks_as_pytorch_oods(trained):
    """pytorch-ood scores 0.5 * d^2 with the covariance summed, not averaged, plus a ridge of
    1e-6 (float32 inverse); ours is -d^2 with the averaged covariance (float64 pseudo-inverse).
    So ours = -2 N * theirs where the covariance is regular. The ReLU models have dead units
    (59 of 256 in the MLP): there the ridge gives a precision of 1e6 and the pseudo-inverse 0,
    so an input that wakes a dead unit ranks differently (Spearman 0.996 on the MLP, 1.0 on
    the CNN; the AUROCs agree to 1e-3). On the live units the rankings are identical."""
    model, x_train, y_train, x_test, noise = trained
    x = torch.cat([x_test, noise])
    ours = build_score("mahalanobis").fit(model, x_train, y_train)(model, x).double()
    theirs = _fitted_pood(pood.Mahalanobis(model.features), x_train, y_train).predict(x)
    rho = spearmanr(ours.numpy(), -theirs.numpy()).statistic
    assert rho > 0.99, rho
    # Given the live units only, pytorch-ood ranks exactly as ours (whose pseudo-inverse
    # ignores the dead directions).
    with torch.no_grad():
        features_train, features = model.features(x_train), model.features(x)
    live = features_train.abs().sum(0) > 0
    on_live = pood.Mahalanobis(None).fit_features(features_train[:, live], y_train)
    theirs_live = on_live.predict_features(features[:, live])
    assert spearmanr(ours.numpy(), -theirs_live.numpy()).statistic > 0.99999
    n = len(x_test)
    assert math.isclose(ood_metrics(ours[:n].numpy(), ours[n:].numpy())["auroc"],
                        ood_metrics(-theirs[:n].numpy(), -theirs[n:].numpy())["auroc"],
                        abs_tol=1e-3)


def test_the_ood_stage_runs_adapted_detectors_by_name():
    """`--set ood_scores=msp+vim+ash` reaches `evaluate_ood` as names: every OOD set of the
    embedded digits gets a row per score, with its bootstrap interval."""
    from workloads.data import load_dataset
    from workloads.evaluation.ood_evaluation import evaluate_ood

    torch.manual_seed(0)
    data = load_dataset("digits")
    model = build_classifier("cnn", data.input_shape, data.num_classes).eval()
    result = evaluate_ood(model, data, resolve_scores(model, "msp+vim+ash"), resamples=50)
    assert {(r["score"], r["ood_set"]) for r in result.rows} == {
        (s, o) for s in ("msp", "vim", "ash") for o in data.ood}
    assert all(r["auroc_lo"] <= r["auroc"] <= r["auroc_hi"] for r in result.rows)


def test_gradnorm_is_the_closed_form_on_the_last_layer(trained):
    """GradNorm (Huang et al. 2021) on the final layer only: the gradient of the cross-entropy
    to the uniform distribution, CE_u = -(1/K) sum_k log softmax(f/T)_k, by the head's
    weight and bias is ((p - 1/K)/T) h^T and (p - 1/K)/T, so its L1 norm is
    sum_k |p_k - 1/K| / T * (||h||_1 + 1); higher = more in-distribution."""
    model, x_train, y_train, x_test, _ = trained
    x = x_test[:40]
    with torch.no_grad():
        h = model.features(x)
        p = model.head(h).softmax(dim=1)
    expected = (p - 1 / p.shape[1]).abs().sum(1) * (h.abs().sum(1) + 1)
    ours = build_score("gradnorm").fit(model, x_train, y_train)(model, x)
    assert torch.allclose(ours, expected, rtol=1e-4)
