"""Mistake detection: does a score separate the test inputs a classifier gets right from the
ones it gets wrong? (document 003, section 4.1; NOTES.md D; failure prediction in 001.)

Per score, with the same scores as the OOD stage (`workloads.scores`, higher = more
confident): AUROC, AUPR both ways (successes positive, errors positive), FPR95 both ways
(`workloads.evaluation.metrics.failure_metrics`), and the one-sided Mann-Whitney U
test that correct predictions score higher (003 reports p = 1.9e-13 for GMM-100 on
CIFAR-100; `workloads.evaluation.metrics.mann_whitney`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from workloads.data import Dataset
from workloads.evaluation.examples import TEST, Examples
from workloads.evaluation.metrics import failure_metrics, mann_whitney
from workloads.scores import OODScore, batched_logits, fitted_score


def error_pr_curve(values: np.ndarray, correct: np.ndarray,
                   points: int = 51) -> list[dict[str, float]]:
    """The precision-recall curve of failure prediction (errors the positive class, low
    score = predicted error) at `points` evenly spaced recalls: the best precision reached
    at each recall or beyond (the interpolated curve, as AUPR plots draw it)."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(~correct, -values)
    rows = []
    for level in np.linspace(0.0, 1.0, points):
        reached = precision[recall >= level]
        rows.append({"recall": float(level),
                     "precision": float(reached.max()) if len(reached) else 0.0})
    return rows


def evaluate_mistakes(model: nn.Module, data: Dataset, scores: dict[str, dict | OODScore],
                      curves: list[dict] | None = None, examples: Examples | None = None,
                      ) -> list[dict[str, float | str | int]]:
    """One row per score: `n_correct`, `n_wrong`, the `failure_metrics` (`auroc`,
    `aupr_success`, `aupr_error`, `fpr95_success`, `fpr95_error`), `mw_u`, `mw_p`. Each
    score is fitted on its split first, unless given fitted. The errors are the model's,
    or a score's own where it makes its own prediction (`predicts`, `predict(model, x)`:
    MC dropout's averaged prediction, as ConfidNet's code evaluates it). With a `curves`
    list, each score's `error_pr_curve` is appended to it (rows `score`, `recall`,
    `precision`); each score's values (and own predictions) go into `examples`."""
    labels = data.y_test.cpu().numpy()
    predictions = batched_logits(model, data.x_test).argmax(dim=1).cpu().numpy()
    rows = []
    for name, params in scores.items():
        score = fitted_score(name, params, model, data)
        with torch.no_grad():
            values = score(model, data.x_test).double().cpu().numpy()
        correct = predictions == labels
        if getattr(score, "predicts", False):
            own = score.predict(model, data.x_test).cpu().numpy()
            correct = own == labels
            if examples is not None:
                examples.record_prediction(name, own)
        if examples is not None:
            examples.record_score(TEST, name, values)
        row: dict[str, float | str | int] = {"score": name, "n_correct": int(correct.sum()),
                                             "n_wrong": int((~correct).sum())}
        row.update(failure_metrics(values, correct))
        if curves is not None and (~correct).any():
            curves += [{"score": name, **point} for point in error_pr_curve(values, correct)]
        if correct.any() and (~correct).any():
            test = mann_whitney(values[correct], values[~correct])
            row.update(mw_u=test["u"], mw_p=test["p_value"])
        else:
            row.update(mw_u=float("nan"), mw_p=float("nan"))
        rows.append(row)
    return rows
