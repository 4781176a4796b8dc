import math

import numpy as np
import pytest
import torch

from workloads.evaluation.metrics import calibration, classifier_calibration, ood_metrics
from workloads.training.lr_scaling import scaled_lr


def test_ece_and_mce_match_hand_computation():
    # 3 bins: (0, 1/3], (1/3, 2/3], (2/3, 1]
    conf = np.array([0.2, 0.3, 0.5, 0.6, 0.9, 0.95, 1.0, 0.8])
    correct = np.array([0, 1, 1, 0, 1, 1, 1, 0])
    c = calibration(conf, correct, num_bins=3)
    # bin 0: conf mean .25, acc .5 -> gap .25 (2 items)
    # bin 1: conf mean .55, acc .5 -> gap .05 (2 items)
    # bin 2: conf mean .9125, acc .75 -> gap .1625 (4 items)
    assert c.bin_count == [2, 2, 4]
    assert c.ece == pytest.approx(2 / 8 * 0.25 + 2 / 8 * 0.05 + 4 / 8 * 0.1625)
    assert c.mce == pytest.approx(0.25)
    assert c.bin_accuracy == pytest.approx([0.5, 0.5, 0.75])


def test_calibration_default_has_15_bins_and_skips_empty_ones():
    c = calibration(np.array([0.99, 0.98]), np.array([1, 1]))
    assert len(c.bin_count) == 15 and sum(c.bin_count) == 2
    assert c.ece == pytest.approx(0.015)
    assert math.isnan(c.bin_accuracy[0])


def test_classifier_calibration_uses_max_softmax():
    logits = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    c = classifier_calibration(logits, torch.tensor([0, 0]), num_bins=10)
    assert c.ece == pytest.approx(abs(0.5 - torch.softmax(logits, 1).max(1).values.mean().item()))


def test_auroc_aupr_fpr95_match_hand_computation():
    score_id = np.array([0.9, 0.8, 0.4, 0.7])
    score_ood = np.array([0.5, 0.3, 0.85, 0.1])
    m = ood_metrics(score_id, score_ood)
    # pairs (id > ood): 0.9 beats 4, 0.8 beats 3, 0.4 beats 2, 0.7 beats 3 -> 12/16
    assert m["auroc"] == pytest.approx(12 / 16)
    # AUPR-in (AP, ID positive): ranks 0.9(I) .85(O) .8(I) .7(I) .5(O) .4(I) ...
    assert m["aupr_in"] == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 6) / 4)
    # 95% TPR needs every ID example: threshold 0.4 accepts 0.85 and 0.5 -> FPR 2/4
    assert m["fpr95"] == pytest.approx(0.5)
    assert m["tnr95"] == pytest.approx(0.5)
    perfect = ood_metrics(np.array([2.0, 3.0]), np.array([0.0, 1.0]))
    assert perfect["auroc"] == 1.0 and perfect["fpr95"] == 0.0 and perfect["aupr_out"] == 1.0


def test_ood_metrics_are_nan_for_non_finite_scores():
    assert math.isnan(ood_metrics(np.array([1.0, np.nan]), np.array([0.0, 1.0]))["auroc"])


def test_lr_scaling_rules():
    assert scaled_lr(1e-3, 128, 32, "none") == 1e-3
    assert scaled_lr(1e-3, 128, 32, "sqrt") == pytest.approx(2e-3)
    assert scaled_lr(1e-3, 128, 32, "linear") == pytest.approx(4e-3)
    assert scaled_lr(1e-3, 8, 32, "sqrt") == pytest.approx(5e-4)
    assert scaled_lr(1e-3, 8, 32, "linear") == pytest.approx(2.5e-4)
    with pytest.raises(ValueError):
        scaled_lr(1e-3, 8, 32, "cubic")
