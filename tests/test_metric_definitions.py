"""Every metric against a brute-force implementation of its definition, on random data with
heavy ties (scores drawn from a handful of values, as saturated MSP or the variation ratio of
MC dropout give them), and against scikit-learn, pytorch-ood or the papers' reference code
where one exists.

Definitions (ID the positive class, higher score = more ID; NOTES.md E):
- AUROC: P(s_id > s_ood) + P(s_id = s_ood) / 2 over all pairs.
- AUPR-in: average precision over the distinct thresholds t (accept s >= t), highest first:
  sum_t (R(t) - R(t_prev)) P(t) (scikit-learn's, no interpolation); AUPR-out the same with
  OOD positive and the scores negated.
- FPR95: the FPR at the highest threshold t whose TPR is >= 0.95; TNR95 = 1 - FPR95.
- ECE / MCE: bins (lo, hi] of equal width (the first [0, hi]); sum_m |B_m|/n |acc - conf|
  and max_m |acc - conf| over non-empty bins.
"""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from workloads.evaluation.metrics import calibration, failure_metrics, fpr_at_tpr, ood_metrics
from workloads.evaluation.uncertainty import ood_metrics_of_weights


def brute_auroc(pos, neg):
    pairs = pos[:, None] - neg[None, :]
    return float((pairs > 0).mean() + 0.5 * (pairs == 0).mean())


def brute_average_precision(pos, neg):
    total, recall_before = 0.0, 0.0
    for t in sorted(set(pos) | set(neg), reverse=True):
        tp, fp = (pos >= t).sum(), (neg >= t).sum()
        recall = tp / len(pos)
        if tp + fp:
            total += (recall - recall_before) * tp / (tp + fp)
        recall_before = recall
    return total


def brute_fpr_at_tpr(pos, neg, level=0.95):
    for t in sorted(set(pos) | set(neg), reverse=True):
        if (pos >= t).mean() >= level - 1e-12:
            return float((neg >= t).mean())
    return 1.0


def tied_scores(seed, n_id, n_ood, values):
    """Scores on a grid of `values` levels, OOD shifted down: most thresholds are ties."""
    rng = np.random.default_rng(seed)
    score_id = rng.integers(values // 3, values, n_id).astype(np.float64) / values
    score_ood = rng.integers(0, values - values // 3, n_ood).astype(np.float64) / values
    return score_id, score_ood


# (seed, n_id, n_ood, levels); in the first three, FPR95 read off scikit-learn's default ROC
# curve (which drops collinear points) was wrong: 0.433, 0.633, 0.7 for 0.4, 0.567, 0.6
CASES = [(1, 40, 30, 50), (2, 40, 30, 50), (6, 20, 20, 10), (0, 20, 20, 3), (1, 57, 31, 5),
         (2, 200, 150, 4), (3, 333, 999, 11), (4, 40, 41, 2), (5, 100, 7, 20)]


@pytest.mark.parametrize("seed, n_id, n_ood, values", CASES)
def test_ood_metrics_equal_their_definitions_on_tied_scores(seed, n_id, n_ood, values):
    score_id, score_ood = tied_scores(seed, n_id, n_ood, values)
    m = ood_metrics(score_id, score_ood)
    weighted = ood_metrics_of_weights(score_id, score_ood, np.ones((1, n_id)),
                                      np.ones((1, n_ood)))
    expected = {"auroc": brute_auroc(score_id, score_ood),
                "aupr_in": brute_average_precision(score_id, score_ood),
                "aupr_out": brute_average_precision(-score_ood, -score_id),
                "fpr95": brute_fpr_at_tpr(score_id, score_ood)}
    for metric, value in expected.items():
        assert m[metric] == pytest.approx(value, abs=1e-12), metric
        assert weighted[metric][0] == pytest.approx(value, abs=1e-12), metric
    assert m["tnr95"] == pytest.approx(1 - expected["fpr95"], abs=1e-12)
    # scikit-learn's AUROC and average precision
    labels = np.r_[np.ones(n_id), np.zeros(n_ood)]
    scores = np.r_[score_id, score_ood]
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - labels, -scores),
                                          abs=1e-12)


@pytest.mark.parametrize("seed, n_id, n_ood, values", CASES)
def test_fpr95_equals_pytorch_oods_with_id_as_the_positive_class(seed, n_id, n_ood, values):
    """pytorch-ood's `fpr_at_tpr` takes the first ROC threshold (one per unique score, so
    ties included) with TPR >= 0.95; its positive class is the one labelled < 0: ID here."""
    from pytorch_ood.metrics.functional import fpr_at_tpr as pood_fpr_at_tpr

    score_id, score_ood = tied_scores(seed, n_id, n_ood, values)
    labels = torch.tensor(np.r_[-np.ones(n_id), np.zeros(n_ood)])
    theirs = pood_fpr_at_tpr(torch.tensor(np.r_[score_id, score_ood]), labels, 0.95)
    assert fpr_at_tpr(score_id, score_ood) == pytest.approx(float(theirs), abs=1e-12)


def test_fpr95_on_the_tied_example_of_the_issue():
    """ID [5]*18 + [4, 3], OOD [4, 4, 3, 3] + [0]*16: at threshold 4 TPR is 19/20 >= .95
    and FPR 2/20. scikit-learn's default ROC curve drops that point (collinear), and reading
    FPR95 off it gave 0.2."""
    score_id = np.array([5.0] * 18 + [4.0, 3.0])
    score_ood = np.array([4.0, 4.0, 3.0, 3.0] + [0.0] * 16)
    assert ood_metrics(score_id, score_ood)["fpr95"] == pytest.approx(0.1)
    assert ood_metrics(score_id, score_ood)["tnr95"] == pytest.approx(0.9)


def test_fpr_at_tpr_counts_as_its_definition_at_every_level():
    score_id, score_ood = tied_scores(7, 64, 50, 6)
    for level in (0.0, 0.1, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0):
        assert fpr_at_tpr(score_id, score_ood, level) == pytest.approx(
            brute_fpr_at_tpr(score_id, score_ood, level), abs=1e-12), level


def brute_calibration(confidence, correct, bins):
    gaps, counts = [], []
    for m in range(bins):
        lo, hi = m / bins, (m + 1) / bins
        inside = (confidence > lo) & (confidence <= hi) if m else (confidence <= hi)
        counts.append(inside.sum())
        gaps.append(abs(correct[inside].mean() - confidence[inside].mean())
                    if inside.any() else math.nan)
    counts = np.array(counts)
    gaps = np.array(gaps)
    filled = counts > 0
    return float((counts[filled] / len(confidence) * gaps[filled]).sum()), \
        float(gaps[filled].max())


def guo_ece(confidence, correct, bins):
    """The ECE of Guo et al.'s reference code (gpleiss/temperature_scaling, `_ECELoss`):
    bins (lower, upper] by `gt` and `le`, weighted by the fraction of inputs in each."""
    confidences, accuracies = torch.tensor(confidence), torch.tensor(correct, dtype=torch.float64)
    boundaries = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    ece = torch.zeros(1, dtype=torch.float64)
    for bin_lower, bin_upper in zip(boundaries[:-1], boundaries[1:]):
        in_bin = confidences.gt(bin_lower.item()) * confidences.le(bin_upper.item())
        prop_in_bin = in_bin.double().mean()
        if prop_in_bin.item() > 0:
            accuracy_in_bin = accuracies[in_bin].mean()
            avg_confidence_in_bin = confidences[in_bin].mean()
            ece += torch.abs(avg_confidence_in_bin - accuracy_in_bin) * prop_in_bin
    return float(ece)


@pytest.mark.parametrize("bins", [1, 3, 10, 15])
def test_ece_and_mce_equal_their_definition_and_guo_et_al(bins):
    """Confidences on a grid that puts many of them exactly on the bin edges (ties with
    the edges are the case a binning convention decides)."""
    rng = np.random.default_rng(bins)
    confidence = rng.integers(1, 31, 2000) / 30  # 1/30 .. 1, edges of 3, 10 and 15 bins
    correct = (rng.random(2000) < confidence ** 0.5).astype(np.float64)
    c = calibration(confidence, correct, bins)
    ece, mce = brute_calibration(confidence, correct, bins)
    assert c.ece == pytest.approx(ece, abs=1e-12) and c.mce == pytest.approx(mce, abs=1e-12)
    assert c.ece == pytest.approx(guo_ece(confidence, correct, bins), abs=1e-12)
    assert sum(c.bin_count) == len(confidence)


def confidnet_fpr_at_95tpr(proba_pred, accurate):
    """FPR-95%-TPR as ConfidNet's code computes it (valeoai/ConfidNet,
    confidnet/utils/metrics.py): thresholds from the min to the max confidence in 10,000
    steps; the first whose TPR (successes kept) is within [0.9495, 0.9505]; the fraction of
    errors at or above it. None when no step lands in that window."""
    errors = 1 - accurate
    low, high = proba_pred.min(), proba_pred.max()
    for delta in np.arange(low, high, (high - low) / 10000):
        tpr = len(proba_pred[(accurate == 1) & (proba_pred >= delta)]) \
            / len(proba_pred[accurate == 1])
        if 0.9505 >= tpr >= 0.9495:
            return len(proba_pred[(errors == 1) & (proba_pred >= delta)]) \
                / len(proba_pred[errors == 1])
    return None


def test_failure_metrics_equal_their_definitions_and_confidnets_code():
    """Errors positive for AUPR-error (ranked by -confidence) and FPR95-error; successes
    positive for AUPR-success and FPR95-success (Corbière et al.'s FPR-95%-TPR, checked
    against their code on continuous confidences with 4,000 successes, where a threshold
    lands in their 0.9495-0.9505 window); heavy ties for the rest."""
    rng = np.random.default_rng(3)
    correct = rng.random(4400) < 0.9
    confidence = np.where(correct, rng.beta(5, 1, 4400), rng.beta(2, 2, 4400))
    m = failure_metrics(confidence, correct)
    theirs = confidnet_fpr_at_95tpr(confidence, correct.astype(int))
    assert theirs is not None
    # their threshold grid is 1e-4 of the range wide: within a couple of errors of ours
    assert m["fpr95_success"] == pytest.approx(theirs, abs=3 / (~correct).sum())
    for seed in range(4):
        rng = np.random.default_rng(10 + seed)
        confidence = rng.integers(0, 5, 300) / 4
        correct = rng.random(300) < 0.4 + confidence / 2
        m = failure_metrics(confidence, correct)
        succ, err = confidence[correct], confidence[~correct]
        assert m["aupr_error"] == pytest.approx(brute_average_precision(-err, -succ))
        assert m["aupr_success"] == pytest.approx(brute_average_precision(succ, err))
        assert m["auroc"] == pytest.approx(brute_auroc(succ, err))
        assert m["fpr95_success"] == pytest.approx(brute_fpr_at_tpr(succ, err))
        assert m["fpr95_error"] == pytest.approx(brute_fpr_at_tpr(-err, -succ))
        assert m["aupr_error"] == pytest.approx(average_precision_score(~correct, -confidence))
