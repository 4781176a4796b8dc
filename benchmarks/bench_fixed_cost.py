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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_scale import first_trial_start  # noqa: E402


def last_report(sweep_dir: Path) -> float:
    """Epoch seconds of the last report of any trial of the sweep."""
    return max(json.loads(path.read_text().splitlines()[-1])["timestamp"]
               for path in sweep_dir.glob("*/result.json"))


def measure_once() -> dict[str, float]:
    storage = Path(tempfile.mkdtemp(prefix="fixed-cost-"))
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "WANDB_MODE": "disabled"}
    try:
        started = time.time()
        subprocess.run([sys.executable, "-m", "orchestrator.sweep", "batch_size_gffn",
                        "--profile", "smoke", "--wandb", "disabled", "--storage", str(storage)],
                       cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        ended = time.time()
        (sweep_dir,) = storage.glob("batch_size_gffn-smoke-*")
        return {"start_to_first_trial_s": round(first_trial_start(sweep_dir) - started, 1),
                "last_report_to_exit_s": round(ended - last_report(sweep_dir), 1),
                "total_s": round(ended - started, 1)}
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for _ in range(args.runs):
        print(json.dumps(measure_once()), flush=True)


if __name__ == "__main__":
    main()
