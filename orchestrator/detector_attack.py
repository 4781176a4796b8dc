"""Adaptive attacks on OOD detectors: every differentiable score of a trial's model, attacked
with APGD on the score itself (`python -m orchestrator.attack SWEEP --trial ID --target ood`).

OpenOOD and RobustBench evaluate detectors on clean OOD sets only, and the thesis attacks
only its own AM detector (NOTES.md C). Here, for each score and eps, the OOD inputs are
moved within eps to raise the score (to look in-distribution) and the ID test inputs to
lower it (to look OOD); the detector's AUROC and FPR95 are reported clean, with the OOD
inputs attacked, and with both attacked. The attacks run on the attack pool
(`attack_pool.run_score_attacks`): deterministic under sharding, resumable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from orchestrator.attack_pool import ScoreAttack, ScoreAttackResult
from workloads.datasets import Dataset
from workloads.ood_evaluation import ood_metrics_under_attack, resolve_scores
from workloads.scores import OODScore, build_score, capabilities

ID = "id"  # the name of the in-distribution test inputs among the attacked sets


def default_scores(model: nn.Module) -> str:
    """Every applicable score of the default set, and ln Z where the model has logits."""
    names = list(resolve_scores(model, "all"))
    if "logits" in capabilities(model):
        names.append("lnz")
    return "+".join(names)


@dataclass
class DetectorAttackPlan:
    inputs: dict[str, torch.Tensor]   # "id" (test inputs) and each OOD set, cut to n
    scores: dict[str, OODScore]       # every requested score, fitted on the training split
    skipped: dict[str, str]           # requested scores that are not attacked, and why
    attacks: list[ScoreAttack]


def attack_name(score: str, inputs: str, eps: float) -> str:
    return f"{score}-{inputs}-eps{eps:.6g}"


def plan_detector_attacks(model: nn.Module, data: Dataset, requested: str,
                          params: dict[str, dict], eps_values: list[float],
                          n: int) -> DetectorAttackPlan:
    """Fit the requested scores and list the attacks: for each differentiable score and
    eps, the ID inputs pushed down and each OOD set pushed up. Raises ValueError for an
    unknown or inapplicable score name."""
    names = resolve_scores(model, requested, params)
    inputs = {ID: data.x_test[:n], **{k: v[:n] for k, v in data.ood.items()}}
    if len(inputs) == 1:
        raise ValueError(f"dataset '{data.name}' has no OOD sets to attack the detectors with")
    scores = {name: build_score(name, **p).fit(model, data.x_train, data.y_train)
              for name, p in names.items()}
    skipped = {name: score.not_differentiable for name, score in scores.items()
               if score.not_differentiable}
    attacks = [ScoreAttack(attack_name(name, key, eps), name, x, -1 if key == ID else 1, eps)
               for name in scores if name not in skipped
               for eps in eps_values for key, x in inputs.items()]
    return DetectorAttackPlan(inputs, scores, skipped, attacks)


def detector_table(model: nn.Module, plan: DetectorAttackPlan, eps_values: list[float],
                   result: ScoreAttackResult) -> pd.DataFrame:
    """One row per (score, OOD set, eps): AUROC and FPR95 clean, with the OOD inputs
    attacked and with both attacked. Scores that are not attacked get their clean figures
    and the reason in `note`."""
    rows = []
    for name, score in plan.scores.items():
        clean = {key: score(model, x).double().numpy() for key, x in plan.inputs.items()}
        for ood_set in [k for k in plan.inputs if k != ID]:
            n = min(len(clean[ID]), len(clean[ood_set]))
            if name in plan.skipped:
                metrics = ood_metrics_under_attack(clean[ID][:n], clean[ID][:n],
                                                   clean[ood_set][:n], clean[ood_set][:n])
                rows.append({"score": name, "ood_set": ood_set, "eps": math.nan, "n": n,
                             "attacked": False, "note": plan.skipped[name],
                             **{k: v for k, v in metrics.items() if k.endswith("_clean")}})
                continue
            for eps in eps_values:
                attacked = {k: result.score[attack_name(name, k, eps)].double().numpy()
                            for k in (ID, ood_set)}
                metrics = ood_metrics_under_attack(clean[ID][:n], attacked[ID][:n],
                                                   clean[ood_set][:n], attacked[ood_set][:n])
                rows.append({"score": name, "ood_set": ood_set, "eps": eps, "n": n,
                             "attacked": True, "note": "", **metrics})
    return pd.DataFrame(rows)


def eps_text(eps: float) -> str:
    """`8/255` where eps is a whole number of 1/255 steps, else 4 significant digits."""
    steps = eps * 255
    return f"{round(steps)}/255" if abs(steps - round(steps)) < 1e-6 else f"{eps:.4g}"


def _pair(auroc: float, fpr95: float) -> str:
    return "–" if math.isnan(auroc) else f"{auroc:.3f} / {fpr95:.3f}"


def detector_markdown(frame: pd.DataFrame, title: str) -> str:
    """Per OOD set: a row per score, AUROC / FPR95 clean and, per eps, with the OOD inputs
    attacked and with both attacked; then the scores that were not attacked, and why."""
    parts = [f"# Detectors under attack: {title}\n",
             "AUROC / FPR95 (ID positive, higher score = more ID). *OOD attacked*: the OOD "
             "inputs moved within eps to raise each score; *both*: the ID test inputs also "
             "moved to lower it. APGD on the score itself.\n"]
    attacked = frame[frame.attacked]
    eps_values = sorted(attacked.eps.unique())
    for ood_set, group in frame.groupby("ood_set", sort=False):
        lines = []
        for score, rows in group.groupby("score", sort=False):
            first = rows.iloc[0]
            line = {"score": score, "clean": _pair(first.auroc_clean, first.fpr95_clean)}
            for eps in eps_values:
                match = rows[rows.eps == eps]
                row = match.iloc[0] if len(match) else None
                for setting, label in (("ood_attacked", "OOD attacked"), ("both_attacked",
                                                                          "both")):
                    line[f"eps {eps_text(eps)}: {label}"] = "not attacked" if row is None else \
                        _pair(row[f"auroc_{setting}"], row[f"fpr95_{setting}"])
            lines.append(line)
        parts += [f"## ID -> {ood_set} (n = {int(group.n.iloc[0])} each)\n",
                  pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True), ""]
    skipped = frame[~frame.attacked].drop_duplicates("score")
    if len(skipped):
        parts.append("Not attacked (no differentiable form):\n")
        parts += [f"- `{r.score}`: {r.note}" for r in skipped.itertuples()]
    return "\n".join(parts) + "\n"


def plot_detectors(frame: pd.DataFrame, path: Path) -> Path:
    """AUROC against eps per score, one panel per OOD set: both attacked (solid) and only
    the OOD inputs attacked (dashed); eps 0 is the clean AUROC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacked = frame[frame.attacked]
    sets = list(dict.fromkeys(attacked.ood_set))
    fig, axes = plt.subplots(1, max(len(sets), 1), figsize=(4.2 * max(len(sets), 1), 3.4),
                             squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, ood_set in zip(axes[0], sets):
        group = attacked[attacked.ood_set == ood_set]
        for i, (score, rows) in enumerate(group.groupby("score", sort=False)):
            rows = rows.sort_values("eps")
            eps = [0.0, *(rows.eps * 255)]
            color = colors[i % len(colors)]
            ax.plot(eps, [rows.auroc_clean.iloc[0], *rows.auroc_both_attacked], "o-",
                    color=color, ms=3, label=score)
            ax.plot(eps, [rows.auroc_clean.iloc[0], *rows.auroc_ood_attacked], "--",
                    color=color, lw=1)
        ax.axhline(0.5, color="gray", lw=0.5)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("eps x 255")
        ax.set_ylabel("AUROC")
        ax.set_title(f"ID -> {ood_set} (dashed: OOD attacked only)", fontsize=8)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
