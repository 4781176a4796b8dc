"""The documents' published numbers, each cited by document file and table, for the reports
that print ours beside them (NOTES.md B, C, D, G; the texts in ../shared/research/seeds/).

Values are as printed: AUROC / AUPR / TNR at 95% TPR as fractions, accuracies as fractions.
"""

from __future__ import annotations

THESIS = "000_69df910f6efc69b5.txt (Chali 2024)"
FEATURE_GMM = "003_455f8143a7d4c424.txt (Shao, Song, Ermon)"

# Thesis Table 3.1: OOD detection, ID -> OOD: method -> (AUROC, AUPR, TNR95).
TABLE_3_1_SOURCE = f"{THESIS}, Table 3.1"
TABLE_3_1_METHODS = ("G-ODIN", "Mahalanobis", "Energy", "approx. mass")
TABLE_3_1: dict[tuple[str, str], dict[str, tuple[float, float, float]]] = {
    ("cifar10", "svhn"): {"G-ODIN": (.810, .804, .355), "Mahalanobis": (.936, .926, .758),
                          "Energy": (.999, 1.0, 1.0), "approx. mass": (.969, .969, 1.0)},
    ("cifar10", "inaturalist"): {"G-ODIN": (.581, .552, .124),
                                 "Mahalanobis": (.745, .715, .290),
                                 "Energy": (.647, .902, .872),
                                 "approx. mass": (.968, .906, .994)},
    # the thesis' "iNaturalist (plants)" row; our loader's OOD set of that name
    ("cifar10", "inaturalist_plants"): {"G-ODIN": (.581, .552, .124),
                                        "Mahalanobis": (.731, .706, .166),
                                        "Energy": (.587, .881, .077),
                                        "approx. mass": (.968, .799, .991)},
    ("cifar10", "dtd"): {"G-ODIN": (.882, .887, .53), "Mahalanobis": (.857, .788, .576),
                         "Energy": (.734, .912, .341), "approx. mass": (.978, .979, 1.0)},
    ("cifar10", "places365"): {"G-ODIN": (.616, .577, .157), "Mahalanobis": (.522, .518, .08),
                               "Energy": (.753, .937, .177),
                               "approx. mass": (.968, .936, .978)},
    ("cifar10", "gtsrb"): {"G-ODIN": (.411, .450, .072), "Mahalanobis": (.764, .681, .356),
                           "Energy": (.890, .975, .582), "approx. mass": (.970, .970, 1.0)},
    ("fashionmnist", "mnist"): {"G-ODIN": (.535, .611, .008),
                                "Mahalanobis": (.995, .995, .994),
                                "Energy": (1.0, 1.0, 1.0), "approx. mass": (.994, .971, 1.0)},
    ("fashionmnist", "emnist"): {"G-ODIN": (.870, .885, .425),
                                 "Mahalanobis": (.995, .995, .982),
                                 "Energy": (.990, .998, .955),
                                 "approx. mass": (.969, .969, 1.0)},
    ("fashionmnist", "kmnist"): {"G-ODIN": (.328, .391, .019),
                                 "Mahalanobis": (.990, .990, .948),
                                 "Energy": (.981, .995, .917),
                                 "approx. mass": (1.0, .996, 1.0)},
}
# Our score for each Table 3.1 column on a flow (G-ODIN needs its own network: the
# `ood_baselines` sweep, below).
TABLE_3_1_SCORES = {"Mahalanobis": "mahalanobis", "Energy": "energy",
                    "approx. mass": "neg_am"}
# The `ood_baselines` sweep's score for each baseline column: G-ODIN's on the G-ODIN network;
# Energy the fine-tuned copy's (the thesis trained it with SVHN / MNIST outliers).
TABLE_3_1_BASELINE_SCORES = {"G-ODIN": "godin", "Mahalanobis": "mahalanobis",
                             "Energy": "energy_ft"}

# Thesis Tables 3.2 (MNIST) and 3.3 (CIFAR-10): class anomaly detection, AUROC per normal
# class; the thesis' approximate mass (penalized RealNVP) and the baselines it quotes.
TABLE_3_2_SOURCE = f"{THESIS}, Table 3.2 (MNIST)"
TABLE_3_3_SOURCE = f"{THESIS}, Table 3.3 (CIFAR-10)"
CLASS_ANOMALY: dict[str, dict[str, tuple[float, ...]]] = {
    "mnist": {"GradCon": (.995, .999, .952, .973, .969, .977, .994, .979, .919, .973),
              "OCGAN": (.998, .999, .942, .963, .975, .980, .991, .981, .939, .981),
              "approx. mass": (.969, .064, .629, .924, .796, .946, .977, .682, .969, .572)},
    "cifar10": {"GradCon": (.760, .598, .648, .586, .733, .603, .684, .567, .784, .678),
                "OCGAN": (.757, .531, .640, .620, .723, .620, .723, .575, .820, .554),
                "approx. mass": (.855, .605, .756, .835, .574, .801, .797, .862, .871,
                                 .656)},
}
CLASS_ANOMALY_AVERAGE = {"mnist": {"GradCon": .973, "OCGAN": .975, "approx. mass": .752},
                         "cifar10": {"GradCon": .664, "OCGAN": .657, "approx. mass": .761}}

# Thesis Tables 4.1-4.4 (MNIST, APGD-CE, eps 8/255), by alpha.
TABLES_4_SOURCE = f"{THESIS}, Tables 4.1-4.4"
TABLES_4 = {
    2.0: {"detection": {"auroc": 1.0, "aupr": 1.0, "tnr95": 1.0, "accuracy": 0.922},
          "restored_accuracy": 0.481, "defense_accuracy": 0.608,
          "adaptive_defense_accuracy": 0.619},
    0.0: {"detection": {"auroc": 0.056, "aupr": 0.318, "tnr95": 0.0, "accuracy": 0.5},
          "restored_accuracy": 0.107, "defense_accuracy": 0.329,
          "adaptive_defense_accuracy": 0.331},
}

# Document 003, OOD detection (its Tables 1-3): (AUROC, AUPR-in, AUPR-out) in %, mean over
# 5 runs, of GMM-1000, Mahalanobis and calibrated (temperature-scaled) scores, by
# architecture; our score names. NaN: unreadable in the source text.
FEATURE_GMM_OOD_SOURCE = f"{FEATURE_GMM}, Tables 1-3"
FEATURE_GMM_METHODS = {"GMM (003: K = 1000)": "gmm", "Mahalanobis": "mahalanobis",
                       "Calibrated": "msp_calibrated"}
_NAN = float("nan")
FEATURE_GMM_OOD = {
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
FEATURE_GMM_PURIFICATION_SOURCE = f"{FEATURE_GMM}, Appendix B, Table 4"
FEATURE_GMM_PURIFICATION = {
    "densenet100": {"original": 72.74, (0.1, 0.0): 73.39, (0.1, 0.01): 73.39,
                    (0.1, 0.1): 73.28, (0.1, 1.0): 72.89, (0.01, 0.0): 72.95,
                    (0.01, 0.01): 72.95, (0.01, 0.1): 72.95, (0.01, 1.0): 72.86},
    "wrn28_10": {"original": 80.10, (0.1, 0.0): 79.73, (0.1, 0.01): 79.75,
                 (0.1, 0.1): 79.87, (0.1, 1.0): 80.11, (0.01, 0.0): 80.10,
                 (0.01, 0.01): 80.10, (0.01, 0.1): 80.10, (0.01, 1.0): 80.11},
}
# Section 4.1: the Mann-Whitney p-value of GMM-100's log-likelihood, correct vs wrong
# (DenseNet-100, CIFAR-100), and of an image PixelCNN's.
FEATURE_GMM_MISTAKES_P = {"GMM-100": 1.9e-13, "PixelCNN (image space)": 8.58e-5}

# Document 002, Table 3.1: a linear SVM trained to separate latent codes, the ID set
# positive; (model, positive, negative) -> (Pos. Acc., Neg. Acc.) on held-out codes.
VAE_OOD = "002_a1c432f711091ffb.txt (MSc thesis on likelihood-based OOD detection)"
VAE_SVM_SOURCE = f"{VAE_OOD}, Table 3.1"
VAE_SVM = {("VAE", "celeba", "celeba"): (1.000, 0.000),
           ("VAE", "celeba", "svhn"): (0.986, 0.920),
           ("VAE (BN train)", "celeba", "svhn"): (0.920, 0.980),
           ("GAN-VAE", "celeba", "lsun"): (0.930, 0.960),
           ("GAN-VAE", "cifar10", "svhn"): (0.934, 0.947)}
