"""How sure a number is: intervals over seeds and over test samples.

- Over seeds (training runs of one configuration): the mean, the sample standard deviation
  and a 95% Student-t interval, mean +- t_{0.975, K-1} s / sqrt(K). With K of 3 to 5 seeds a
  bootstrap over seeds has too few distinct resamples to mean much; the t-interval is the
  usual choice (it assumes roughly normal run-to-run noise).
- Over test samples (one trained model): a seeded percentile bootstrap of AUROC, AUPR-in,
  AUPR-out, FPR95 and ECE. ID and OOD inputs are resampled separately (each set keeps its
  size); every resample is computed at once, as rows of weights over one sort of the
  scores: a thousand resamples of 360 + 360 scores take about 10 ms.
"""

from __future__ import annotations

import functools
import math
from numbers import Number

import numpy as np
from scipy.special import stdtrit  # Student-t quantile (scipy.stats.t.ppf's own)

OOD_INTERVAL_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")


def t_interval(values, confidence: float = 0.95) -> dict[str, float]:
    """`mean`, `std` (sample, ddof 1), `lo`, `hi` and `n` of the finite values. One value:
    std and interval are NaN (no spread to measure); none: everything NaN."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    mean = float(values.mean())
    if n == 1:
        return {"mean": mean, "std": math.nan, "lo": math.nan, "hi": math.nan, "n": 1}
    std = float(values.std(ddof=1))
    half = float(stdtrit(n - 1, 0.5 + confidence / 2)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "lo": mean - half, "hi": mean + half, "n": n}


def _resample_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n): how many times each of n inputs is drawn in each bootstrap resample
    (n draws with replacement)."""
    draws = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n) \
        .astype(np.float64)


@functools.lru_cache(maxsize=4)
def _paired_counts(n_id: int, n_ood: int, resamples: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ID and OOD resample counts of `seed` (drawn in that order): every (score, OOD
    set) of a trial with the same sizes reuses them (read-only)."""
    rng = np.random.default_rng(seed)
    counts = (_resample_counts(n_id, resamples, rng), _resample_counts(n_ood, resamples, rng))
    for c in counts:
        c.flags.writeable = False
    return counts


def _ratio(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """part / whole, 0 where whole is 0 (a precision where no input is yet accepted)."""
    return np.divide(part, whole, out=np.zeros_like(part), where=whole > 0)


def ood_metrics_of_weights(score_id: np.ndarray, score_ood: np.ndarray,
                           weight_id: np.ndarray, weight_ood: np.ndarray
                           ) -> dict[str, np.ndarray]:
    """AUROC, AUPR-in, AUPR-out and FPR95 (ID positive, higher score = more ID) of weighted
    score sets: row r of `weight_id` (rows, n_id) and `weight_ood` (rows, n_ood) says how
    many times each input counts (a bootstrap resample is a row of multinomial counts; a row
    of ones is the data itself). Equal scores form one threshold, as in scikit-learn's
    curves, so a row of ones gives `workloads.evaluation.metrics.ood_metrics` exactly.

    One sort of the scores serves every row: per distinct score value (highest first) the
    rows' ID and OOD weight, then cumulative sums; O(rows x inputs)."""
    n1 = len(score_id)
    scores = np.concatenate([score_id, score_ood])
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(scores), dtype=np.int64)
    rank[order] = np.arange(len(scores))  # each input's position, highest score first
    ranked = scores[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # distinct values

    def by_value(weight: np.ndarray, positions: np.ndarray) -> np.ndarray:
        sorted_weight = np.zeros((len(weight), len(scores)), dtype=weight.dtype)
        sorted_weight[:, positions] = weight
        if len(starts) == len(scores):  # no ties: each value is one input
            return sorted_weight
        return np.add.reduceat(sorted_weight, starts, axis=1)

    id_mass, ood_mass = by_value(weight_id, rank[:n1]), by_value(weight_ood, rank[n1:])
    n_id = id_mass.sum(axis=1, keepdims=True)
    n_ood = ood_mass.sum(axis=1, keepdims=True)
    tp, fp = np.cumsum(id_mass, axis=1), np.cumsum(ood_mass, axis=1)  # at or above each value
    auroc = (id_mass * (n_ood - fp + 0.5 * ood_mass)).sum(axis=1) / (n_id * n_ood)[:, 0]
    aupr_in = (id_mass / n_id * _ratio(tp, tp + fp)).sum(axis=1)
    ood_up, id_up = n_ood - fp + ood_mass, n_id - tp + id_mass  # at or below each value
    aupr_out = (ood_mass / n_ood * _ratio(ood_up, ood_up + id_up)).sum(axis=1)
    first = np.argmax(tp >= 0.95 * n_id - 1e-9, axis=1)  # highest threshold with TPR >= .95
    fpr95 = fp[np.arange(len(fp)), first] / n_ood[:, 0]
    return {"auroc": auroc, "aupr_in": aupr_in, "aupr_out": aupr_out, "fpr95": fpr95}


def bootstrap_ood_intervals(score_id, score_ood, resamples: int = 1000, seed: int = 0,
                            confidence: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of AUROC, AUPR-in, AUPR-out and FPR95 (ID positive,
    higher score = more ID), resampling the ID and the OOD scores separately."""
    score_id = np.asarray(score_id, dtype=np.float64).ravel()
    score_ood = np.asarray(score_ood, dtype=np.float64).ravel()
    if not (np.isfinite(score_id).all() and np.isfinite(score_ood).all()):
        return {m: (math.nan, math.nan) for m in OOD_INTERVAL_METRICS}
    rows = ood_metrics_of_weights(score_id, score_ood,
                                  *_paired_counts(len(score_id), len(score_ood), resamples,
                                                  seed))
    tail = 100 * (1 - confidence) / 2
    return {m: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail)))
            for m, v in rows.items()}


def bootstrap_ece_interval(confidences, correct, num_bins: int = 15, resamples: int = 1000,
                           seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the ECE (the binning of
    `workloads.evaluation.metrics.calibration`), resampling (confidence, correct) pairs."""
    confidences = np.asarray(confidences, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    n = len(confidences)
    rng = np.random.default_rng(seed)
    take = rng.integers(0, n, size=(resamples, n))
    conf, hit = confidences[take], correct[take]
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, num_bins - 1)
    flat = (bins + num_bins * np.arange(resamples)[:, None]).ravel()
    size = resamples * num_bins

    def per_bin(weights):
        return np.bincount(flat, weights=weights, minlength=size).reshape(resamples, -1)

    counts = per_bin(None)
    gap = np.abs(per_bin(hit.ravel()) - per_bin(conf.ravel()))  # |sum acc - sum conf| per bin
    ece = gap.sum(axis=1) / counts.sum(axis=1)
    tail = 100 * (1 - confidence) / 2
    return float(np.percentile(ece, tail)), float(np.percentile(ece, 100 - tail))


def interval_text(mean: float, lo: float, hi: float) -> str:
    """`0.975 [0.969, 0.981]`, or the mean alone where there is no interval (one seed)."""
    if not isinstance(mean, Number) or mean != mean:
        return "–"
    if lo != lo:
        return f"{mean:.4g}"
    return f"{mean:.4g} [{lo:.4g}, {hi:.4g}]"
