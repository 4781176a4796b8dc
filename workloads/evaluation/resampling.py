"""Intervals over seeds and test inputs at once, from per-example outputs
(`workloads.evaluation.examples`).

A verdict generalises over training seeds and over the test sample, so its interval must
cover both. Every seed of a sweep is usually scored on the same test split, so a spread
over seeds says nothing of how much the test sample moves a number; and a percentile
bootstrap over K = 2-5 seeds under-covers badly (a bootstrap of the mean of K normal values
covers 48% at K = 2, 75% at K = 3, 84% at K = 5; the t-interval 95%). So the interval of a
mean over K seeds, m, adds two variance components and takes Student's t:

    m +- t(0.975, K - 1) * sqrt(s^2 / K + V_inputs)

- s^2: the sample variance of the per-seed numbers (the seeds' spread, with each seed's
  own sampling noise);
- V_inputs: the variance of m over `resamples` bootstrap resamples of the test inputs,
  the seeds held fixed (`draw`): each test set is drawn once per replicate, with
  replacement, and the draw is shared by every trial scored on it -- every seed,
  configuration and score of a claim sees the same resampled inputs, so comparisons stay
  paired and the test sample's error, common to all seeds, is counted once
  (`TrialMetrics` recomputes each metric with each input counted as often as it was drawn:
  a count of ones gives the stage's own number exactly).

Inputs are identified by (dataset, split, index): a test input by its index in the
dataset, so seeds that share a split share its inputs, and seeds that drew their own
(`--vary-split`) share only the inputs their splits have in common; an OOD set's input by
its position, whatever the data seed (two seeds' noise sets are then resampled together,
which can only widen the interval). The seed-by-input noise is in both components (in s^2
and in V_inputs / K): a little conservative, never narrower than the t-interval over seeds.
With fewer than 2 seeds there is no interval (nothing says how much another run would move
the number).

Draw order, fixed (`draw`, and the brute-force test that repeats it): per replicate, for
each test set in sorted order, `rng.integers(0, n, n)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import stdtrit

from workloads.evaluation.examples import PREDICTION_PREFIX, SCORE_PREFIX, TEST
from workloads.evaluation.metrics import FAILURE_METRICS
from workloads.evaluation.uncertainty import ood_metrics_of_weights

if TYPE_CHECKING:
    import pandas as pd

OOD_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95", "tnr95")
RESAMPLES = 200  # replicates of the test inputs: enough for a variance (about 10% error)
TestSet = tuple[str, str]  # (dataset, split)


@dataclass
class Draws:
    """The replicates' draws: per test set, its inputs' indices (sorted) and `counts`
    (B, n): how often each input is drawn."""

    indices: dict[TestSet, np.ndarray]
    counts: dict[TestSet, np.ndarray]
    resamples: int


def draw(test_sets: dict[TestSet, np.ndarray], resamples: int = RESAMPLES,
         seed: int = 0) -> Draws:
    """The draws of `resamples` replicates of the `test_sets` (each: the indices of its
    inputs), in the module's fixed order."""
    rng = np.random.default_rng(seed)
    keys = sorted(test_sets)
    indices = {k: np.unique(np.asarray(test_sets[k], dtype=np.int64)) for k in keys}
    counts = {k: np.zeros((resamples, len(indices[k]))) for k in keys}
    for b in range(resamples):
        for k in keys:
            n = len(indices[k])
            counts[k][b] = np.bincount(rng.integers(0, n, n), minlength=n)
    return Draws(indices, counts, resamples)


def test_sets_of(frames: list[pd.DataFrame], datasets: list[str],
                 ) -> dict[TestSet, np.ndarray]:
    """The test sets the trials' examples (`frames`) were scored on, each with the indices
    of its inputs over all of them (`datasets`: what identifies each trial's data, e.g.
    "digits", "digits-class3")."""
    test_sets: dict[TestSet, np.ndarray] = {}
    for frame, dataset in zip(frames, datasets):
        for split, part in frame.groupby("split", sort=True):
            key = (str(dataset), str(split))
            test_sets[key] = np.union1d(test_sets.get(key, []), part["index"].to_numpy())
    return test_sets


def dataset_key(config: dict) -> str:
    """What identifies a trial's inputs beside their indices: its dataset, and for class
    anomaly detection its normal class ("digits", "digits-class3")."""
    normal = config.get("normal_class", -1)
    normal = -1 if normal is None or normal != normal else int(normal)
    return str(config.get("dataset", "")) + (f"-class{normal}" if normal >= 0 else "")


def combined_interval(per_seed: np.ndarray, replicates: np.ndarray,
                      confidence: float = 0.95) -> tuple[float, float]:
    """The interval of the mean of `per_seed` (K numbers, one per seed, on the test data as
    it is) given `replicates` of that mean over resampled test inputs: mean +- t(K - 1)
    sqrt(s^2 / K + var(replicates)). NaN with fewer than 2 finite seeds."""
    per_seed = np.asarray(per_seed, dtype=np.float64)
    per_seed = per_seed[np.isfinite(per_seed)]
    replicates = np.asarray(replicates, dtype=np.float64)
    replicates = replicates[np.isfinite(replicates)]
    k = len(per_seed)
    if k < 2 or len(replicates) < 2:
        return math.nan, math.nan
    variance = per_seed.var(ddof=1) / k + replicates.var(ddof=1)
    half = float(stdtrit(k - 1, 0.5 + confidence / 2)) * math.sqrt(variance)
    mean = float(per_seed.mean())
    return mean - half, mean + half


def _finite(values: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(values), values, np.nan)


class TrialMetrics:
    """One trial's metrics under the draws' input counts: `of(name)` is an array with one
    value per replicate, or None where `name` cannot be had from per-example outputs.

    Known: `test_acc`, `test_nll`, `test_ece` (`num_bins` equal-width bins, as
    `workloads.evaluation.metrics.calibration`), `mistake_<m>_<score>` (m of
    `FAILURE_METRICS`; the errors are the score's own prediction's where it has one),
    `ood_<score>_<set>_<m>` (m of `OOD_METRICS`) and `auroc_<score>` (the mean over the OOD
    sets). With `draws` None, the counts are ones: the stage's own numbers. A score with a
    non-finite value among the inputs a metric uses gives NaN, as the stage's metric does."""

    def __init__(self, frame: pd.DataFrame, dataset: str, draws: Draws | None,
                 num_bins: int = 15):
        self.parts = {str(s): p for s, p in frame.groupby("split", sort=False)}
        self.dataset, self.draws, self.num_bins = str(dataset), draws, num_bins
        self.scores = [c[len(SCORE_PREFIX):] for c in frame.columns
                       if c.startswith(SCORE_PREFIX)]
        self.ood_sets = [s for s in self.parts if s != TEST]

    def weights(self, split: str) -> np.ndarray:
        """(B, n) counts of this trial's inputs of `split`, in its rows' order."""
        index = self.parts[split]["index"].to_numpy()
        if self.draws is None:
            return np.ones((1, len(index)))
        key = (self.dataset, split)
        position = np.searchsorted(self.draws.indices[key], index)
        return self.draws.counts[key][:, position]

    def of(self, name: str) -> np.ndarray | None:
        test = self.parts.get(TEST)
        if test is None:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            if name in ("test_acc", "test_nll", "test_ece"):
                return self._classifier(name, test)
            for metric in sorted(FAILURE_METRICS, key=len, reverse=True):
                score = name.removeprefix(f"mistake_{metric}_")
                if score != name and score in self.scores:
                    return self._failure(metric, score, test)
            for score in self.scores:
                if name == f"auroc_{score}":
                    sets = [s for s in self.ood_sets if self._scored(s, score)]
                    values = [self._ood(score, s, "auroc") for s in sets]
                    return np.mean(values, axis=0) if values else None
                for ood_set in self.ood_sets:
                    for metric in OOD_METRICS:
                        if name == f"ood_{score}_{ood_set}_{metric}":
                            return (self._ood(score, ood_set, metric)
                                    if self._scored(ood_set, score) else None)
        return None

    def _scored(self, split: str, score: str) -> bool:
        column = SCORE_PREFIX + score
        return column in self.parts[split] and self.parts[split][column].notna().any()

    def _classifier(self, name: str, test: pd.DataFrame) -> np.ndarray | None:
        if (test["prediction"] < 0).all():
            return None
        weight = self.weights(TEST)
        total = weight.sum(axis=1)
        correct = test["correct"].to_numpy(dtype=np.float64)
        if name == "test_acc":
            return weight @ correct / total
        if name == "test_nll":
            return weight @ test["nll"].to_numpy(dtype=np.float64) / total
        confidence = test["confidence"].to_numpy(dtype=np.float64)
        edges = np.linspace(0.0, 1.0, self.num_bins + 1)
        bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0,
                       self.num_bins - 1)
        one_hot = np.eye(self.num_bins)[bins]
        gap = np.abs(weight @ (one_hot * correct[:, None])
                     - weight @ (one_hot * confidence[:, None]))
        return gap.sum(axis=1) / total

    def _failure(self, metric: str, score: str, test: pd.DataFrame) -> np.ndarray:
        values = test[SCORE_PREFIX + score].to_numpy(dtype=np.float64)
        own = PREDICTION_PREFIX + score
        correct = (test[own].to_numpy() == test["label"].to_numpy() if own in test
                   else test["correct"].to_numpy(dtype=bool))
        weight = self.weights(TEST)
        if correct.all() or not correct.any() or not np.isfinite(values).all():
            return np.full(len(weight), math.nan)
        success = ood_metrics_of_weights(values[correct], values[~correct],
                                         weight[:, correct], weight[:, ~correct])
        error = ood_metrics_of_weights(-values[~correct], -values[correct],
                                       weight[:, ~correct], weight[:, correct])
        return _finite({"aupr_error": error["aupr_in"], "aupr_success": success["aupr_in"],
                        "auroc": success["auroc"], "fpr95_success": success["fpr95"],
                        "fpr95_error": error["fpr95"]}[metric])

    def _ood(self, score: str, ood_set: str, metric: str) -> np.ndarray:
        column = SCORE_PREFIX + score
        part = self.parts[ood_set]
        n_id = int(part["compared_with"].iloc[0])
        score_id = self.parts[TEST][column].to_numpy(dtype=np.float64)[:n_id]
        score_ood = part[column].to_numpy(dtype=np.float64)  # a stage scores all its rows
        weight_id = self.weights(TEST)[:, :n_id]
        if not (np.isfinite(score_id).all() and np.isfinite(score_ood).all()):
            return np.full(len(weight_id), math.nan)
        rows = ood_metrics_of_weights(score_id, score_ood, weight_id, self.weights(ood_set))
        rows["tnr95"] = 1.0 - rows["fpr95"]
        return _finite(rows[metric])


def seed_mean_intervals(frames: list[pd.DataFrame], datasets: list[str], metrics: list[str],
                        num_bins: int = 15, resamples: int = RESAMPLES, seed: int = 0,
                        ) -> dict[str, tuple[float, float]]:
    """For one configuration's trials (one per seed: their per-example outputs `frames`,
    and what identifies each one's data, `datasets`), the 95% interval of each metric's
    mean over seeds, over seeds and test inputs (`combined_interval`); metrics without a
    per-example form are left out, and with one seed every interval is NaN."""
    draws = draw(test_sets_of(frames, datasets), resamples, seed)
    as_is = [TrialMetrics(f, d, None, num_bins) for f, d in zip(frames, datasets)]
    resampled = [TrialMetrics(f, d, draws, num_bins) for f, d in zip(frames, datasets)]
    out = {}
    for metric in metrics:
        observed = [trial.of(metric) for trial in as_is]
        if any(v is None for v in observed):
            continue
        replicates = np.stack([trial.of(metric) for trial in resampled])
        with np.errstate(invalid="ignore"):
            out[metric] = combined_interval(np.concatenate(observed),
                                            replicates.mean(axis=0))
    return out
