"""Attack a finished trial's model, or its OOD detectors, on a pool of Ray actors.

    python -m orchestrator.attack SWEEP_DIR --trial TRIAL_ID [--attack autoattack]
        [--version standard|custom --attacks apgd-ce,...] [--eps 8/255] [--n 1000]
    python -m orchestrator.attack SWEEP_DIR --trial TRIAL_ID --target ood
        [--scores all] [--eps 1/255,4/255,8/255] [--steps 100] [--n 1000]
    python -m orchestrator.attack SWEEP_DIR --trial TRIAL_ID --target adversarial
        [--scores NAMES] [--eps 0.01,0.05,0.1] [--steps 10] [--n 1000]

Loads the trial's newest checkpoint and attacks the first --n inputs of its test split with
the attack pool (the job: orchestrator.jobs.attack), writing
`SWEEP_DIR/attacks/<trial>-<attack>-<time>/`:
`summary.json` (robust accuracy after each stage, samples/s), `samples.csv` (per sample:
label, clean and adversarial prediction, robust flag, the stage that fooled it, L-inf and L2
perturbation), `x_adv.pt`, `attack.png` (robust accuracy per stage and examples) and the
finished units (`units/`, reused by --resume). One W&B run per attack, in the sweep's group.

With `--target ood` it attacks the detectors instead (orchestrator.jobs.detectors): for
every differentiable OOD score of the model and every eps, APGD moves the first --n inputs
of each OOD set to raise the score and the test inputs to lower it, and
`SWEEP_DIR/attacks/<trial>-ood-<time>/` gets `evaluation.csv`, `evaluation.md` (AUROC /
FPR95 with intervals, clean and under attack) and `evaluation.png`: the job
`orchestrator.evaluate` runs on any model.

With `--target adversarial` it detects adversarial inputs (document 003, Figures 4-5;
orchestrator.jobs.adversarial_detection): FGSM and BIM examples at each eps are generated on
the pool, and each score (the trial's own, fitted as its study fits them, or --scores)
separates the clean test inputs classified right from their adversarial versions classified
wrong: `SWEEP_DIR/attacks/<trial>-adversarial-<time>/adversarial.{csv,md,png}`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from orchestrator.cli import (
    add_job_arguments,
    finite_float,
    job_parser,
    parse_eps,
    pool_arguments,
    run_command,
)
from orchestrator.errors import UsageError
from orchestrator.jobs.adversarial_detection import detect_adversarial
from orchestrator.jobs.attack import attack_classifier
from orchestrator.jobs.detectors import attack_detectors
from orchestrator.jobs.trial import load_trial_model
from orchestrator.pools.attack import ATTACKS, attack_stages
from workloads.adversarial.attacks import AUTOATTACK_ATTACKS

# Flags that only some attacks read, with their defaults: given where they would be
# ignored, they are refused (exit 2) rather than silently dropped.
DEFAULTS = {"attack": "autoattack", "version": "standard", "attacks": "apgd-ce",
            "steps": 100, "restarts": 1, "lam": 1.0, "norm": "Linf"}
DEFAULT_EPS = {"classifier": "8/255", "ood": "1/255,4/255,8/255",
               "adversarial": "0.01,0.05,0.1"}  # 003 names FGSM-0.1
STEPPED = ("bim", "pgd", "apgd", "apgd_adaptive")


def parse_eps_list(text: str) -> list[float]:
    """One radius or several separated by commas: `8/255` or `1/255,4/255,8/255`."""
    return [parse_eps(part.strip()) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser("attack", __doc__, [
        "runs/alpha_diglm-local-<time> --trial <id>",
        "SWEEP --trial ID --version custom --attacks apgd-ce --eps 8/255 --n 200",
        "SWEEP --trial ID --attack pgd --norm L2 --eps 0.5 --steps 40",
        "SWEEP --trial ID --target ood --scores msp+neg_am --eps 2/255,8/255",
        "SWEEP --trial ID --target adversarial --eps 0.02,0.1   # FGSM and BIM detection",
        "SWEEP --trial ID --resume   # after an interruption"],
        sweep_help="a finished sweep directory")
    parser.add_argument("--trial", required=True, help="trial id (see results/trials.csv)")
    parser.add_argument("--target", default="classifier",
                        choices=("classifier", "ood", "adversarial"),
                        help="classifier: fool its predictions; ood: attack every OOD "
                             "detector (score) of the model; adversarial: detect FGSM and "
                             "BIM inputs with each score (default classifier)")
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
                        help="--target ood / adversarial: score names joined by + (default: "
                             "ood every applicable score and lnz; adversarial the trial's "
                             "own ood_scores)")
    parser.add_argument("--eps", type=parse_eps_list,
                        help="perturbation radius, e.g. 0.031 or 8/255 (default 8/255); "
                             "--target ood and adversarial take several, comma-separated "
                             "(defaults 1/255,4/255,8/255 and 0.01,0.05,0.1)")
    parser.add_argument("--norm", choices=("Linf", "L2"),
                        help="the perturbation's norm (default Linf; fgsm is L-inf only)")
    parser.add_argument("--steps", type=int,
                        help="iterations of bim/pgd/apgd/apgd_adaptive and of --target ood "
                             "(default 100); of BIM with --target adversarial (default 10)")
    parser.add_argument("--restarts", type=int,
                        help="apgd/apgd_adaptive: random restarts on the inputs still "
                             "robust (default 1)")
    parser.add_argument("--lam", type=finite_float,
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
    """UsageError naming the first flag that the chosen target and attack would ignore."""
    given = {k for k in DEFAULTS if getattr(args, k) is not None}

    def refuse(flag: str, why: str) -> None:
        if flag in given:
            raise UsageError(f"--{flag} {why}")

    if args.target == "ood":
        for flag in ("attack", "version", "attacks", "restarts", "lam"):
            refuse(flag, "does not apply to --target ood (it runs APGD on each score)")
        return
    if args.target == "adversarial":
        for flag in ("attack", "version", "attacks", "restarts", "lam", "norm"):
            refuse(flag, "does not apply to --target adversarial (it runs L-inf FGSM and BIM)")
        return
    if args.scores is not None:
        raise UsageError("--scores applies only to --target ood and adversarial")
    if args.eps is not None and len(args.eps) > 1:
        raise UsageError("--eps takes one value (several only with --target ood and "
                         "adversarial)")
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
        raise UsageError("--norm L2: fgsm is an L-inf attack (use pgd or apgd for L2)")


def resolved(args: argparse.Namespace, key: str) -> Any:
    value = getattr(args, key)
    return DEFAULTS[key] if value is None else value


def attack_config(args: argparse.Namespace) -> dict[str, Any]:
    refuse_ignored_flags(args)
    steps = args.steps or (10 if args.target == "adversarial" else DEFAULTS["steps"])
    restarts = resolved(args, "restarts")
    batch_size = args.batch_size or (256 if args.target == "ood" else 100)
    if args.n < 1 or batch_size < 1 or steps < 1 or restarts < 1:
        raise UsageError("--n, --batch-size, --steps and --restarts must be >= 1")
    eps = args.eps or parse_eps_list(DEFAULT_EPS[args.target])
    several = args.target in ("ood", "adversarial")
    config = {"eps": eps if several else eps[0], "norm": resolved(args, "norm"),
              "seed": args.seed, "batch_size": batch_size}
    if args.target == "ood":
        return {"attack": "apgd_score", **config, "steps": steps}
    if args.target == "adversarial":
        return {**config, "steps": steps}
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


def main(args: argparse.Namespace) -> int:
    config = attack_config(args)
    pool_args = pool_arguments(args)
    model, data, trial = load_trial_model(args.sweep_dir, args.trial, args.data_dir)
    if args.target == "ood":
        attack_detectors(args.sweep_dir, args.trial, model, data, config, args.scores, args.n,
                         pool_args, args.resume, args.wandb)
    elif args.target == "adversarial":
        detect_adversarial(args.sweep_dir, args.trial, model, data, trial, config, args.scores,
                           args.n, pool_args, args.resume, args.wandb)
    else:
        attack_classifier(args.sweep_dir, args.trial, model, data, trial, config, args.n,
                          pool_args, args.resume, args.wandb)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(build_parser(), main))
