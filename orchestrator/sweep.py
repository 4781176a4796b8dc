"""Run a named sweep on Ray Tune: `python -m orchestrator.sweep NAME [options]`.

Every trial trains under Ray (in the trial's process, or a TorchTrainer for several workers
or GPUs), each trial is one W&B run, and the sweep ends with a results table and plots in
`<storage>/<NAME>-<profile>-<time>/results/`. With RAY_ADDRESS set the sweep joins that
cluster; otherwise it starts Ray locally.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from search_spaces import (
    PROFILES,
    SETUP,
    Profile,
    SearchSpace,
    get_search_space,
    sweep_names,
)
from workloads.datasets import DatasetMissingError, ensure_dataset

EXIT_USAGE = 2
SWEEP_FILE = "sweep.json"
# Environment of every Ray worker of a sweep (a value already in the environment wins).
# Ray Train V2 hands a report to its controller only when the controller polls (every 2 s
# by default), which made every epoch of a small DDP trial last 2 s; poll every 0.1 s.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}


class UsageError(ValueError):
    """Bad command-line input: reported in one line, exit code 2, no traceback."""


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
               "--data-dir /data --gpus-per-worker 0.5",
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
    parser.add_argument("--num-workers", type=int, help="data-parallel workers per trial")
    parser.add_argument("--gpus-per-worker", type=float,
                        help="GPUs per worker (fractions share a GPU)")
    parser.add_argument("--cpus-per-worker", type=int, help="CPUs per worker")
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


def _parse_scalar(key: str, text: str, example: Any) -> Any:
    kind = type(example)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        return text
    except ValueError:
        raise UsageError(f"--set {key}={text}: expected {kind.__name__}") from None


def apply_overrides(space: SearchSpace, profile: Profile, overrides: list[str]) -> Profile:
    """Profile with `--set key=value` applied. A comma-separated value becomes a grid."""
    config, grid = dict(profile.config), {k: list(v) for k, v in profile.grid.items()}
    setups = [dict(s) for s in grid.get(SETUP, [])]
    known = sorted({*config, *grid, *(k for s in setups for k in s)} - {SETUP})
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got '{item}'")
        in_setup = any(key in s for s in setups)
        if key == SETUP or (key not in config and key not in grid and not in_setup):
            raise UsageError(f"--set {key}: unknown key for sweep '{space.name}'; "
                             f"known keys: {', '.join(known)}")
        example = (config[key] if key in config else grid[key][0] if key in grid
                   else next(s[key] for s in setups if key in s))
        values = [_parse_scalar(key, part.strip(), example) for part in text.split(",")]
        allowed = space.choices.get(key)
        for value in values:
            if allowed is not None and value not in allowed:
                raise UsageError(f"--set {key}={value}: must be one of "
                                 f"{', '.join(map(str, allowed))}")
            if key in space.positive and not value > 0:
                raise UsageError(f"--set {key}={value}: must be positive")
        config.pop(key, None)
        grid.pop(key, None)
        for setup in setups:  # an override wins over the profile's linked setups
            setup.pop(key, None)
        if len(values) == 1:
            config[key] = values[0]
        else:
            grid[key] = values
    if setups:
        grid[SETUP] = setups
    return replace(profile, config=config, grid=grid)


def _values(profile: Profile, key: str) -> list[Any]:
    """Every value `key` takes in the profile's trials."""
    values = list(profile.grid[key]) if key in profile.grid else [profile.config.get(key)]
    setups = [s for s in profile.grid.get(SETUP, []) if key in s]
    if setups:
        values = [s[key] for s in setups] + ([] if len(setups) == len(profile.grid[SETUP])
                                             else values)
    return values


def check_scores(profile: Profile) -> None:
    """`ood_scores` is "all" or registered score names joined by "+"."""
    from workloads.scores import OOD_SCORES

    for value in _values(profile, "ood_scores"):
        if value is None or value == "all":
            continue
        unknown = [n for n in str(value).split("+") if n not in OOD_SCORES]
        if unknown:
            raise UsageError(f"--set ood_scores={value}: unknown score {', '.join(unknown)}; "
                             f"use 'all' or names joined by '+' from: "
                             f"{', '.join(OOD_SCORES)}")


def check_datasets(profile: Profile, data_dir: str, download: bool) -> None:
    """Fail before starting Ray when a dataset of the sweep is missing (or download it)."""
    for name in _values(profile, "dataset"):
        ensure_dataset(name, data_dir, download=download)


def _latest_run(storage: str, prefix: str) -> str | None:
    """The newest run `<prefix>-<time>` in `storage` (a directory or a URI such as s3://)
    that Tune can restore (it holds tuner.pkl)."""
    import pyarrow.fs

    if _is_uri(storage):
        filesystem, root = pyarrow.fs.FileSystem.from_uri(storage)
    else:
        filesystem, root = pyarrow.fs.LocalFileSystem(), storage
    found = filesystem.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    runs = sorted(info.base_name for info in found
                  if info.type == pyarrow.fs.FileType.Directory
                  and info.base_name.startswith(f"{prefix}-")
                  and filesystem.get_file_info(f"{info.path}/tuner.pkl").type
                  == pyarrow.fs.FileType.File)
    return f"{storage.rstrip('/')}/{runs[-1]}" if runs else None


def _is_uri(path: str) -> bool:
    return "://" in path


def list_sweeps() -> str:
    lines = []
    for name in sweep_names():
        space = get_search_space(name)
        lines.append(f"{name}: {space.description}")
        for pname, profile in space.profiles.items():
            lines.append(f"    {pname:<6} {profile.num_trials():>4} trials  {profile.description}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the sweep; return the process exit code."""
    from orchestrator import tracking
    from orchestrator.results import collect_results, markdown_table, write_results
    from orchestrator.trainable import KEEP_CHECKPOINTS, Scaling, make_trainable

    try:
        space = get_search_space(args.name)
    except KeyError:
        raise UsageError(f"unknown sweep '{args.name}'; valid names: "
                         f"{', '.join(sweep_names())}") from None
    profile = apply_overrides(space, space.profile(args.profile), args.overrides)
    scaling = Scaling(
        num_workers=args.num_workers or profile.num_workers,
        gpus_per_worker=(profile.gpus_per_worker if args.gpus_per_worker is None
                         else args.gpus_per_worker),
        cpus_per_worker=args.cpus_per_worker or profile.cpus_per_worker)
    if scaling.num_workers < 1 or scaling.gpus_per_worker < 0 or scaling.cpus_per_worker < 1:
        raise UsageError("--num-workers and --cpus-per-worker must be >= 1, "
                         "--gpus-per-worker >= 0")
    for batch_size in _values(profile, "batch_size"):
        if batch_size is not None and batch_size % scaling.num_workers:
            raise UsageError(f"batch_size {batch_size} is not divisible by "
                             f"--num-workers {scaling.num_workers}")
    check_scores(profile)
    data_dir = str(Path(args.data_dir).expanduser().resolve())
    check_datasets(profile, data_dir, args.download)
    try:
        mode = tracking.resolve_mode(args.wandb)
    except ValueError as error:
        raise UsageError(str(error)) from None
    tracking.prepare_environment(mode)

    storage = args.storage if _is_uri(args.storage) else str(Path(args.storage).resolve())
    prefix = f"{space.name}-{args.profile}"
    restore_path = None
    if args.resume:
        try:
            restore_path = _latest_run(storage, prefix)
        except OSError as error:
            raise UsageError(f"--resume: cannot list {storage}: {error}") from None
        if restore_path is None:
            raise UsageError(f"--resume: no earlier run '{prefix}-*' in {storage}")
        run_name = restore_path.rsplit("/", 1)[-1]
    else:
        run_name = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep_dir = f"{storage}/{run_name}"
    local_dir = Path(sweep_dir) if not _is_uri(storage) else Path("runs", run_name).resolve()

    import ray
    from ray import tune

    address = os.environ.get("RAY_ADDRESS")
    print(f"[sweep] {space.name} / {args.profile}: {profile.num_trials()} trials; "
          f"{'connecting to ' + address if address else 'starting Ray locally'}", flush=True)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The experiment snapshot that --resume reads: every second (Tune's default, "auto", is
    # at least 10 s), so a killed driver costs a trial about a second of epochs.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Per-trial result.json and progress.csv only (callbacks below); no TensorBoard files:
    # they cost the driver time on every epoch's report, and W&B is the dashboard. Set
    # before either Tuner is built, so a resumed sweep gets the same loggers.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    ray.init(address=address, logging_level="WARNING",
             runtime_env={"env_vars": {k: os.environ.get(k, v) for k, v in RAY_ENV.items()}})
    capacity = ray.cluster_resources()
    need = scaling.total_resources()
    fits = [capacity.get(k, 0) // v for k, v in need.items() if v > 0]
    if fits and min(fits) < 1:
        wanted = ", ".join(f"{v:g} {k}" for k, v in need.items() if v > 0)
        have = ", ".join(f"{capacity.get(k, 0):g} {k}" for k, v in need.items() if v > 0)
        if not address:  # a local Ray cannot grow: the trials would wait forever
            ray.shutdown()
            raise UsageError(f"one trial needs {wanted} but this machine has {have}; "
                             f"lower --num-workers / --gpus-per-worker / --cpus-per-worker")
        print(f"[sweep] warning: one trial needs {wanted}, the cluster has {have} now; "
              f"trials wait until the autoscaler adds nodes", file=sys.stderr)
    max_concurrent = max(1, int(min(fits))) if fits else None
    path = "in-process (Tune trial)" if scaling.in_process else (
        f"TorchTrainer, {scaling.num_workers} workers x "
        f"{scaling.cpus_per_worker} CPU + {scaling.gpus_per_worker} GPU")
    print(f"[sweep] trial path: {path}; up to {max_concurrent} trials at once; "
          f"W&B {mode}; storage {sweep_dir}", flush=True)

    trainable = make_trainable(space.loop, scaling, f"{sweep_dir}/train")
    param_space = {**profile.config, "data_dir": data_dir,
                   **{k: tune.grid_search(v) for k, v in profile.grid.items()}}
    if restore_path is not None:
        tuner = tune.Tuner.restore(restore_path, trainable, resume_errored=True,
                                   param_space=param_space)
    else:
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

        from orchestrator.checkpoint_retention import CheckpointRetention

        callbacks = [JsonLoggerCallback(), CSVLoggerCallback(),
                     CheckpointRetention(keep=KEEP_CHECKPOINTS)]
        callbacks += [cb for cb in [tracking.wandb_callback(mode, group=run_name)] if cb]
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(metric=space.metric, mode=space.mode,
                                        max_concurrent_trials=max_concurrent,
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name=run_name, storage_path=storage, callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=scaling.max_failures),
                # Old checkpoints are deleted by CheckpointRetention, not by Tune.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                verbose=1),
        )
    local_dir.mkdir(parents=True, exist_ok=True)
    (local_dir / SWEEP_FILE).write_text(json.dumps({
        "name": space.name, "profile": args.profile, "overrides": args.overrides,
        "num_workers": scaling.num_workers, "gpus_per_worker": scaling.gpus_per_worker,
        "cpus_per_worker": scaling.cpus_per_worker, "wandb": mode, "storage": sweep_dir,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))
    started = time.perf_counter()
    try:
        result_grid = tuner.fit()
    except Exception as error:  # Tune itself failed: keep whatever the trials reported
        print(f"[sweep] Tune stopped with an error: {error!r}", file=sys.stderr)
        result_grid = tune.Tuner.restore(sweep_dir, trainable).get_results()
    wall = time.perf_counter() - started

    table, artifacts = collect_results(result_grid)
    out = write_results(table, artifacts, space, local_dir)
    print(f"\n[sweep] {space.name} / {args.profile}: {len(table)} trials in {wall:.1f} s\n")
    print(markdown_table(table, space))
    written = "trials.csv, trials.md" + (", ood.csv, ood.md" if not artifacts.ood.empty else "")
    print(f"\n[sweep] results: {out}/{{{written}}}, plots/")
    note = tracking.sync_instructions(local_dir)
    if note:
        print(note)
    statuses = table["status"].value_counts().to_dict() if "status" in table else {}
    print(f"[sweep] status: {statuses}")
    if statuses.get("error") or statuses.get("incomplete"):
        print(f"[sweep] some trials did not finish; rerun with --resume to continue "
              f"{run_name}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print(list_sweeps())
        return 0
    if not args.name:
        parser.error(f"a sweep name is required; valid names: {', '.join(sweep_names())}")
    try:
        return run(args)
    except (UsageError, DatasetMissingError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
