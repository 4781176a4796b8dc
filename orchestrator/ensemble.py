"""Evaluate deep ensembles of a finished sweep: the seeds of each configuration combined.

    python -m orchestrator.ensemble SWEEP_DIR [--data-dir DIR] [--wandb MODE]

Each configuration with two or more completed seeds becomes one ensemble (Lakshminarayanan
et al. 2017; the baseline of document 001's Bayesian part): its members' softmax
probabilities are averaged, and the ensemble is scored on the test split (accuracy, NLL,
ECE beside the members' mean accuracy), on failure prediction (MCP, entropy and mutual
information of the ensemble; errors positive) and on OOD detection. Writes
`SWEEP_DIR/ensemble/ensemble-<time>/ensemble.{csv,md}`, `failure.csv`, `ood.csv` and a W&B
run in the sweep's group.
"""

from __future__ import annotations

import argparse
import os
import sys

from orchestrator.cli import job_parser, run_command
from orchestrator.jobs.ensemble import build_ensembles


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser("ensemble", __doc__, [
        "runs/failure_prediction-local-<time>",
        "SWEEP --data-dir ~/data --wandb offline"],
        sweep_help="a finished sweep directory with several seeds per configuration")
    parser.add_argument("--data-dir", default=os.environ.get("ROBUSTNESS_DATA_DIR"),
                        help="where torchvision datasets live (default: "
                             "$ROBUSTNESS_DATA_DIR, else where the trials read them)")
    parser.add_argument("--wandb", choices=("online", "offline", "disabled"),
                        help="W&B mode (default: online with an API key, else offline)")
    return parser


def main(args: argparse.Namespace) -> int:
    build_ensembles(args.sweep_dir, args.data_dir, args.wandb)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(build_parser(), main))
