"""Temperature scaling against a scalar search and pytorch-ood's; failure-prediction metrics
against hand computations."""

import math

import numpy as np
import pytest
import pytorch_ood.detector as pood
import torch
from scipy.optimize import minimize_scalar

from workloads.evaluation.metrics import calibration, failure_metrics
from workloads.evaluation.temperature import fit_temperature, scaled_probabilities, temperature_nll


def overconfident_logits(n=2000, classes=10, scale=6.0, seed=0):
    """Logits whose softmax is overconfident: the true class is the argmax 70% of the time
    but the logits are sharp (the optimal T is well above 1)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g)
    hit = torch.rand(n, generator=g) < 0.7
    logits[hit, labels[hit]] += 3.0
    return scale * logits, labels


def test_fitted_temperature_is_the_nll_minimum():
    logits, labels = overconfident_logits()
    t = fit_temperature(logits, labels)
    reference = minimize_scalar(lambda lt: temperature_nll(logits, labels, math.exp(lt)),
                                bounds=(-5, 5), method="bounded", options={"xatol": 1e-9})
    assert t == pytest.approx(math.exp(reference.x), rel=1e-4)
    assert t > 2  # sharp logits are cooled
    # pytorch-ood's fit (50 L-BFGS iterations of step 0.01 from T = 1, no line search) stops
    # short of the minimum: T = 1.27 here against 4.77, a higher NLL. Hence our own fit.
    theirs = float(pood.TemperatureScaling(None).fit_logits(logits, labels).t.detach())
    assert 1 < theirs < t
    assert temperature_nll(logits, labels, t) < temperature_nll(logits, labels, theirs)
    # and it calibrates: ECE (10 bins, as document 003) falls
    correct = (logits.argmax(1) == labels).numpy()
    before = calibration(logits.softmax(1).max(1).values.numpy(), correct, 10).ece
    after = calibration(scaled_probabilities(logits, t).max(1).values.numpy(), correct, 10).ece
    assert after < before / 2  # 0.27 -> 0.10 here


def test_temperature_scaling_refuses_no_data():
    with pytest.raises(ValueError, match="validation logits"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_failure_metrics_by_hand():
    """Confidences of 3 successes (0.9, 0.8, 0.4) and 2 errors (0.6, 0.3).
    Ranked by -confidence, errors first: 0.3(E) 0.4(S) 0.6(E) 0.8(S) 0.9(S).
    AUPR-Error = mean precision at each error = (1/1 + 2/3) / 2 = 5/6.
    Ranked by confidence, successes first: 0.9(S) 0.8(S) 0.6(E) 0.4(S) 0.3(E):
    AUPR-Success = (1 + 1 + 3/4) / 3 = 11/12.
    AUROC: pairs (success, error) with the success more confident: (0.9: 2) (0.8: 2)
    (0.4: 1 of 2) = 5 of 6.
    FPR95-error: flagging 95% of the 2 errors means both, threshold -0.6 on -confidence:
    successes flagged = those with confidence <= 0.6: 0.4 -> 1 of 3. FPR95-success (Corbière
    et al.): keeping 95% of the 3 successes means all, threshold 0.4: errors accepted = those
    with confidence >= 0.4: 0.6 -> 1 of 2."""
    confidence = np.array([0.9, 0.8, 0.4, 0.6, 0.3])
    correct = np.array([True, True, True, False, False])
    m = failure_metrics(confidence, correct)
    assert m["aupr_error"] == pytest.approx(5 / 6)
    assert m["aupr_success"] == pytest.approx(11 / 12)
    assert m["auroc"] == pytest.approx(5 / 6)
    assert m["fpr95_error"] == pytest.approx(1 / 3)
    assert m["fpr95_success"] == pytest.approx(1 / 2)
    assert all(math.isnan(v) for v in failure_metrics(confidence, np.ones(5, bool)).values())


def test_mistake_detection_rows_follow_the_scores_and_the_predictions():
    """On a digits MLP trained for 10 epochs (315 of 360 right): the MSP row is
    `failure_metrics` of the MSP values and the test set's correctness; the Mann-Whitney U
    over n_correct * n_wrong is the AUROC; MSP separates mistakes far better than chance."""
    from conftest import train_digits_classifier

    from workloads.evaluation.mistake_detection import evaluate_mistakes
    from workloads.scores import build_score

    model, data = train_digits_classifier()
    rows = {r["score"]: r for r in evaluate_mistakes(model, data, {"msp": {}, "energy": {}})}
    with torch.no_grad():
        correct = (model(data.x_test).argmax(1) == data.y_test).numpy()
        msp = build_score("msp")(model, data.x_test).double().numpy()
    row = rows["msp"]
    assert row["n_correct"] == correct.sum() and row["n_wrong"] == (~correct).sum() > 10
    expected = failure_metrics(msp, correct)
    for metric in ("auroc", "aupr_success", "aupr_error", "fpr95_success", "fpr95_error"):
        assert row[metric] == pytest.approx(expected[metric]), metric
    assert row["mw_u"] / (row["n_correct"] * row["n_wrong"]) == pytest.approx(row["auroc"])
    assert row["auroc"] > 0.8 and row["mw_p"] < 1e-6  # 0.896 here
    assert set(rows) == {"msp", "energy"}


def test_calibrated_msp_fits_its_temperature_on_the_validation_split():
    """`fit_score` hands msp_calibrated the validation split (the training split would give
    the T of an overfit model); its values are the max of softmax(logits / T)."""
    from workloads.data import load_dataset
    from workloads.models import build_classifier
    from workloads.scores import batched_logits, fit_score

    torch.manual_seed(0)
    data = load_dataset("digits")
    model = build_classifier("mlp", data.input_shape, data.num_classes, width=32).eval()
    score = fit_score("msp_calibrated", {}, model, data)
    assert score.temperature == pytest.approx(
        fit_temperature(batched_logits(model, data.x_val), data.y_val))
    assert score.temperature != pytest.approx(
        fit_temperature(batched_logits(model, data.x_train), data.y_train))
    expected = scaled_probabilities(batched_logits(model, data.x_test), score.temperature)
    assert torch.allclose(score(model, data.x_test), expected.max(1).values, atol=1e-6)
