"""The documents' tables in their own layout, ours beside theirs (`published`): thesis Table
3.1 (ID -> OOD rows; G-ODIN, Mahalanobis, Energy and approximate-mass columns) and the
class-anomaly Tables 3.2 / 3.3 (a row per normal class, and the average). Ours is the mean
over seeds of the thesis' setting, alpha = 2 (its penalized flow); where our data is not
the document's (digits), the report says that direction and size compare, values do not.
"""

from __future__ import annotations

import pandas as pd

from orchestrator.reports import published
from orchestrator.reports.aggregate import interval_text
from workloads.uncertainty import t_interval

DIFFERENT_DATA = ("Our data is not the thesis' ({ours} here): direction and size are "
                  "comparable, values are not.")
# Our datasets whose class-anomaly results compare with a thesis table.
CLASS_TABLES = {"mnist": "mnist", "digits": "mnist", "cifar10": "cifar10"}


def _short(value: float) -> str:
    """.969 as the thesis prints it (1.0 for one)."""
    if value != value:
        return "–"
    text = f"{value:.3f}"
    return "1.0" if text == "1.000" else text.lstrip("0")


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
        thesis = published.TABLE_3_1.get((dataset, ood_set), {})
        name = f"{dataset} -> {ood_set}" + (f" ({keys[0]})" if split else "")
        line = {"ID -> OOD": name}
        for method in published.TABLE_3_1_METHODS:
            score = published.TABLE_3_1_SCORES.get(method)
            ours = group[group.score == score] if score else group.iloc[0:0]
            cell = "/".join(_short(ours[m].mean()) for m in ("auroc", "aupr_in", "tnr95")) \
                if len(ours) else "–"
            if method in thesis:
                cell += " (thesis " + "/".join(_short(v) for v in thesis[method]) + ")"
            line[method] = cell
        lines.append(line)
    parts = [f"Source: {published.TABLE_3_1_SOURCE}. Ours: alpha = 2, mean over seeds; "
             f"cells AUROC/AUPR-in/TNR95; G-ODIN is not among our scores yet.\n",
             pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True)]
    if not any((dataset, s) in published.TABLE_3_1 for s in rows.ood_set.unique()):
        thesis_rows = [{"ID -> OOD": f"{i} -> {o}",
                        **{m: "/".join(_short(v) for v in cells[m])
                           for m in published.TABLE_3_1_METHODS}}
                       for (i, o), cells in published.TABLE_3_1.items()]
        parts += ["", DIFFERENT_DATA.format(ours=dataset) + " The thesis' rows:\n",
                  pd.DataFrame(thesis_rows).to_markdown(index=False, disable_numparse=True)]
    return "\n".join(parts)


def class_anomaly(ood: pd.DataFrame, dataset: str) -> str:
    """Tables 3.2 / 3.3 beside ours: per normal class, our AUROC of -AM and log p(x)
    against the other classes (mean [95% t-interval] over seeds, alpha = 2) and the
    thesis' approximate mass, GradCon and OCGAN; the average over classes last."""
    rows = _at_thesis_alpha(ood[(ood.normal_class >= 0) & (ood.ood_set == "other_classes")])
    table = CLASS_TABLES.get(dataset)
    thesis = published.CLASS_ANOMALY.get(table, {})
    lines, means = [], {"neg_am": [], "log_px": []}
    for normal_class, group in rows.groupby("normal_class", sort=True):
        line = {"normal class": int(normal_class)}
        for score, label in (("neg_am", "ours -AM"), ("log_px", "ours log p(x)")):
            values = group.loc[group.score == score, "auroc"].to_numpy()
            stats = t_interval(values)
            line[label] = interval_text(stats["mean"], stats["lo"], stats["hi"])
            means[score].append(stats["mean"])
        for method, values in thesis.items():
            line[f"thesis {method}"] = _short(values[int(normal_class)]) \
                if int(normal_class) < len(values) else "–"
        lines.append(line)
    if not lines:
        return ""
    average = {"normal class": "average",
               "ours -AM": _short(pd.Series(means["neg_am"]).mean()),
               "ours log p(x)": _short(pd.Series(means["log_px"]).mean()),
               **{f"thesis {m}": _short(v)
                  for m, v in published.CLASS_ANOMALY_AVERAGE.get(table, {}).items()}}
    source = {"mnist": published.TABLE_3_2_SOURCE, "cifar10": published.TABLE_3_3_SOURCE}
    parts = [f"Source: {source.get(table, 'none for this dataset')}. Ours: AUROC of the "
             f"normal class's test inputs against a seeded sample of the other classes', "
             f"alpha = 2.\n",
             pd.DataFrame([*lines, average]).to_markdown(index=False, disable_numparse=True)]
    if dataset != table:
        parts += ["", DIFFERENT_DATA.format(ours=dataset)]
    return "\n".join(parts)
