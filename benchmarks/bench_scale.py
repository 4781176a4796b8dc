"""Benchmark: the sweep driver's cost per trial as the trial count grows.

`batch_size_gffn --profile smoke --seeds K` is 4 configurations x K seeds of short trials on
digits (~0.4 s each). For each trial count, in one run on this machine:
- the fair limit: the same trials by the same workload code with no Ray, in one process per
  core with one torch thread each (`bench_sweep.run_limit`);
- the sweep as a user runs it, W&B offline and again disabled;
- the overhead per trial, (sweep - limit) x cores / trials in core-seconds, and the marginal
  cost between consecutive counts (the driver's cost per extra trial; flat when nothing
  in the driver grows with the trial count);
- within each sweep, the trials finished per second in each tenth of its trials (flat when
  nothing grows as the sweep goes on; a dip shows a tenth that other work slowed).
The fixed cost (start to first trial, last trial to exit) is read from the sweep's own
files: the earliest trial start in its result.json files, and its end.

`--set key=value` (as the sweep's) applies to both, e.g. `--set ood_scores=msp` for shorter
trials at 10,000. `--extrapolate-limit-above N`: for the counts above N the limit is not run
but drawn through the limits measured (in the same run) at the two largest counts up to N: the
limit is two independent processes running the same trials, so its time is a fixed start plus
a per-trial cost (at 10,000 trials this saves ~30 minutes of the machine).

Usage:  python benchmarks/bench_scale.py [--trials 100 1000] [--wandb offline disabled] [--set K=V]
                                        [--extrapolate-limit-above N] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_sweep import run_limit, run_sweep  # noqa: E402

from orchestrator.tune.overrides import apply_overrides  # noqa: E402
from search_spaces import get_search_space  # noqa: E402


def first_trial_start(sweep_dir: Path) -> float:
    """Epoch seconds at which the first trial's first report was made, minus its own
    loop time: when the first trial began."""
    starts = []
    for result in sweep_dir.glob("*/result.json"):
        line = result.read_text().splitlines()[0]
        row = json.loads(line)
        starts.append(row["timestamp"] - row.get("time_this_iter_s", 0.0))
    return min(starts)


def trial_ends(sweep_dir: Path) -> list[float]:
    """Epoch seconds of each trial's last report (its result.json's last row), in order."""
    return sorted(json.loads(result.read_text().splitlines()[-1])["timestamp"]
                  for result in sweep_dir.glob("*/result.json"))


def finished_per_second(sweep_dir: Path, parts: int = 10) -> list[float]:
    """Trials finished per second in each of `parts` equal shares of the sweep's trials, in
    the order they finished (each trial's end: its last report's timestamp; the first share
    counted from the first trial's start). Flat when no per-trial cost grows as the sweep
    goes on; a dip marks a share that something else slowed (say, other work beside it)."""
    ends = trial_ends(sweep_dir)
    size = len(ends) // parts
    marks = [first_trial_start(sweep_dir)] + [ends[size * (k + 1) - 1] for k in range(parts)]
    return [round(size / (b - a), 2) for a, b in zip(marks, marks[1:])]


def extrapolated_limit(measured: dict[int, float], trials: int) -> float:
    """The limit's seconds at `trials`, on the line through the two largest measured counts
    (the limit's time is linear in the count: a fixed start, then identical independent
    trials on every core)."""
    if len(measured) < 2:
        raise SystemExit("--extrapolate-limit-above needs two measured counts at or below it")
    (n1, s1), (n2, s2) = sorted(measured.items())[-2:]
    return s2 + (s2 - s1) / (n2 - n1) * (trials - n2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--wandb", nargs="+", default=["offline", "disabled"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a sweep override, applied to the limit's trials too")
    parser.add_argument("--extrapolate-limit-above", type=int, metavar="N",
                        help="draw the limit of the counts above N through the two largest "
                             "measured counts up to N (a start plus a cost per trial)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    space = get_search_space("batch_size_gffn")
    rows, limits = [], {}  # limits: measured limit seconds by trial count
    for trials in sorted(args.trials):
        profile = apply_overrides(space, space.profile("smoke"), args.set)
        seeds = max(1, trials // profile.num_trials())
        configs = [dict(c, seed=s) for s in range(seeds) for c in profile.trial_configs()]
        overrides = [arg for value in args.set for arg in ("--set", value)]
        above = args.extrapolate_limit_above
        extrapolated = above is not None and trials > above
        if extrapolated:
            limit = extrapolated_limit(limits, len(configs))
        else:
            limit = limits[len(configs)] = run_limit(configs, processes=cores)
        for mode in args.wandb:
            started = time.time()
            wall, sweep_dir = run_sweep(out / f"scale_{trials}_{mode}", "--profile", "smoke",
                                        "--seeds", str(seeds), "--wandb", mode, *overrides)
            rows.append({"trials": len(configs), "wandb": mode, "set": args.set,
                         "limit_s": round(limit, 1), "limit_extrapolated": extrapolated,
                         "sweep_s": round(wall, 1), "sweep_to_limit": round(wall / limit, 2),
                         "overhead_core_s_per_trial": round((wall - limit) * cores
                                                            / len(configs), 3),
                         "start_to_first_trial_s": round(first_trial_start(sweep_dir)
                                                         - started, 1),
                         "finished_per_second_by_tenth": finished_per_second(sweep_dir)})
            print(json.dumps(rows[-1]), flush=True)
    for mode in args.wandb:  # marginal cost between consecutive counts
        mine = [r for r in rows if r["wandb"] == mode]
        for small, large in zip(mine, mine[1:]):
            large["marginal_core_s_per_trial"] = round(
                ((large["sweep_s"] - large["limit_s"]) - (small["sweep_s"] - small["limit_s"]))
                * cores / (large["trials"] - small["trials"]), 3)
    (out / "bench_scale.json").write_text(json.dumps(rows, indent=2))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
