"""The thesis' tables that several sweeps print beside theirs (NOTES.md B, E, G): Table 3.1
(OOD detection: ID -> OOD rows; G-ODIN, Mahalanobis, Energy and approximate-mass columns),
its baseline columns beside the `ood_baselines` sweep, and the class-anomaly Tables 3.2 /
3.3 (a row per normal class, and the average). The thesis' numbers are as printed (AUROC /
AUPR / TNR at 95% TPR as fractions), each cited by table. Ours is the mean over seeds of the
thesis' setting, alpha = 2 (its penalized flow); where our data is not the thesis'
(digits), the table says that direction and size compare, values do not.
"""

from __future__ import annotations

import pandas as pd

from search_spaces import Beside, SweepResults
from search_spaces._tables.cells import DIFFERENT_DATA, metric_triple, short
from workloads.evaluation.uncertainty import interval_text, t_interval

THESIS = "000_69df910f6efc69b5.txt (Chali 2024)"

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

# Our datasets whose class-anomaly results compare with a thesis table.
CLASS_TABLES = {"mnist": "mnist", "digits": "mnist", "cifar10": "cifar10"}


def _at_thesis_alpha(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["alpha"] == 2.0] if "alpha" in frame and (frame.alpha == 2.0).any() \
        else frame


def table_3_1(ood: pd.DataFrame, dataset: str) -> str:
    """Thesis Table 3.1 beside ours: rows ID -> OOD set (and dequantization), cells
    AUROC/AUPR-in/TNR95 of our score for each thesis column, the thesis' figure after it
    where the thesis has the pair."""
    rows = _at_thesis_alpha(ood[ood.get("normal_class", -1) < 0] if "normal_class" in ood
                            else ood)
    split = ["dequantization"] if "dequantization" in rows and rows.dequantization.nunique() \
        > 1 else []
    lines = []
    for keys, group in rows.groupby([*split, "ood_set"], sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        ood_set = keys[-1]
        thesis = TABLE_3_1.get((dataset, ood_set), {})
        name = f"{dataset} -> {ood_set}" + (f" ({keys[0]})" if split else "")
        line = {"ID -> OOD": name}
        for method in TABLE_3_1_METHODS:
            score = TABLE_3_1_SCORES.get(method)
            ours = group[group.score == score] if score else group.iloc[0:0]
            line[method] = _cell(ours, thesis, method)
        lines.append(line)
    parts = [f"Source: {TABLE_3_1_SOURCE}. Ours: alpha = 2, mean over seeds; "
             f"cells AUROC/AUPR-in/TNR95; G-ODIN: the `ood_baselines` sweep.\n",
             pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True)]
    if not any((dataset, s) in TABLE_3_1 for s in rows.ood_set.unique()):
        parts += _thesis_rows(dataset, TABLE_3_1_METHODS)
    return "\n".join(parts)


def _cell(ours: pd.DataFrame, thesis: dict, column: str) -> str:
    """Our AUROC/AUPR-in/TNR95, then the thesis' for `column` where it has the pair."""
    cell = metric_triple(ours)
    if column in thesis:
        cell += " (thesis " + "/".join(short(v) for v in thesis[column]) + ")"
    return cell


def _thesis_rows(dataset: str, methods) -> list[str]:
    """Where our data is not the thesis': a note, then Table 3.1's rows with its `methods`
    columns (AUROC/AUPR/TNR95)."""
    rows = [{"ID -> OOD": f"{i} -> {o}",
             **{m: "/".join(short(v) for v in cells[m]) for m in methods}}
            for (i, o), cells in TABLE_3_1.items()]
    return ["", DIFFERENT_DATA.format(ours=dataset) + " The thesis' rows:\n",
            pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)]


# Our scores beside the thesis' baselines in `table_3_1_baselines` (none in the thesis).
BASELINE_EXTRAS = {"energy (no fine-tuning)": "energy", "MSP": "msp", "GradNorm": "gradnorm"}


def table_3_1_baselines(ood: pd.DataFrame, dataset: str) -> str:
    """Thesis Table 3.1's G-ODIN, Mahalanobis and Energy columns beside the `ood_baselines`
    sweep: rows ID -> OOD set, cells AUROC/AUPR-in/TNR95 (mean over seeds) of our score for
    each column (`TABLE_3_1_BASELINE_SCORES`), the thesis' after it where it has
    the pair. G-ODIN comes from the G-ODIN trials (arch `godin_*`), every other score from
    the plain classifiers; then our energy before fine-tuning, MSP and GradNorm."""
    godin = ood["arch"].astype(str).str.startswith("godin") if "arch" in ood \
        else pd.Series(False, index=ood.index)
    columns = {**TABLE_3_1_BASELINE_SCORES, **BASELINE_EXTRAS}
    lines = []
    for ood_set, group in ood.groupby("ood_set", sort=True):
        thesis = TABLE_3_1.get((dataset, ood_set), {})
        line = {"ID -> OOD": f"{dataset} -> {ood_set}"}
        for column, score in columns.items():
            trials = godin[group.index] if score == "godin" else ~godin[group.index]
            ours = group[trials & (group.score == score)]
            line[column] = _cell(ours, thesis, column)
        lines.append(line)
    parts = [f"Source: {TABLE_3_1_SOURCE}. Ours: mean over seeds, cells "
             f"AUROC/AUPR-in/TNR95 on balanced ID/OOD counts; Energy is the energy score "
             f"after fine-tuning with outliers, as the thesis trained it.\n",
             pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True)]
    if not any((dataset, s) in TABLE_3_1 for s in ood.ood_set.unique()):
        parts += _thesis_rows(dataset, TABLE_3_1_BASELINE_SCORES)
    return "\n".join(parts)


# Our class-anomaly scores and their columns in Tables 3.2 / 3.3.
CLASS_ANOMALY_SCORES = {"neg_am": "ours -AM", "log_px": "ours log p(x)",
                        "gradcon": "ours GradCon", "ocgan": "ours OCGAN"}


def class_anomaly(ood: pd.DataFrame, dataset: str) -> str:
    """Tables 3.2 / 3.3 beside ours: per normal class, our AUROC against the other classes
    (mean [95% t-interval] over seeds, alpha = 2) of each score of `CLASS_ANOMALY_SCORES`
    the sweep has (-AM and log p(x) of alpha_flow; GradCon's and OCGAN's of class_anomaly)
    and the thesis' approximate mass, GradCon and OCGAN; the average over classes last."""
    rows = _at_thesis_alpha(ood[(ood.normal_class >= 0) & (ood.ood_set == "other_classes")])
    table = CLASS_TABLES.get(dataset)
    thesis = CLASS_ANOMALY.get(table, {})
    ours = {s: label for s, label in CLASS_ANOMALY_SCORES.items() if s in set(rows.score)}
    lines, means = [], {score: [] for score in ours}
    for normal_class, group in rows.groupby("normal_class", sort=True):
        line = {"normal class": int(normal_class)}
        for score, label in ours.items():
            values = group.loc[group.score == score, "auroc"].to_numpy()
            stats = t_interval(values)
            line[label] = interval_text(stats["mean"], stats["lo"], stats["hi"])
            means[score].append(stats["mean"])
        for method, values in thesis.items():
            line[f"thesis {method}"] = short(values[int(normal_class)]) \
                if int(normal_class) < len(values) else "–"
        lines.append(line)
    if not lines:
        return ""
    average = {"normal class": "average",
               **{label: short(pd.Series(means[score]).mean()) for score, label in ours.items()},
               **{f"thesis {m}": short(v)
                  for m, v in CLASS_ANOMALY_AVERAGE.get(table, {}).items()}}
    source = {"mnist": TABLE_3_2_SOURCE, "cifar10": TABLE_3_3_SOURCE}
    parts = [f"Source: {source.get(table, 'none for this dataset')}. Ours: AUROC of the "
             f"normal class's test inputs against all the other classes' test inputs, "
             f"the flow's scores at alpha = 2.\n",
             pd.DataFrame([*lines, average]).to_markdown(index=False, disable_numparse=True)]
    if dataset != table:
        parts += ["", DIFFERENT_DATA.format(ours=dataset)]
    return "\n".join(parts)


def _table_3_1(results: SweepResults) -> str:
    ood = results.ood
    flow_rows = ood[ood.normal_class < 0] if "normal_class" in ood else ood
    if ood.empty or not {"mahalanobis", "energy", "neg_am"} & set(flow_rows.score):
        return ""
    return table_3_1(ood, results.dataset)


def _table_3_1_baselines(results: SweepResults) -> str:
    if results.ood.empty or not {"godin", "energy_ft"} & set(results.ood.score):
        return ""
    return table_3_1_baselines(results.ood, results.dataset)


def _class_anomaly(results: SweepResults) -> str:
    ood = results.ood
    if ood.empty or "normal_class" not in ood or not (ood.normal_class >= 0).any():
        return ""
    return class_anomaly(ood, results.dataset)


TABLE_3_1_BESIDE = Beside("Thesis Table 3.1 (OOD detection) beside ours", _table_3_1)
BASELINES_BESIDE = Beside("Thesis Table 3.1 baselines (G-ODIN, Mahalanobis, Energy) beside "
                          "ours", _table_3_1_baselines)
CLASS_ANOMALY_BESIDE = Beside("Thesis Tables 3.2 / 3.3 (class anomaly detection) beside ours",
                              _class_anomaly)
