"""The documents' tables in their own layout, ours beside theirs (`published`): thesis Table
3.1 (ID -> OOD rows; G-ODIN, Mahalanobis, Energy and approximate-mass columns; its
baseline columns beside the `ood_baselines` sweep in `table_3_1_baselines`) and the
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
             f"cells AUROC/AUPR-in/TNR95; G-ODIN: the `ood_baselines` sweep.\n",
             pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True)]
    if not any((dataset, s) in published.TABLE_3_1 for s in rows.ood_set.unique()):
        parts += _thesis_rows(dataset, published.TABLE_3_1_METHODS)
    return "\n".join(parts)


def _thesis_rows(dataset: str, methods) -> list[str]:
    """Where our data is not the thesis': a note, then Table 3.1's rows with its `methods`
    columns (AUROC/AUPR/TNR95)."""
    rows = [{"ID -> OOD": f"{i} -> {o}",
             **{m: "/".join(_short(v) for v in cells[m]) for m in methods}}
            for (i, o), cells in published.TABLE_3_1.items()]
    return ["", DIFFERENT_DATA.format(ours=dataset) + " The thesis' rows:\n",
            pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)]


# Our scores beside the thesis' baselines in `table_3_1_baselines` (none in the thesis).
BASELINE_EXTRAS = {"energy (no fine-tuning)": "energy", "MSP": "msp", "GradNorm": "gradnorm"}


def table_3_1_baselines(ood: pd.DataFrame, dataset: str) -> str:
    """Thesis Table 3.1's G-ODIN, Mahalanobis and Energy columns beside the `ood_baselines`
    sweep: rows ID -> OOD set, cells AUROC/AUPR-in/TNR95 (mean over seeds) of our score for
    each column (`published.TABLE_3_1_BASELINE_SCORES`), the thesis' after it where it has
    the pair. G-ODIN comes from the G-ODIN trials (arch `godin_*`), every other score from
    the plain classifiers; then our energy before fine-tuning, MSP and GradNorm."""
    godin = ood["arch"].astype(str).str.startswith("godin") if "arch" in ood \
        else pd.Series(False, index=ood.index)
    columns = {**published.TABLE_3_1_BASELINE_SCORES, **BASELINE_EXTRAS}
    lines = []
    for ood_set, group in ood.groupby("ood_set", sort=True):
        thesis = published.TABLE_3_1.get((dataset, ood_set), {})
        line = {"ID -> OOD": f"{dataset} -> {ood_set}"}
        for column, score in columns.items():
            trials = godin[group.index] if score == "godin" else ~godin[group.index]
            ours = group[trials & (group.score == score)]
            cell = "/".join(_short(ours[m].mean()) for m in ("auroc", "aupr_in", "tnr95")) \
                if len(ours) else "–"
            if column in thesis:
                cell += " (thesis " + "/".join(_short(v) for v in thesis[column]) + ")"
            line[column] = cell
        lines.append(line)
    parts = [f"Source: {published.TABLE_3_1_SOURCE}. Ours: mean over seeds, cells "
             f"AUROC/AUPR-in/TNR95 on balanced ID/OOD counts; Energy is the energy score "
             f"after fine-tuning with outliers, as the thesis trained it.\n",
             pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True)]
    if not any((dataset, s) in published.TABLE_3_1 for s in ood.ood_set.unique()):
        parts += _thesis_rows(dataset, published.TABLE_3_1_BASELINE_SCORES)
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
    thesis = published.CLASS_ANOMALY.get(table, {})
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
            line[f"thesis {method}"] = _short(values[int(normal_class)]) \
                if int(normal_class) < len(values) else "–"
        lines.append(line)
    if not lines:
        return ""
    average = {"normal class": "average",
               **{label: _short(pd.Series(means[score]).mean()) for score, label in ours.items()},
               **{f"thesis {m}": _short(v)
                  for m, v in published.CLASS_ANOMALY_AVERAGE.get(table, {}).items()}}
    source = {"mnist": published.TABLE_3_2_SOURCE, "cifar10": published.TABLE_3_3_SOURCE}
    parts = [f"Source: {source.get(table, 'none for this dataset')}. Ours: AUROC of the "
             f"normal class's test inputs against all the other classes' test inputs, "
             f"the flow's scores at alpha = 2.\n",
             pd.DataFrame([*lines, average]).to_markdown(index=False, disable_numparse=True)]
    if dataset != table:
        parts += ["", DIFFERENT_DATA.format(ours=dataset)]
    return "\n".join(parts)


def _pct(values: pd.Series, std: bool = True) -> str:
    """Mean (± std) over seeds of fractions, in % as document 003 prints them."""
    values = values.dropna().to_numpy() * 100
    if len(values) == 0:
        return "–"
    return f"{values.mean():.2f}" + (f" ± {values.std(ddof=1):.2f}"
                                     if std and len(values) > 1 else "")


def _triple(values: tuple[float, float, float]) -> str:
    return "/".join("–" if v != v else f"{v:.2f}" for v in values)


def feature_gmm_ood(ood: pd.DataFrame) -> str:
    """Document 003 Tables 1-3 beside ours: per model and ID -> OOD pair, AUROC ± std over
    seeds, then AUPR-in / AUPR-out (%, means) of GMM (its largest K), Mahalanobis and
    calibrated MSP, with the document's three (DenseNet-100 / WRN-28-10, 5 runs) after them
    where it has the pair."""
    methods = published.FEATURE_GMM_METHODS
    rows = ood[ood.score.isin(methods.values())]
    keys = [k for k in ("arch", "dataset") if k in rows.columns]
    lines, matched = [], False
    for group_keys, group in rows.groupby([*keys, "ood_set"], sort=True):
        values = dict(zip([*keys, "ood_set"], group_keys))
        theirs = published.FEATURE_GMM_OOD.get(values.get("arch"), {}).get(
            (values.get("dataset"), values["ood_set"]))
        matched |= theirs is not None
        line = {"model": values.get("arch", "?"),
                "ID -> OOD": f"{values.get('dataset', '?')} -> {values['ood_set']}"}
        for i, (method, score) in enumerate(methods.items()):
            ours = group[group.score == score]
            line[method] = (_pct(ours.auroc) + " / " + _pct(ours.aupr_in, std=False) + " / "
                            + _pct(ours.aupr_out, std=False)
                            + (f" (003: {_triple(theirs[i])})" if theirs else ""))
        lines.append(line)
    if not lines:
        return ""
    parts = [f"Source: {published.FEATURE_GMM_OOD_SOURCE}. Cells: AUROC / AUPR-in / AUPR-out "
             f"(%); ours mean over seeds (AUROC ± std), our GMM the largest K of the sweep.\n",
             pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True)]
    if not matched:
        parts += ["", "Our data and models are not the document's (CIFAR with DenseNet-100 "
                      "/ WRN-28-10): orderings compare, values do not."]
    return "\n".join(parts)


def feature_gmm_purification(purification: pd.DataFrame) -> str:
    """Document 003 Table 4 beside ours: test accuracy change (points) from purification
    per model, eps and nu; ours mean ± std over seeds, the document's (CIFAR-100) after."""
    rows = purification[purification.split == "test"]
    if rows.empty:
        return ""
    lines = []
    for (arch, eps, nu), group in rows.groupby(["arch", "eps", "nu"], sort=True):
        theirs = published.FEATURE_GMM_PURIFICATION.get(arch, {})
        change = group.accuracy_after - group.accuracy_before
        line = {"model": arch, "eps": eps, "nu": nu, "ours: accuracy change": _pct(change),
                "ours: fixed / broken": f"{group.fixed.mean():.1f} / {group.broken.mean():.1f}"}
        if (eps, nu) in theirs:
            line["003: accuracy change"] = f"{theirs[(eps, nu)] - theirs['original']:+.2f}"
        lines.append(line)
    return (f"Source: {published.FEATURE_GMM_PURIFICATION_SOURCE} (CIFAR-100, GMM-1000; "
            f"at most +0.6 points). Ours: test split, points of accuracy.\n\n"
            + pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True))


def feature_gmm_mistakes(mistakes: pd.DataFrame) -> str:
    """Section 4.1 beside ours: the Mann-Whitney p-value per model and score (the largest
    over seeds) and the document's for GMM-100 and an image PixelCNN."""
    keys = [k for k in ("arch", "dataset") if k in mistakes.columns]
    table = (mistakes.groupby([*keys, "score"], sort=True)
             .agg(auroc=("auroc", "mean"), p_max=("mw_p", "max")).reset_index())
    table["p_max"] = table.p_max.map(lambda p: f"{p:.2g}")
    table["auroc"] = table.auroc.map(lambda a: f"{a:.3f}")
    theirs = "; ".join(f"{k}: p = {v:.3g}" for k, v in published.FEATURE_GMM_MISTAKES_P.items())
    return (f"Source: {published.FEATURE_GMM}, section 4.1 (DenseNet-100, CIFAR-100; "
            f"{theirs}). Ours: mean AUROC and the largest p over seeds.\n\n"
            + table.to_markdown(index=False, disable_numparse=True))


def vae_latent_svm(svm: pd.DataFrame) -> str:
    """Document 002 Table 3.1 beside ours: held-out accuracy of a linear SVM separating ID
    (positive) from OOD (negative) codes; ours mean ± std over seeds per decoder, beta and
    representation (posterior means with eval / adapted encoder BN; the raw-pixel control),
    then the document's rows (CelebA and CIFAR-10 VAEs / GAN-VAEs)."""
    keys = [k for k in ("decoder", "beta") if k in svm.columns]
    lines = []
    for group_keys, group in svm.groupby([*keys, "representation", "positive", "negative"],
                                         sort=True):
        values = dict(zip([*keys, "representation", "positive", "negative"], group_keys))
        lines.append({**values, "Pos. Acc.": _mean_std(group.pos_acc),
                      "Neg. Acc.": _mean_std(group.neg_acc), "codes per class": int(
                          group.n.mean())})
    theirs = pd.DataFrame([{"model": m, "positive": p, "negative": n, "Pos. Acc.": f"{a:.3f}",
                            "Neg. Acc.": f"{b:.3f}"}
                           for (m, p, n), (a, b) in published.VAE_SVM.items()])
    return (f"Source: {published.VAE_SVM_SOURCE} (\"All accuracy is above 0.900\"). Ours: "
            f"half of the codes of each class train the SVM, the other half test it; a "
            f"negative `<dataset> train` is the ID control (training vs test inputs: no "
            f"separation expected).\n\n"
            + pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True)
            + "\n\nThe document's:\n\n" + theirs.to_markdown(index=False,
                                                            disable_numparse=True))


def _mean_std(values: pd.Series) -> str:
    values = values.dropna()
    if len(values) < 2:
        return f"{values.mean():.3f}" if len(values) else "–"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"
