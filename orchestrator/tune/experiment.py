"""A sweep on Ray Tune: the experiment's Tuner (new or restored) and its storage.
`python -m orchestrator.sweep` resolves and checks the arguments into a `SweepPlan`
(orchestrator.tune.plan) and calls `run_sweep`; its ending (results, reports, exit code)
is orchestrator.tune.outcome's.

Every trial trains under Ray (in the trial's process, or a TorchTrainer for several workers
or GPUs), each trial is one W&B run, and the sweep ends with a results table and plots in
`<storage>/<NAME>-<profile>-<time>/results/`. With RAY_ADDRESS set the sweep joins that
cluster; otherwise it starts Ray locally.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from orchestrator.errors import EXIT_UNFINISHED, UsageError
from orchestrator.interrupts import reinstall
from orchestrator.reports.collect import SWEEP_FILE
from orchestrator.reports.provenance import datasets_read, write_provenance
from orchestrator.reports.search import search_of, search_text, with_searched_keys
from orchestrator.tracking import runs as tracking
from orchestrator.tune.endings import unfinished
from orchestrator.tune.outcome import RAY_LOG, finish_sweep
from orchestrator.tune.plan import SweepPlan
from orchestrator.tune.schedulers import trial_scheduler
from orchestrator.tune.search import (
    local_resources,
    param_space,
    quiet_searcher,
    search_algorithm,
)
from orchestrator.tune.searchers import startup_note, trials_at_once
from orchestrator.tune.session import clean_stale_checkpoint_dirs
from orchestrator.tune.storage import Storage, open_storage, storage_full
from orchestrator.tune.trainable import KEEP_CHECKPOINTS, make_trainable

# Environment of every Ray worker of a sweep (a value already in the environment wins).
# Ray Train V2 hands a report to its controller only when the controller polls (every 2 s
# by default), which made every epoch of a small DDP trial last 2 s; poll every 0.1 s.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}


def send_ray_logs_to(path: Path) -> None:
    """The driver's Ray log lines (the "ray" logger: start-up notices, Tune's warnings and
    trial tracebacks) go to `path`, not the console, where the sweep's own lines are what
    a person reads; the header names the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("ray")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False


def snapshot_period(trials: int) -> float:
    """Seconds between the experiment snapshots that --resume reads: max(1, trials / 200),
    at most 60. A snapshot writes every trial's state (~0.4 ms a trial on 2 busy cores), so
    Tune at a fixed 1 s spent 45% of the driver's time on snapshots at 400 trials, and the
    driver's cost per trial grew with the trial count; this period keeps the snapshots'
    share of the driver's time the same up to 12,000 trials. (Tune's "auto" waits at least
    10 s.) A killed driver costs a trial at most this many seconds more of its epochs."""
    return min(60.0, max(1.0, trials / 200))


def latest_run(storage: Storage, prefix: str) -> str | None:
    """The newest run `<prefix>-<time>` in `storage` that Tune can restore (it holds
    tuner.pkl)."""
    runs = [name for name in storage.subdirectories() if name.startswith(f"{prefix}-")
            and storage.is_file(storage.path(name, "tuner.pkl"))]
    return runs[-1] if runs else None


def check_resumable(run: str, earlier: dict[str, Any], settings: dict[str, Any]) -> None:
    """UsageError naming each setting that differs from the run being resumed."""
    if "settings" not in earlier:
        return  # a run from before settings were recorded: nothing to compare
    old = earlier["settings"]
    if "search" not in old and search_of(settings) is None:
        old = {**old, "search": settings["search"]}  # a grid run from before searches
    if isinstance(old.get("search"), dict):  # search settings added since are not compared
        settings = {**settings, "search": {k: v for k, v in settings["search"].items()
                                           if k in old["search"]}}
    changed = [f"{k} ({json.dumps(old.get(k))} -> {json.dumps(settings.get(k))})"
               for k in sorted({*old, *settings}) if old.get(k) != settings.get(k)]
    if changed:
        raise UsageError(f"--resume: {run} was run with other settings: "
                         f"{', '.join(changed)}; run without --resume for a new sweep")


def concurrent_trials(capacity: dict[str, float], need: dict[str, float], on_cluster: bool,
                      requested: int | None = None, shutdown=None) -> int | None:
    """How many trials Tune may run at once: `requested` (--max-concurrent-trials) if given;
    on a cluster (RAY_ADDRESS) no cap, so that every trial waiting for room is demand the
    autoscaler sees and it grows to its node types' max_workers (the head may offer no CPU
    at all: sizing from the cluster's first minute would run one trial at a time); on a
    local Ray, as many as fit now. A trial that can never fit on a local Ray is a
    UsageError (after `shutdown()`)."""
    fits = [capacity.get(k, 0) // v for k, v in need.items() if v > 0]
    if fits and min(fits) < 1:
        wanted = ", ".join(f"{v:g} {k}" for k, v in need.items() if v > 0)
        have = ", ".join(f"{capacity.get(k, 0):g} {k}" for k, v in need.items() if v > 0)
        if not on_cluster:  # a local Ray cannot grow: the trials would wait forever
            if shutdown is not None:
                shutdown()
            raise UsageError(f"one trial needs {wanted} but this machine has {have}; "
                             f"lower --num-workers / --gpus-per-worker / --cpus-per-worker")
        print(f"[sweep] one trial needs {wanted}, the cluster has {have} now; trials wait "
              f"until the autoscaler adds nodes", file=sys.stderr)
    if requested is not None:
        return requested
    if on_cluster:
        return None
    return max(1, int(min(fits))) if fits else None


def open_run(plan: SweepPlan, storage: Storage, settings: dict[str, Any]) -> str:
    """The run this sweep writes: a new `<prefix>-<time>`, or with `plan.resume` the latest
    one it can restore, its recorded settings checked against these (UsageError)."""
    if not plan.resume:
        return f"{plan.prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        run_name = latest_run(storage, plan.prefix)
    except OSError as error:
        raise UsageError(f"--resume: cannot list {storage.display()}: {error}") from None
    if run_name is None:
        raise UsageError(f"--resume: no earlier run '{plan.prefix}-*' in {storage.display()}")
    record = storage.path(run_name, SWEEP_FILE)
    if storage.is_file(record):
        check_resumable(run_name, storage.read_json(record), settings)
    return run_name


def run_sweep(plan: SweepPlan) -> int:
    """Run (or with `plan.resume`, continue) the sweep of `plan`: its trials on Ray Tune
    (in-process or Ray Train, by `plan.scaling`), drawn, stopped or perturbed by
    `plan.search`, at most `plan.max_concurrent_trials` at once (default:
    `concurrent_trials`), checkpoints under `plan.storage` (a directory or a URI), W&B runs
    in `plan.wandb` mode, a line per finished trial and a status line every
    `plan.status_interval` seconds (`plan.verbose`: Tune's own progress tables instead).
    Writes the results and returns the process exit code (`outcome.finish_sweep`)."""
    search, profile, scaling, verbose = plan.search, plan.profile, plan.scaling, plan.verbose
    storage = open_storage(plan.storage)
    settings = plan.settings()
    space = with_searched_keys(plan.space, settings)  # reports name trials by searched keys
    quiet_searcher(search)
    run_name = open_run(plan, storage, settings)
    sweep_dir = storage.display(run_name)
    local_dir = Path("runs", run_name).resolve() if storage.is_uri else \
        Path(storage.path(run_name))

    import ray
    from ray import tune

    address = os.environ.get("RAY_ADDRESS")
    send_ray_logs_to(local_dir / RAY_LOG)
    print(f"[sweep] {space.name} / {plan.profile_name}: {profile.num_trials()} trials; "
          f"{'connecting to ' + address if address else 'starting Ray locally'}; "
          f"Ray's log: {local_dir / RAY_LOG}", flush=True)
    if search.is_search:
        print(f"[sweep] {search_text(settings['search'])}, on {search.metric} "
              f"({search.mode})", flush=True)
    if not verbose:  # Tune's own console output off (its start-up box too); ours instead
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S",
                          f"{snapshot_period(profile.num_trials()):g}")
    # Per-trial result.json only (a callback below); no progress.csv or TensorBoard files:
    # they cost the driver time on every report, and W&B is the dashboard. Set before
    # either Tuner is built, so a resumed sweep gets the same loggers.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    # A local Ray starts without the dashboard (a cluster keeps its own): it is a process
    # and a web server competing with the trials for the machine's cores.
    # address "local": without RAY_ADDRESS a new Ray, never one that `ray start` left
    # running on this machine (ray.init(address=None) joins that one, silently)
    # The trial processes' own output (prints, warnings, and the traceback a process killed
    # at shutdown may print) stays in Ray's worker logs unless --verbose: each trial's error
    # is in its error file, ray.log and our console line.
    ray.init(address=address or "local", logging_level="WARNING", log_to_driver=verbose,
             **({} if address else {"include_dashboard": False, **local_resources(
                 search, scaling.total_resources(), plan.max_concurrent_trials)}),
             runtime_env={"env_vars": {k: os.environ.get(k, v) for k, v in RAY_ENV.items()}})
    reinstall()  # ray.init sets its own SIGTERM handler: ours decides
    clean_stale_checkpoint_dirs()  # what trials killed mid-checkpoint left, on this machine
    concurrent = concurrent_trials(ray.cluster_resources(), scaling.total_resources(),
                                   on_cluster=bool(address), requested=plan.max_concurrent_trials,
                                   shutdown=ray.shutdown)
    concurrent = trials_at_once(search, concurrent, plan.max_concurrent_trials)
    path = "in-process (Tune trial)" if scaling.in_process else (
        f"TorchTrainer, {scaling.num_workers} workers x "
        f"{scaling.cpus_per_worker} CPU + {scaling.gpus_per_worker} GPU")
    at_once = (f"up to {concurrent} trials at once" if concurrent else
               "as many trials at once as the cluster grows to (every pending trial asks "
               "the autoscaler for room)")
    print(f"[sweep] trial path: {path}; {at_once}; W&B {plan.wandb}; storage {sweep_dir}",
          flush=True)
    if search.perturbs and concurrent and concurrent < profile.num_trials():
        print(f"[sweep] note: {search.scheduler.upper()}'s population of "
              f"{profile.num_trials()} runs {concurrent} at a time: at each perturbation a "
              f"trial is paused so that a waiting one runs, and only running trials are "
              f"compared and cloned", flush=True)
    if startup_note(search):
        print(startup_note(search), flush=True)

    from orchestrator.tune.progress_board import board_name, start_board

    board = None if verbose else start_board(run_name)  # kept alive while the sweep runs
    trainable = make_trainable(space.loop, scaling, storage.path(run_name, "train"),
                               storage.filesystem, board_name(run_name) if board else None)
    space_of_trials = param_space(profile, search, plan.data_dir)
    if plan.resume:
        tuner = tune.Tuner.restore(storage.path(run_name), trainable, resume_errored=True,
                                   param_space=space_of_trials,
                                   storage_filesystem=storage.filesystem)
    else:
        from orchestrator.tune.checkpoint_retention import CheckpointRetention
        from orchestrator.tune.console import ConsoleReporter, console_keys
        from orchestrator.tune.endings import TrialEndings
        from orchestrator.tune.result_log import ResultLog

        callbacks = [ResultLog(), CheckpointRetention(keep=KEEP_CHECKPOINTS),
                     TrialEndings(run_name)]
        if not verbose:
            callbacks.append(ConsoleReporter(console_keys(space.table_keys, settings),
                                             space.table_metrics, profile.num_trials(),
                                             interval=plan.status_interval,
                                             board=board_name(run_name),
                                             metric=search.metric))
        callbacks += [cb for cb in [tracking.wandb_callback(
            plan.wandb, group=run_name, local_dir=str(local_dir))] if cb]
        tuner = tune.Tuner(
            trainable,
            param_space=space_of_trials,
            tune_config=tune.TuneConfig(metric=search.metric, mode=search.mode,
                                        # each draw once per seed (SeedRepeater)
                                        num_samples=profile.num_samples
                                        * max(1, len(search.seeds)),
                                        time_budget_s=search.time_budget_s,
                                        # the generator's cap only where asked: capped,
                                        # it makes each trial only when one ends (slower)
                                        search_alg=search_algorithm(
                                            search, plan.max_concurrent_trials),
                                        scheduler=trial_scheduler(search, profile),
                                        max_concurrent_trials=concurrent,
                                        # Locally a finished trial's process serves the
                                        # next one (no start-up cost). On a cluster Tune
                                        # would also hand a trial whose own actor is still
                                        # starting on another node to a cached local actor
                                        # and drop the remote one: short trials then ran
                                        # one by one on the head while a worker node idled.
                                        reuse_actors=not address),
            run_config=tune.RunConfig(
                name=run_name, storage_path=storage.root,
                storage_filesystem=storage.filesystem, callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=scaling.max_failures),
                # Old checkpoints are deleted by CheckpointRetention, not by Tune.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                verbose=1 if verbose else 0),
        )
    record = plan.record(sweep_dir, started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    storage.write_json(storage.path(run_name, SWEEP_FILE), record)  # what --resume reads
    if storage.is_uri:  # the results directory of a sweep on a URI is ./runs/<run>
        local_dir.mkdir(parents=True, exist_ok=True)
        (local_dir / SWEEP_FILE).write_text(json.dumps(record, indent=2))
    write_provenance(local_dir, datasets_read(settings.get("dataset", [])), plan.data_dir)
    started = time.perf_counter()
    fitted = True
    # Ctrl-C and SIGTERM alike: `orchestrator.interrupts` asks Tune to stop (run_command's
    # handler), not Tune's own SIGINT handler
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        result_grid = tuner.fit()
    except Exception as error:  # Tune itself failed: keep whatever the trials reported
        fitted = False
        full = storage_full(storage)
        if full:  # Tune's own files cut short: say so in one line; --resume goes on
            ray.shutdown()
            print(f"[sweep] no space left on the device: {full}; the trials that could not "
                  f"write their checkpoints ended as errors: free space and resume with: "
                  f"{plan.resume_command()}", file=sys.stderr, flush=True)
            return EXIT_UNFINISHED
        print(f"[sweep] Tune stopped with an error: {error!r}", file=sys.stderr)
        result_grid = tune.Tuner.restore(storage.path(run_name), trainable,
                                         storage_filesystem=storage.filesystem).get_results()
    wall = time.perf_counter() - started
    # Collecting, tabulating and plotting the results needs no Ray (the results are in
    # memory, the artifacts read through pyarrow): Ray shuts down meanwhile.
    stopping = threading.Thread(target=ray.shutdown, name="ray-shutdown")
    stopping.start()
    try:
        return finish_sweep(plan, space, run_name, local_dir, record, result_grid,
                            storage.filesystem, fitted, unfinished(run_name), wall)
    finally:
        stopping.join()
