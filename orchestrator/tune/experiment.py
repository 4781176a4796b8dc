"""A sweep on Ray Tune: the experiment's Tuner (new or restored), its storage, and its
results. `python -m orchestrator.sweep` resolves the arguments and calls `run_sweep`.

Every trial trains under Ray (in the trial's process, or a TorchTrainer for several workers
or GPUs), each trial is one W&B run, and the sweep ends with a results table and plots in
`<storage>/<NAME>-<profile>-<time>/results/`. With RAY_ADDRESS set the sweep joins that
cluster; otherwise it starts Ray locally.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.errors import UsageError
from orchestrator.reports.collect import SWEEP_FILE, collect_results, write_results
from orchestrator.reports.tables import markdown_table
from orchestrator.tracking import runs as tracking
from orchestrator.tune.trainable import KEEP_CHECKPOINTS, Scaling, make_trainable
from search_spaces import Profile, SearchSpace

# Environment of every Ray worker of a sweep (a value already in the environment wins).
# Ray Train V2 hands a report to its controller only when the controller polls (every 2 s
# by default), which made every epoch of a small DDP trial last 2 s; poll every 0.1 s.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}


def latest_run(storage: str, prefix: str) -> str | None:
    """The newest run `<prefix>-<time>` in `storage` (a directory or a URI such as s3://)
    that Tune can restore (it holds tuner.pkl)."""
    import pyarrow.fs

    if is_uri(storage):
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


def is_uri(path: str) -> bool:
    return "://" in path


def sweep_settings(profile: Profile, scaling: Scaling) -> dict[str, Any]:
    """What decides a sweep's trials: every config value (a list where it is swept) and the
    trial resources. Recorded in sweep.json; a resume must not change it."""
    values = {**profile.config, **profile.grid, "num_workers": scaling.num_workers,
              "gpus_per_worker": scaling.gpus_per_worker,
              "cpus_per_worker": scaling.cpus_per_worker}
    return json.loads(json.dumps(values))  # tuples as lists, as read back


def check_resumable(run: str, earlier: dict[str, Any], settings: dict[str, Any]) -> None:
    """UsageError naming each setting that differs from the run being resumed."""
    if "settings" not in earlier:
        return  # a run from before settings were recorded: nothing to compare
    old = earlier["settings"]
    changed = [f"{k} ({json.dumps(old.get(k))} -> {json.dumps(settings.get(k))})"
               for k in sorted({*old, *settings}) if old.get(k) != settings.get(k)]
    if changed:
        raise UsageError(f"--resume: {run} was run with other settings: "
                         f"{', '.join(changed)}; run without --resume for a new sweep")


def run_sweep(space: SearchSpace, profile_name: str, profile: Profile, scaling: Scaling,
              overrides: list[str], storage: str, resume: bool, mode: str,
              data_dir: str) -> int:
    """Run (or with `resume`, continue) the sweep of `profile` with the trial resources of
    `scaling`, its W&B runs in `mode`, checkpoints under `storage` (a directory or a URI);
    write the results and return the process exit code."""
    storage = storage if is_uri(storage) else str(Path(storage).resolve())
    prefix = f"{space.name}-{profile_name}"
    restore_path = None
    if resume:
        try:
            restore_path = latest_run(storage, prefix)
        except OSError as error:
            raise UsageError(f"--resume: cannot list {storage}: {error}") from None
        if restore_path is None:
            raise UsageError(f"--resume: no earlier run '{prefix}-*' in {storage}")
        run_name = restore_path.rsplit("/", 1)[-1]
    else:
        run_name = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep_dir = f"{storage}/{run_name}"
    local_dir = Path(sweep_dir) if not is_uri(storage) else Path("runs", run_name).resolve()
    settings = sweep_settings(profile, scaling)
    if resume and (local_dir / SWEEP_FILE).exists():
        check_resumable(run_name, json.loads((local_dir / SWEEP_FILE).read_text()), settings)

    import ray
    from ray import tune

    address = os.environ.get("RAY_ADDRESS")
    print(f"[sweep] {space.name} / {profile_name}: {profile.num_trials()} trials; "
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

        from orchestrator.tune.checkpoint_retention import CheckpointRetention

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
        "name": space.name, "profile": profile_name, "overrides": overrides,
        "num_workers": scaling.num_workers, "gpus_per_worker": scaling.gpus_per_worker,
        "cpus_per_worker": scaling.cpus_per_worker, "wandb": mode, "storage": sweep_dir,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "settings": settings}, indent=2))
    started = time.perf_counter()
    try:
        result_grid = tuner.fit()
    except Exception as error:  # Tune itself failed: keep whatever the trials reported
        print(f"[sweep] Tune stopped with an error: {error!r}", file=sys.stderr)
        result_grid = tune.Tuner.restore(sweep_dir, trainable).get_results()
    wall = time.perf_counter() - started

    table, artifacts = collect_results(result_grid)
    out = write_results(table, artifacts, space, local_dir)
    print(f"\n[sweep] {space.name} / {profile_name}: {len(table)} trials in {wall:.1f} s\n")
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
