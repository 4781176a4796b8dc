"""The OOD evaluation stage: every score against every OOD set of a dataset (NOTES.md B, E).

    result = evaluate_ood(model, data, resolve_scores(model, "all"))
    result.rows          # long format: one dict per (score, OOD set) with AUROC, AUPR-in,
                         # AUPR-out, FPR95, TNR95 and the balanced count n
    result.samples       # raw log p(x) and AM values (ID and each OOD set), for histograms
    result.flat_metrics()  # ood_<score>_<set>_<metric> and the mean AUROC auroc_<score>

ID and OOD counts are balanced: each pair uses n = min(#ID test, #OOD) of each, the first
ones; a dataset with `balanced_ood` False (class anomaly) compares every input of both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from workloads.data import Dataset
from workloads.evaluation.examples import TEST, Examples
from workloads.evaluation.metrics import ood_metrics
from workloads.evaluation.uncertainty import OOD_INTERVAL_METRICS, bootstrap_ood_intervals
from workloads.scores import (
    OOD_SCORES,
    OODScore,
    applicable_scores,
    capabilities,
    fitted_score,
)

# Scores whose raw values are kept for the report's histograms: (score, stored as, sign).
HISTOGRAM_SCORES = {"log_px": ("log_px", 1.0), "neg_am": ("am", -1.0),
                    "iwae50": ("iwae50", 1.0), "iwae50_bn": ("iwae50_bn", 1.0)}  # 002's VAE


@dataclass
class OODEvaluation:
    rows: list[dict[str, Any]] = field(default_factory=list)
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def flat_metrics(self) -> dict[str, float]:
        """`ood_<score>_<set>_<metric>` for every row and `auroc_<score>`, its mean AUROC."""
        flat: dict[str, float] = {}
        aurocs: dict[str, list[float]] = {}
        for row in self.rows:
            for key in ("auroc", "aupr_in", "aupr_out", "fpr95", "tnr95",
                        *(f"{m}_{end}" for m in OOD_INTERVAL_METRICS for end in ("lo", "hi"))):
                if key in row:
                    flat[f"ood_{row['score']}_{row['ood_set']}_{key}"] = row[key]
            aurocs.setdefault(row["score"], []).append(row["auroc"])
        for score, values in aurocs.items():
            flat[f"auroc_{score}"] = float(np.mean(values))
        return flat


def resolve_scores(model: nn.Module, requested: str | list[str] = "all",
                   params: dict[str, dict] | None = None) -> dict[str, dict]:
    """Score names -> parameters. `requested` is "all" (every applicable default score), or
    names separated by "+" (or a list). Raises ValueError for an unknown or inapplicable
    score, naming what the model offers."""
    params = params or {}
    if requested == "all":
        names = applicable_scores(model)
    else:
        names = requested.split("+") if isinstance(requested, str) else list(requested)
        names = [n.strip() for n in names if n.strip()]
    offered = capabilities(model)
    for name in names:
        if name not in OOD_SCORES:
            raise ValueError(f"unknown OOD score '{name}'; known: {', '.join(OOD_SCORES)}")
        missing = set(OOD_SCORES[name].requires) - offered
        if missing:
            raise ValueError(f"OOD score '{name}' needs {', '.join(sorted(missing))}, which "
                             f"{type(model).__name__} does not provide")
    return {name: dict(params.get(name, {})) for name in names}


# progress(text): a long evaluation tells it each step that takes seconds (a final stage's
# steps: the sweep's console shows them beside the trial).
Progress = Callable[[str], None]


def no_progress(text: str) -> None:
    """The default `progress` of a long evaluation: says nothing (a sweep's trial passes
    one that shows `text` on the console)."""


def evaluate_ood(model: nn.Module, data: Dataset, scores: dict[str, dict | OODScore],
                 max_samples: int = 2000, resamples: int = 1000, seed: int = 0,
                 progress: Progress = no_progress,
                 id_values: dict[str, np.ndarray] | None = None,
                 examples: Examples | None = None, suffix: str = "") -> OODEvaluation:
    """Fit each score on the training split (unless given fitted), then compare ID test
    inputs with every OOD set of `data` on balanced counts (unless `data.balanced_ood` is
    False: all of both; the row's `n` is the OOD count, `n_id` the ID one). Each row also
    holds a 95%
    bootstrap interval over the test inputs of AUROC, AUPR-in, AUPR-out and FPR95
    (`<metric>_lo`, `<metric>_hi`; `resamples` seeded by `seed`, 0: none). Keeps up to
    `max_samples` raw values per set of the histogram scores (log p(x), AM). `progress` is
    told each score as it starts ("OOD score 2/5: energy"). `id_values` holds, by score
    name, the ID test inputs' values already computed by the caller (e.g. the VAE's test
    IWAE, also its bits/dim): they are not computed again. Every value computed goes into
    `examples` (per-example outputs), the score named `<score><suffix>` there and in the
    rows (`suffix` "_ft": a fine-tuned copy's scores beside the model's)."""
    result = OODEvaluation()
    for index, (score_name, score_params) in enumerate(scores.items()):
        progress(f"OOD score {index + 1}/{len(scores)}: {score_name}")
        score = fitted_score(score_name, score_params, model, data)
        name = score_name + suffix
        known = (id_values or {}).get(score_name)
        values = {"id": (np.asarray(known, dtype=np.float64) if known is not None
                         else score(model, data.x_test).double().numpy())}
        for ood_name, x_ood in data.ood.items():
            n = min(len(values["id"]), len(x_ood)) if data.balanced_ood else len(x_ood)
            n_id = n if data.balanced_ood else len(values["id"])
            values[ood_name] = score(model, x_ood[:n]).double().numpy()
            row = ood_metrics(values["id"][:n_id], values[ood_name])
            if resamples:
                intervals = bootstrap_ood_intervals(values["id"][:n_id], values[ood_name],
                                                    resamples, seed)
                for metric, (lo, hi) in intervals.items():
                    row[f"{metric}_lo"], row[f"{metric}_hi"] = lo, hi
            result.rows.append({"score": name, "ood_set": ood_name, "n": n, "n_id": n_id,
                                **row})
        if examples is not None:
            examples.record_score(TEST, name, values["id"])
            for split in data.ood:
                examples.record_score(split, name, values[split], compared_with=(
                    len(values[split]) if data.balanced_ood else len(values["id"])))
        if score_name in HISTOGRAM_SCORES and not suffix:
            key, sign = HISTOGRAM_SCORES[score_name]
            result.samples[key] = {k: (sign * v[:max_samples]).tolist()
                                   for k, v in values.items()}
    return result



def ood_auroc_snapshot(model: nn.Module, data: Dataset, scores: dict[str, OODScore],
                       samples: int = 256) -> list[dict[str, float | str]]:
    """AUROC of each (fitted) score against each OOD set on a fixed subsample: the first
    `samples` ID test inputs and OOD inputs of each set (no intervals). Cheap enough to run
    during training: the training-time diagnostic of thesis Fig. 3.3 / 3.17, whose AM
    ordering changes between epochs."""
    rows = []
    for name, score in scores.items():
        score_id = score(model, data.x_test[:samples]).double().numpy()
        for ood_name, x_ood in data.ood.items():
            score_ood = score(model, x_ood[:samples]).double().numpy()
            rows.append({"score": name, "ood_set": ood_name,
                         "auroc": ood_metrics(score_id, score_ood)["auroc"]})
    return rows


def ood_metrics_under_attack(id_clean: np.ndarray, id_attacked: np.ndarray,
                             ood_clean: np.ndarray, ood_attacked: np.ndarray,
                             ) -> dict[str, float]:
    """A detector's AUROC and FPR95 on clean inputs (`clean`), with the OOD inputs attacked
    to look in-distribution (`ood_attacked`), and with the ID inputs attacked to look OOD as
    well (`both_attacked`): `auroc_<setting>` and `fpr95_<setting>`. Higher score = more ID."""
    settings = {"clean": (id_clean, ood_clean), "ood_attacked": (id_clean, ood_attacked),
                "both_attacked": (id_attacked, ood_attacked)}
    metrics: dict[str, float] = {}
    for setting, (score_id, score_ood) in settings.items():
        row = ood_metrics(score_id, score_ood)
        metrics[f"auroc_{setting}"], metrics[f"fpr95_{setting}"] = row["auroc"], row["fpr95"]
    return metrics
