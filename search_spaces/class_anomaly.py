"""Class anomaly detection, thesis Tables 3.2/3.3 (NOTES.md G): GradCon (Kwon et al. 2020)
and OCGAN (Perera et al. 2019), the baselines the thesis quotes, trained on one normal class
and scored against the other classes (`one_class_split`, OOD set `other_classes`), AUROC per
normal class beside the thesis' numbers (REPRODUCTION.md, `_tables.thesis.class_anomaly`).

`method` flow (in the local grid) adds the thesis' own approximate mass: the alpha_flow trial
(alpha 2, the flow keys below) on the same split, scored by -AM and log p(x), so that the
report's per-class table puts the three side by side. The paper profile trains the two
baselines; the thesis' flows on MNIST / CIFAR-10 classes are `python -m orchestrator.sweep
alpha_flow --profile paper --set normal_class=0,...,9 --set alpha=2`. The settings of each
baseline and where they come from are in the docstrings of `workloads.models.gradcon` and
`workloads.models.ocgan`.
"""

from search_spaces import Claim, Profile, SearchSpace, Threshold
from search_spaces._tables.thesis import CLASS_ANOMALY_BESIDE
from search_spaces.alpha_flow import BASE as FLOW_BASE
from search_spaces.alpha_flow import CHOICES as FLOW_CHOICES
from search_spaces.alpha_flow import POSITIVE as FLOW_POSITIVE
from workloads.models.conv_stacks import ARCHES
from workloads.models.factory import ANOMALY_METHODS

CLASSES = list(range(10))

# Shared by every profile; a profile overrides what differs. The flow keys (method flow)
# are alpha_flow's, at the thesis' alpha = 2.
BASE = {
    **FLOW_BASE,
    "alpha": 2.0,
    "ood_scores": "log_px+neg_am",  # method flow's OOD stage
    "diagnostic_every": 0,
    "method": "gradcon",
    "normal_class": 0,
    "arch": "small",                # conv widths, `conv_stacks.ARCHES`: small (digits), paper
    "batch_size": 32,
    "epochs": 150,
    "gradcon_lr": 1e-3,             # Adam (GradCon's train.py)
    "gradcon_alpha": 0.03,          # weight of L_grad in training (train.py)
    "gradcon_beta": 0.12,           # weight of the cosine in the score, 4 alpha (eval.py)
    "ocgan_lr": 2e-4,               # Adam, betas (0.5, 0.999) (OCGAN's options.py)
    "ocgan_noise_std": 0.2,         # the denoising AE's input noise (thesis: N(0, 0.2))
    "ocgan_mining_steps": 5,        # informative-negative mining steps (the paper)
    "ocgan_mining_step_size": 2.0,  # per latent (the official code)
    "ocgan_latent_dim": 16,         # OCGAN's tanh latent (options.py default)
    "ocgan_hidden": 64,             # OCGAN's latent discriminator units (ours)
}

# The papers' datasets and sizes: the official 4-layer CAE widths, batch 64 (GradCon's
# train.py), OCGAN's 201 epochs (options.py; GradCon's code trains up to 1000 epochs and
# keeps the lowest validation loss, we train 200 and keep the last).
PAPER_SETUPS = [
    {"dataset": "mnist", "arch": "paper", "batch_size": 64, "epochs": 200},
    {"dataset": "cifar10", "arch": "paper", "batch_size": 64, "epochs": 200},
]

CHOICES = {
    **FLOW_CHOICES,
    "method": (*ANOMALY_METHODS, "flow"),
    "arch": tuple(ARCHES),
    "normal_class": tuple(CLASSES),
}
POSITIVE = (*FLOW_POSITIVE, "gradcon_lr", "gradcon_beta", "ocgan_lr", "ocgan_noise_std",
            "ocgan_mining_steps", "ocgan_mining_step_size", "ocgan_latent_dim",
            "ocgan_hidden")

THESIS_CH3 = "000_69df910f6efc69b5.txt (Chali 2024), ch. 3"
CLAIMS = (
    Claim("gradcon_detects_class_anomalies", "GradCon detects class anomalies: AUROC "
          "averaged over the normal classes above chance (thesis, quoting Kwon et al.: "
          ".973 on MNIST, .664 on CIFAR-10).", f"{THESIS_CH3}, Tables 3.2, 3.3; NOTES.md G",
          Threshold("auroc", 0.5, below=False, mean=True,
                    where={"score": "gradcon", "ood_set": "other_classes"}), data="ood"),
    Claim("ocgan_detects_class_anomalies", "OCGAN detects class anomalies: AUROC averaged "
          "over the normal classes above chance (thesis, quoting Perera et al.: .975 on "
          "MNIST, .657 on CIFAR-10).", f"{THESIS_CH3}, Tables 3.2, 3.3; NOTES.md G",
          Threshold("auroc", 0.5, below=False, mean=True,
                    where={"score": "ocgan", "ood_set": "other_classes"}), data="ood"),
)

SPACE = SearchSpace(
    name="class_anomaly",
    description="Class anomaly detection: GradCon and OCGAN (and optionally the approximate "
                "mass) per normal class, AUROC against the other classes (NOTES.md G)",
    loop="class_anomaly",
    metric="train_loss",  # the one metric every method reports each epoch (Tune needs it in
    mode="min",           # every result); the results are the AUROCs per normal class
    profiles={
        "smoke": Profile(
            config={**BASE, "normal_class": 1, "epochs": 2},
            grid={"method": list(ANOMALY_METHODS)},
            description="2 trials, 2 epochs: GradCon and OCGAN on digits, normal class 1",
        ),
        "local": Profile(
            config=BASE,
            grid={"method": [*ANOMALY_METHODS, "flow"], "normal_class": CLASSES},
            description="30 trials on digits: GradCon, OCGAN and the alpha = 2 flow (-AM) x "
                        "normal class 0..9",
        ),
        "paper": Profile(
            config=BASE,
            grid={"setup": PAPER_SETUPS, "method": list(ANOMALY_METHODS),
                  "normal_class": CLASSES},
            num_workers=1,
            gpus_per_worker=1.0,
            cpus_per_worker=4,
            description="MNIST and CIFAR-10, GradCon and OCGAN x 10 classes, one GPU each",
        ),
    },
    table_keys=("dataset", "method", "normal_class"),
    table_metrics=("auroc_gradcon", "auroc_ocgan", "auroc_neg_am", "val_recon_mse",
                   "test_recon_mse", "epochs"),
    plot_x="normal_class",
    plot_log_x=False,
    plot_lines=("method",),
    plot_panels=("dataset",),
    plot_metrics=("auroc_gradcon", "auroc_ocgan", "auroc_neg_am"),
    choices=CHOICES,
    positive=POSITIVE,
    claims=CLAIMS,
    beside=(CLASS_ANOMALY_BESIDE,),
)
