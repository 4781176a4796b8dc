"""Attack a trained trial's model on Ray actors:

    python -m orchestrator.attack SWEEP_DIR --trial TRIAL_ID --attack autoattack \\
        --version custom --attacks apgd-ce --eps 0.031 --num-actors 2

Loads the trial's final checkpoint, attacks the first --n test inputs of its dataset with the
attack pool (orchestrator.pools) and writes `SWEEP_DIR/attacks/<trial>-<attack>/`:
`summary.json` (robust accuracy after each stage), `samples.csv` (per sample: label, clean
and adversarial prediction, robust flag, perturbation size) and `x_adv.pt`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd
import torch

from orchestrator.sweep import EXIT_USAGE, SWEEP_FILE
from workloads.attacks import AUTOATTACK_ATTACKS, AttackError

ATTACKS = ("autoattack", "fgsm", "bim", "pgd", "apgd", "apgd_adaptive")


def load_trial_model(sweep_dir: Path, trial_id: str):
    """(model, data, config) of a finished trial, from trials.csv and its last checkpoint."""
    from orchestrator.loops import build_generative_model, load_trial_data
    from search_spaces import get_search_space
    from workloads.models import build_classifier

    table = pd.read_csv(sweep_dir / "results" / "trials.csv")
    rows = table[table.trial_id == trial_id]
    if rows.empty:
        raise ValueError(f"no trial '{trial_id}' in {sweep_dir}; trials: "
                         f"{', '.join(table.trial_id)}")
    config = {k: v for k, v in json.loads(rows.iloc[0].to_json()).items() if v is not None}
    states = sorted([*Path(config["trial_dir"]).glob("checkpoint_*/state.pt"),
                     *(sweep_dir / "train").glob(f"train-{trial_id}/checkpoint_*/state.pt")])
    if not states:
        raise ValueError(f"trial '{trial_id}' has no checkpoint")
    state = torch.load(states[-1], map_location="cpu", weights_only=False)
    data = load_trial_data(config)
    loop = get_search_space(json.loads((sweep_dir / SWEEP_FILE).read_text())["name"]).loop
    if loop == "generative":
        model = build_generative_model(config, data.input_shape, data.levels, data.num_classes)
    else:
        model = build_classifier(config["arch"], data.input_shape, data.num_classes)
    model.load_state_dict(state["model"])
    return model.eval(), data, config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.attack",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="a finished sweep directory")
    parser.add_argument("--trial", required=True, help="trial id (see results/trials.csv)")
    parser.add_argument("--attack", default="autoattack", choices=ATTACKS)
    parser.add_argument("--version", default="standard", choices=("standard", "custom"),
                        help="AutoAttack version (default: standard)")
    parser.add_argument("--attacks", default="apgd-ce",
                        help=f"custom AutoAttack: comma-separated from {AUTOATTACK_ATTACKS}")
    parser.add_argument("--eps", type=float, default=8 / 255, help="default 8/255")
    parser.add_argument("--norm", default="Linf", choices=("Linf", "L2"))
    parser.add_argument("--steps", type=int, default=100, help="iterations of own attacks")
    parser.add_argument("--lam", type=float, default=1.0, help="apgd_adaptive: CE - lam*AM")
    parser.add_argument("--n", type=int, default=1000, help="test inputs to attack")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-actors", type=int, default=2)
    parser.add_argument("--cpus-per-actor", type=float, default=1)
    parser.add_argument("--gpus-per-actor", type=float, default=0,
                        help="fractional values share a GPU between actors")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the finished units of an earlier run of the same attack")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sweep_dir = Path(args.sweep_dir)
    try:
        if not (sweep_dir / "results" / "trials.csv").exists():
            raise ValueError(f"{sweep_dir} is not a finished sweep directory")
        if args.n < 1 or args.batch_size < 1 or args.num_actors < 1 or not args.eps > 0:
            raise ValueError("--n, --batch-size, --num-actors and --eps must be positive")
        config = {"attack": args.attack, "version": args.version, "eps": args.eps,
                  "attacks": args.attacks.split(",") if args.version == "custom" else None,
                  "norm": args.norm, "steps": args.steps, "lam": args.lam, "seed": args.seed,
                  "batch_size": args.batch_size}
        from orchestrator.pools import attack_stages

        attack_stages(config)
        model, data, _ = load_trial_model(sweep_dir, args.trial)
    except (ValueError, AttackError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    import ray

    from orchestrator.pools import run_attack_pool

    x, y = data.x_test[:args.n], data.y_test[:args.n]
    out = sweep_dir / "attacks" / f"{args.trial}-{args.attack}"
    ray.init(address=os.environ.get("RAY_ADDRESS"), logging_level="WARNING")
    result = run_attack_pool(model, x, y, config, out, args.num_actors, args.cpus_per_actor,
                             args.gpus_per_actor, resume=args.resume)
    with torch.no_grad():
        clean_pred, adv_pred = model(x).argmax(1), model(result["x_adv"]).argmax(1)
    pd.DataFrame({"label": y.numpy(), "clean_pred": clean_pred.numpy(),
                  "adv_pred": adv_pred.numpy(), "robust": result["robust"].numpy(),
                  "linf": (result["x_adv"] - x).flatten(1).abs().max(1).values.numpy()}
                 ).to_csv(out / "samples.csv", index_label="index")
    torch.save(result["x_adv"], out / "x_adv.pt")
    summary = {"trial": args.trial, **config, "n": len(x),
               "robust_accuracy": result["robust_accuracy"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(result["robust_accuracy"]))
    print(f"[attack] results: {out}/summary.json, samples.csv, x_adv.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
