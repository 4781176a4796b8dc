"""Benchmark: how many trial runs per second the sweep's W&B thread sustains (offline).

A sweep logs every trial through one background thread in the driver
(`orchestrator.tracking.runs.WandbTrialLogger`): per trial a `wandb.init`, one `log` per
epoch and a `finish` with the trial's long tables. This times exactly those calls, on that
class's own methods, for `--runs` trials of `--epochs` epochs each, in offline mode, and
reports runs/s, seconds per run and the driver CPU per run. A sweep whose trials end faster
than this rate queues W&B work, which the sweep's end then drains (at most
ROBUSTNESS_WANDB_DRAIN_S, with progress lines).

Usage:  python benchmarks/bench_wandb.py [--runs 100] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.tracking.runs import WandbTrialLogger, prepare_environment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    prepare_environment("offline")
    logger = WandbTrialLogger(mode="offline", group="bench-wandb")
    rows = [{"score": "msp", "ood_set": f"set{i}", "auroc": 0.9, "fpr95": 0.1}
            for i in range(3)]
    with tempfile.TemporaryDirectory() as directory:
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(args.runs):
            trial_id = f"bench_{i:05d}"
            logger._start(trial_id, trial_id, {"lr": 1e-3, "batch_size": 32, "seed": i},
                          os.path.join(directory, trial_id))
            for epoch in range(1, args.epochs + 1):
                logger._log(trial_id, {"epoch": epoch, "train_loss": 1.0 / epoch,
                                       "val_acc": 0.9, "status": "running"})
            logger._finish(trial_id, "completed", 0, {"ood": rows})
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    result = {"runs": args.runs, "epochs": args.epochs, "wall_s": round(wall, 2),
              "runs_per_s": round(args.runs / wall, 2),
              "s_per_run": round(wall / args.runs, 4),
              "driver_cpu_s_per_run": round(cpu / args.runs, 4)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
