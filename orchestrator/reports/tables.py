"""Tables in markdown: a sweep's trials and its OOD results (Table 3.1 style), the long
tables a search space declares, the defense's Tables 4.1-4.4 beside the thesis, and the
detectors under attack."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from orchestrator.reports import published
from orchestrator.reports.aggregate import SEED
from search_spaces import ResultTable, SearchSpace
from search_spaces._tables.cells import group_rows
from workloads.evaluation.detector_evaluation import summary_groups
from workloads.evaluation.uncertainty import interval_text, t_interval

if TYPE_CHECKING:
    from orchestrator.jobs.profiles import DefenseProfile


def trial_keys(table: pd.DataFrame, space: SearchSpace) -> list[str]:
    """The columns that name a trial in reports: the space's key columns, and the seed
    where the sweep ran several."""
    keys = [k for k in space.table_keys if k in table.columns]
    if SEED in table.columns and table[SEED].nunique() > 1:
        keys.append(SEED)
    return keys


def sort_table(table: pd.DataFrame, space: SearchSpace) -> pd.DataFrame:
    keys = trial_keys(table, space)
    return table.sort_values(keys, kind="stable").reset_index(drop=True) if keys else table


def markdown_table(table: pd.DataFrame, space: SearchSpace) -> str:
    """The key columns of every trial as a markdown table: config values (a searched lr)
    to 4 significant digits, so that draws 1.1e-4 and 1.3e-4 differ; metrics to 4
    decimals."""
    keys = trial_keys(table, space)
    columns = keys + [m for m in space.table_metrics if m in table.columns]
    columns += [c for c in ("status", "diverged_epoch", "error") if c in table.columns]
    formats = [".4g"] * len(keys) + [".4f"] * (len(columns) - len(keys))
    return sort_table(table, space)[columns].to_markdown(index=False, floatfmt=formats)


def trial_label(trial: pd.Series, space: SearchSpace) -> str:
    keys = [*space.table_keys, SEED]
    return ", ".join(f"{k}={trial[k]}" for k in keys if k in trial.index)


def _cell(row: pd.Series) -> str:
    """AUROC/AUPR-in/TNR95 as the thesis prints them: .969/.969/1.0."""
    def short(value: float) -> str:
        if value != value:
            return "nan"
        text = f"{value:.3f}"
        return "1.0" if text == "1.000" else text.lstrip("0")

    return "/".join(short(row[m]) for m in ("auroc", "aupr_in", "tnr95"))


def _auroc_cell(rows: pd.DataFrame) -> str:
    """AUROC of one configuration, score and OOD set: over seeds, the mean and 95%
    t-interval; with one seed, the value and its 95% bootstrap interval over test inputs."""
    if len(rows) > 1:
        stats = t_interval(rows["auroc"].to_numpy())
        return interval_text(stats["mean"], stats["lo"], stats["hi"])
    row = rows.iloc[0]
    return interval_text(row["auroc"], row.get("auroc_lo", math.nan),
                         row.get("auroc_hi", math.nan))


def ood_markdown(table: pd.DataFrame, ood: pd.DataFrame, space: SearchSpace) -> str:
    """Table-3.1-style report: AUROC per configuration and OOD set (over seeds, or with its
    bootstrap interval), then per trial rows ID -> OOD set, columns scores, cells
    AUROC/AUPR-in/TNR95."""
    if ood.empty:
        return ""
    keys = [k for k in space.table_keys if k in ood.columns]
    seeds = ood[SEED].nunique() if SEED in ood.columns else 1
    summary = (ood.groupby([*keys, "ood_set", "score"], sort=True, dropna=False)
               .apply(_auroc_cell, include_groups=False).unstack("score").reset_index())
    summary.columns.name = None
    what = (f"mean over {seeds} seeds [95% t-interval]" if seeds > 1 else
            "[95% bootstrap interval over the test inputs]")
    parts = [f"# {space.name}: OOD detection\n",
             "In-distribution is the positive class; every pair uses balanced ID/OOD counts.\n",
             f"## AUROC per configuration and OOD set ({what})\n",
             summary.to_markdown(index=False, disable_numparse=True),
             "\n## Per trial: AUROC/AUPR-in/TNR95 (columns: scores)\n"]
    by_id = table.set_index("trial_id") if "trial_id" in table.columns else None
    for trial_id, rows in ood.groupby("trial_id", sort=False):
        trial = by_id.loc[trial_id] if by_id is not None and trial_id in by_id.index else None
        dataset = trial["dataset"] if trial is not None and "dataset" in trial.index else "ID"
        grid = rows.assign(cell=rows.apply(_cell, axis=1)).pivot_table(
            index="ood_set", columns="score", values="cell", aggfunc="first", sort=False)
        grid.index = [f"{dataset} -> {name}" for name in grid.index]
        label = trial_label(trial, space) if trial is not None else trial_id
        parts += [f"### {label} (trial {trial_id})\n", grid.to_markdown(), ""]
    return "\n".join(parts) + "\n"


# --- a study's own long tables (SearchSpace.result_tables) -------------------------------

def result_table_markdown(rows: pd.DataFrame, spec: ResultTable, space: SearchSpace) -> str:
    """A study's long table as its search space declares it (`ResultTable`): a row per
    configuration and value of `spec.by`, a cell per column over the seeds' rows."""
    keys = [k for k in space.table_keys if k in rows.columns]
    seeds = rows[SEED].nunique() if SEED in rows.columns else 1
    body = group_rows(rows, [*keys, *spec.by], spec.columns)
    return (f"# {space.name}: {spec.title}\n\n{spec.note.format(seeds=seeds)}\n\n"
            + body.to_markdown(index=False, disable_numparse=True) + "\n")


# --- the defense (Tables 4.1-4.4) ---------------------------------------------------------

def _fmt(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _thesis(alpha: float, *keys: str) -> str:
    numbers = published.TABLES_4.get(float(alpha))
    if numbers is None:
        return "–"
    values = []
    for key in keys:
        value = numbers
        for part in key.split("."):
            value = value[part]
        values.append(_fmt(float(value)))
    return " / ".join(values)


def defense_tables(table: pd.DataFrame, profile: DefenseProfile, dataset: str) -> str:
    """Tables 4.1-4.4 in markdown, each row beside the thesis' figures for its alpha."""
    eps = f"{profile.eps:.4g}" + (" (8/255)" if abs(profile.eps - 8 / 255) < 1e-9 else "")
    head = (f"# Defense: detection by approximate mass + Langevin restoration\n\n"
            f"{dataset}, APGD-CE eps {eps}, chains of {profile.steps:,} steps (eta "
            f"{profile.eta:g}), {profile.val_fraction:.0%} of the test set for validation. "
            f"Thesis columns: MNIST, eps 8/255, chains of up to 1e6 steps (Tables 4.1-4.4). "
            f"A pair is a test input classified correctly whose APGD-CE input is not.\n")
    keys = ["alpha", "dequantization", "seed", "trial_id"]
    rows = {"4.1": [], "4.2": [], "4.3": [], "4.4": []}
    for _, r in table.iterrows():
        key = [f"{r.alpha:g}", _fmt(r.get("dequantization")), str(int(r.get("seed", 0))),
               _fmt(r.get("trial_id"))]
        if r.get("status") != "completed":
            for name in rows:
                rows[name].append([*key, r.get("status", "?")])
            continue
        rows["4.1"].append([*key, _fmt(r.pairs), _fmt(r.attack_success), _fmt(r.det_auroc),
                            _fmt(r.det_aupr_in), _fmt(r.det_aupr_out), _fmt(r.det_tnr95),
                            _fmt(r.det_accuracy), _fmt(r.det_detection_rate),
                            _thesis(r.alpha, "detection.auroc", "detection.aupr",
                                    "detection.tnr95", "detection.accuracy")])
        am_stop = "none" if pd.isna(r.am_stop) else _fmt(r.am_stop)
        rows["4.2"].append([*key, _fmt(r.pairs), "0", _fmt(r.restored_accuracy),
                            am_stop, _fmt(r.chain_mean_steps),
                            _thesis(r.alpha, "restored_accuracy")])
        rows["4.3"].append([*key, _fmt(2 * r.pairs), _fmt(r.defense_accuracy),
                            _fmt(r.clean_accuracy), _fmt(r.clean_accuracy_defended),
                            _thesis(r.alpha, "defense_accuracy")])
        lams = [c[len("adaptive"):-len("_defense_accuracy")] for c in table.columns
                if c.startswith("adaptive") and c.endswith("_defense_accuracy")
                and c != "adaptive_defense_accuracy"]
        per_lam = "; ".join(
            f"λ={lam}: {_fmt(r.get(f'adaptive{lam}_success'))} / "
            f"{_fmt(r.get(f'adaptive{lam}_detection_rate'))} / "
            f"{_fmt(r.get(f'adaptive{lam}_defense_accuracy'))}" for lam in lams)
        rows["4.4"].append([*key, per_lam, _fmt(r.adaptive_defense_accuracy),
                            _thesis(r.alpha, "adaptive_defense_accuracy")])
    headers = {
        "4.1": ("Table 4.1 - detection (flag AM > tau; tau of best accuracy on validation)",
                ["pairs", "attack success", "AUROC", "AUPR-in", "AUPR-out", "TNR95",
                 "accuracy", "detection rate", "thesis AUROC / AUPR / TNR95 / acc"]),
        "4.2": ("Table 4.2 - accuracy on the adversarial inputs after Langevin + projection",
                ["n", "before", "after", "early-stop AM", "mean steps", "thesis"]),
        "4.3": ("Table 4.3 - full defense on 50% clean + 50% adversarial inputs",
                ["n", "accuracy", "clean acc. (all test)", "clean acc. defended", "thesis"]),
        "4.4": ("Table 4.4 - full defense against the adaptive APGD (CE - lambda AM)",
                ["per lambda: success / detected / defended", "accuracy (worst lambda)",
                 "thesis"]),
    }
    parts = [head]
    for name, (title, columns) in headers.items():
        frame = pd.DataFrame(rows[name])
        if frame.shape[1] == len(keys) + len(columns):
            frame.columns = [*keys, *columns]
        parts += [f"## {title}\n", frame.to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(parts)


# --- detectors under attack ----------------------------------------------------------------

def eps_text(eps: float) -> str:
    """`8/255` where eps is a whole number of 1/255 steps, else 4 significant digits."""
    steps = eps * 255
    return f"{round(steps)}/255" if abs(steps - round(steps)) < 1e-6 else f"{eps:.4g}"


def _setting(rows: pd.DataFrame, setting: str, eps: float | None = None) -> pd.DataFrame:
    part = rows[rows.setting == setting]
    return part if eps is None else part[part.eps == eps]


def evaluation_markdown(frame: pd.DataFrame, title: str, id_accuracy: float) -> str:
    """evaluation.md from `detector_frame`'s rows: first a row per detector with AUROC
    [95%] clean and, per eps, with both the ID and the OOD inputs attacked, for each group
    of OOD sets (near, far, other where present; else all); then, per OOD set, AUROC /
    FPR95 clean, with the OOD inputs attacked, the ID inputs attacked and both attacked;
    then what was not attacked, and why."""
    eps_values = sorted(frame.eps.dropna().unique())
    groups = summary_groups(frame)
    lines = []
    for score, rows in frame.groupby("score", sort=False):
        line = {"detector": score}
        for group in groups:
            part = rows[rows.ood_set == f"group:{group}"]
            line[f"clean {group}"] = _auroc_cell(_setting(part, "clean"))
            for eps in eps_values:
                hit = _setting(part, "both_attacked", eps)
                line[f"attacked {group} (eps {eps_text(eps)})"] = (
                    _auroc_cell(hit) if len(hit) else "not attacked")
        lines.append(line)
    parts = [f"# Detectors clean and under attack: {title}\n",
             f"ID test accuracy {id_accuracy:.4f}. AUROC with its 95% bootstrap interval (ID "
             f"positive, higher score = more ID); a group is the mean over its OOD sets. "
             f"Attacked: APGD on each detector's own score moves the OOD inputs within eps "
             f"to look in-distribution and the ID test inputs to look OOD.\n",
             pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True), ""]
    for ood_set, rows in frame[~frame.ood_set.str.startswith("group:")].groupby(
            "ood_set", sort=False):
        lines = []
        for score, part in rows.groupby("score", sort=False):
            clean = _setting(part, "clean").iloc[0]
            line = {"score": score, "clean": f"{clean.auroc:.3f} / {clean.fpr95:.3f}"}
            for eps in eps_values:
                for setting, label in (("ood_attacked", "OOD attacked"),
                                       ("id_attacked", "ID attacked"),
                                       ("both_attacked", "both")):
                    hit = _setting(part, setting, eps)
                    line[f"eps {eps_text(eps)}: {label}"] = (
                        "not attacked" if hit.empty
                        else f"{hit.auroc.iloc[0]:.3f} / {hit.fpr95.iloc[0]:.3f}")
            lines.append(line)
        parts += [f"## ID -> {ood_set}: AUROC / FPR95\n",
                  pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True), ""]
    skipped = frame[frame.note.fillna("") != ""].drop_duplicates("score")
    if len(skipped):
        parts.append("Not attacked (no differentiable form):\n")
        parts += [f"- `{r.score}`: {r.note}" for r in skipped.itertuples()]
    return "\n".join(parts) + "\n"


def adversarial_markdown(frame: pd.DataFrame, title: str) -> str:
    """Adversarial detection (003 Figures 4-5): per attack, a row per score, a column per
    eps with AUROC / AUPR-in / AUPR-out (clean inputs the positive class)."""
    parts = [f"# Adversarial detection: {title}\n",
             "Clean test inputs classified right (positive) against their adversarial "
             "versions classified wrong; cells AUROC / AUPR-in / AUPR-out.\n"]
    for attack, group in frame.groupby("attack", sort=False):
        lines = []
        for score, rows in group.groupby("score", sort=False):
            line = {"score": score}
            for row in rows.sort_values("eps").itertuples():
                cell = "/".join(f"{getattr(row, m, float('nan')):.3f}"
                                for m in ("auroc", "aupr_in", "aupr_out"))
                line[f"eps {eps_text(row.eps)}"] = cell
            lines.append(line)
        counts = ", ".join(f"eps {eps_text(r.eps)}: {r.n_adversarial} of {r.n_clean} fooled "
                           f"(robust accuracy {r.robust_accuracy:.3f})"
                           for r in group.drop_duplicates("eps").itertuples())
        parts += [f"## {attack.upper()}\n", counts + "\n",
                  pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(parts) + "\n"
