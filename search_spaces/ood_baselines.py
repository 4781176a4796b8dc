"""Thesis Table 3.1's baselines: G-ODIN, Mahalanobis and Energy with outlier fine-tuning, on
classifiers with the parameter count of the `alpha_flow` flow of the same data (thesis
sections 3.3 and 3.6.6; NOTES.md B, E).

Two kinds of trial (the grid's `setup`), each ending with
`workloads.studies.ood_baselines.ood_baselines_final_stage` (MSP, energy, Mahalanobis, GradNorm and
G-ODIN where the model has its head, against every OOD set of the dataset, balanced counts):

- energy: a plain classifier, then a copy fine-tuned for `energy_epochs` with the
  energy-bounded loss on ID and outlier batches (Liu et al. 2020; thesis eq. 3.20-3.21;
  `workloads.training.energy_finetuning`), scored as `energy_ft` (the thesis' Energy column) and
  `msp_ft`. Outliers (`outlier_set` "auto", `workloads.data.outliers`): SVHN for CIFAR-10 and
  MNIST for FashionMNIST, their training splits (thesis 3.6.6 and Table 3.1's caption);
  pixel-shuffled training digits for the embedded digits, which are none of the local test
  OOD sets (noise, image patches). Liu et al.'s settings: 10 epochs, SGD Nesterov 0.9, lr
  1e-3 cosine-annealed per step to 1e-6, weight decay 5e-4, lambda 0.1, m_in = -23, m_out =
  -5 (their CIFAR-10 margins; the thesis gives none), 2 outliers per ID input (256 / 128).
  Their pretrained network (Hendrycks et al.'s WRN: 100 epochs, SGD Nesterov lr 0.1 cosine,
  L2 5e-4, batch 128) becomes on the paper profile our CNN with lr x 0.1 at epochs 50 and 75
  (our optimizer has no cosine schedule).
- godin: the same network with G-ODIN's decomposed-confidence head (`godin_mlp`,
  `godin_cnn`; thesis eq. 3.4-3.6). The thesis describes the method (eq. 3.4-3.8) and
  gives no training settings; we train it as Hsu et al. 2020 (section 4) as their public
  reimplementations do (OpenOOD's `GodinTrainer`, guyera/Generalized-ODIN-Implementation):
  SGD momentum 0.9, lr 0.1 x 0.1 at 50% and 75% of 300 epochs, batch 64, weight decay 1e-4
  on every parameter but h's class vectors (`workloads.models.godin.GODIN.no_weight_decay`);
  lr 0.05 on the local profile (see `GODIN_LOCAL`). The score's eps is the best of the six
  on ID validation inputs; the thesis' T = 1000 belongs to ODIN, G-ODIN has none.

The thesis says only "Those methods are initialized with a similar number of parameters
[as the flow] ... make the other models in the benchmark match this number of parameters"
(3.6.6): `width` is chosen so each classifier's `num_params` is within 1% of the
`alpha_flow` flow of its profile and dataset (`FLOW_PARAMS`; tests/test_ood_baselines.py
builds both): 331,264 (local vector RealNVP, digits), 4,465,459 (FashionMNIST preset) and
9,683,651 (CIFAR-10 preset; the thesis' own flows were ~10M and ~60M, NOTES.md B).
Mahalanobis in two forms: `mahalanobis`, Lee et al.'s final-layer score without input
preprocessing or the layer ensemble (document 003's baseline), and `mahalanobis_lee`, their
detector (`workloads.scores.mahalanobis`, which lists where it departs from their code):
every layer the network names in `feature_layers` and the penultimate one, each after its
input step, combined by a logistic regression (eq. 3.13-3.14); eps and the weights are
tuned as in their "validation on adversarial samples", on ID validation inputs against
FGSM examples of them (step 0.05), never on OOD data.
"""

from search_spaces import Claim, CompareMetrics, Profile, SearchSpace
from search_spaces._tables.thesis import BASELINES_BESIDE
from workloads.data.outliers import OUTLIER_SETS

SCORES = "msp+energy+mahalanobis+mahalanobis_lee+gradnorm"
GODIN_SCORES = f"godin+{SCORES}"

# The parameter count of the alpha_flow flow each classifier matches (thesis 3.6.6).
FLOW_PARAMS = {"local": {"digits": 331_264},
               "paper": {"fashionmnist": 4_465_459, "cifar10": 9_683_651}}

BASE = {
    "dataset": "digits",
    "arch": "mlp",
    "width": 540,                   # MLP hidden units / CNN dense units: num_params of the
                                    # flow (FLOW_PARAMS); 0: the network's default
    "model": "ffn",                 # the plain softmax classifier (cross-entropy)
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
    "num_bins": 15,
    "ood_scores": SCORES,
    # Energy fine-tuning (Liu et al. 2020), after training; 0 epochs: none (G-ODIN trials).
    "energy_epochs": 0,
    "energy_lr": 1e-3,              # cosine-annealed per step to 1e-6
    "energy_momentum": 0.9,         # Nesterov
    "energy_weight_decay": 5e-4,
    "energy_batch_size": 32,        # ID inputs per step
    "outlier_batch_size": 64,       # outliers per step (Liu et al.: 256 per 128 ID)
    "energy_m_in": -23.0,           # ID energies pushed below m_in
    "energy_m_out": -5.0,           # outlier energies pushed above m_out
    "energy_weight": 0.1,           # lambda of eq. 3.20
    "outlier_set": "auto",          # the thesis' pairing (workloads.data.outliers)
    "finetuned_scores": "energy+msp",  # the fine-tuned copy's scores, named <score>_ft
    "checkpoint_every": 0,
    "checkpoint_seconds": 30.0,
    "report_seconds": 1.0,
    "seed": 0,
    "data_seed": 0,
}

# Local: the MLP on digits. The plain MLP trains as the other local sweeps (Adam, 30
# epochs); G-ODIN with Hsu et al.'s SGD recipe over 60 epochs (300 scaled to digits) at lr
# 0.05: at their 0.1 (for networks with batch norm; our MLP has none) the loss of 2 of 5
# seeds rose over the first epochs and 1 or 2 (weight decay 1e-4 or 5e-4) ended at chance
# accuracy; at 0.05 all 5 reached .97-.98 validation accuracy.
ENERGY_LOCAL = {"arch": "mlp", "energy_epochs": 10}
GODIN_LOCAL = {"arch": "godin_mlp", "ood_scores": GODIN_SCORES, "optimizer": "sgd",
               "nesterov": False, "lr": 0.05, "weight_decay": 1e-4, "epochs_b": 60,
               "lr_milestones": "30+45", "batch_size": 64, "reference_batch_size": 64}

# Paper: the small CNN widened to the flow's parameter count, on each Table 3.1 dataset.
PAPER_DATA = [{"dataset": "fashionmnist", "width": 1413},
              {"dataset": "cifar10", "width": 2353}]
ENERGY_PAPER = {"arch": "cnn", "optimizer": "sgd", "nesterov": True, "lr": 0.1,
                "weight_decay": 5e-4, "epochs_b": 100, "lr_milestones": "50+75",
                "batch_size": 128, "reference_batch_size": 128, "energy_epochs": 10,
                "energy_batch_size": 128, "outlier_batch_size": 256}
GODIN_PAPER = {"arch": "godin_cnn", "ood_scores": GODIN_SCORES, "optimizer": "sgd",
               "nesterov": False, "lr": 0.1, "weight_decay": 1e-4, "epochs_b": 300,
               "lr_milestones": "150+225", "batch_size": 64, "reference_batch_size": 64}

THESIS = "000_69df910f6efc69b5.txt (Chali 2024)"
CLAIMS = (
    Claim("energy_finetuning_beats_energy", "Fine-tuning with the energy-bounded loss and "
          "outliers widens the energy gap between ID and OOD inputs: the fine-tuned model's "
          "energy detects OOD inputs better than the pretrained model's.",
          f"{THESIS}, section 3.3.4, eq. 3.20-3.21 (Liu et al. 2020); NOTES.md E",
          CompareMetrics("auroc_energy", "auroc_energy_ft", every=True)),
    Claim("energy_beats_msp", "The energy score, in the original logit space, detects OOD "
          "inputs better than the softmax confidence (a biased energy, eq. 3.19) on the "
          "same classifier.", f"{THESIS}, section 3.3.4, eq. 3.18-3.19; NOTES.md E",
          CompareMetrics("auroc_msp", "auroc_energy", every=False)),
    Claim("godin_below_mahalanobis", "G-ODIN detects OOD inputs worse than Mahalanobis "
          "(Table 3.1 averages: 62.4% and 83.8% AUROC); here both on the G-ODIN network.",
          f"{THESIS}, Table 3.1 and section 3.6.6; NOTES.md B",
          CompareMetrics("auroc_godin", "auroc_mahalanobis", every=False)),
)

SPACE = SearchSpace(
    name="ood_baselines",
    description="thesis Table 3.1 baselines: G-ODIN, Mahalanobis, energy with outlier "
                "fine-tuning, parameter counts matched to the flow (NOTES.md B, E)",
    loop="ood_baselines",
    metric="val_acc",
    mode="max",
    profiles={
        "smoke": Profile(
            config={**BASE, "width": 64, "epochs_b": 2},
            grid={"setup": [{**ENERGY_LOCAL, "energy_epochs": 1},
                            {**GODIN_LOCAL, "epochs_b": 2, "lr_milestones": "1"}]},
            description="2 trials on digits: a 64-unit MLP (2 epochs, 1 of energy "
                        "fine-tuning) and its G-ODIN version (2 epochs)",
        ),
        "local": Profile(
            seeds=3,  # 3 seeds, as alpha_flow's local profile
            config=BASE,
            grid={"setup": [ENERGY_LOCAL, GODIN_LOCAL]},
            description="digits: a 540-unit MLP (the local flow's 331k parameters) with "
                        "energy fine-tuning, and its G-ODIN version; 3 seeds",
        ),
        "paper": Profile(
            seeds=3,  # as the alpha_flow paper profile it is compared with
            config=BASE,
            grid={"setup": [{**data, **method} for data in PAPER_DATA
                            for method in (ENERGY_PAPER, GODIN_PAPER)]},
            num_workers=1,
            gpus_per_worker=1.0,
            cpus_per_worker=4,
            description="FashionMNIST and CIFAR-10: the CNN at the flow presets' parameter "
                        "counts, energy fine-tuning with MNIST / SVHN, and G-ODIN; one GPU "
                        "per trial",
        ),
    },
    table_keys=("dataset", "arch"),
    table_metrics=("num_params", "test_acc", "test_acc_ft", "auroc_msp", "auroc_energy",
                   "auroc_energy_ft", "auroc_mahalanobis", "auroc_mahalanobis_lee",
                   "auroc_gradnorm", "auroc_godin",
                   "energy_in_after", "energy_out_after"),
    choices={
        "dataset": ("digits", "fashionmnist", "cifar10"),  # those with an outlier pairing
        "arch": ("mlp", "cnn", "godin_mlp", "godin_cnn"),  # the ones `width` sizes
        "optimizer": ("adam", "sgd"),
        "augment": ("none", "translate_flip"),
        "budget": ("A", "B"),
        "outlier_set": OUTLIER_SETS,
    },
    positive=("lr", "batch_size", "reference_batch_size", "epochs_b", "num_bins",
              "energy_lr", "energy_batch_size", "outlier_batch_size", "energy_weight",
              "checkpoint_seconds"),
    claims=CLAIMS,
    beside=(BASELINES_BESIDE,),
)
