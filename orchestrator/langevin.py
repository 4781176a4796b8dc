"""Run Langevin restoration chains for a finished trial's density model on Ray actors.

    python -m orchestrator.langevin SWEEP_DIR --trial TRIAL_ID --from ATTACK_DIR|test
        [--steps 1000] [--eta 1e-3] [--am-stop A] [--eps 8/255] [--checkpoint-every K]

One chain per start point (NOTES.md C): the adversarial inputs of an attack run
(`--from SWEEP_DIR/attacks/<trial>-...`, projection radius = that attack's eps) or clean test
inputs (`--from test`). The chains' state is checkpointed every K steps; `--resume` continues
the latest run where its checkpoints stopped. Writes `SWEEP_DIR/langevin/<trial>-<from>-<time>/`:
`summary.json` (accuracy at the start, after the chains and after the projection; stopped
chains; chain-steps/s), `chains.csv` (per chain), `restored.pt` and `am.png` (AM along the
chains). Progress (chains done, chain-steps/s, AM) goes to the console and to W&B.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
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
from orchestrator.jobs.langevin import read_attack_run, restore_chains, start_points
from orchestrator.jobs.trial import load_trial_model
from orchestrator.pools.langevin import langevin_config


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser("langevin", __doc__, [
        "SWEEP --trial ID --from SWEEP/attacks/ID-autoattack-<time> --only-fooled --steps 2000",
        "SWEEP --trial ID --from test --n 100 --steps 100000 --checkpoint-every 5000 "
        "--gpus-per-actor 0.5",
        "SWEEP --trial ID --from test --resume"],
        sweep_help="a finished sweep of flows or DIGLMs")
    parser.add_argument("--trial", required=True, help="trial id (see results/trials.csv)")
    parser.add_argument("--from", dest="source", required=True,
                        help="an attack run directory (start at its adversarial inputs) or "
                             "'test' (clean test inputs)")
    parser.add_argument("--n", type=int, help="at most N start points (default: all)")
    parser.add_argument("--only-fooled", action="store_true",
                        help="with an attack run: only the inputs the attack fooled")
    chains = parser.add_argument_group("chains (NOTES.md C)")
    chains.add_argument("--steps", type=int, default=1000, help="steps per chain (default "
                        "1000; the thesis runs up to 1e6)")
    chains.add_argument("--eta", type=finite_float, default=1e-3, help="step size (default 1e-3)")
    chains.add_argument("--am-stop", type=finite_float,
                        help="stop a chain once its approximate mass drops to this value")
    chains.add_argument("--eps", type=parse_eps,
                        help="L-inf radius of the final projection around the start point "
                             "(default: the attack's eps, or 8/255)")
    chains.add_argument("--no-clip", action="store_true",
                        help="do not keep the chains in [0, 1] between steps")
    chains.add_argument("--seed", type=int, default=0,
                        help="seed of the chains' noise: each unit's from it and the unit's index "
                             "range (default 0)")
    chains.add_argument("--chains-per-unit", type=int, default=256,
                        help="chains advanced as one batch by an actor (default 256)")
    chains.add_argument("--checkpoint-every", type=int, default=1000,
                        help="K: steps between chain checkpoints (default 1000)")
    chains.add_argument("--record-every", type=int, default=100,
                        help="steps between AM records along the chains (default 100)")
    add_job_arguments(parser)
    return parser


def chain_config(args: argparse.Namespace, eps: float) -> dict[str, Any]:
    """The Langevin pool's settings from the chain flags."""
    return {"steps": args.steps, "eta": args.eta, "am_stop": args.am_stop, "eps": eps,
            "clip": not args.no_clip, "seed": args.seed,
            "chains_per_unit": args.chains_per_unit,
            "checkpoint_every": args.checkpoint_every, "record_every": args.record_every}


def main(args: argparse.Namespace) -> int:
    pool_args = pool_arguments(args)
    if args.n is not None and args.n < 1:
        raise UsageError("--n must be >= 1")
    source = None if args.source == "test" else Path(args.source)
    if source is not None:
        read_attack_run(source, args.trial)
    model, data, _ = load_trial_model(args.sweep_dir, args.trial, args.data_dir)
    if not hasattr(model, "log_prob"):
        raise UsageError(f"trial {args.trial} is a classifier: Langevin chains need a flow "
                         f"or a DIGLM (log p(x))")
    x, y, eps, name = start_points(source, data, args.eps, args.only_fooled, args.n)
    config = langevin_config(chain_config(args, eps))
    restore_chains(args.sweep_dir, args.trial, model, x, y, config, name, str(args.source),
                   pool_args, args.resume, args.wandb)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(build_parser(), main))
