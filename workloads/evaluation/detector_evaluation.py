"""Every detector of a classifier, clean and under adaptive attack, near and far OOD, with
intervals: plain PyTorch, for any model (a notebook calls `evaluate_detectors`; the
`orchestrator.evaluate` CLI and the attack job run the same plan with the attacks on the
attack pool).

For each score the model can serve (fitted on the split its method names), the ID test
inputs and each OOD set are scored clean and attacked: for every eps, APGD on the score
itself moves the OOD inputs to look in-distribution and the ID inputs to look OOD
(`workloads.adversarial.detector_attacks`). A row per (score, OOD set, eps) holds AUROC and
FPR95 clean, with the OOD inputs attacked, with the ID inputs attacked and with both
attacked (the three settings of ATD, Azizmalayeri et al. 2022), each with a 95% percentile
bootstrap interval over the test inputs. Sets are grouped near / far where the ID dataset has
a customary split (OpenOOD v1.5, Zhang et al. 2023: CIFAR-10 and CIFAR-100); a group's
figure is the mean over its sets, its interval a bootstrap of that mean (the ID resample
shared by the sets, each OOD set resampled on its own). The per-example outputs
(`workloads.evaluation.examples`) hold every input's clean score and, for each eps, its
score attacked (`attacked_column`): a row's split says which way it was pushed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from workloads.adversarial.detector_attacks import ScoreAttack, attack_serially
from workloads.evaluation.examples import TEST, Examples
from workloads.evaluation.metrics import ood_metrics
from workloads.evaluation.ood_evaluation import no_progress
from workloads.evaluation.uncertainty import _resample_counts, ood_metrics_of_weights
from workloads.scores import OOD_SCORES, OODScore, capabilities, fit_score

ID = "id"  # the name of the in-distribution test inputs among the scored sets
SETTINGS = ("clean", "ood_attacked", "id_attacked", "both_attacked")
# OpenOOD v1.5's near- and far-OOD sets (our names: dtd is Textures); others are "other".
OPENOOD_GROUPS = {
    "cifar10": {"near": ("cifar100", "tinyimagenet"),
                "far": ("mnist", "svhn", "dtd", "places365")},
    "cifar100": {"near": ("cifar10", "tinyimagenet"),
                 "far": ("mnist", "svhn", "dtd", "places365")},
}


def ood_group(dataset: str, ood_set: str) -> str:
    """"near", "far" (OpenOOD v1.5's split of `dataset`'s OOD sets) or "other"."""
    for group, sets in OPENOOD_GROUPS.get(dataset, {}).items():
        if ood_set in sets:
            return group
    return "other"


def servable_scores(model: nn.Module) -> list[str]:
    """Every registered score whose requirements `model` meets, in registry order."""
    offered = capabilities(model)
    return [name for name, cls in OOD_SCORES.items() if set(cls.requires) <= offered]


@dataclass
class DetectorPlan:
    inputs: dict[str, torch.Tensor]   # "id" (test inputs) and each OOD set, cut to n
    scores: dict[str, OODScore]       # every score that fitted
    not_attacked: dict[str, str]      # fitted scores without a differentiable form, and why
    failed: dict[str, str]            # scores that could not be fitted on this model, and why
    attacks: list[ScoreAttack] = field(default_factory=list)


def attack_name(score: str, inputs: str, eps: float) -> str:
    return f"{score}-{inputs}-eps{eps:.6g}"


def attacked_column(score: str, eps: float) -> str:
    """The per-example name of `score` at its attacked inputs (`score_<this>` in the file):
    the ID inputs pushed down (to look OOD), each OOD set's pushed up (to look ID)."""
    return f"{score}_attacked_eps{eps:.6g}"


def plan_detectors(model: nn.Module, data, names: list[str], params: dict[str, dict],
                   eps_values: list[float], n: int,
                   progress: Callable[[str], None] = no_progress) -> DetectorPlan:
    """Fit the scores `names` on `data` (a `workloads.data.Dataset`; a score that cannot be
    fitted on this model is recorded in `failed` with its error, and the rest go on; none
    fitted: ValueError) and list the attacks: for each differentiable score and eps, the
    ID inputs pushed down and each OOD set pushed up. `progress` is told each fit."""
    eps_values = list(dict.fromkeys(eps_values))  # an eps given twice is one attack
    if ID in data.ood:
        raise ValueError(f"an OOD set may not be named '{ID}' (the ID test inputs' name)")
    inputs = {ID: data.x_test[:n], **{k: v[:n] for k, v in data.ood.items()}}
    if len(inputs) == 1:
        raise ValueError(f"dataset '{data.name}' has no OOD sets to evaluate detectors on")
    scores, failed = {}, {}
    offered = capabilities(model)
    for i, name in enumerate(names):
        progress(f"fitting detector {i + 1}/{len(names)}: {name}")
        missing = sorted(set(OOD_SCORES[name].requires) - offered) if name in OOD_SCORES else []
        if missing:
            failed[name] = f"needs {', '.join(missing)}, which this model does not serve"
            continue
        try:
            scores[name] = fit_score(name, params.get(name, {}), model, data)
        except Exception as error:  # one detector's failure is reported, the rest run
            first = (str(error).strip().splitlines() or [""])[0]  # an error may have none
            failed[name] = f"{type(error).__name__}: {first}"
    if not scores:
        raise ValueError("no detector could be fitted on this model: " + "; ".join(
            f"{name}: {why}" for name, why in failed.items()) if failed else
            "no detector to evaluate")
    not_attacked = {name: score.not_differentiable for name, score in scores.items()
                    if score.not_differentiable}
    attacks = [ScoreAttack(attack_name(name, key, eps), name, x, -1 if key == ID else 1, eps)
               for name in scores if name not in not_attacked
               for eps in eps_values for key, x in inputs.items()]
    return DetectorPlan(inputs, scores, not_attacked, failed, attacks)


def _bootstrap_rows(id_values: np.ndarray, ood_values: list[np.ndarray], resamples: int,
                    seed: int) -> dict[str, np.ndarray]:
    """AUROC and FPR95 of the mean over OOD sets, per bootstrap resample: the ID resample
    (drawn first from `seed`) shared by the sets, each OOD set resampled from its own
    stream."""
    rng = np.random.default_rng(seed)
    id_counts = _resample_counts(len(id_values), resamples, rng)
    per_set = [ood_metrics_of_weights(id_values, values, id_counts,
                                      _resample_counts(len(values), resamples, rng))
               for values in ood_values]
    return {m: np.mean([metrics[m] for metrics in per_set], axis=0)
            for m in ("auroc", "fpr95")}


def _figures(id_values: np.ndarray, ood_values: list[np.ndarray], resamples: int,
             seed: int) -> dict[str, float]:
    """auroc, fpr95 (means over the sets) with their `_lo` / `_hi` (95%)."""
    point = [ood_metrics(id_values, values) for values in ood_values]
    figures = {m: float(np.mean([p[m] for p in point])) for m in ("auroc", "fpr95")}
    finite = np.isfinite(id_values).all() and all(np.isfinite(v).all() for v in ood_values)
    if resamples and finite:
        rows = _bootstrap_rows(id_values, ood_values, resamples, seed)
        for m, values in rows.items():
            figures[f"{m}_lo"], figures[f"{m}_hi"] = (float(np.percentile(values, 2.5)),
                                                      float(np.percentile(values, 97.5)))
    else:
        figures.update({f"{m}_{end}": math.nan for m in ("auroc", "fpr95")
                        for end in ("lo", "hi")})
    return figures


def detector_frame(model: nn.Module, plan: DetectorPlan, dataset: str, eps_values: list[float],
                   attacked: dict[str, torch.Tensor], resamples: int = 1000,
                   seed: int = 0, examples: Examples | None = None) -> pd.DataFrame:
    """The rows of the evaluation: per score, per OOD set and per group of sets (near, far,
    other, all: `ood_set` "group:<name>") and per setting: clean (eps NaN), then for each
    eps ood_attacked, id_attacked and both_attacked (ATD's three settings; none for a
    score that is not attacked: the reason in `note`): AUROC and FPR95 with their 95%
    intervals. `attacked` holds the score at each attack's inputs (`attack_name`). Every
    value goes into `examples` too: `score_<name>` clean, `score_<attacked_column>`
    attacked."""
    eps_values = list(dict.fromkeys(eps_values))
    ood_sets = [k for k in plan.inputs if k != ID]
    units = {**{s: [s] for s in ood_sets}, **_groups(dataset, ood_sets)}
    rows = []
    for name, score in plan.scores.items():
        clean = {key: score(model, x).double().numpy() for key, x in plan.inputs.items()}
        record_examples(examples, name, clean)
        settings = [(math.nan, "clean", clean[ID], clean)]
        for eps in ([] if name in plan.not_attacked else eps_values):
            hit = {k: attacked[attack_name(name, k, eps)].double().numpy()
                   for k in (ID, *ood_sets)}
            record_examples(examples, attacked_column(name, eps), hit)
            settings += [(eps, "ood_attacked", clean[ID], hit),
                         (eps, "id_attacked", hit[ID], clean),
                         (eps, "both_attacked", hit[ID], hit)]
        for eps, setting, id_values, ood in settings:
            figures = {}  # per member list: a group of one set, or "all" = "other", once
            for unit, members in units.items():
                if tuple(members) not in figures:
                    figures[tuple(members)] = _figures(id_values, [ood[s] for s in members],
                                                       resamples, seed)
                rows.append({"score": name, "ood_set": unit,
                             "group": (ood_group(dataset, unit) if unit in ood_sets
                                       else unit.split(":")[1]),
                             "eps": eps, "setting": setting, "n_sets": len(members),
                             "note": plan.not_attacked.get(name, ""),
                             **figures[tuple(members)]})
    return pd.DataFrame(rows)


def record_examples(examples: Examples | None, column: str,
                    values: dict[str, np.ndarray]) -> None:
    """One score's values per scored set into `examples` (if any) as `score_<column>`: the
    ID inputs on the test split, each OOD set compared with all the ID inputs scored."""
    if examples is None:
        return
    for key, set_values in values.items():
        if key == ID:
            examples.record_score(TEST, column, set_values)
        else:
            examples.record_score(key, column, set_values, compared_with=len(values[ID]))


def _groups(dataset: str, ood_sets: list[str]) -> dict[str, list[str]]:
    """"group:near" / "group:far" / "group:other" (those with members) and "group:all"."""
    groups: dict[str, list[str]] = {}
    for ood_set in ood_sets:
        groups.setdefault(f"group:{ood_group(dataset, ood_set)}", []).append(ood_set)
    return {**groups, "group:all": list(ood_sets)}


def summary_groups(frame: pd.DataFrame) -> list[str]:
    """The groups a summary shows: near, far and other where they have sets; "all" alone
    where the dataset has no customary split (every set is "other")."""
    groups = [g for g in ("near", "far", "other") if (frame.ood_set == f"group:{g}").any()]
    return ["all"] if groups in ([], ["other"]) else groups


def classifier_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """`model`'s logits on `x` (at least one input; on the CPU), in eval mode, modes left as
    found."""
    from workloads.models.modes import evaluating

    device = next(model.parameters()).device
    with evaluating(model), torch.no_grad():
        return torch.cat([model(x[start:start + batch_size].to(device)).cpu()
                          for start in range(0, len(x), batch_size)])


def classifier_examples(model: nn.Module, data) -> tuple[Examples, float]:
    """Per-example outputs begun with the classifier's outputs on every test input of `data`
    (prediction, correct, confidence, nll; the scores follow in `detector_frame`), and its
    top-1 accuracy there (0 without test inputs)."""
    examples = Examples(data)
    if not len(data.x_test):
        return examples, 0.0
    logits = classifier_logits(model, data.x_test)
    examples.record_logits(logits)
    return examples, int((logits.argmax(1) == data.y_test).sum()) / len(data.x_test)


@dataclass
class DetectorEvaluation:
    frame: pd.DataFrame            # detector_frame's rows
    id_accuracy: float
    not_attacked: dict[str, str]
    failed: dict[str, str]
    examples: pd.DataFrame | None = None  # per-example outputs (`Examples.frame`)


AttackFn = Callable[[nn.Module, list[ScoreAttack], dict[str, Any], dict[str, Any]],
                    dict[str, torch.Tensor]]


def evaluate_detectors(model: nn.Module, data, scores: list[str] | None = None,
                       eps_values: list[float] = (), n: int = 500,
                       attack_config: dict[str, Any] | None = None,
                       params: dict[str, dict] | None = None, resamples: int = 1000,
                       seed: int = 0, attack: AttackFn = attack_serially) -> DetectorEvaluation:
    """Every score of `scores` (default: every one `model` can serve) on `data` (its test
    inputs and OOD sets, the first `n` of each), clean and, for each of `eps_values`, under
    APGD on the score (`attack_config`: steps, norm, seed, batch_size); `attack` runs the
    attacks (default: in this process). Its `examples`: one row per input scored."""
    names = list(scores) if scores is not None else servable_scores(model)
    plan = plan_detectors(model, data, names, params or {}, list(eps_values), n)
    config = {"steps": 100, "norm": "Linf", "seed": seed, "batch_size": 100,
              **(attack_config or {})}
    attacked = attack(model, plan.attacks, plan.scores, config) if plan.attacks else {}
    examples, id_accuracy = classifier_examples(model, data)
    frame = detector_frame(model, plan, data.name, list(eps_values), attacked, resamples, seed,
                           examples)
    return DetectorEvaluation(frame, id_accuracy, plan.not_attacked, plan.failed,
                              examples.frame())
