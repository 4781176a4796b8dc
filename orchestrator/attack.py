"""Attack a finished trial's model, or its OOD detectors, on a pool of Ray actors.

    python -m orchestrator.attack SWEEP_DIR --trial TRIAL_ID [--attack autoattack]
        [--version standard|custom --attacks apgd-ce,...] [--eps 8/255] [--n 1000]
    python -m orchestrator.attack SWEEP_DIR --trial TRIAL_ID --target ood
        [--scores all] [--eps 1/255,4/255,8/255] [--steps 100] [--n 1000]

Loads the trial's newest checkpoint and attacks the first --n inputs of its test split with
the attack pool (orchestrator.attack_pool), writing `SWEEP_DIR/attacks/<trial>-<attack>-<time>/`:
`summary.json` (robust accuracy after each stage, samples/s), `samples.csv` (per sample:
label, clean and adversarial prediction, robust flag, the stage that fooled it, L-inf and L2
perturbation), `x_adv.pt`, `attack.png` (robust accuracy per stage and examples) and the
finished units (`units/`, reused by --resume). One W&B run per attack, in the sweep's group.

With `--target ood` it attacks the detectors instead (orchestrator.detector_attack): for
every differentiable OOD score of the model and every eps, APGD moves the first --n inputs
of each OOD set to raise the score and the test inputs to lower it, and
`SWEEP_DIR/attacks/<trial>-ood-<time>/` gets `detectors.csv`, `detectors.md` (AUROC / FPR95
clean and under attack) and `detectors.png`.
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
    trial_params,
)
from workloads.attacks import AUTOATTACK_ATTACKS

# Flags that only some attacks read, with their defaults: given where they would be
# ignored, they are refused (exit 2) rather than silently dropped.
DEFAULTS = {"attack": "autoattack", "version": "standard", "attacks": "apgd-ce",
            "steps": 100, "restarts": 1, "lam": 1.0, "norm": "Linf"}
DEFAULT_EPS = {"classifier": "8/255", "ood": "1/255,4/255,8/255"}
STEPPED = ("bim", "pgd", "apgd", "apgd_adaptive")


def parse_eps_list(text: str) -> list[float]:
    """One radius or several separated by commas: `8/255` or `1/255,4/255,8/255`."""
    return [parse_eps(part.strip()) for part in text.split(",") if part.strip()]


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
               "  python -m orchestrator.attack SWEEP --trial ID --target ood "
               "--scores msp+neg_am --eps 2/255,8/255\n"
               "  python -m orchestrator.attack SWEEP --trial ID --resume   "
               "# after an interruption",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a finished sweep directory")
    parser.add_argument("--trial", required=True, help="trial id (see results/trials.csv)")
    parser.add_argument("--target", default="classifier", choices=("classifier", "ood"),
                        help="classifier: fool its predictions; ood: attack every OOD "
                             "detector (score) of the model (default classifier)")
    parser.add_argument("--attack", choices=ATTACKS,
                        help="classifier target: the attack (default autoattack, through "
                             "pyautoattack)")
    parser.add_argument("--version", choices=("standard", "custom"),
                        help="--attack autoattack: its version (default standard: APGD-CE, "
                             "APGD-T, FAB-T, Square)")
    parser.add_argument("--attacks",
                        help=f"--version custom: comma-separated from "
                             f"{', '.join(AUTOATTACK_ATTACKS)} (default apgd-ce)")
    parser.add_argument("--scores",
                        help="--target ood: score names joined by + (default: every "
                             "applicable score, and lnz)")
    parser.add_argument("--eps", type=parse_eps_list,
                        help="perturbation radius, e.g. 0.031 or 8/255 (default 8/255); "
                             "--target ood takes several, comma-separated (default "
                             "1/255,4/255,8/255)")
    parser.add_argument("--norm", choices=("Linf", "L2"),
                        help="the perturbation's norm (default Linf; fgsm is L-inf only)")
    parser.add_argument("--steps", type=int,
                        help="iterations of bim/pgd/apgd/apgd_adaptive and of --target ood "
                             "(default 100)")
    parser.add_argument("--restarts", type=int,
                        help="apgd/apgd_adaptive: random restarts on the inputs still "
                             "robust (default 1)")
    parser.add_argument("--lam", type=float,
                        help="apgd_adaptive: loss CE - lam * AM (default 1)")
    parser.add_argument("--n", type=int, default=1000,
                        help="attack the first N test inputs (and N of each OOD set) "
                             "(default 1000)")
    parser.add_argument("--batch-size", type=int,
                        help="inputs per unit of work (default 100; --target ood 256: "
                             "larger units attack faster per input)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random starts: each unit's own attack is seeded "
                             "from it and the unit's index range; AutoAttack's seed "
                             "(default 0)")
    add_job_arguments(parser)
    return parser


def refuse_ignored_flags(args: argparse.Namespace) -> None:
    """JobError naming the first flag that the chosen target and attack would ignore."""
    given = {k for k in DEFAULTS if getattr(args, k) is not None}

    def refuse(flag: str, why: str) -> None:
        if flag in given:
            raise JobError(f"--{flag} {why}")

    if args.target == "ood":
        for flag in ("attack", "version", "attacks", "restarts", "lam"):
            refuse(flag, "does not apply to --target ood (it runs APGD on each score)")
        return
    if args.scores is not None:
        raise JobError("--scores applies only to --target ood")
    if args.eps is not None and len(args.eps) > 1:
        raise JobError("--eps takes one value (several only with --target ood)")
    attack = args.attack or DEFAULTS["attack"]
    if attack != "autoattack":
        refuse("version", "applies only to --attack autoattack")
    if (args.version or DEFAULTS["version"]) != "custom" or attack != "autoattack":
        refuse("attacks", "applies only to --attack autoattack --version custom")
    if attack not in STEPPED:
        refuse("steps", f"does not apply to --attack {attack} (it applies to "
                        f"{'/'.join(STEPPED)})")
    if attack not in ("apgd", "apgd_adaptive"):
        refuse("restarts", "applies only to --attack apgd or apgd_adaptive")
    if attack != "apgd_adaptive":
        refuse("lam", "applies only to --attack apgd_adaptive")
    if attack == "fgsm" and args.norm == "L2":
        raise JobError("--norm L2: fgsm is an L-inf attack (use pgd or apgd for L2)")


def resolved(args: argparse.Namespace, key: str) -> Any:
    value = getattr(args, key)
    return DEFAULTS[key] if value is None else value


def attack_config(args: argparse.Namespace) -> dict[str, Any]:
    from orchestrator.attack_pool import attack_stages

    refuse_ignored_flags(args)
    steps, restarts = resolved(args, "steps"), resolved(args, "restarts")
    batch_size = args.batch_size or (256 if args.target == "ood" else 100)
    if args.n < 1 or batch_size < 1 or steps < 1 or restarts < 1:
        raise JobError("--n, --batch-size, --steps and --restarts must be >= 1")
    eps = args.eps or parse_eps_list(DEFAULT_EPS[args.target])
    config = {"eps": eps if args.target == "ood" else eps[0], "norm": resolved(args, "norm"),
              "seed": args.seed, "batch_size": batch_size}
    if args.target == "ood":
        return {"attack": "apgd_score", **config, "steps": steps}
    attack = config["attack"] = resolved(args, "attack")
    if attack == "autoattack":
        config["version"] = resolved(args, "version")
        if config["version"] == "custom":
            config["attacks"] = [a.strip() for a in resolved(args, "attacks").split(",")
                                 if a.strip()]
    elif attack != "fgsm":
        config["steps"] = steps
    if attack in ("apgd", "apgd_adaptive"):
        config["restarts"] = restarts
    if attack == "apgd_adaptive":
        config["lam"] = resolved(args, "lam")
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
    if args.target == "ood":
        return attack_detectors(args, config, model, data)
    x, y = data.x_test[:args.n], data.y_test[:args.n]
    name = f"{args.trial}-{config['attack']}"
    out = job_directory(args.sweep_dir, "attacks", name, args.resume)
    run = open_job_run(args.wandb, "attack", name, args.sweep_dir,
                       {**config, "trial": args.trial, "n": len(x),
                        "num_actors": args.num_actors}, out)
    start_ray()
    print(f"[attack] {name}: {len(x)} test inputs, eps {config['eps']:.4g} "
          f"({config['norm']}), {args.num_actors} actors -> {out}", flush=True)
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


def attack_detectors(args: argparse.Namespace, config: dict[str, Any], model: nn.Module,
                     data) -> int:
    """--target ood: every differentiable score of the model under APGD on the score."""
    from orchestrator import detector_attack as DA
    from orchestrator.attack_pool import AttackPool, run_score_attacks

    params = trial_params(args.sweep_dir, args.trial).get("score_params") or {}
    try:
        plan = DA.plan_detector_attacks(model, data, args.scores or DA.default_scores(model),
                                        params if isinstance(params, dict) else {},
                                        config["eps"], args.n)
    except ValueError as error:
        raise JobError(str(error)) from None
    name = f"{args.trial}-ood"
    out = job_directory(args.sweep_dir, "attacks", name, args.resume)
    run = open_job_run(args.wandb, "attack", name, args.sweep_dir,
                       {**config, "trial": args.trial, "target": "ood", "n": args.n,
                        "scores": list(plan.scores), "num_actors": args.num_actors}, out)
    start_ray()
    eps_text = ", ".join(f"{e:.4g}" for e in config["eps"])
    print(f"[attack] {name}: {len(plan.scores) - len(plan.skipped)} scores x "
          f"{len(plan.inputs)} input sets x eps {eps_text}: {len(plan.attacks)} attacks "
          f"on {args.num_actors} actors -> {out}", flush=True)
    for score, why in plan.skipped.items():
        print(f"[attack] not attacked: {score} ({why})", flush=True)
    try:
        with AttackPool(model, args.num_actors, args.cpus_per_actor,
                        args.gpus_per_actor) as pool:
            result = run_score_attacks(pool, plan.attacks, plan.scores, config, out,
                                       args.resume, on_progress=lambda m: run.log(
                                           m, x_axis="samples_attacked"))
    except BaseException:
        run.finish(failed=True)
        raise
    frame = DA.detector_table(model, plan, config["eps"], result)
    frame.to_csv(out / "detectors.csv", index=False)
    markdown = DA.detector_markdown(frame, f"trial {args.trial} ({data.name}), "
                                           f"{config['norm']}, {config['steps']} APGD steps")
    (out / "detectors.md").write_text(markdown)
    figure = DA.plot_detectors(frame, out / "detectors.png")
    summary = {"trial": args.trial, **config, "n": args.n, "scores": list(plan.scores),
               "not_attacked": plan.skipped, "seconds": result.seconds,
               "units_computed": result.units_computed, "units_loaded": result.units_loaded,
               "units_by_node": result.units_by_node, "dataset": data.name}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    run.table("detectors", frame)
    run.image("detectors", figure)
    worst = frame[frame.attacked].groupby("score").auroc_both_attacked.min()
    run.finish({f"worst_auroc/{k}": v for k, v in worst.items()})
    print("\n" + markdown)
    print(f"[attack] {len(plan.attacks)} attacks in {result.seconds:.1f} s; results: "
          f"{out}/detectors.md, detectors.csv, detectors.png")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(build_parser(), main, None))
