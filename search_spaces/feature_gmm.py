"""Feature-space GMMs detect a classifier's mistakes, OOD inputs and adversarial inputs
(document 003, Shao, Song & Ermon; NOTES.md D).

Each trial trains a classifier normally, then (`workloads.studies.feature_gmm.
feature_gmm_final_stage`) fits diagonal Gaussian mixtures with K of `gmm_components` on its
penultimate training features and compares their log-density with MSP, temperature-scaled
MSP, max logit and Mahalanobis on mistake detection (Mann-Whitney test) and OOD detection
(Tables 1-3), reports ECE before and after temperature scaling (10 bins) and purifies
features over the eps x nu grid of Table 4. Adversarial detection (FGSM and BIM, Figures
4-5) runs on the attack pool after the sweep: `python -m orchestrator.attack SWEEP --trial ID
--target adversarial`.

Paper training settings (Appendix C): DenseNet-BC-100 (k = 12, dropout 0.2), batch 64, 300
epochs, SGD with Nesterov momentum 0.9, lr 0.1 divided by 10 at epochs 150 and 175, L2 1e-4.
Wide ResNet-28-10 (dropout 0.3), batch 100, 200 epochs, lr 0.1, L2 5e-4, translation by up to
2 pixels and horizontal flips; the document gives no schedule for it, so it gets the WRN
paper's (x0.2 at epochs 60, 120, 160) and Nesterov momentum 0.9. Both standardize inputs per
channel; 5,000 training images are held out for validation (the temperature's fit).
"""

import pandas as pd

from search_spaces import (
    Beside,
    Claim,
    CompareMetrics,
    Profile,
    ResultTable,
    SearchSpace,
    SweepResults,
    Threshold,
)
from search_spaces._tables.cells import mean_std, pct
from search_spaces._tables.mistakes import MISTAKES
from search_spaces._tables.thesis import TABLE_3_1_BESIDE
from workloads.data import DATASET_NAMES
from workloads.models import CLASSIFIERS

SCORES = "gmm+msp+msp_calibrated+max_logit+mahalanobis"

BASE = {
    "dataset": "digits",
    "arch": "mlp",
    "model": "ffn",                 # the plain softmax classifier
    "log_partition": "logsumexp",
    "optimizer": "adam",
    "lr": 1e-3,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 0.0,
    "lr_milestones": "",            # epochs joined by "+"; lr x lr_gamma at each
    "lr_gamma": 0.1,
    "augment": "none",
    "batch_size": 32,
    "reference_batch_size": 32,
    "lr_scaling": "none",
    "budget": "B",                  # a fixed number of epochs
    "patience": 5,
    "max_epochs_a": 100,
    "epochs_b": 30,
    "num_bins": 10,                 # ECE with 10 bins, as in the document
    "ood_scores": SCORES,
    "gmm_components": "10+100",     # K of each GMM, joined by "+"; the largest is `gmm`
    "purify_eps": "0.1+0.01",       # Table 4's grid
    "purify_nu": "0+0.01+0.1+1",
    "purify_steps": 100,
    "checkpoint_every": 0,
    "checkpoint_seconds": 30.0,
    "report_seconds": 1.0,
    "seed": 0,
    "data_seed": 0,
    "val_fraction": 0.1,            # of an image set's training split, held out (stratified)
}

DENSENET = {"arch": "densenet100", "batch_size": 64, "reference_batch_size": 64,
            "epochs_b": 300, "lr": 0.1, "weight_decay": 1e-4, "lr_milestones": "150+175",
            "lr_gamma": 0.1, "augment": "none"}
WIDE_RESNET = {"arch": "wrn28_10", "batch_size": 100, "reference_batch_size": 100,
               "epochs_b": 200, "lr": 0.1, "weight_decay": 5e-4,
               "lr_milestones": "60+120+160", "lr_gamma": 0.2, "augment": "translate_flip"}

SHAO = "003_455f8143a7d4c424.txt (Shao, Song, Ermon)"
CLAIMS = (
    Claim("gmm_separates_mistakes", "The feature GMM's log-likelihood differs between "
          "correctly and wrongly classified test inputs (Mann-Whitney p = 1.9e-13 for "
          "GMM-100 on CIFAR-100).", f"{SHAO}, section 4.1, Figure 2; NOTES.md D",
          Threshold("mistake_mw_p_gmm", 0.05, below=True, every=True)),
    Claim("gmm_beats_calibrated_msp_ood", "GMM log-density detects OOD inputs better than "
          "calibrated (temperature-scaled) scores.", f"{SHAO}, Tables 1-3; NOTES.md D",
          CompareMetrics("auroc_msp_calibrated", "auroc_gmm", every=True)),
    Claim("gmm_at_least_mahalanobis_ood", "GMM log-density detects OOD inputs at least as "
          "well as Mahalanobis on most pairs.", f"{SHAO}, Tables 1-3; NOTES.md D",
          CompareMetrics("auroc_mahalanobis", "auroc_gmm", every=False)),
    Claim("purification_gains_little", "Feature purification changes test accuracy by at "
          "most 0.6 points (its best setting).", f"{SHAO}, Appendix B, Table 4",
          Threshold("purify_best_test_gain", 0.006, below=True, every=True)),
)


# --- the document's numbers, and its tables beside ours (REPRODUCTION.md) ------------------

# Document 003, OOD detection (its Tables 1-3): (AUROC, AUPR-in, AUPR-out) in %, mean over
# 5 runs, of GMM-1000, Mahalanobis and calibrated (temperature-scaled) scores, by
# architecture; our score names. NaN: unreadable in the source text.
OOD_SOURCE = f"{SHAO}, Tables 1-3"
METHODS = {"GMM (003: K = 1000)": "gmm", "Mahalanobis": "mahalanobis",
                       "Calibrated": "msp_calibrated"}
_NAN = float("nan")
PUBLISHED_OOD = {
    "densenet100": {
        ("cifar100", "svhn"): ((95.70, 83.60, 99.23), (94.38, 80.06, 98.83),
                               (80.58, 56.60, 95.70)),
        ("cifar100", "tinyimagenet"): ((96.75, 96.78, 96.67), (95.26, 95.68, 94.57),
                                       (74.00, 73.49, 71.45)),
        ("cifar100", "fashionmnist"): ((93.23, 89.29, 98.30), (94.48, 88.95, 98.12),
                                       (85.92, 65.72, 96.60)),
        ("cifar100", "gaussian_noise"): ((100.0, 100.0, 100.0), (100.0, 100.0, 100.0),
                                         (70.04, 80.36, 61.56)),
        ("cifar10", "svhn"): ((99.35, 96.46, 99.91), (98.82, 93.06, 99.83),
                              (92.00, 82.48, 98.29)),
        ("cifar10", "tinyimagenet"): ((98.88, 98.90, 98.89), (98.03, 98.07, 98.03),
                                      (94.66, 95.66, 93.49)),
        ("cifar10", "gaussian_noise"): ((100.0, 100.0, 100.0), (100.0, 100.0, 100.0),
                                        (77.85, 86.57, 68.28)),
        ("cifar10", "fashionmnist"): ((97.47, 91.28, 99.52), (98.38, 95.07, _NAN),
                                      (93.71, 85.72, 98.53)),
    },
    "wrn28_10": {
        ("cifar100", "svhn"): ((81.40, 53.64, 96.45), (75.86, 47.40, 93.96),
                               (78.64, 56.23, 95.05)),
        ("cifar100", "tinyimagenet"): ((84.98, 86.32, 82.45), (80.35, 82.72, 76.01),
                                       (82.64, 87.46, 79.40)),
        ("cifar100", "fashionmnist"): ((87.32, 69.72, 96.82), (79.33, 57.26, 93.70),
                                       (86.01, 70.37, 96.24)),
        ("cifar100", "gaussian_noise"): ((99.96, 99.96, 99.94), (99.99, 99.99, 100.0),
                                         (88.27, 92.61, 78.46)),
    },
}
# Its Table 4 (CIFAR-100, GMM-1000): test accuracy (%) before and after purification,
# by architecture, at (eps, nu).
PURIFICATION_SOURCE = f"{SHAO}, Appendix B, Table 4"
PUBLISHED_PURIFICATION = {
    "densenet100": {"original": 72.74, (0.1, 0.0): 73.39, (0.1, 0.01): 73.39,
                    (0.1, 0.1): 73.28, (0.1, 1.0): 72.89, (0.01, 0.0): 72.95,
                    (0.01, 0.01): 72.95, (0.01, 0.1): 72.95, (0.01, 1.0): 72.86},
    "wrn28_10": {"original": 80.10, (0.1, 0.0): 79.73, (0.1, 0.01): 79.75,
                 (0.1, 0.1): 79.87, (0.1, 1.0): 80.11, (0.01, 0.0): 80.10,
                 (0.01, 0.01): 80.10, (0.01, 0.1): 80.10, (0.01, 1.0): 80.11},
}
# Section 4.1: the Mann-Whitney p-value of GMM-100's log-likelihood, correct vs wrong
# (DenseNet-100, CIFAR-100), and of an image PixelCNN's.
MISTAKES_P = {"GMM-100": 1.9e-13, "PixelCNN (image space)": 8.58e-5}


def _triple(values: tuple[float, float, float]) -> str:
    return "/".join("–" if v != v else f"{v:.2f}" for v in values)


def ood_beside(ood: pd.DataFrame) -> str:
    """Document 003 Tables 1-3 beside ours: per model and ID -> OOD pair, AUROC ± std over
    seeds, then AUPR-in / AUPR-out (%, means) of GMM (its largest K), Mahalanobis and
    calibrated MSP, with the document's three (DenseNet-100 / WRN-28-10, 5 runs) after them
    where it has the pair."""
    methods = METHODS
    rows = ood[ood.score.isin(methods.values())]
    keys = [k for k in ("arch", "dataset") if k in rows.columns]
    lines, matched = [], False
    for group_keys, group in rows.groupby([*keys, "ood_set"], sort=True):
        values = dict(zip([*keys, "ood_set"], group_keys))
        theirs = PUBLISHED_OOD.get(values.get("arch"), {}).get(
            (values.get("dataset"), values["ood_set"]))
        matched |= theirs is not None
        line = {"model": values.get("arch", "?"),
                "ID -> OOD": f"{values.get('dataset', '?')} -> {values['ood_set']}"}
        for i, (method, score) in enumerate(methods.items()):
            ours = group[group.score == score]
            line[method] = (pct(ours.auroc) + " / " + pct(ours.aupr_in, std=False) + " / "
                            + pct(ours.aupr_out, std=False)
                            + (f" (003: {_triple(theirs[i])})" if theirs else ""))
        lines.append(line)
    if not lines:
        return ""
    parts = [f"Source: {OOD_SOURCE}. Cells: AUROC / AUPR-in / AUPR-out "
             f"(%); ours mean over seeds (AUROC ± std), our GMM the largest K of the sweep.\n",
             pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True)]
    if not matched:
        parts += ["", "Our data and models are not the document's (CIFAR with DenseNet-100 "
                      "/ WRN-28-10): orderings compare, values do not."]
    return "\n".join(parts)


def purification_beside(purification: pd.DataFrame) -> str:
    """Document 003 Table 4 beside ours: test accuracy change (points) from purification
    per model, eps and nu; ours mean ± std over seeds, the document's (CIFAR-100) after."""
    rows = purification[purification.split == "test"]
    if rows.empty:
        return ""
    lines = []
    for (arch, eps, nu), group in rows.groupby(["arch", "eps", "nu"], sort=True):
        theirs = PUBLISHED_PURIFICATION.get(arch, {})
        change = group.accuracy_after - group.accuracy_before
        line = {"model": arch, "eps": eps, "nu": nu, "ours: accuracy change": pct(change),
                "ours: fixed / broken": f"{group.fixed.mean():.1f} / {group.broken.mean():.1f}"}
        if (eps, nu) in theirs:
            line["003: accuracy change"] = f"{theirs[(eps, nu)] - theirs['original']:+.2f}"
        lines.append(line)
    return (f"Source: {PURIFICATION_SOURCE} (CIFAR-100, GMM-1000; "
            f"at most +0.6 points). Ours: test split, points of accuracy.\n\n"
            + pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True))


def mistakes_beside(mistakes: pd.DataFrame) -> str:
    """Section 4.1 beside ours: the Mann-Whitney p-value per model and score (the largest
    over seeds) and the document's for GMM-100 and an image PixelCNN."""
    keys = [k for k in ("arch", "dataset") if k in mistakes.columns]
    table = (mistakes.groupby([*keys, "score"], sort=True)
             .agg(auroc=("auroc", "mean"), p_max=("mw_p", "max")).reset_index())
    table["p_max"] = table.p_max.map(lambda p: f"{p:.2g}")
    table["auroc"] = table.auroc.map(lambda a: f"{a:.3f}")
    theirs = "; ".join(f"{k}: p = {v:.3g}" for k, v in MISTAKES_P.items())
    return (f"Source: {SHAO}, section 4.1 (DenseNet-100, CIFAR-100; "
            f"{theirs}). Ours: mean AUROC and the largest p over seeds.\n\n"
            + table.to_markdown(index=False, disable_numparse=True))


def _ood(results: SweepResults) -> str:
    if results.ood.empty or "gmm" not in set(results.ood.score):
        return ""
    return ood_beside(results.ood)


def _mistakes(results: SweepResults) -> str:
    mistakes = results.tables.get("mistakes")
    if mistakes is None or "gmm" not in set(mistakes.score):
        return ""
    return mistakes_beside(mistakes)


def _purification(results: SweepResults) -> str:
    purification = results.tables.get("purification")
    return "" if purification is None else purification_beside(purification)


PURIFICATION = ResultTable(
    name="purification",
    title="feature purification (003 Table 4)",
    note="Features moved by 100 steps (`purify_steps`) of F <- F - eps (grad BPD(F) + 2 nu "
         "(F - F_ref)) under the largest GMM, then classified by the last layer. Accuracy in "
         "%, mean ± std over {seeds} seed(s); fixed / broken: predictions made right / "
         "wrong.",
    by=("split", "eps", "nu"),
    columns={
        "accuracy before": lambda g: mean_std(g.accuracy_before, 100, 2),
        "accuracy after": lambda g: mean_std(g.accuracy_after, 100, 2),
        "change": lambda g: mean_std(g.accuracy_after - g.accuracy_before, 100, 2),
        "fixed": lambda g: f"{g.fixed.mean():.1f}",
        "broken": lambda g: f"{g.broken.mean():.1f}",
    },
)


SPACE = SearchSpace(
    name="feature_gmm",
    description="feature-space GMMs detect mistakes, OOD and adversarial inputs (003)",
    loop="feature_gmm",
    metric="val_acc",
    mode="max",
    profiles={
        "smoke": Profile(
            config={**BASE, "epochs_b": 2, "gmm_components": "2+5", "purify_eps": "0.1",
                    "purify_nu": "0+1", "purify_steps": 3},
            grid={"arch": ["mlp", "cnn"]},
            description="2 trials, 2 epochs on digits, GMMs of 2 and 5 components",
        ),
        "local": Profile(
            seeds=5,  # as the document's 5 runs; a trial takes seconds here
            config=BASE,
            grid={"arch": ["mlp", "cnn"]},
            description="MLP and CNN on digits, 30 epochs, GMMs of 10 and 100 components, "
                        "5 seeds",
        ),
        "paper": Profile(
            seeds=5,  # mean +- std over 5 runs, as the document
            config={**BASE, "dataset": "cifar100", "optimizer": "sgd",
                    "gmm_components": "100+1000"},
            grid={"dataset": ["cifar100", "cifar10"], "setup": [DENSENET, WIDE_RESNET]},
            num_workers=1,
            gpus_per_worker=1.0,
            cpus_per_worker=4,
            description="Appendix C: DenseNet-BC-100 and WRN-28-10 on CIFAR-100 and CIFAR-10, "
                        "GMMs of 100 and 1000 components, 5 seeds, one GPU per trial",
        ),
    },
    table_keys=("dataset", "arch"),
    table_metrics=("test_acc", "test_ece", "test_ece_calibrated", "mistake_auroc_gmm",
                   "mistake_auroc_msp", "mistake_auroc_msp_calibrated", "mistake_mw_p_gmm",
                   "auroc_gmm", "auroc_mahalanobis", "auroc_msp_calibrated",
                   "purify_best_test_gain"),
    choices={
        "dataset": DATASET_NAMES,
        "arch": tuple(CLASSIFIERS),
        "optimizer": ("adam", "sgd"),
        "augment": ("none", "translate_flip"),
        "budget": ("A", "B"),
    },
    positive=("lr", "batch_size", "reference_batch_size", "epochs_b", "num_bins",
              "checkpoint_seconds"),
    claims=CLAIMS,
    count_lists=("gmm_components",),
    result_tables=(MISTAKES, PURIFICATION),
    beside=(TABLE_3_1_BESIDE,
            Beside("Document 003 Tables 1-3 (OOD detection) beside ours", _ood),
            Beside("Document 003 section 4.1 (mistake detection) beside ours", _mistakes),
            Beside("Document 003 Table 4 (feature purification) beside ours", _purification)),
)
