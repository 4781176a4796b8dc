"""GFFN vs FFN across batch sizes (NOTES.md A; Klinger 2021, ch. 4-5).

Grid: batch size x {FFN, GFFN} x lr scaling x training budget. Budget A trains until
validation accuracy stops improving (patience); budget B trains a fixed, longer number of
epochs, well past 100% training accuracy. Which budget is used decides whether GFFN's ECE
beats FFN's, so each trial also reports training accuracy and optimizer steps.
"""

from search_spaces import Claim, Compare, CompareMetrics, Profile, SearchSpace, Trend
from workloads.data import DATASET_NAMES
from workloads.models import CLASSIFIERS
from workloads.training.losses import LOG_PARTITIONS, LOSSES
from workloads.training.lr_scaling import LR_SCALING_RULES

# Shared by every profile; a profile overrides what differs.
BASE = {
    "dataset": "digits",
    "arch": "mlp",
    "log_partition": "logsumexp",
    "lr": 1e-3,                 # Adam; tuned at the reference batch size
    "reference_batch_size": 64,  # not in the grid: sqrt differs from none everywhere
    "lr_scaling": "none",
    "budget": "A",
    "patience": 5,              # budget A: epochs without a better validation accuracy
    "max_epochs_a": 100,        # budget A: hard cap
    "epochs_b": 100,            # budget B: fixed number of epochs
    "num_bins": 15,
    "ood_scores": "msp+lnz",    # OOD scores by name joined by "+" (workloads.scores)
    "checkpoint_every": 0,      # epochs between checkpoints; 0: every checkpoint_seconds
    "checkpoint_seconds": 30.0,  # of a trial between checkpoints (the end always saves)
    "report_seconds": 1.0,      # in-process trials send their epochs' metrics this often
    "seed": 0,
    "data_seed": 0,
}

KLINGER = "004_b1f0e3d02e62087d.txt (Klinger 2021), ch. 5"
CLAIMS = (
    Claim("accuracy_falls_with_batch", "Test accuracy falls as the batch size grows.",
          f"{KLINGER}, accuracy figures; NOTES.md A, H",
          Trend("test_acc", "batch_size", direction=-1)),
    Claim("gffn_accuracy_at_least_ffn", "GFFN's test accuracy is at least FFN's (most cells).",
          f"{KLINGER}, accuracy figures; NOTES.md A, H",
          Compare("test_acc", "model", "ffn", "gffn", every=False)),
    Claim("gffn_ece_below_ffn", "GFFN's test ECE is below FFN's at every batch size.",
          f"{KLINGER}, ECE figures; NOTES.md A, H",
          Compare("test_ece", "model", "gffn", "ffn", every=True)),
    Claim("lnz_auroc_below_msp", "OOD AUROC of ln Z(x) (log p(x)) is below MSP's at every "
          "batch size.", f"{KLINGER}, OOD figures; NOTES.md A, H",
          CompareMetrics("auroc_lnz", "auroc_msp", every=True)),
)

SPACE = SearchSpace(
    # the searched lr is the base rate at the reference batch size: lr_scaling carries it
    # to every batch size, and both budgets train at it (NOTES.md A)
    carried_across=("batch_size", "lr_scaling", "budget"),
    name="batch_size_gffn",
    description="GFFN vs FFN: accuracy, ECE and OOD AUROC across batch sizes (NOTES.md A)",
    loop="classifier",
    metric="val_acc",
    mode="max",
    profiles={
        "smoke": Profile(
            config={**BASE, "budget": "B", "epochs_b": 1},
            grid={"batch_size": [16, 128], "model": ["ffn", "gffn"]},
            description="4 trials, 1 epoch on digits",
        ),
        "local": Profile(
            seeds=3,  # 3 seeds: intervals within minutes
            config={**BASE, "epochs_b": 150},
            grid={
                "batch_size": [8, 32, 128, 512],
                "model": ["ffn", "gffn"],
                "lr_scaling": ["none", "sqrt"],
                # Tune runs the grid with the last key varying slowest: the long budget-B
                # trials start first and the short budget-A trials fill the tail.
                "budget": ["B", "A"],
            },
            description="32 configurations on digits: both budgets, FFN/GFFN, lr scaling none/sqrt",
        ),
        "paper": Profile(
            seeds=3,  # 3 seeds, as the documents
            config={**BASE, "arch": "cnn", "patience": 5, "max_epochs_a": 100, "epochs_b": 100},
            grid={
                "dataset": ["mnist", "fashionmnist", "svhn", "cifar10"],
                "batch_size": [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048],
                "model": ["ffn", "gffn"],
                "lr_scaling": ["none", "sqrt"],
                "budget": ["A", "B"],
            },
            num_workers=1,
            gpus_per_worker=1.0,
            cpus_per_worker=4,
            description="the thesis' protocol: 4 datasets, batch 4..2048, CNN, one GPU per trial",
        ),
    },
    table_keys=("dataset", "budget", "model", "lr_scaling", "batch_size"),
    table_metrics=("test_acc", "test_ece", "test_mce", "test_nll", "auroc_msp", "auroc_lnz",
                   "train_acc", "steps", "epochs"),
    plot_x="batch_size",
    plot_lines=("model", "lr_scaling"),
    plot_panels=("dataset", "budget"),
    plot_metrics=("test_acc", "test_ece", "auroc_msp", "auroc_lnz"),
    choices={
        "dataset": DATASET_NAMES,
        "arch": tuple(CLASSIFIERS),
        "model": tuple(LOSSES),
        "log_partition": LOG_PARTITIONS,
        "lr_scaling": LR_SCALING_RULES,
        "budget": ("A", "B"),
    },
    positive=("lr", "batch_size", "reference_batch_size", "patience", "max_epochs_a",
              "epochs_b", "num_bins", "checkpoint_seconds"),
    claims=CLAIMS,
)
