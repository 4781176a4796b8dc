"""Deep ensembles (Lakshminarayanan et al. 2017), the baseline of document 001's Bayesian
part: M classifiers of one configuration trained from different seeds, combined by averaging
their softmax probabilities. Its scores (higher = more confident): `ensemble_mcp`, the
largest mean probability; `ensemble_entropy`, minus the entropy of the mean; and
`ensemble_mi`, minus the mutual information (the entropy of the mean minus the mean of the
members' entropies, the members' disagreement)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from workloads.data import Dataset
from workloads.evaluation.metrics import (
    accuracy,
    classifier_calibration,
    failure_metrics,
    nll,
    ood_metrics,
)
from workloads.scores import batched_logits


def member_probabilities(members: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """(M, N, K) softmax probabilities of each member on `x` (eval mode)."""
    return torch.stack([batched_logits(m, x).softmax(dim=1) for m in members])


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def ensemble_scores(probs: torch.Tensor) -> dict[str, np.ndarray]:
    """The ensemble's confidence scores from member probabilities (M, N, K)."""
    mean = probs.mean(0)
    entropy_of_mean = _entropy(mean)
    return {"ensemble_mcp": mean.max(1).values.double().numpy(),
            "ensemble_entropy": (-entropy_of_mean).double().numpy(),
            "ensemble_mi": (-(entropy_of_mean - _entropy(probs).mean(0))).double().numpy()}


def evaluate_ensemble(members: list[nn.Module], data: Dataset,
                      num_bins: int = 15) -> tuple[dict[str, float], list[dict], list[dict]]:
    """Test accuracy, NLL and ECE of the averaged prediction (and the members' mean
    accuracy), failure prediction of its errors (`failure_metrics`, errors positive) and OOD
    detection against each OOD set of `data` (balanced counts), per score. Returns (metrics,
    failure rows, OOD rows)."""
    probs = member_probabilities(members, data.x_test)
    mean = probs.mean(0)
    log_mean = mean.clamp_min(1e-12).log()  # logits whose softmax is the mean
    correct = (mean.argmax(1) == data.y_test).numpy()
    metrics = {"members": len(members), "test_acc": accuracy(log_mean, data.y_test),
               "test_nll": nll(log_mean, data.y_test),
               "test_ece": classifier_calibration(log_mean, data.y_test, num_bins).ece,
               "member_test_acc": float(np.mean([accuracy(p.clamp_min(1e-12).log(),
                                                          data.y_test) for p in probs]))}
    test_scores = ensemble_scores(probs)
    failure = [{"score": name, "n_wrong": int((~correct).sum()),
                **failure_metrics(values, correct)} for name, values in test_scores.items()]
    ood = []
    for ood_name, x_ood in data.ood.items():
        n = min(len(data.x_test), len(x_ood))
        ood_scores = ensemble_scores(member_probabilities(members, x_ood[:n]))
        ood += [{"score": name, "ood_set": ood_name, "n": n,
                 **ood_metrics(test_scores[name][:n], ood_scores[name])}
                for name in test_scores]
    return metrics, failure, ood
