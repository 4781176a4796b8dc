"""Intervals over seeds (t) and over test samples (bootstrap), against hand computations and
the point metrics of `workloads.evaluation.metrics`."""

import math
import time

import numpy as np
import pytest

from workloads.evaluation.metrics import calibration, ood_metrics
from workloads.evaluation.uncertainty import (
    bootstrap_ece_interval,
    bootstrap_ood_intervals,
    ood_metrics_of_weights,
    t_interval,
)


def test_t_interval_by_hand():
    # mean 2.5, s = sqrt(5/3) = 1.2910, t_{0.975,3} = 3.1824: half-width 3.1824 * 1.2910 / 2
    out = t_interval([1.0, 2.0, 3.0, 4.0])
    assert out["mean"] == 2.5 and out["n"] == 4
    assert out["std"] == pytest.approx(math.sqrt(5 / 3))
    assert out["hi"] - 2.5 == pytest.approx(3.182446305 * math.sqrt(5 / 3) / 2)
    assert out["lo"] == pytest.approx(5.0 - out["hi"])
    one = t_interval([0.7, float("nan")])
    assert one["mean"] == 0.7 and math.isnan(one["lo"]) and one["n"] == 1


@pytest.mark.parametrize("ties", [False, True])
def test_unit_weights_give_the_point_metrics_ties_included(ties):
    rng = np.random.default_rng(0)
    score_id, score_ood = rng.normal(1, 1, 300), rng.normal(0, 1.3, 250)
    if ties:  # saturated scores, as an MSP of 1.0 on both sides
        score_id, score_ood = np.round(score_id, 1), np.round(score_ood, 1)
    rows = ood_metrics_of_weights(score_id, score_ood, np.ones((1, 300)), np.ones((1, 250)))
    point = ood_metrics(score_id, score_ood)
    for metric in ("auroc", "aupr_in", "aupr_out", "fpr95"):
        assert rows[metric][0] == pytest.approx(point[metric], abs=1e-12), metric


def test_weights_are_resamples():
    """Counting an input twice is drawing it twice: weights (2, 0, 1) on ID scores equal
    the point metrics of the scores repeated that way."""
    score_id, score_ood = np.array([3.0, 1.0, 2.0]), np.array([2.5, 0.5])
    rows = ood_metrics_of_weights(score_id, score_ood, np.array([[2.0, 0.0, 1.0]]),
                                  np.array([[1.0, 3.0]]))
    point = ood_metrics([3.0, 3.0, 2.0], [2.5, 0.5, 0.5, 0.5])
    for metric in ("auroc", "aupr_in", "aupr_out", "fpr95"):
        assert rows[metric][0] == pytest.approx(point[metric], abs=1e-12), metric


def test_bootstrap_of_a_case_enumerated_by_hand():
    """ID scores {1, 3}, OOD scores {2, 0}: the 16 equally likely resamples give AUROC 0
    (1/16), 0.5 (4/16), 0.75 (4/16) and 1 (7/16); so the 95% interval is [0, 1] and the
    central 50% one [0.5, 1]."""
    wide = bootstrap_ood_intervals([1.0, 3.0], [2.0, 0.0], resamples=20_000, seed=1)
    assert wide["auroc"] == (0.0, 1.0)
    half = bootstrap_ood_intervals([1.0, 3.0], [2.0, 0.0], resamples=20_000, seed=1,
                                   confidence=0.5)
    assert half["auroc"] == (0.5, 1.0)


def test_ece_interval_contains_the_point_and_is_exact_without_spread():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 400)
    correct = (rng.uniform(size=400) < conf - 0.05).astype(float)
    point = calibration(conf, correct).ece
    lo, hi = bootstrap_ece_interval(conf, correct, seed=0)
    assert lo < point < hi and hi - lo < 0.1
    # every input the same: every resample is the data itself
    same = bootstrap_ece_interval(np.full(50, 0.9), np.ones(50))
    assert same == pytest.approx((0.1, 0.1))


def test_intervals_are_seeded_shrink_with_more_samples_and_are_fast():
    rng = np.random.default_rng(0)
    small = bootstrap_ood_intervals(rng.normal(1, 1, 60), rng.normal(0, 1, 60), seed=3)
    big_id, big_ood = rng.normal(1, 1, 360), rng.normal(0, 1, 360)
    seconds = []  # the best of five fresh draws: the cost, not the machine's load at the time
    for seed in range(3, 8):
        started = time.perf_counter()
        big = bootstrap_ood_intervals(big_id, big_ood, resamples=1000, seed=seed)
        seconds.append(time.perf_counter() - started)
    assert min(seconds) < 0.1  # 1,000 resamples of 360 + 360 scores
    big = bootstrap_ood_intervals(big_id, big_ood, resamples=1000, seed=3)
    assert big == bootstrap_ood_intervals(big_id, big_ood, resamples=1000, seed=3)
    point = ood_metrics(big_id, big_ood)
    for metric, (lo, hi) in big.items():
        assert lo <= point[metric] <= hi, metric
        assert hi - lo < small[metric][1] - small[metric][0], metric


def test_the_ood_stage_and_test_metrics_report_intervals_beside_the_values():
    import torch

    from workloads.data import load_dataset
    from workloads.evaluation.ood_evaluation import evaluate_ood
    from workloads.models import MLPClassifier
    from workloads.training.epochs import classifier_test_metrics, fit_classifier

    torch.manual_seed(0)
    data = load_dataset("digits")
    model = fit_classifier(MLPClassifier(data.input_shape, 10, width=32), data.x_train,
                           data.y_train, epochs=2)
    result = evaluate_ood(model, data, {"msp": {}, "energy": {}})
    for row in result.rows:
        for metric in ("auroc", "aupr_in", "aupr_out", "fpr95"):
            assert row[f"{metric}_lo"] <= row[metric] <= row[f"{metric}_hi"], (row, metric)
    assert "ood_msp_gaussian_noise_auroc_lo" in result.flat_metrics()
    metrics, _ = classifier_test_metrics(model, data)
    assert metrics["test_ece_lo"] < metrics["test_ece"] < metrics["test_ece_hi"]
