"""The thesis' Table 3.1 baselines on a trained classifier (sections 3.3, 3.6.6; NOTES.md B,
E): MSP, energy, Mahalanobis, GradNorm, G-ODIN on a G-ODIN model, and the energy score after
fine-tuning with outliers (Liu et al. 2020)."""

from __future__ import annotations

import copy
import functools
from typing import Any

from torch import nn

from workloads.data import trial_data_seed
from workloads.data.outliers import load_outliers
from workloads.evaluation.examples import EXAMPLES, Examples
from workloads.evaluation.ood_evaluation import (
    Progress,
    evaluate_ood,
    no_progress,
    resolve_scores,
)
from workloads.models import FeatureCache, feature_cached
from workloads.models.feature_cache import unwrapped
from workloads.studies.classifier import ClassifierLoop
from workloads.training.energy_finetuning import finetune_with_outliers, mean_energy
from workloads.training.epochs import classifier_test_metrics, evaluate_split


def ood_baselines_final_stage(model: nn.Module, data, config: dict[str, Any],
                              progress: Progress = no_progress):
    """Thesis Table 3.1's baselines on a trained classifier (sections 3.3, 3.6.6; NOTES.md B,
    E): test accuracy and calibration, the parameter count `num_params` (the thesis matches
    it to the flow's), and OOD detection by the scores of `ood_scores` (G-ODIN on a G-ODIN
    model, Mahalanobis, energy, GradNorm, MSP) against every OOD set. With `energy_epochs`
    > 0, a copy of the model is then fine-tuned with outliers (`_energy_finetuned`, Liu et
    al. 2020) and scored by `finetuned_scores`, named `<score>_ft` (`energy_ft`: the
    thesis' Energy column)."""
    cached = feature_cached(model)  # the scores share one forward pass per input chunk
    examples = Examples(data)
    metrics, reliability = classifier_test_metrics(cached, data, config["num_bins"], examples)
    metrics["num_params"] = sum(p.numel() for p in cached.parameters())
    ood = evaluate_ood(cached, data, resolve_scores(cached, config["ood_scores"]),
                       progress=progress, examples=examples)
    if config["energy_epochs"] > 0:
        progress("energy fine-tuning")
        tuned, tuned_metrics = _energy_finetuned(unwrapped(model), data, config)
        metrics.update(tuned_metrics)
        tuned = FeatureCache(tuned)
        tuned_ood = evaluate_ood(tuned, data, resolve_scores(tuned, config["finetuned_scores"]),
                                 progress=lambda text: progress(f"fine-tuned model, {text}"),
                                 examples=examples, suffix="_ft")
        ood.rows += tuned_ood.rows
    metrics.update(ood.flat_metrics())
    return metrics, {"reliability": reliability, "ood": ood.rows, "samples": ood.samples,
                     EXAMPLES: examples.frame()}


def _energy_finetuned(model: nn.Module, data, config: dict[str, Any]):
    """A copy of `model` fine-tuned with the energy-bounded loss on the training split and
    the outlier set `outlier_set` (`workloads.training.energy_finetuning`,
    `workloads.data.outliers`) for `energy_epochs`; with its test accuracy `test_acc_ft` and
    the mean energies of the ID training inputs and the outliers before and after
    (`energy_in_before`, ...), which show whether the margins `energy_m_in` / `energy_m_out`
    bind."""
    outliers = load_outliers(config["outlier_set"], data, config.get("data_dir"),
                             seed=trial_data_seed(config))
    tuned = copy.deepcopy(model)
    metrics = {"energy_in_before": mean_energy(tuned, data.x_train),
               "energy_out_before": mean_energy(tuned, outliers)}
    history = finetune_with_outliers(
        tuned, data.x_train, data.y_train, outliers, epochs=config["energy_epochs"],
        lr=config["energy_lr"], batch_size=config["energy_batch_size"],
        outlier_batch_size=config["outlier_batch_size"], m_in=config["energy_m_in"],
        m_out=config["energy_m_out"], weight=config["energy_weight"],
        momentum=config["energy_momentum"], weight_decay=config["energy_weight_decay"],
        seed=config["seed"])
    tuned.eval()
    metrics.update(energy_in_after=mean_energy(tuned, data.x_train),
                   energy_out_after=mean_energy(tuned, outliers),
                   energy_ft_loss=history[-1]["loss"],
                   test_acc_ft=evaluate_split(tuned, data.x_test, data.y_test)["acc"])
    return tuned, metrics


# the train loop of the study: a classifier's, ending in this final stage
LOOP = functools.partial(ClassifierLoop, final_stage=ood_baselines_final_stage)
