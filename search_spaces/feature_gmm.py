"""Feature-space GMMs detect a classifier's mistakes, OOD inputs and adversarial inputs
(document 003, Shao, Song & Ermon; NOTES.md D).

Each trial trains a classifier normally, then (`orchestrator.tune.loops.
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

from search_spaces import Claim, CompareMetrics, Profile, SearchSpace, Threshold
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
)
