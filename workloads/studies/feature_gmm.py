"""Document 003 (NOTES.md D) on a trained classifier: diagonal GMMs on the penultimate
features beside the softmax baselines, compared on mistake and OOD detection, calibration
before and after temperature scaling, and feature purification (eq. 9, Table 4)."""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from workloads.adversarial.purification import purification_table
from workloads.evaluation.examples import EXAMPLES, Examples
from workloads.evaluation.metrics import classifier_calibration
from workloads.evaluation.mistake_detection import evaluate_mistakes
from workloads.evaluation.ood_evaluation import (
    Progress,
    evaluate_ood,
    no_progress,
    resolve_scores,
)
from workloads.models import feature_cached
from workloads.scores import OODScore, batched_logits, fit_score
from workloads.studies.classifier import ClassifierLoop
from workloads.studies.config_lists import plus_list
from workloads.training.epochs import classifier_test_metrics


def gmm_name(components: int, config: dict[str, Any]) -> str:
    """The score name of the GMM with `components` in a trial: `gmm` for the largest K of
    `gmm_components` (the document's OOD and purification GMM), `gmm_<K>` for the others."""
    largest = max(plus_list(config["gmm_components"], int))
    return "gmm" if components == largest else f"gmm_{components}"


def feature_gmm_scores(model: nn.Module, data, config: dict[str, Any],
                       requested: str | None = None,
                       progress: Progress = no_progress) -> dict[str, OODScore]:
    """The scores of `requested` (default the trial's `ood_scores`), fitted on their splits;
    "gmm" stands for one GMM per K of `gmm_components`, named by `gmm_name`. `progress` is
    told each score as its fit starts."""
    scores = {}
    for name, params in resolve_scores(model, requested or config["ood_scores"]).items():
        progress(f"fitting {name}")
        if name != "gmm":
            scores[name] = fit_score(name, params, model, data)
            continue
        for k in sorted(plus_list(config["gmm_components"], int)):
            scores[gmm_name(k, config)] = fit_score(
                "gmm", {"components": k, "seed": config["seed"]}, model, data)
    return scores


def feature_gmm_final_stage(model: nn.Module, data, config: dict[str, Any],
                            progress: Progress = no_progress):
    """Document 003 on a trained classifier (NOTES.md D): diagonal GMMs on the penultimate
    training features, one per K of `gmm_components` ("100+1000": scores `gmm_100` and
    `gmm`, the largest K, which also purifies), beside MSP, temperature-scaled MSP, max
    logit and Mahalanobis (`ood_scores`), each fitted once and compared on mistake
    detection (`workloads.evaluation.mistake_detection`, Mann-Whitney test) and OOD detection; ECE
    before and after temperature scaling; feature purification (eq. 9) over the
    `purify_eps` x `purify_nu` grid on the validation and test splits (Table 4)."""
    model = feature_cached(model)  # the scores share one forward pass per input chunk
    scores = feature_gmm_scores(model, data, config, progress=progress)
    examples = Examples(data)
    metrics, reliability = classifier_test_metrics(model, data, config["num_bins"], examples)
    if "msp_calibrated" in scores:
        temperature = scores["msp_calibrated"].temperature
        logits = batched_logits(model, data.x_test) / temperature
        metrics.update(temperature=temperature, test_ece_calibrated=classifier_calibration(
            logits, data.y_test, config["num_bins"]).ece)
    ood = evaluate_ood(model, data, scores, progress=progress, examples=examples)
    metrics.update(ood.flat_metrics())
    progress("mistake detection")
    mistakes = evaluate_mistakes(model, data, scores, examples=examples)
    for row in mistakes:
        metrics.update({f"mistake_auroc_{row['score']}": row["auroc"],
                        f"mistake_aupr_error_{row['score']}": row["aupr_error"],
                        f"mistake_mw_p_{row['score']}": row["mw_p"]})
    artifacts = {"reliability": reliability, "ood": ood.rows, "samples": ood.samples,
                 "mistakes": mistakes}
    if "gmm" in scores and config.get("purify_steps", 0) > 0:
        progress("feature purification")
        purification = purification_table(
            model, scores["gmm"].log_density,
            {"validation": (data.x_val, data.y_val), "test": (data.x_test, data.y_test)},
            plus_list(config["purify_eps"]), plus_list(config["purify_nu"]),
            config["purify_steps"])
        gains = [r["accuracy_after"] - r["accuracy_before"] for r in purification
                 if r["split"] == "test"]
        metrics["purify_best_test_gain"] = max(gains)
        artifacts["purification"] = purification
    return metrics, {**artifacts, EXAMPLES: examples.frame()}


# the train loop of the study: a classifier's, ending in this final stage
LOOP = functools.partial(ClassifierLoop, final_stage=feature_gmm_final_stage)
fit_scores = feature_gmm_scores
