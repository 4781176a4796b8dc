"""RealNVP with the approximate-mass regularizer: alpha in {0, 0.5, 1, 2, 4} (NOTES.md B;
thesis ch. 3, eq. 3.35, Table 3.1).

Every trial ends with the OOD stage: log p(x) and -AM(x) against every OOD set of its
dataset. `--set normal_class=K` turns a sweep into class anomaly detection (train on class K,
the other classes are OOD; Tables 3.2/3.3); `--set normal_class=0,1,...,9` sweeps classes.
"""

from search_spaces import Claim, Compare, CompareMetrics, Profile, SearchSpace, Threshold
from search_spaces._tables.thesis import CLASS_ANOMALY_BESIDE, TABLE_3_1_BESIDE
from workloads.data import DATASET_NAMES
from workloads.models.flows import DEQUANTIZATIONS, IMAGE_FLOW_PRESETS

ALPHAS = [0.0, 0.5, 1.0, 2.0, 4.0]

# Shared by every profile; a profile overrides what differs.
BASE = {
    "dataset": "digits",
    "model": "flow",
    "flow": "vector",            # vector: MLP couplings; image: multi-scale RealNVP
    "flow_preset": "",           # image flows: a key of IMAGE_FLOW_PRESETS, or "" for below
    "num_couplings": 8,          # vector flow
    "depth": 2,                  # vector flow: hidden layers per coupling
    "num_scales": 2,             # image flow
    "num_blocks": 2,             # image flow: residual blocks per s/t network
    "hidden": 128,               # units (vector) or channels (image)
    "dequantization": "centred",  # where clean pixels sit in their noise bin (NOTES.md C)
    "logit_lambda": 0.05,
    "alpha": 0.0,
    "beta": 0.1,                 # DIGLM only
    "lr": 1e-3,
    "weight_decay": 0.0,
    "batch_size": 64,
    "epochs": 60,
    "max_grad_norm": 100.0,
    "normal_class": -1,          # >= 0: class anomaly detection on that class
    "ood_scores": "all",         # every applicable score, or names joined by "+"
    "score_params": {"gmm": {"components": 10}},
    "background_mu": 0.0,        # > 0: train Ren et al.'s background model on inputs with
                                 # this fraction of pixels perturbed; adds likelihood_ratio
    "background_epochs": 0,      # its epochs (0: the trial's)
    "background_weight_decay": 0.0,  # its L2 (Ren et al. regularize it)
    "num_bins": 15,
    "diagnostic_every": 5,       # epochs between AUROC snapshots of log p(x), -AM (0: off)
    "diagnostic_samples": 256,   # ID and OOD inputs per set in a snapshot
    "checkpoint_every": 0,       # epochs between checkpoints; 0: every checkpoint_seconds
    "checkpoint_seconds": 30.0,  # of a trial between checkpoints (the end always saves)
    "report_seconds": 1.0,       # in-process trials send their epochs' metrics this often
    "seed": 0,
    "data_seed": 0,
}

# The documents' training settings per dataset (NOTES.md B, after Kirichenko et al. 2020).
PAPER_SETUPS = [
    {"dataset": "fashionmnist", "flow_preset": "fashionmnist", "lr": 5e-5, "batch_size": 32,
     "weight_decay": 0.0, "epochs": 80},
    {"dataset": "cifar10", "flow_preset": "cifar10", "lr": 1e-4, "batch_size": 32,
     "weight_decay": 5e-5, "epochs": 100},
]

CHOICES = {
    "dataset": DATASET_NAMES,
    "model": ("flow", "diglm"),
    "flow": ("vector", "image"),
    "flow_preset": ("", *IMAGE_FLOW_PRESETS),
    "dequantization": DEQUANTIZATIONS,
}
POSITIVE = ("num_couplings", "depth", "num_scales", "num_blocks", "hidden", "logit_lambda",
            "lr", "batch_size", "epochs", "max_grad_norm", "num_bins", "checkpoint_seconds",
            "diagnostic_samples")

THESIS_CH3 = "000_69df910f6efc69b5.txt (Chali 2024), ch. 3"
# OOD detection claims: on the dataset's OOD sets, not in class anomaly runs (normal_class).
CLAIMS = (
    Claim("likelihood_ranks_ood_above_id", "A likelihood-trained flow (alpha = 0) gives some "
          "OOD set higher likelihood than the ID data: log p(x) AUROC below 0.5.",
          f"{THESIS_CH3}, Fig. 3.3, Table 3.1 discussion; NOTES.md B, H",
          Threshold("auroc", 0.5, below=True, every=False,
                    where={"score": "log_px", "alpha": 0.0, "normal_class": -1}), data="ood"),
    Claim("penalized_am_reaches_table_3_1", "With alpha = 2, the approximate mass detects OOD "
          "inputs at Table 3.1's level (AUROC at least 0.969, its lowest AM row).",
          f"{THESIS_CH3}, Table 3.1; NOTES.md B, H",
          Threshold("auroc", 0.969, below=False, every=True,
                    where={"score": "neg_am", "alpha": 2.0, "normal_class": -1}), data="ood"),
    Claim("penalty_improves_am", "The penalty makes -AM a better OOD score: AUROC at alpha "
          "= 2 above alpha = 0.", f"{THESIS_CH3}, sections 3.5-3.6; NOTES.md B, H",
          Compare("auroc", "alpha", 0.0, 2.0, every=False,
                  where={"score": "neg_am", "normal_class": -1}),
          data="ood"),
    Claim("am_ordering_degrades_in_training", "Without the penalty (alpha = 0) the approximate "
          "mass ranks OOD inputs well early in training and worse by its end (-AM AUROC, mean "
          "over OOD sets, at the last diagnostic snapshot below the first).",
          f"{THESIS_CH3}, Fig. 3.17 (epochs 60, 85, 100); NOTES.md B, H",
          CompareMetrics("diag_auroc_neg_am_last", "diag_auroc_neg_am_first", every=False,
                         where={"alpha": 0.0, "normal_class": -1})),
    # Class anomaly detection (`--set normal_class=0,...,9`): its OOD set is `other_classes`.
    Claim("am_detects_class_anomalies", "With alpha = 2, the approximate mass detects class "
          "anomalies: AUROC averaged over the normal classes above chance (thesis: .752 on "
          "MNIST, .761 on CIFAR-10).", f"{THESIS_CH3}, Tables 3.2, 3.3; NOTES.md G, H",
          Threshold("auroc", 0.5, below=False, mean=True,
                    where={"score": "neg_am", "alpha": 2.0, "ood_set": "other_classes"}),
          data="ood"),
)

SPACE = SearchSpace(
    name="alpha_flow",
    description="RealNVP with the approximate-mass regularizer, alpha 0..4: bits/dim and "
                "OOD AUROC of log p(x) and AM (NOTES.md B)",
    loop="generative",
    metric="val_bpd",
    mode="min",
    profiles={
        "smoke": Profile(
            config={**BASE, "num_couplings": 4, "hidden": 32, "epochs": 2,
                    "diagnostic_every": 1},
            grid={"alpha": [0.0, 2.0]},
            description="2 trials, 2 epochs of a small vector RealNVP on digits",
        ),
        "local": Profile(
            seeds=3,  # 3 seeds: intervals within minutes
            config=BASE,
            grid={"alpha": ALPHAS, "dequantization": ["centred", "start"]},
            description="10 configurations on digits: vector RealNVP, alpha x dequantization",
        ),
        "paper": Profile(
            seeds=3,  # 3 seeds, as the documents
            config={**BASE, "flow": "image"},
            grid={"setup": PAPER_SETUPS, "alpha": ALPHAS},
            num_workers=1,
            gpus_per_worker=1.0,
            cpus_per_worker=4,
            description="FashionMNIST and CIFAR-10 multi-scale RealNVP presets, one GPU each",
        ),
    },
    table_keys=("dataset", "normal_class", "dequantization", "alpha"),
    table_metrics=("test_bpd", "test_log_px", "test_am", "auroc_log_px", "auroc_neg_am",
                   "epochs"),
    plot_x="alpha",
    plot_log_x=False,
    plot_lines=("dequantization",),
    plot_panels=("dataset", "normal_class"),
    plot_metrics=("test_bpd", "test_am", "auroc_log_px", "auroc_neg_am"),
    choices=CHOICES,
    positive=POSITIVE,
    claims=CLAIMS,
    beside=(TABLE_3_1_BESIDE, CLASS_ANOMALY_BESIDE),
)
