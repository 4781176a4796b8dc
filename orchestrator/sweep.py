"""Run a named sweep on Ray Tune: `python -m orchestrator.sweep NAME [options]`.

Every trial trains under Ray (in the trial's process, or a TorchTrainer for several workers
or GPUs), each trial is one W&B run, and the sweep ends with a results table and plots in
`<storage>/<NAME>-<profile>-<time>/results/` (the experiment: orchestrator.tune.experiment).
With RAY_ADDRESS set the sweep joins that cluster; otherwise it starts Ray locally.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from orchestrator.cli import finite_float, run_command
from orchestrator.errors import UsageError
from orchestrator.tune.overrides import (
    apply_best,
    apply_overrides,
    check_datasets,
    check_scores,
    check_storage,
    profile_values,
)
from orchestrator.tune.scaling import Scaling
from orchestrator.tune.schedulers import PAUSING
from orchestrator.tune.search import SCHEDULERS, SEARCHERS, resolve_search
from search_spaces import PROFILES, get_search_space, sweep_names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.sweep",
        description="Run a named sweep (Ray Tune + Ray Train, tracked in W&B).",
        epilog="examples:\n"
               "  python -m orchestrator.sweep batch_size_gffn\n"
               "  python -m orchestrator.sweep batch_size_gffn --profile smoke --wandb disabled\n"
               "  python -m orchestrator.sweep batch_size_gffn --set batch_size=8,64 "
               "--set lr=3e-4\n"
               "  python -m orchestrator.sweep batch_size_gffn --profile paper "
               "--data-dir /data --gpus-per-worker 0.5\n"
               "  python -m orchestrator.sweep batch_size_gffn --set batch_size=64 "
               "--set 'lr=loguniform(1e-4,1e-1)' --num-samples 8 --scheduler asha\n"
               "  python -m orchestrator.sweep batch_size_gffn --set-from "
               "runs/batch_size_gffn-local-<time>/results/best.json\n\n"
               "exit codes: 0 every trial completed (or diverged); 1 some trials errored or "
               "did not finish\n(--resume continues them); 2 bad input; 3 no trial "
               "completed (the tables still hold what\nthe trials reported)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="sweep name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the sweeps and exit")
    parser.add_argument("--profile", default="local", choices=PROFILES,
                        help="smoke: smallest real run; local (default): embedded data, "
                             "minutes on a laptop; paper: the full protocol")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config value; a comma-separated value sweeps it "
                             "(repeatable)")
    parser.add_argument("--set-from", metavar="BEST_JSON", type=Path,
                        help="start from the values a search found: the searched keys of "
                             "a sweep's results/best.json, per configuration of its grid "
                             "(a later --set wins)")
    search = parser.add_argument_group(
        "search (a key searched with --set 'KEY=loguniform(a,b)', uniform(a,b), "
        "randint(a,b) or choice(x,y,...))")
    search.add_argument("--num-samples", type=int, default=1, metavar="N",
                        help="draw N values of the searched keys, each run on every grid "
                             "combination and seed (default: 1)")
    search.add_argument("--search", default="random", choices=SEARCHERS,
                        help="who draws them: random (Tune's own), optuna (TPE), hyperopt or "
                             "bohb (under its own hyperband); optuna, hyperopt and bohb need "
                             "every grid key fixed but the seed: each draw runs once per "
                             "--seeds seed, its value the mean over them (default: random)")
    search.add_argument("--scheduler", choices=SCHEDULERS,
                        help="who stops or perturbs trials, on the trials' epochs: asha, "
                             "median, hyperband stop trials early; pbt and pb2 clone the "
                             "best running trials and perturb the searched keys (their "
                             "result is a schedule); fifo: none (default; hyperband for "
                             "--search bohb)")
    search.add_argument("--startup-draws", type=int, metavar="N",
                        help="optuna / hyperopt / bohb: draw the first N values at random, "
                             "then from the results (default: Ray's, optuna 10, hyperopt "
                             "20, bohb the searched keys + 1)")
    search.add_argument("--start-at", action="append", default=[],
                        metavar="KEY=VALUE[,KEY=VALUE...]",
                        help="optuna / hyperopt / bohb: a first draw, every searched key "
                             "given (repeatable: one draw each)")
    search.add_argument("--time-budget-s", type=finite_float, metavar="S",
                        help="end the sweep after S seconds (Tune's time_budget_s): trials "
                             "still running then are left incomplete (default: none)")
    search.add_argument("--metric", help="the validation metric they decide on (default: the "
                                         "sweep's own, see --list); reported every epoch")
    search.add_argument("--mode", choices=("max", "min"),
                        help="whether --metric is better high or low")
    search.add_argument("--grace-period", type=int, metavar="EPOCHS",
                        help="asha / median: epochs before a trial may be stopped "
                             "(default: 1)")
    search.add_argument("--reduction-factor", type=finite_float, metavar="F",
                        help="asha / hyperband: 1/F of the trials go on at each rung "
                             "(default: Ray's, 4 for asha, 3 for hyperband)")
    search.add_argument("--across-grid", action="store_true",
                        help="asha / median: compare every trial with every other (default: "
                             "each within its grid cell, e.g. model=ffn against ffn only)")
    search.add_argument("--search-seed", type=int, default=0, metavar="S",
                        help="seed of the searcher and scheduler (default: 0; the same "
                             "command draws the same values)")
    parser.add_argument("--seeds", type=int, metavar="K",
                        help="train every configuration with seeds 0..K-1 (model "
                             "initialisation and data order; the data split stays fixed unless "
                             "--vary-split); "
                             "same as --set seed=0,...,K-1 (default: the profile's count, "
                             "see --list)")
    parser.add_argument("--vary-split", action="store_true",
                        help="each seed also draws its own train/validation/test split and "
                             "OOD sets (same as --set data_seed=seed): intervals over seeds "
                             "then cover the split's variance too")
    parser.add_argument("--num-workers", type=int, help="data-parallel workers per trial")
    parser.add_argument("--gpus-per-worker", type=finite_float,
                        help="GPUs per worker (fractions share a GPU)")
    parser.add_argument("--cpus-per-worker", type=int, help="CPUs per worker")
    parser.add_argument("--max-concurrent-trials", type=int, metavar="N",
                        help="run at most N trials at once (default: as many as fit on a "
                             "local Ray; on a cluster, as many as it grows to; optuna / "
                             "hyperopt / bohb at most max(1, num-samples // 4) draws at "
                             "once, each with its seeds, locally and on a cluster, so that "
                             "later draws follow earlier results)")
    parser.add_argument("--verbose", action="store_true",
                        help="print Ray Tune's own progress tables (default: a line per "
                             "finished trial and a status line every --status-interval s)")
    parser.add_argument("--status-interval", type=finite_float, default=10.0, metavar="S",
                        help="seconds between status lines: trials done, running, pending, "
                             "ETA, and what each running trial is doing (default: 10)")
    parser.add_argument("--storage", default="runs",
                        help="directory or URI (s3://, gs://) for trials and checkpoints "
                             "(default: ./runs)")
    parser.add_argument("--resume", action="store_true",
                        help="resume the latest unfinished run of this sweep and profile")
    parser.add_argument("--wandb", choices=("offline", "online", "disabled"),
                        help="W&B mode (default: online with an API key, else offline)")
    parser.add_argument("--data-dir", default=os.environ.get("ROBUSTNESS_DATA_DIR", "data"),
                        help="where torchvision datasets live (default: ./data or "
                             "$ROBUSTNESS_DATA_DIR)")
    parser.add_argument("--download", action="store_true",
                        help="download missing torchvision datasets into --data-dir")
    return parser


def list_sweeps() -> str:
    lines = []
    for name in sweep_names():
        space = get_search_space(name)
        lines.append(f"{name}: {space.description}")
        for pname, profile in space.profiles.items():
            trials = profile.num_trials() * profile.seeds
            seeds = f" ({profile.seeds} seeds)" if profile.seeds > 1 else ""
            lines.append(f"    {pname:<6} {trials:>4} trials{seeds}  {profile.description}")
        lines.append(f"    metric: {space.metric} ({space.mode})")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Resolve the sweep, its profile, overrides and trial resources; check them; run."""
    if args.list:
        print(list_sweeps())
        return 0
    if not args.name:
        raise UsageError(f"a sweep name is required; valid names: {', '.join(sweep_names())}")
    try:
        space = get_search_space(args.name)
    except KeyError:
        raise UsageError(f"unknown sweep '{args.name}'; valid names: "
                         f"{', '.join(sweep_names())}") from None
    base = space.profile(args.profile)
    seeds = base.seeds if args.seeds is None else args.seeds
    if seeds < 1:
        raise UsageError("--seeds must be >= 1")
    if args.seeds is not None and any(o.partition("=")[0].strip() == "seed"
                                      for o in args.overrides):
        raise UsageError("--seeds and --set seed=... both set the seeds: use one")
    if seeds > 1 and not any(o.partition("=")[0].strip() == "seed" for o in args.overrides):
        args.overrides = [*args.overrides, "seed=" + ",".join(map(str, range(seeds)))]
    if args.vary_split:
        if any(o.partition("=")[0].strip() == "data_seed" for o in args.overrides):
            raise UsageError("--vary-split and --set data_seed=... both set the split: use one")
        args.overrides = [*args.overrides, "data_seed=seed"]
    profile = replace(apply_overrides(space, base, args.overrides),
                      num_samples=args.num_samples)
    if args.set_from is not None:  # a key the user --set keeps the user's value
        profile = apply_best(space, profile, args.set_from,
                             keep=tuple(o.partition("=")[0].strip() for o in args.overrides))
    search = resolve_search(space, profile, algorithm=args.search, scheduler=args.scheduler,
                            metric=args.metric, mode=args.mode,
                            grace_period=args.grace_period,
                            reduction_factor=args.reduction_factor, resume=args.resume,
                            across_grid=args.across_grid, seed=args.search_seed, base=base,
                            startup_draws=args.startup_draws, start_at=args.start_at,
                            time_budget_s=args.time_budget_s)
    scaling = Scaling(
        num_workers=profile.num_workers if args.num_workers is None else args.num_workers,
        gpus_per_worker=(profile.gpus_per_worker if args.gpus_per_worker is None
                         else args.gpus_per_worker),
        cpus_per_worker=(profile.cpus_per_worker if args.cpus_per_worker is None
                         else args.cpus_per_worker))
    if not args.status_interval > 0:
        raise UsageError("--status-interval must be a positive number of seconds")
    if args.max_concurrent_trials is not None and args.max_concurrent_trials < 1:
        raise UsageError("--max-concurrent-trials must be >= 1")
    if search.perturbs and not scaling.in_process:
        raise UsageError(f"--scheduler {search.scheduler} with --num-workers "
                         f"{scaling.num_workers} / --gpus-per-worker "
                         f"{scaling.gpus_per_worker:g}: a population's trials clone each "
                         f"other's checkpoints, which the Ray Train path keeps in each "
                         f"trial's own Train run, not in Tune; run it in-process (1 worker, "
                         f"no GPU), or search with --scheduler asha")
    if (args.max_concurrent_trials and os.environ.get("RAY_ADDRESS")
            and search.scheduler in PAUSING):
        raise UsageError(f"--max-concurrent-trials with --scheduler {search.scheduler} on a "
                         f"cluster: its paused trials must all exist to take turns, so only "
                         f"the cluster's size limits how many run; leave the flag out")
    if scaling.num_workers < 1 or scaling.gpus_per_worker < 0 or scaling.cpus_per_worker < 1:
        raise UsageError("--num-workers and --cpus-per-worker must be >= 1, "
                         "--gpus-per-worker >= 0")
    for batch_size in profile_values(profile, "batch_size"):
        if batch_size is not None and batch_size % scaling.num_workers:
            raise UsageError(f"batch_size {batch_size} is not divisible by "
                             f"--num-workers {scaling.num_workers}")
    check_scores(space, profile)
    check_storage(args.storage)
    data_dir = str(Path(args.data_dir).expanduser().resolve())
    check_datasets(profile, data_dir, args.download)
    from orchestrator.tracking import runs as tracking  # torch, Ray, W&B: after the checks
    from orchestrator.tune.experiment import run_sweep
    from orchestrator.tune.plan import SweepPlan

    try:
        mode = tracking.resolve_mode(args.wandb)
    except ValueError as error:
        raise UsageError(str(error)) from None
    tracking.prepare_environment(mode)

    overrides = ([f"--set-from {args.set_from}"] if args.set_from else []) + args.overrides
    return run_sweep(SweepPlan(
        space, args.profile, profile, scaling, search, storage=args.storage,
        data_dir=data_dir, wandb=mode, overrides=tuple(overrides), resume=args.resume,
        max_concurrent_trials=args.max_concurrent_trials, verbose=args.verbose,
        status_interval=args.status_interval, command=tuple(getattr(args, "argv", ()))))


if __name__ == "__main__":
    sys.exit(run_command(build_parser(), main))
