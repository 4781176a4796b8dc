"""Benchmark: the `local` sweep on Ray against a plain sequential PyTorch loop.

Measures, in one run on this machine:
1. wall time of `python -m orchestrator.sweep batch_size_gffn` (the local profile, W&B
   offline) against a plain loop with no Ray that trains the same trials with the same
   workload code (`train_classifier` + `LocalSession`, torch's default thread count);
2. training throughput (epochs/s) of one representative trial on each path: the plain
   loop, the in-process Tune path and the Ray Train DDP path (2 workers);
3. per-trial orchestration overhead: the slot-seconds the sweep spends beyond the plain
   loop's compute, per trial: (slots * sweep_wall - plain_wall) / trials; and the same sweep
   with W&B disabled, to show what tracking costs.

Usage:  python benchmarks/bench_sweep.py [--profile local] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.tune.loops import train_classifier  # noqa: E402
from orchestrator.tune.session import LocalSession  # noqa: E402
from search_spaces import get_search_space  # noqa: E402

SWEEP = "batch_size_gffn"
# Representative trials for the throughput comparison (budget B: fixed epochs). On digits
# an epoch at batch 32 is ~45 ms of compute, at batch 8 ~200 ms.
THROUGHPUT_TRIALS = {
    "batch32": {"batch_size": 32, "model": "gffn", "lr_scaling": "none", "budget": "B",
                "epochs_b": 40},
    "batch8": {"batch_size": 8, "model": "gffn", "lr_scaling": "none", "budget": "B",
               "epochs_b": 12},
}


def trial_configs(profile_name: str) -> list[dict]:
    profile = get_search_space(SWEEP).profile(profile_name)
    keys = list(profile.grid)
    return [{**profile.config, **dict(zip(keys, values))}
            for values in itertools.product(*(profile.grid[k] for k in keys))]


def epochs_per_second(reports: list[dict]) -> float:
    """Steady-state rate between the first and the second-to-last epoch's report
    (the last one includes the final evaluation)."""
    first, last = reports[0], reports[-2]
    return (last["epoch"] - first["epoch"]) / (last["loop_seconds"] - first["loop_seconds"])


def run_plain(configs: list[dict]) -> tuple[float, list[float]]:
    started = time.perf_counter()
    per_trial = []
    for i, config in enumerate(configs, 1):
        session = LocalSession()
        train_classifier(config, session)
        per_trial.append(session.reports[-1]["loop_seconds"])
        print(f"[plain] trial {i}/{len(configs)}: {per_trial[-1]:.1f} s", flush=True)
    return time.perf_counter() - started, per_trial


def run_sweep(storage: Path, *args: str) -> tuple[float, Path]:
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("WANDB_API_KEY", None)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "orchestrator.sweep", SWEEP, "--storage",
                    str(storage), *args], check=True, env=env, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    return wall, sorted(storage.glob(f"{SWEEP}-*"))[-1]


def sweep_trial_reports(sweep_dir: Path) -> list[dict]:
    """The per-epoch reports of the (single) trial of a sweep, from Tune's result.json."""
    (result_file,) = list(sweep_dir.glob("*/result.json"))
    return [json.loads(line) for line in result_file.read_text().splitlines() if line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="local")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"profile": args.profile, "cpus": os.cpu_count()}

    # 2. Throughput of representative trials on each path (same workload code).
    paths = {
        "in_process_1cpu": [],
        "in_process_2cpu": ["--cpus-per-worker", "2"],
        "in_process_1cpu_checkpoint_every_10": ["--set", "checkpoint_every=10"],
        "ddp_2_workers": ["--num-workers", "2"],
    }
    results["throughput"] = {}
    for trial_name, trial in THROUGHPUT_TRIALS.items():
        config = {**trial_configs(args.profile)[0], **trial}
        rates = {}
        for threads in (None, 1):
            session = LocalSession(num_threads=threads)
            train_classifier(config, session)
            rates[f"plain_{threads or 'default'}_threads"] = epochs_per_second(session.reports)
        sets = [f"--set={k}={v}" for k, v in trial.items()]
        for path, extra in paths.items():
            _, sweep_dir = run_sweep(out / f"throughput_{trial_name}_{path}", "--profile",
                                     args.profile, "--wandb", "disabled", *sets, *extra)
            rates[path] = epochs_per_second(sweep_trial_reports(sweep_dir))
        plain = rates["plain_default_threads"]
        results["throughput"][trial_name] = {
            "trial": trial, "epochs_per_second": rates,
            "ratio_to_plain_default_threads": {k: v / plain for k, v in rates.items()}}
        print(json.dumps(results["throughput"][trial_name], indent=2), flush=True)

    # 1. The whole sweep against the plain sequential loop.
    configs = trial_configs(args.profile)
    plain_wall, plain_trials = run_plain(configs)
    sweep_wall, sweep_dir = run_sweep(out / "sweep", "--profile", args.profile,
                                      "--wandb", "offline")
    # The same sweep without W&B: what tracking costs on 2 cores.
    sweep_wall_no_wandb, _ = run_sweep(out / "sweep_no_wandb", "--profile", args.profile,
                                       "--wandb", "disabled")
    statuses = pd.read_csv(sweep_dir / "results" / "trials.csv")["status"]
    slots = min(os.cpu_count() or 1, len(configs))
    results.update(
        trials=len(configs), plain_wall_s=plain_wall, sweep_wall_s=sweep_wall,
        sweep_to_plain=sweep_wall / plain_wall, slots=slots,
        sweep_no_wandb_wall_s=sweep_wall_no_wandb,
        sweep_no_wandb_to_plain=sweep_wall_no_wandb / plain_wall,
        overhead_per_trial_no_wandb_s=(slots * sweep_wall_no_wandb - plain_wall) / len(configs),
        overhead_per_trial_s=(slots * sweep_wall - plain_wall) / len(configs),
        plain_trial_seconds_sum=sum(plain_trials),
        sweep_statuses=statuses.value_counts().to_dict())
    (out / "bench_sweep.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
