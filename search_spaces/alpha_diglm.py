"""DIGLM (flow + linear softmax head on z) with the approximate-mass regularizer: alpha in
{0, 0.5, 1, 2, 4}, beta = 0.1 (NOTES.md C; thesis ch. 4, eq. 4.13).

Every trial ends with the OOD stage over every applicable score (classifier scores on the
head, Mahalanobis and GMM on z, log p(x), -AM). The final checkpoints keep the weights for
the attack and Langevin-defense stage (`workloads.models.build_generative_model`).
"""

from search_spaces import Claim, Compare, CompareMetrics, Profile, SearchSpace, Threshold
from search_spaces._tables.thesis import TABLE_3_1_BESIDE
from search_spaces.alpha_flow import ALPHAS, CHOICES, POSITIVE
from search_spaces.alpha_flow import BASE as FLOW_BASE
from search_spaces.alpha_flow import CLAIMS as FLOW_CLAIMS

BASE = {**FLOW_BASE, "model": "diglm", "beta": 0.1, "epochs": 60}

THESIS_CH4 = "000_69df910f6efc69b5.txt (Chali 2024), ch. 4"
CLAIMS = (
    *FLOW_CLAIMS,
    Claim("penalty_detects_apgd", "alpha = 2 detects APGD-CE inputs by AM far better than "
          "alpha = 0 (detection AUROC).", f"{THESIS_CH4}, Table 4.1; NOTES.md C, H",
          Compare("det_auroc", "alpha", 0.0, 2.0, every=True), data="defense"),
    Claim("restoration_recovers_accuracy", "Langevin restoration recovers accuracy on the "
          "adversarial inputs at alpha = 2 (from ~0% to 48.1% in the thesis; here: above "
          "10%).", f"{THESIS_CH4}, Table 4.2; NOTES.md C, H",
          Threshold("restored_accuracy", 0.10, below=False, every=True,
                    where={"alpha": 2.0}), data="defense"),
    Claim("defense_holds_against_adaptive", "The full defense holds against the adaptive "
          "attack: Table 4.4 accuracy is not below Table 4.3's (alpha = 2).",
          f"{THESIS_CH4}, Tables 4.3-4.4; NOTES.md C, H",
          CompareMetrics("defense_accuracy", "adaptive_defense_accuracy", every=True,
                         where={"alpha": 2.0}), data="defense"),
)

SPACE = SearchSpace(
    name="alpha_diglm",
    description="DIGLM with the approximate-mass regularizer, alpha 0..4, beta 0.1: "
                "accuracy, ECE and OOD AUROC of every score (NOTES.md C)",
    loop="generative",
    metric="val_acc",
    mode="max",
    profiles={
        "smoke": Profile(
            config={**BASE, "num_couplings": 4, "hidden": 32, "epochs": 2},
            grid={"alpha": [0.0, 2.0]},
            description="2 trials, 2 epochs of a small DIGLM on digits",
        ),
        "local": Profile(
            seeds=3,  # 3 seeds: intervals within minutes
            config=BASE,
            grid={"alpha": ALPHAS, "dequantization": ["centred", "start"]},
            description="10 configurations on digits: vector-flow DIGLM, alpha x dequantization",
        ),
        "paper": Profile(
            seeds=3,  # 3 seeds, as the documents
            # MNIST; the thesis states no flow size or settings: the FashionMNIST preset
            # (same 28x28x1 shape) and its training settings.
            config={**BASE, "dataset": "mnist", "flow": "image", "flow_preset": "fashionmnist",
                    "lr": 5e-5, "batch_size": 32, "epochs": 80},
            grid={"alpha": ALPHAS, "dequantization": ["centred", "start"]},
            num_workers=1,
            gpus_per_worker=1.0,
            cpus_per_worker=4,
            description="MNIST, multi-scale RealNVP DIGLM, alpha x dequantization, one GPU each",
        ),
    },
    table_keys=("dataset", "normal_class", "dequantization", "alpha"),
    table_metrics=("test_acc", "test_ece", "test_bpd", "test_am", "auroc_msp", "auroc_energy",
                   "auroc_mahalanobis", "auroc_log_px", "auroc_neg_am", "epochs"),
    plot_x="alpha",
    plot_log_x=False,
    plot_lines=("dequantization",),
    plot_panels=("dataset", "normal_class"),
    plot_metrics=("test_acc", "test_ece", "test_bpd", "auroc_log_px", "auroc_neg_am"),
    choices=CHOICES,
    positive=POSITIVE,
    claims=CLAIMS,
    beside=(TABLE_3_1_BESIDE,),
)
