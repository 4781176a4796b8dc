"""Learning-rate scaling rules across batch sizes (NOTES.md A): classifier x batch size x
rule {none, sqrt, linear}, with the standard (FFN) loss and a fixed epoch budget.

sqrt: lr_B = lr_S sqrt(B / B_S) (Hoffer et al.); linear: lr_B = lr_S B / B_S (Goyal et al.);
the reference batch B_S is where the base lr was tuned.
"""

from search_spaces import Profile, SearchSpace
from search_spaces.batch_size_gffn import BASE
from search_spaces.batch_size_gffn import SPACE as GFFN_SPACE

CONFIG = {**BASE, "model": "ffn", "budget": "B", "epochs_b": 30}

SPACE = SearchSpace(
    carried_across=GFFN_SPACE.carried_across,  # the base rate, scaled by the rule
    name="lr_scaling",
    description="lr scaling rules none/sqrt/linear across batch sizes, per classifier",
    loop="classifier",
    metric="val_acc",
    mode="max",
    profiles={
        "smoke": Profile(
            config={**CONFIG, "epochs_b": 1, "arch": "mlp"},
            grid={"batch_size": [16, 128], "lr_scaling": ["none", "linear"]},
            description="4 trials, 1 epoch on digits",
        ),
        "local": Profile(
            seeds=3,  # 3 seeds: intervals within minutes
            config=CONFIG,
            grid={
                "batch_size": [8, 32, 128, 512],
                "lr_scaling": ["none", "sqrt", "linear"],
                "arch": ["mlp", "cnn"],
            },
            description="24 configurations on digits: MLP and CNN, 30 epochs each",
        ),
        "paper": Profile(
            seeds=3,  # 3 seeds, as the documents
            config={**CONFIG, "epochs_b": 100},
            grid={
                "dataset": ["mnist", "cifar10"],
                "arch": ["cnn"],
                "batch_size": [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048],
                "lr_scaling": ["none", "sqrt", "linear"],
            },
            num_workers=1,
            gpus_per_worker=1.0,
            cpus_per_worker=4,
            description="MNIST and CIFAR-10, CNN, batch 4..2048, one GPU per trial",
        ),
    },
    table_keys=("dataset", "arch", "lr_scaling", "batch_size"),
    table_metrics=("lr", "test_acc", "test_ece", "test_nll", "auroc_msp", "train_acc", "steps"),
    plot_x="batch_size",
    plot_lines=("lr_scaling",),
    plot_panels=("dataset", "arch"),
    plot_metrics=("test_acc", "test_ece", "test_nll", "auroc_msp"),
    choices=GFFN_SPACE.choices,
    positive=GFFN_SPACE.positive,
)
