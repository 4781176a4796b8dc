"""Intervals over seeds and test inputs at once: a two-level bootstrap from per-example
outputs (`workloads.evaluation.examples`).

A verdict generalises over training seeds and over the test sample, so its interval must
cover both. One replicate

1. draws K seeds with replacement from the K seeds of the claim;
2. draws each test set once, with replacement: a test set is the inputs of one split
   ("test", or an OOD set) as loaded with one `data_seed`. Every trial scored on it -- each
   seed, each configuration, each detector of a claim -- sees the same resampled inputs
   (the comparison stays paired, and seeds that share a test split share its sampling
   error, as they do in fact). Seeds that drew their own split (`data_seed` per seed) get
   independent draws: then the design is the nested one, seeds then inputs within them;
3. recomputes every metric of every trial with each input counted as often as it was
   drawn (`TrialMetrics`: the metric's own definition, weighted: a count of ones gives the
   stage's number exactly);
4. the claim's quantity, seed by seed, averaged over the drawn seeds
   (`orchestrator.reports.claims`).

The percentile interval (2.5, 97.5) of the replicates is the 95% interval.

Draw order, fixed (`draw`, and the brute-force test that repeats it): per replicate, the
seeds `rng.integers(0, K, K)`, then for each test set in sorted (data_seed, split) order
`rng.integers(0, n, n)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from workloads.evaluation.examples import PREDICTION_PREFIX, SCORE_PREFIX, TEST
from workloads.evaluation.metrics import FAILURE_METRICS
from workloads.evaluation.uncertainty import ood_metrics_of_weights

if TYPE_CHECKING:
    import pandas as pd

OOD_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95", "tnr95")
TestSet = tuple[int, str]  # (data_seed, split)


@dataclass
class Draws:
    """The replicates' draws: `seeds` (B, K) positions in the sorted seeds; per test set, its
    inputs' indices (sorted) and `counts` (B, n): how often each input is drawn."""

    seeds: np.ndarray
    indices: dict[TestSet, np.ndarray]
    counts: dict[TestSet, np.ndarray]

    @property
    def resamples(self) -> int:
        return len(self.seeds)


def draw(num_seeds: int, test_sets: dict[TestSet, np.ndarray], resamples: int = 1000,
         seed: int = 0) -> Draws:
    """The draws of `resamples` replicates over `num_seeds` seeds and the `test_sets`
    (each: the indices of its inputs), in the module's fixed order."""
    rng = np.random.default_rng(seed)
    keys = sorted(test_sets)
    indices = {k: np.unique(np.asarray(test_sets[k], dtype=np.int64)) for k in keys}
    seeds = np.empty((resamples, num_seeds), dtype=np.int64)
    counts = {k: np.zeros((resamples, len(indices[k]))) for k in keys}
    for b in range(resamples):
        seeds[b] = rng.integers(0, num_seeds, num_seeds)
        for k in keys:
            n = len(indices[k])
            counts[k][b] = np.bincount(rng.integers(0, n, n), minlength=n)
    return Draws(seeds, indices, counts)


def test_sets_of(frame: pd.DataFrame, data_seed: int) -> dict[TestSet, np.ndarray]:
    """The test sets one trial's examples were scored on, each with its inputs' indices."""
    return {(int(data_seed), str(split)): part["index"].to_numpy()
            for split, part in frame.groupby("split", sort=True)}


def _finite(values: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(values), values, np.nan)


class TrialMetrics:
    """One trial's metrics under the draws' input counts: `of(name)` is an array with one
    value per replicate, or None where `name` cannot be had from per-example outputs.

    Known: `test_acc`, `test_nll`, `test_ece` (`num_bins` equal-width bins, as
    `workloads.evaluation.metrics.calibration`), `mistake_<m>_<score>` (m of
    `FAILURE_METRICS`; the errors are the score's own prediction's where it has one),
    `ood_<score>_<set>_<m>` (m of `OOD_METRICS`) and `auroc_<score>` (the mean over the OOD
    sets). With `draws` None, the counts are ones: the stage's own numbers."""

    def __init__(self, frame: pd.DataFrame, data_seed: int, draws: Draws | None,
                 num_bins: int = 15):
        self.parts = {str(s): p for s, p in frame.groupby("split", sort=False)}
        self.data_seed, self.draws, self.num_bins = int(data_seed), draws, num_bins
        self.scores = [c[len(SCORE_PREFIX):] for c in frame.columns
                       if c.startswith(SCORE_PREFIX)]
        self.ood_sets = [s for s in self.parts if s != TEST]

    def weights(self, split: str) -> np.ndarray:
        """(B, n) counts of this trial's inputs of `split`, in its rows' order."""
        index = self.parts[split]["index"].to_numpy()
        if self.draws is None:
            return np.ones((1, len(index)))
        key = (self.data_seed, split)
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
        if correct.all() or not correct.any():
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
        scored = part[column].notna().to_numpy()
        n_id = int(part["compared_with"].iloc[0])
        score_id = self.parts[TEST][column].to_numpy(dtype=np.float64)[:n_id]
        score_ood = part[column].to_numpy(dtype=np.float64)[scored]
        rows = ood_metrics_of_weights(score_id, score_ood, self.weights(TEST)[:, :n_id],
                                      self.weights(ood_set)[:, scored])
        rows["tnr95"] = 1.0 - rows["fpr95"]
        return _finite(rows[metric])


def percentile_interval(replicates: np.ndarray, confidence: float = 0.95,
                        ) -> tuple[float, float]:
    """The percentile interval of the finite replicates (NaN, NaN without any)."""
    finite = np.asarray(replicates, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return math.nan, math.nan
    tail = 100 * (1 - confidence) / 2
    return float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))


def seed_mean_intervals(frames: list[pd.DataFrame], data_seeds: list[int], metrics: list[str],
                        num_bins: int = 15, resamples: int = 1000, seed: int = 0,
                        ) -> dict[str, tuple[float, float]]:
    """For one configuration's trials (one per seed: their per-example outputs `frames` and
    `data_seeds`), the 95% interval of each metric's mean over seeds, over seeds and test
    inputs (the module's replicates); metrics without a per-example form are left out."""
    test_sets: dict[TestSet, np.ndarray] = {}
    for frame, data_seed in zip(frames, data_seeds):
        for key, index in test_sets_of(frame, data_seed).items():
            test_sets[key] = np.union1d(test_sets.get(key, []), index)
    draws = draw(len(frames), test_sets, resamples, seed)
    trials = [TrialMetrics(f, d, draws, num_bins) for f, d in zip(frames, data_seeds)]
    out = {}
    for metric in metrics:
        values = [trial.of(metric) for trial in trials]
        if any(v is None for v in values):
            continue
        picked = np.stack(values)[draws.seeds.T, np.arange(resamples)]
        out[metric] = percentile_interval(picked.mean(axis=0))
    return out
