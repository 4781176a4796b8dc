"""The detection + restoration defense of the thesis, ch. 4 (NOTES.md C), in plain PyTorch.

1. Split the test set: 20% validation, the rest (cut to N) test.
2. Attack both (APGD-CE). A *pair* is a sample whose clean input is classified correctly and
   whose adversarial input is not: the balanced clean/adversarial sets are the pairs.
3. Detect: flag x when AM(x) = ||grad_x log p(x)|| > tau, with tau the threshold of best
   accuracy on the validation pairs (the text's inequality; Algorithm 3 prints it inverted).
4. Restore flagged inputs with Langevin chains (workloads.adversarial.langevin), stopped
   early once AM drops to a reference value tuned on the validation pairs, projected onto
   the eps-ball around the input; classify the result.

The orchestrator runs the attacks and chains on actor pools; this module holds the pieces
that decide the numbers: the split, pairs, threshold, detection metrics, the reference
value, and the accuracies of Tables 4.1 to 4.4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workloads.evaluation.metrics import ood_metrics


def split_test_set(n: int, val_fraction: float = 0.2, n_test: int | None = 1000,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a random `val_fraction` of the n test samples (validation) and of the
    rest, cut to `n_test` (test)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(val_fraction * n))
    val, test = order[:n_val].sort().values, order[n_val:]
    if n_test is not None:
        test = test[:n_test]
    return val, test.sort().values


def successful_pairs(clean_pred: torch.Tensor, adv_pred: torch.Tensor,
                     y: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the samples the attack turned from right to wrong."""
    return (clean_pred == y) & (adv_pred != y)


def best_threshold(am_clean: torch.Tensor, am_adv: torch.Tensor) -> float:
    """tau maximising the accuracy of "adversarial iff AM > tau" on the pooled set (ties:
    the smallest such tau). Candidates: below every value, and midway between neighbours."""
    values = torch.cat([am_clean, am_adv]).double()
    labels = torch.cat([torch.zeros(len(am_clean)), torch.ones(len(am_adv))]).bool()
    order = values.argsort()
    values, labels = values[order], labels[order]
    # Flagging everything above position i: correct = clean at or below i + adv above i.
    clean_below = torch.cat([torch.zeros(1), (~labels).double().cumsum(0)])
    adv_above = labels.sum() - torch.cat([torch.zeros(1), labels.double().cumsum(0)])
    correct = clean_below + adv_above
    distinct = torch.cat([values[1:] != values[:-1], torch.ones(1, dtype=torch.bool)])
    allowed = torch.cat([torch.ones(1, dtype=torch.bool), distinct])  # cut between values
    best = int(torch.where(allowed, correct, torch.full_like(correct, -1)).argmax())
    if best == 0:
        return float(values[0] - 1.0)
    if best == len(values):
        return float(values[-1])
    return float((values[best - 1] + values[best]) / 2)


def detection_metrics(am_clean: torch.Tensor, am_adv: torch.Tensor,
                      tau: float) -> dict[str, float]:
    """Table 4.1 on a balanced clean/adversarial set: AUROC, AUPR-in/out and TNR95 of the
    score -AM (clean = in-distribution, the positive class), the accuracy of the threshold
    rule on the pooled set, and its detection rate (adversarial inputs flagged; the
    thesis' second definition of "accuracy") and false-alarm rate (clean inputs flagged)."""
    metrics = ood_metrics(-am_clean.numpy(), -am_adv.numpy())
    flagged_clean, flagged_adv = am_clean > tau, am_adv > tau
    n = len(am_clean) + len(am_adv)
    return {**{k: metrics[k] for k in ("auroc", "aupr_in", "aupr_out", "tnr95")},
            "accuracy": (int((~flagged_clean).sum()) + int(flagged_adv.sum())) / n,
            "detection_rate": float(flagged_adv.double().mean()),
            "false_alarm_rate": float(flagged_clean.double().mean()), "tau": tau}


def am_stop_candidates(am_values: torch.Tensor, num: int = 24) -> torch.Tensor:
    """Candidate reference values for the early stop: log-spaced over the range of the
    given AM values (clean and adversarial validation inputs), largest first."""
    finite = am_values[torch.isfinite(am_values) & (am_values > 0)].double()
    if len(finite) == 0:
        raise ValueError("no finite positive AM values to place candidates on")
    low, high = finite.min().log10(), finite.max().log10()
    return torch.logspace(float(high), float(low), num, dtype=torch.float64).float()


def choose_am_stop(candidates: torch.Tensor, accuracies: torch.Tensor,
                   no_stop_accuracy: float) -> tuple[float | None, float]:
    """The reference value of best validation accuracy, or None (no early stop) when
    running every chain to the end is at least as good. Ties: the largest value (the
    chains stop soonest)."""
    best = int(accuracies.argmax())  # first maximum = largest candidate (sorted high->low)
    if no_stop_accuracy >= float(accuracies[best]):
        return None, no_stop_accuracy
    return float(candidates[best]), float(accuracies[best])


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).double().mean()) if len(y) else float("nan")


def defended_predictions(plain_pred: torch.Tensor, flagged: torch.Tensor,
                         restored_pred: torch.Tensor) -> torch.Tensor:
    """The full defense's labels: restored where flagged, plain elsewhere."""
    return torch.where(flagged, restored_pred, plain_pred)


@dataclass
class AttackedTestSet:
    """The test set under one attack, as the defense's accounting needs it."""

    pred: torch.Tensor      # (N,) predictions on the attacked inputs
    am: torch.Tensor        # (P,) AM at the attacked inputs of the pairs, in order
    restored: torch.Tensor  # (P,) labels after restoration, read where flagged (APGD-CE:
    #                         every pair is restored, for Table 4.2)


def defense_row(y: torch.Tensor, clean_pred: torch.Tensor, am_clean: torch.Tensor, tau: float,
                restored_clean: torch.Tensor, apgd_ce: AttackedTestSet,
                adaptive: dict[float, AttackedTestSet]) -> dict[str, Any]:
    """Tables 4.1-4.4 of one model from its predictions, AM values and restored labels.

    `am_clean` (N,) is the AM of every clean test input; an input is flagged when its AM
    exceeds `tau`. `restored_clean` holds the restored labels of the flagged clean inputs,
    in order. Detection (4.1) and the full defense (4.3, 4.4) are measured on the balanced
    set of the pairs' clean and attacked inputs, restoration (4.2) on the APGD-CE inputs of
    the pairs; 4.4 is reported per lambda and for the worst one. Lambdas whose attack made
    no pair have no 4.4 figure.
    """
    flagged_clean = am_clean > tau
    clean_labels = clean_pred.clone()
    clean_labels[flagged_clean] = restored_clean

    def full_defense(attacked: AttackedTestSet, pairs: torch.Tensor) -> float:
        labels = defended_predictions(attacked.pred[pairs], attacked.am > tau,
                                      attacked.restored)
        return accuracy(torch.cat([clean_labels[pairs], labels]),
                        torch.cat([y[pairs], y[pairs]]))

    pairs = successful_pairs(clean_pred, apgd_ce.pred, y)
    detection = detection_metrics(am_clean[pairs], apgd_ce.am, tau)
    row: dict[str, Any] = {
        "clean_accuracy": accuracy(clean_pred, y), "attack_success": float(pairs.double().mean()),
        "pairs": int(pairs.sum()), **{f"det_{k}": v for k, v in detection.items()},
        "restored_accuracy": accuracy(apgd_ce.restored, y[pairs]),
        "defense_accuracy": full_defense(apgd_ce, pairs),
        "clean_accuracy_defended": accuracy(clean_labels, y)}
    worst = []
    for lam, attacked in adaptive.items():
        pairs = successful_pairs(clean_pred, attacked.pred, y)
        row[f"adaptive{lam:g}_success"] = float(pairs.double().mean())
        row[f"adaptive{lam:g}_pairs"] = int(pairs.sum())
        if pairs.sum() == 0:
            continue
        detection = detection_metrics(am_clean[pairs], attacked.am, tau)
        row[f"adaptive{lam:g}_det_auroc"] = detection["auroc"]
        row[f"adaptive{lam:g}_detection_rate"] = detection["detection_rate"]
        row[f"adaptive{lam:g}_defense_accuracy"] = full_defense(attacked, pairs)
        worst.append(row[f"adaptive{lam:g}_defense_accuracy"])
    row["adaptive_defense_accuracy"] = min(worst, default=float("nan"))
    return row


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n samples."""
    return float(np.sqrt(p * (1 - p) / n)) if n else float("nan")
