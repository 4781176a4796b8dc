"""Document 001 (NOTES.md G) on a trained classifier with dropout: failure prediction by
MCP, temperature-scaled MCP, MC dropout, ConfidNet and last-layer Laplace, and OOD detection
by MCP, MC dropout and ODIN.

The baselines at their strongest (issue 37): MC dropout in four variants from the same
passes, among them ConfidNet's own baseline as their code computes it (`mc_dropout_avg`:
entropy of the softmax of the averaged logits, failures counted against that averaged
prediction; `workloads.scores.dropout`); ODIN's eps chosen per trial on the validation
inputs without OOD data (`odin_eps` "tuned": Hsu et al. 2020's criterion, T kept at 1000;
`workloads.scores.softmax.ODIN`, the chosen eps the fitted score's `epsilon`); ConfidNet's
head kept at its last epoch (`confidnet_epoch` "last") rather than at the best of 1,000
validation AUPR-errors measured on about 10 errors ("best_val", their rule;
`workloads.scores.confidnet`)."""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from workloads.evaluation.examples import EXAMPLES, Examples
from workloads.evaluation.metrics import FAILURE_METRICS
from workloads.evaluation.mistake_detection import evaluate_mistakes
from workloads.evaluation.ood_evaluation import (
    Progress,
    evaluate_ood,
    no_progress,
    resolve_scores,
)
from workloads.models import feature_cached
from workloads.scores import OODScore, fit_score
from workloads.studies.classifier import ClassifierLoop
from workloads.training.epochs import classifier_test_metrics

MC_DROPOUT_KINDS = {"variation_ratio": "vr", "predictive_entropy": "entropy",
                    "mutual_information": "mi", "averaged_prediction": "avg"}


def failure_scores(model: nn.Module, data, config: dict[str, Any],
                   requested: str, progress: Progress = no_progress) -> dict[str, OODScore]:
    """The scores of `requested` (names joined by "+"), fitted, with the study's parameters
    (`mc_passes`; ConfidNet's `confidnet_epochs`, `confidnet_lr`, `confidnet_dropout`,
    `confidnet_weighting`, `confidnet_finetune_epochs`, `confidnet_finetune_lr`,
    `confidnet_epoch` ("last" or "best_val"); `odin_temperature`, `odin_eps` (a number, or
    "tuned": chosen on the validation split, the choice in the fitted score's `epsilon`));
    "mc_dropout" stands for its four variants, `mc_dropout_vr` (variation ratio),
    `mc_dropout_entropy`, `mc_dropout_mi` and `mc_dropout_avg` (ConfidNet's code: entropy
    of the averaged logits' softmax, against its own prediction's errors), all from one
    draw of the passes per input set. `progress` is told each score as its fit starts."""
    params = {"mc_dropout": {"passes": config["mc_passes"], "seed": config["seed"]},
              "confidnet": {"epochs": config["confidnet_epochs"], "lr": config["confidnet_lr"],
                            "dropout": config.get("confidnet_dropout", True),
                            "weighting": config.get("confidnet_weighting", 1.0),
                            "finetune_epochs": config.get("confidnet_finetune_epochs", 0),
                            "finetune_lr": config.get("confidnet_finetune_lr"),
                            "epoch": config.get("confidnet_epoch", "best_val"),
                            "seed": config["seed"]},
              "odin": {"temperature": config["odin_temperature"],
                       "epsilon": config["odin_eps"]}}
    scores = {}
    for name, score_params in resolve_scores(model, requested, params).items():
        progress(f"fitting {name}")
        if name != "mc_dropout":
            scores[name] = fit_score(name, score_params, model, data)
            continue
        for kind, short in MC_DROPOUT_KINDS.items():
            scores[f"mc_dropout_{short}"] = fit_score(name, {**score_params, "kind": kind},
                                                      model, data)
    return scores


def failure_prediction_final_stage(model: nn.Module, data, config: dict[str, Any],
                                   progress: Progress = no_progress):
    """Document 001 on a trained classifier with dropout (NOTES.md G): failure prediction
    (errors the positive class: AUPR-error, AUPR-success, AUROC, FPR95, and the
    precision-recall curves) for the scores of `failure_scores` (MCP, temperature-scaled
    MCP, MC dropout, ConfidNet, last-layer Laplace), and OOD detection for those of
    `ood_scores` (MCP, MC dropout, ODIN). Each score is fitted once."""
    failure_names = config["failure_scores"]
    all_names = "+".join(dict.fromkeys([*failure_names.split("+"),
                                        *config["ood_scores"].split("+")]))
    model = feature_cached(model)  # the scores share one forward pass per input chunk
    scores = failure_scores(model, data, config, all_names, progress)

    def chosen(names: str) -> dict[str, OODScore]:
        wanted = set(names.split("+"))
        return {k: v for k, v in scores.items()
                if k in wanted or (k.startswith("mc_dropout_") and "mc_dropout" in wanted)}

    examples = Examples(data)
    metrics, reliability = classifier_test_metrics(model, data, config["num_bins"], examples)
    curves: list[dict] = []
    progress("failure prediction")
    mistakes = evaluate_mistakes(model, data, chosen(failure_names), curves, examples)
    for row in mistakes:
        for key in FAILURE_METRICS:
            metrics[f"mistake_{key}_{row['score']}"] = row[key]
    ood = evaluate_ood(model, data, chosen(config["ood_scores"]), progress=progress,
                       examples=examples)
    metrics.update(ood.flat_metrics())
    if "odin" in scores:  # the eps chosen on the validation inputs (or the one given)
        metrics["odin_epsilon"] = float(scores["odin"].epsilon)
    return metrics, {"reliability": reliability, "mistakes": mistakes, "pr_curves": curves,
                     "ood": ood.rows, "samples": ood.samples, EXAMPLES: examples.frame()}


# the train loop of the study: a classifier's, ending in this final stage
LOOP = functools.partial(ClassifierLoop, final_stage=failure_prediction_final_stage)
fit_scores = failure_scores
