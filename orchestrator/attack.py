"""Attack a finished trial's model on a pool of Ray actors.

    python -m orchestrator.attack SWEEP_DIR --trial TRIAL_ID [--attack autoattack]
        [--version standard|custom --attacks apgd-ce,...] [--eps 8/255] [--n 1000]

Loads the trial's newest checkpoint, attacks the first --n inputs of its test split with the
attack pool (orchestrator.attack_pool) and writes `SWEEP_DIR/attacks/<trial>-<attack>-<time>/`:
`summary.json` (robust accuracy after each stage, samples/s), `samples.csv` (per sample:
label, clean and adversarial prediction, robust flag, the stage that fooled it, L-inf and L2
perturbation), `x_adv.pt`, `attack.png` (robust accuracy per stage and examples) and the
finished units (`units/`, reused by --resume). One W&B run per attack, in the sweep's group.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from orchestrator.jobs import (
    JobError,
    add_job_arguments,
    check_pool_arguments,
    job_directory,
    load_trial_model,
    open_job_run,
    parse_eps,
    run_command,
    start_ray,
)
from workloads.attacks import AUTOATTACK_ATTACKS


def build_parser() -> argparse.ArgumentParser:
    from orchestrator.attack_pool import ATTACKS

    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.attack", description=__doc__.split("\n\n")[0],
        epilog="examples:\n"
               "  python -m orchestrator.attack runs/alpha_diglm-local-<time> --trial <id>\n"
               "  python -m orchestrator.attack SWEEP --trial ID --version custom "
               "--attacks apgd-ce --eps 8/255 --n 200\n"
               "  python -m orchestrator.attack SWEEP --trial ID --attack pgd --norm L2 "
               "--eps 0.5 --steps 40\n"
               "  python -m orchestrator.attack SWEEP --trial ID --resume   "
               "# after an interruption",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a finished sweep directory")
    parser.add_argument("--trial", required=True, help="trial id (see results/trials.csv)")
    parser.add_argument("--attack", default="autoattack", choices=ATTACKS,
                        help="default autoattack (pyautoattack)")
    parser.add_argument("--version", default="standard", choices=("standard", "custom"),
                        help="AutoAttack version (default standard: APGD-CE, APGD-T, FAB-T, "
                             "Square)")
    parser.add_argument("--attacks", default="apgd-ce",
                        help=f"custom AutoAttack: comma-separated from "
                             f"{', '.join(AUTOATTACK_ATTACKS)} (default apgd-ce)")
    parser.add_argument("--eps", type=parse_eps, default=8 / 255,
                        help="perturbation radius, e.g. 0.031 or 8/255 (default 8/255)")
    parser.add_argument("--norm", default="Linf", choices=("Linf", "L2"))
    parser.add_argument("--steps", type=int, default=100,
                        help="iterations of bim/pgd/apgd/apgd_adaptive (default 100)")
    parser.add_argument("--lam", type=float, default=1.0,
                        help="apgd_adaptive: loss CE - lam * AM (default 1)")
    parser.add_argument("--n", type=int, default=1000,
                        help="attack the first N test inputs (default 1000)")
    parser.add_argument("--batch-size", type=int, default=100,
                        help="samples per unit of work (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    add_job_arguments(parser)
    return parser


def attack_config(args: argparse.Namespace) -> dict[str, Any]:
    from orchestrator.attack_pool import attack_stages

    if args.n < 1 or args.batch_size < 1 or args.steps < 1:
        raise JobError("--n, --batch-size and --steps must be >= 1")
    config = {"attack": args.attack, "eps": args.eps, "norm": args.norm, "seed": args.seed,
              "batch_size": args.batch_size}
    if args.attack == "autoattack":
        config["version"] = args.version
        if args.version == "custom":
            config["attacks"] = [a.strip() for a in args.attacks.split(",") if a.strip()]
    elif args.attack != "fgsm":
        config["steps"] = args.steps
    if args.attack == "apgd_adaptive":
        config["lam"] = args.lam
    attack_stages(config)  # AttackError for bad AutoAttack names
    return config


def per_sample_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor, result) -> pd.DataFrame:
    """One row per attacked sample: label, predictions, robust flag, what fooled it, and the
    perturbation's size."""
    with torch.no_grad():
        clean_pred, adv_pred = model(x).argmax(1), model(result.x_adv).argmax(1)
    delta = (result.x_adv - x).flatten(1)
    return pd.DataFrame({"label": y.numpy(), "clean_pred": clean_pred.numpy(),
                         "adv_pred": adv_pred.numpy(), "robust": result.robust.numpy(),
                         "fooled_by": result.fooled_by,
                         "linf": delta.abs().max(1).values.numpy(),
                         "l2": delta.norm(dim=1).numpy()})


def plot_attack(summary: dict[str, Any], x: torch.Tensor, samples: pd.DataFrame,
                x_adv: torch.Tensor, path: Path, examples: int = 6) -> Path:
    """Robust accuracy after each stage, and a few clean/adversarial pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(args: argparse.Namespace) -> int:
    from orchestrator.attack_pool import AttackPool

    config = attack_config(args)
    check_pool_arguments(args)
    model, data, trial = load_trial_model(args.sweep_dir, args.trial, args.data_dir)
    x, y = data.x_test[:args.n], data.y_test[:args.n]
    name = f"{args.trial}-{args.attack}"
    out = job_directory(args.sweep_dir, "attacks", name, args.resume)
    run = open_job_run(args.wandb, "attack", name, args.sweep_dir,
                       {**config, "trial": args.trial, "n": len(x),
                        "num_actors": args.num_actors}, out)
    start_ray()
    print(f"[attack] {name}: {len(x)} test inputs, eps {args.eps:.4g} ({args.norm}), "
          f"{args.num_actors} actors -> {out}", flush=True)
    try:
        with AttackPool(model, args.num_actors, args.cpus_per_actor,
                        args.gpus_per_actor) as pool:
            result = pool.run(x, y, config, out, resume=args.resume,
                              on_progress=lambda m: run.log(m, x_axis="samples_attacked"))
    except BaseException:
        run.finish(failed=True)
        raise
    samples = per_sample_table(model, x, y, result)
    samples.to_csv(out / "samples.csv", index_label="index")
    torch.save(result.x_adv, out / "x_adv.pt")
    summary = {"trial": args.trial, **config, "n": len(x), "stages": result.stages,
               "robust_accuracy": result.robust_accuracy, "seconds": result.seconds,
               "samples_per_s": result.samples_per_second,
               "units_computed": result.units_computed, "units_loaded": result.units_loaded,
               "units_by_node": result.units_by_node,
               "dataset": trial.get("dataset")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    figure = plot_attack(summary, x, samples, result.x_adv, out / "attack.png")
    run.table("samples", samples)
    run.image("attack", figure)
    run.finish({f"robust_accuracy/{k}": v for k, v in result.robust_accuracy.items()}
               | {"samples_per_s": result.samples_per_second})
    print(json.dumps(result.robust_accuracy))
    print(f"[attack] {len(x)} samples in {result.seconds:.1f} s "
          f"({result.samples_per_second:.1f} samples/s); results: {out}/summary.json, "
          f"samples.csv, x_adv.pt, attack.png")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(build_parser(), main, None))
