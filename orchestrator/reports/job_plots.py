"""The job commands' plots: an attack's robust accuracy and examples, AM along Langevin
chains, the defense per trial and against alpha, and the detectors under attack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from orchestrator.reports import published
from orchestrator.reports.plots import pyplot, save_figure
from workloads.evaluation.detector_evaluation import summary_groups


def plot_defense_trial(row: dict[str, Any], details: dict[str, Any], chains, path: Path) -> Path:
    """AM of clean vs adversarial test inputs with tau; validation accuracy against the
    early-stop value; AM along the test chains."""
    import numpy as np

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    clean, adv = np.log10(details["am_clean_test"]), np.log10(details["am_adv_test"])
    bins = np.linspace(min(clean.min(), adv.min()), max(clean.max(), adv.max()), 30)
    axes[0].hist(clean, bins, alpha=0.6, label="clean")
    axes[0].hist(adv, bins, alpha=0.6, label="APGD-CE")
    axes[0].axvline(np.log10(row["det_tau"]), color="k", ls="--", label="tau")
    axes[0].set_xlabel("log10 AM")
    axes[0].set_title(f"detection: AUROC {row['det_auroc']:.3f}", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].semilogx(details["candidates"], details["candidate_accuracy"], "o-", ms=3)
    if row["am_stop"] is not None:
        axes[1].axvline(row["am_stop"], color="k", ls="--", label="chosen")
        axes[1].legend(fontsize=7)
    axes[1].set_xlabel("early-stop AM")
    axes[1].set_ylabel("validation accuracy after restoration")
    axes[1].set_title("tuning the early stop", fontsize=9)
    draw_am_trace(axes[2], chains.trace_steps, chains.trace_am)
    axes[2].set_title(f"restored accuracy {row['restored_accuracy']:.3f}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_defense_summary(table: pd.DataFrame, path: Path) -> Path | None:
    """The four tables' headline numbers against alpha, with the thesis' as markers."""
    plt = pyplot()
    done = table[table.status == "completed"]
    if done.empty:
        return None
    metrics = [("det_auroc", "detection AUROC (4.1)", "detection.auroc"),
               ("restored_accuracy", "restored accuracy (4.2)", "restored_accuracy"),
               ("defense_accuracy", "full defense (4.3)", "defense_accuracy"),
               ("adaptive_defense_accuracy", "vs adaptive (4.4)",
                "adaptive_defense_accuracy")]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, (key, title, thesis_key) in zip(axes, metrics):
        for convention, group in done.groupby("dequantization"):
            group = group.sort_values("alpha")
            ax.plot(group.alpha, group[key], "o-", label=f"{convention}")
        for alpha, numbers in published.TABLES_4.items():
            value = numbers
            for part in thesis_key.split("."):
                value = value[part]
            ax.plot([alpha], [value], "k*", ms=10, label="thesis (MNIST)" if alpha == 0 else None)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("alpha")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_attack(summary: dict[str, Any], x: torch.Tensor, samples: pd.DataFrame,
                x_adv: torch.Tensor, path: Path, examples: int = 6) -> Path:
    """Robust accuracy after each stage, and a few clean/adversarial pairs."""
    plt = pyplot()
    fooled = samples.index[samples.fooled_by.isin(summary["stages"])][:examples].tolist()
    images = x.dim() == 4 and x.shape[1] in (1, 3) and fooled
    fig = plt.figure(figsize=(4 + (1.4 * len(fooled) if images else 0), 3.2))
    grid = fig.add_gridspec(2, 1 + (len(fooled) if images else 0),
                            width_ratios=[4] + [1.4] * (len(fooled) if images else 0))
    ax = fig.add_subplot(grid[:, 0])
    names, values = zip(*summary["robust_accuracy"].items())
    ax.bar(range(len(values)), values, color=["tab:gray"] + ["tab:red"] * (len(values) - 1))
    ax.set_xticks(range(len(values)), names, rotation=30, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{summary['attack']} eps={summary['eps']:.4g} (n={summary['n']})", fontsize=8)
    for i, v in enumerate(values):
        ax.text(i, v + 0.02, f"{v:.3f}", ha="center", fontsize=7)
    for j, index in enumerate(fooled if images else []):
        for row, (tensor, pred) in enumerate(((x, "clean_pred"), (x_adv, "adv_pred"))):
            sub = fig.add_subplot(grid[row, 1 + j])
            image = tensor[index].permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy()
            sub.imshow(image, cmap="gray", vmin=0, vmax=1)
            sub.set_title(f"{'clean' if row == 0 else 'adv'}: {samples.loc[index, pred]}",
                          fontsize=7)
            sub.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)


def draw_am_trace(ax, steps: torch.Tensor, am: torch.Tensor, lines: int = 0) -> None:
    """AM along the chains on `ax`: median and 10-90% band over chains, `lines` single
    chains, log scale."""
    if len(steps):
        t = steps.numpy()
        q = torch.nanquantile(am.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.double),
                              dim=1).numpy()
        ax.fill_between(t, q[0], q[2], alpha=0.25, label="10-90% of chains")
        ax.plot(t, q[1], lw=2, label="median")
        for j in range(min(lines, am.shape[1])):
            ax.plot(t, am[:, j].numpy(), lw=0.6, alpha=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("Langevin step t")
    ax.set_ylabel("AM(x_t) = ||grad log p||")


def plot_am_trace(steps: torch.Tensor, am: torch.Tensor, path: Path, title: str,
                  am_stop: float | None = None) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    draw_am_trace(ax, steps, am, lines=8)
    if am_stop is not None:
        ax.axhline(am_stop, color="k", ls="--", lw=1, label=f"am_stop {am_stop:.3g}")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_evaluation(frame: pd.DataFrame, path: Path) -> Path:
    """From `detector_frame`'s rows: AUROC against eps per detector, one panel per group of
    OOD sets (`summary_groups`, and all where there are several): both attacked (solid)
    and only the OOD inputs attacked (dashed); eps 0 is the clean AUROC."""
    plt = pyplot()
    groups = summary_groups(frame)
    panels = groups + (["all"] if len(groups) > 1 else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, group in zip(axes[0], panels):
        rows = frame[frame.ood_set == f"group:{group}"]
        for i, (score, part) in enumerate(rows.groupby("score", sort=False)):
            clean = part[part.setting == "clean"].auroc.iloc[0]
            for setting, style in (("both_attacked", "o-"), ("ood_attacked", "--")):
                hit = part[part.setting == setting].sort_values("eps")
                ax.plot([0.0, *(hit.eps * 255)], [clean, *hit.auroc], style, ms=3,
                        lw=1.5 if setting == "both_attacked" else 1,
                        color=colors[i % len(colors)],
                        label=score if setting == "both_attacked" else None)
        ax.axhline(0.5, color="gray", lw=0.5)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("eps x 255")
        ax.set_ylabel("AUROC (mean over the group's sets)")
        ax.set_title(f"{group} OOD (dashed: OOD attacked only)", fontsize=8)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_adversarial_detection(frame: pd.DataFrame, path: Path) -> Path:
    """Adversarial detection (003 Figures 4-5): AUROC of clean-and-right against
    adversarial-and-wrong inputs, against eps, a line per score, a panel per attack."""
    plt = pyplot()
    attacks = list(dict.fromkeys(frame.attack))
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.2 * len(attacks), 3.4), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        group = frame[(frame.attack == attack)]
        for i, (score, rows) in enumerate(group.groupby("score", sort=False)):
            rows = rows.sort_values("eps")
            ax.plot(rows.eps, rows.get("auroc", rows.eps * float("nan")), "o-", ms=3,
                    color=f"C{i % 10}", label=score)
        ax.axhline(0.5, color="gray", lw=0.5)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("eps (L-inf)")
        ax.set_ylabel("AUROC (clean right vs adversarial wrong)")
        ax.set_title(attack.upper(), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)
