"""Benchmark: a sweep's fixed cost, the seconds that do not depend on its trials.

Runs `python -m orchestrator.sweep batch_size_gffn --profile smoke --wandb disabled` (4 short
trials) `--runs` times from this checkout, each with its own Ray temp dir, and reads from the
sweep's own files how long it took from the command's start to the first trial's start, and
from the last trial's last report to the command's exit (Tune's wrap-up, then the tables,
plots and verdicts).

Usage:  python benchmarks/bench_fixed_cost.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_scale import first_trial_start, trial_ends  # noqa: E402
from bench_sweep import run_sweep  # noqa: E402


def measure_once() -> dict[str, float]:
    storage = Path(tempfile.mkdtemp(prefix="fixed-cost-"))
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # a Ray of its own
    try:
        started = time.time()
        wall, sweep_dir = run_sweep(storage, "--profile", "smoke", "--wandb", "disabled")
        ended = started + wall
        return {"start_to_first_trial_s": round(first_trial_start(sweep_dir) - started, 1),
                "last_report_to_exit_s": round(ended - trial_ends(sweep_dir)[-1], 1),
                "total_s": round(wall, 1)}
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        shutil.rmtree(os.environ.pop("RAY_TMPDIR"), ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for _ in range(args.runs):
        print(json.dumps(measure_once()), flush=True)


if __name__ == "__main__":
    main()
