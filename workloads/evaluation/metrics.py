"""Classification, calibration and OOD-detection metrics (NOTES.md A and E).

Calibration: ECE = sum_m |B_m|/n * |acc(B_m) - conf(B_m)| over M equal-width confidence
bins, MCE = max_m |acc(B_m) - conf(B_m)| over non-empty bins (M = 15 by default).
OOD detection: in-distribution is the positive class and a higher score means more ID;
AUROC, AUPR-in and AUPR-out are scikit-learn's; FPR at 95% TPR is `fpr_at_tpr`, by its
definition (ties included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == targets).float().mean().item()


def nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood of the softmax classifier p(y|x)."""
    return F.cross_entropy(logits, targets).item()


@dataclass
class Calibration:
    """ECE, MCE and the per-bin data of a reliability diagram."""

    ece: float
    mce: float
    bin_edges: list[float]
    bin_accuracy: list[float]    # NaN where a bin is empty
    bin_confidence: list[float]  # NaN where a bin is empty
    bin_count: list[int]


def calibration(confidences: np.ndarray, correct: np.ndarray, num_bins: int = 15) -> Calibration:
    """Equal-width binning of confidences in [0, 1]; bins are (lo, hi], the first [0, hi]."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    index = np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, num_bins - 1)
    count = np.bincount(index, minlength=num_bins)
    acc_sum = np.bincount(index, weights=correct, minlength=num_bins)
    conf_sum = np.bincount(index, weights=confidences, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_acc = acc_sum / count
        bin_conf = conf_sum / count
    gaps = np.abs(bin_acc - bin_conf)
    nonempty = count > 0
    ece = float(np.sum(count[nonempty] / count.sum() * gaps[nonempty]))
    mce = float(np.max(gaps[nonempty])) if nonempty.any() else 0.0
    return Calibration(ece, mce, edges.tolist(), bin_acc.tolist(), bin_conf.tolist(),
                       count.astype(int).tolist())


def classifier_calibration(logits: torch.Tensor, targets: torch.Tensor,
                           num_bins: int = 15) -> Calibration:
    """Calibration of the max-softmax confidence of a classifier's predictions."""
    probs = logits.softmax(dim=1)
    confidence, prediction = probs.max(dim=1)
    correct = (prediction == targets).cpu().numpy()
    return calibration(confidence.cpu().numpy(), correct, num_bins)


def fpr_at_tpr(score_positive: np.ndarray, score_negative: np.ndarray,
               level: float = 0.95) -> float:
    """The false-positive rate at the threshold where the true-positive rate first reaches
    `level` (FPR95 at 0.95): inputs with score >= t are accepted as positive; lowering t from
    the highest score, the first t (a score value) that accepts at least `level` of the
    positives, i.e. the ceil(level * n)-th highest positive score; the FPR is the fraction of
    negatives scored >= t, ties with t included. (scikit-learn's default `roc_curve` drops
    collinear points, one of which can be that threshold.)"""
    positive = np.sort(np.asarray(score_positive, dtype=np.float64).ravel())[::-1]
    negative = np.asarray(score_negative, dtype=np.float64).ravel()
    needed = max(1, math.ceil(level * len(positive) - 1e-9))  # positives to accept
    return float(np.mean(negative >= positive[needed - 1]))


def ood_metrics(score_id: np.ndarray, score_ood: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR-in, AUPR-out, FPR95 and TNR95 with ID as positive, higher score = ID.

    FPR95 is the fraction of OOD inputs scored at or above the threshold at which 95% of
    ID inputs are first accepted (`fpr_at_tpr`); TNR95 = 1 - FPR95.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    score_id = np.asarray(score_id, dtype=np.float64).ravel()
    score_ood = np.asarray(score_ood, dtype=np.float64).ravel()
    scores = np.concatenate([score_id, score_ood])
    if not np.all(np.isfinite(scores)):
        nan = float("nan")
        return {"auroc": nan, "aupr_in": nan, "aupr_out": nan, "fpr95": nan, "tnr95": nan}
    labels = np.concatenate([np.ones_like(score_id), np.zeros_like(score_ood)])
    fpr95 = fpr_at_tpr(score_id, score_ood)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "aupr_in": float(average_precision_score(labels, scores)),
        "aupr_out": float(average_precision_score(1 - labels, -scores)),
        "fpr95": fpr95,
        "tnr95": 1.0 - fpr95,
    }


def mann_whitney(scores_correct: np.ndarray, scores_wrong: np.ndarray) -> dict[str, float]:
    """One-sided Mann-Whitney U test that correct predictions score higher than wrong ones
    (NOTES.md D): the U statistic, its p-value, and U / (n1 n2) (= AUROC of the separation)."""
    from scipy.stats import mannwhitneyu

    scores_correct = np.asarray(scores_correct, dtype=np.float64).ravel()
    scores_wrong = np.asarray(scores_wrong, dtype=np.float64).ravel()
    result = mannwhitneyu(scores_correct, scores_wrong, alternative="greater")
    return {"u": float(result.statistic), "p_value": float(result.pvalue),
            "auroc": float(result.statistic) / (len(scores_correct) * len(scores_wrong))}


FAILURE_METRICS = ("aupr_error", "aupr_success", "auroc", "fpr95_success", "fpr95_error")


def failure_metrics(confidence: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """How well a confidence separates a classifier's errors from its successes (failure
    prediction, document 001; Corbiere et al. 2019):

    - `aupr_error`: average precision with errors the positive class, ranked by -confidence
      (Corbiere et al.'s AUPR-Error); `aupr_success`: successes positive, ranked by
      confidence (AUPR-Success);
    - `auroc`: the probability that a success is more confident than an error;
    - `fpr95_success`: Corbiere et al.'s FPR-95%-TPR (ConfidNet's `fpr_at_95tpr`): the
      fraction of errors accepted at the threshold that first keeps 95% of the successes;
    - `fpr95_error`: errors the positive class: the fraction of successes flagged at the
      threshold that first flags 95% of the errors.

    Both FPR95 forms follow `fpr_at_tpr` (ties counted). They answer different questions
    (how many errors slip through at high coverage; how much coverage it costs to catch
    nearly every error) and are not comparable with each other."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=bool).ravel()
    if correct.all() or not correct.any():
        return dict.fromkeys(FAILURE_METRICS, float("nan"))
    success = ood_metrics(confidence[correct], confidence[~correct])
    error = ood_metrics(-confidence[~correct], -confidence[correct])
    return {"aupr_error": error["aupr_in"], "aupr_success": success["aupr_in"],
            "auroc": success["auroc"], "fpr95_success": success["fpr95"],
            "fpr95_error": error["fpr95"]}
