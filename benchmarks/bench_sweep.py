"""Benchmark: the `local` sweep on Ray against the machine's limit for the same trials.

Measures, in one run on this machine:
1. the fair limit: the same trials (one seed each: `--seeds 1`) trained by the same workload
   code (`run_epochs(ClassifierLoop, ...)` + `LocalSession`) with no Ray, in one process per
   core with one torch thread each (the best a user could do by hand: every core busy, no threads
   competing), trials handed out longest first;
2. wall time of `python -m orchestrator.sweep batch_size_gffn` (the local profile, W&B
   offline, and again with W&B disabled), and its ratio to the limit (target <= 1.25);
3. steady-state training throughput (epochs/s) of one trial at batch 32 on the plain
   1-thread loop, the in-process Tune path (1 CPU) and the Ray Train DDP path (2 workers),
   each epoch's metrics taken from the trial's reports (target in-process >= 0.95 x plain).

Usage:  python benchmarks/bench_sweep.py [--profile local] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.tune.epochs import run_epochs  # noqa: E402
from orchestrator.tune.session import LocalSession  # noqa: E402
from search_spaces import get_search_space  # noqa: E402
from workloads.studies.classifier import ClassifierLoop  # noqa: E402

SWEEP = "batch_size_gffn"
TRAIN_EXAMPLES = 1077  # digits' training split
# A representative trial for the throughput comparison: GFFN, budget B (fixed epochs),
# batch 32 (an epoch is ~45 ms of compute on one thread).
THROUGHPUT_TRIAL = {"batch_size": 32, "model": "gffn", "lr_scaling": "none", "budget": "B",
                    "epochs_b": 60}


def expected_steps(config: dict) -> int:
    """How long a trial is, to hand out the longest first: optimizer steps it may take."""
    epochs = config["epochs_b"] if config["budget"] == "B" else config["max_epochs_a"]
    return epochs * max(1, TRAIN_EXAMPLES // config["batch_size"])


def _one_trial(config: dict) -> float:
    session = LocalSession(num_threads=1)
    run_epochs(ClassifierLoop, config, session)
    return session.reports[-1]["loop_seconds"]


def run_limit(configs: list[dict], processes: int) -> float:
    """Wall time of the trials on `processes` processes of one thread, longest first."""
    ordered = sorted(configs, key=expected_steps, reverse=True)
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        for done, seconds in enumerate(pool.imap_unordered(_one_trial, ordered), 1):
            print(f"[limit] trial {done}/{len(configs)}: {seconds:.1f} s", flush=True)
    return time.perf_counter() - started


def run_sweep(storage: Path, *args: str) -> tuple[float, Path]:
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("WANDB_API_KEY", None)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "orchestrator.sweep", SWEEP, "--storage",
                    str(storage), *args], check=True, env=env, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    return wall, sorted(storage.glob(f"{SWEEP}-*"))[-1]


def epochs_per_second(epochs: list[dict]) -> float:
    """Steady-state rate between the first and the second-to-last epoch (the last one
    includes the final evaluation)."""
    first, last = epochs[0], epochs[-2]
    return (last["epoch"] - first["epoch"]) / (last["loop_seconds"] - first["loop_seconds"])


def sweep_trial_epochs(sweep_dir: Path) -> list[dict]:
    """Every epoch's metrics of the (single) trial of a sweep, from its result.json rows and
    the epochs each row carries (`earlier_epochs`)."""
    (result_file,) = list(sweep_dir.glob("*/result.json"))
    rows = [json.loads(line) for line in result_file.read_text().splitlines() if line]
    return [epoch for row in rows for epoch in [*row.get("earlier_epochs", []), row]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="local")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    configs = get_search_space(SWEEP).profile(args.profile).trial_configs()
    results: dict = {"profile": args.profile, "cores": cores, "trials": len(configs)}

    # 1-2. The whole sweep against the machine's limit.
    limit = run_limit(configs, processes=min(cores, len(configs)))
    sweep_wall, sweep_dir = run_sweep(out / "sweep", "--profile", args.profile, "--seeds",
                                      "1", "--wandb", "offline")
    no_wandb_wall, _ = run_sweep(out / "sweep_no_wandb", "--profile", args.profile, "--seeds",
                                 "1", "--wandb", "disabled")
    statuses = pd.read_csv(sweep_dir / "results" / "trials.csv")["status"]
    results.update(limit_wall_s=limit, sweep_wall_s=sweep_wall,
                   sweep_to_limit=sweep_wall / limit, sweep_no_wandb_wall_s=no_wandb_wall,
                   sweep_no_wandb_to_limit=no_wandb_wall / limit,
                   sweep_statuses=statuses.value_counts().to_dict())
    print(json.dumps(results, indent=2), flush=True)

    # 3. Steady-state throughput of one trial on each path (same workload code).
    config = {**configs[0], **THROUGHPUT_TRIAL}
    session = LocalSession(num_threads=1)
    run_epochs(ClassifierLoop, config, session)
    rates = {"plain_1_thread": epochs_per_second(session.reports)}
    sets = [f"--set={k}={v}" for k, v in THROUGHPUT_TRIAL.items()]
    for path, extra in {"in_process_1cpu": [], "ddp_2_workers": ["--num-workers", "2"]}.items():
        _, trial_dir = run_sweep(out / f"throughput_{path}", "--profile", args.profile,
                                 "--seeds", "1", "--wandb", "disabled", *sets, *extra)
        rates[path] = epochs_per_second(sweep_trial_epochs(trial_dir))
    results["throughput_batch32"] = {
        "epochs_per_second": rates,
        "ratio_to_plain_1_thread": {k: v / rates["plain_1_thread"] for k, v in rates.items()}}
    assert all(math.isfinite(v) for v in rates.values())
    (out / "bench_sweep.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
