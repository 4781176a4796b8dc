"""Searches with Ray Tune's own search algorithms and schedulers (orchestrator.tune.search):
distributions in --set, the checks before Ray starts, best.json and --set-from, and real
searches through the CLI (ASHA stopping trials, optuna resumed after its driver is killed,
hyperopt under HyperBand, a PBT population)."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.errors import UsageError
from orchestrator.reports.search import best_configurations
from orchestrator.tracking.offline import find_offline_runs, read_offline_run
from orchestrator.tune.overrides import apply_best, apply_overrides
from orchestrator.tune.search import Search, resolve_search, rung_milestones
from search_spaces import Distribution, get_search_space

SPACE = get_search_space("batch_size_gffn")
SMOKE = SPACE.profile("smoke")


def overridden(*overrides, profile=SMOKE):
    return apply_overrides(SPACE, profile, list(overrides))


# --- distributions in --set --------------------------------------------------------------

def test_distributions_become_searched_keys_checked_at_their_corners():
    profile = overridden("lr=loguniform(1e-4, 1e-2)", "batch_size=randint(8,65)",
                         "lr_scaling=choice(none,sqrt)")
    assert profile.search == {"lr": Distribution("loguniform", (1e-4, 1e-2)),
                              "batch_size": Distribution("randint", (8, 65)),
                              "lr_scaling": Distribution("choice", ("none", "sqrt"))}
    assert "lr" not in profile.config and "batch_size" not in profile.grid
    corners = {(c["lr"], c["batch_size"], c["lr_scaling"]) for c in profile.checked_configs()}
    assert corners == {(lr, b, s) for lr in (1e-4, 1e-2) for b in (8, 64)
                       for s in ("none", "sqrt")}
    assert len(profile.checked_configs()) == 8 * 2  # x the grid's 2 models
    # a later plain --set wins over an earlier distribution
    assert overridden("lr=uniform(0.1,0.2)", "lr=0.3").search == {}


@pytest.mark.parametrize("override, message", [
    ("lr=loguniform(0,1e-2)", "loguniform needs 0 < low < high"),
    ("lr=uniform(0.2,0.1)", "uniform needs low < high"),
    ("lr=uniform(0,inf)", "expected a finite number"),
    ("lr=loguniform(1e-4)", "takes two numbers"),
    ("lr=randint(1,5)", "lr is a float; use uniform, loguniform or choice"),
    ("batch_size=loguniform(8,64)", "batch_size is a int; use randint or choice"),
    ("batch_size=randint(1.5,8)", "expected int"),
    ("lr=uniform(-1,1)", "must be positive"),
    ("model=choice(ffn,cnn)", "must be one of"),
    ("model=uniform(0,1)", "model is a str; use choice"),
    ("lr_scaling=choice()", "choice needs at least one value"),
])
def test_a_bad_distribution_is_refused_naming_the_key(override, message):
    with pytest.raises(UsageError, match=message) as error:
        overridden(override)
    assert str(error.value).startswith(f"--set {override.split('=')[0]}")


def test_the_checks_before_ray_starts_refuse_a_search_that_cannot_run():
    def resolve(profile, algorithm="random", scheduler="fifo", metric=None, grace=None):
        return resolve_search(SPACE, profile, algorithm=algorithm, scheduler=scheduler,
                              metric=metric, grace_period=grace)

    searched = overridden("lr=loguniform(1e-4,1e-2)")
    with pytest.raises(UsageError, match="optuna draws every value.*model \\(2 values\\)"):
        resolve(searched, "optuna")
    with pytest.raises(UsageError, match="pbt copies, in each trial it clones, every value"):
        resolve(searched, scheduler="pbt")
    with pytest.raises(UsageError, match="--num-samples: no key is searched"):
        resolve(SMOKE.__class__(**{**SMOKE.__dict__, "num_samples": 3}))
    with pytest.raises(UsageError, match="a test-set metric"):
        resolve(searched, metric="test_acc")
    with pytest.raises(UsageError, match="give --mode"):
        resolve(searched, metric="val_nll")
    with pytest.raises(UsageError, match="hyperband search cannot resume"):
        resolve_search(SPACE, searched, scheduler="hyperband", resume=True)
    with pytest.raises(UsageError, match="--grace-period 1: the trials run at most 1"):
        resolve(searched, scheduler="asha")  # the smoke profile's single epoch
    search = resolve(overridden("lr=loguniform(1e-4,1e-2)", "epochs_b=8", "model=gffn",
                                "batch_size=64"), "optuna", "asha")
    assert (search.metric, search.mode, search.max_t) == ("val_acc", "max", 8)


@pytest.mark.parametrize("max_t, grace, factor", [(8, 1, 2), (100, 1, 4), (81, 3, 3),
                                                  (10, 2, 3)])
def test_rungs_are_rays_asha_rungs(max_t, grace, factor):
    from ray.tune.schedulers import ASHAScheduler

    ray_asha = ASHAScheduler(time_attr="epoch", metric="m", mode="max", max_t=max_t,
                             grace_period=grace, reduction_factor=factor)
    rays = sorted(milestone for milestone, _ in ray_asha._brackets[0]._rungs)
    ours = rung_milestones(Search(scheduler="asha", grace_period=grace,
                                  reduction_factor=factor, max_t=max_t))
    assert ours == rays


class StoppingController:
    """What Ray's `TuneController.stop_trial` does to the scheduler, and nothing else: a
    paused or pending trial is removed (`on_trial_remove`), a running one completed
    (`on_trial_complete`); either ends TERMINATED."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def stop_trial(self, trial):
        from ray.tune.experiment import Trial

        if trial.status in (Trial.PENDING, Trial.PAUSED):
            self.scheduler.on_trial_remove(self, trial)
        elif trial.status == Trial.RUNNING:
            self.scheduler.on_trial_complete(self, trial, trial.last_result)
        trial.set_status(Trial.TERMINATED)


@pytest.mark.parametrize("fixed", [False, True])
def test_hyperband_stops_paused_trials_when_the_last_one_ends_without_a_result(fixed):
    """Ray's HyperBandScheduler (max_t 9, factor 3: the first three trials form a bracket
    run to epoch 9). Two reach epoch 9 and are paused to wait for the third; the third
    returns as it reports its last epoch, so Tune stops it. Ray's scheduler leaves the two
    paused with nothing to run (the sweep hung in CI); ours stops them."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import HyperBandScheduler, TrialScheduler

    from orchestrator.tune.schedulers import hyperband_scheduler

    cls = hyperband_scheduler() if fixed else HyperBandScheduler
    scheduler = cls(time_attr="epoch", max_t=9, reduction_factor=3, metric="val_acc",
                    mode="max")
    controller = StoppingController(scheduler)
    trials = [Trial("__fake", stub=True, trial_id=f"t{i}") for i in range(3)]
    for trial in trials:
        scheduler.on_trial_add(controller, trial)
        trial.set_status(Trial.RUNNING)
    for trial in trials[:2]:
        decision = scheduler.on_trial_result(controller, trial, {"epoch": 9, "val_acc": 0.9})
        assert decision == TrialScheduler.PAUSE
        trial.set_status(Trial.PAUSED)
    trials[2].update_last_result({"epoch": 9, "val_acc": 0.8})
    controller.stop_trial(trials[2])
    statuses = [trial.status for trial in trials]
    if fixed:
        assert statuses == [Trial.TERMINATED] * 3
    else:  # Ray's own: waits forever
        assert statuses[:2] == [Trial.PAUSED] * 2
        assert scheduler.choose_trial_to_run(controller) is None


def test_pbt_explores_within_the_distributions_through_rays_own_explore_step():
    import random

    from ray.tune.schedulers.pbt import _explore

    from orchestrator.tune.schedulers import trial_scheduler

    profile = overridden("lr=uniform(0.001,0.01)", "batch_size=randint(8,65)",
                         "lr_scaling=choice(none,sqrt)", "model=gffn", "epochs_b=8")
    search = resolve_search(SPACE, profile, scheduler="pbt")
    pbt = trial_scheduler(search, profile)
    assert (pbt._time_attr, pbt._perturbation_interval) == ("epoch", 2)  # a quarter of 8
    random.seed(0)
    seen = set()
    for _ in range(300):  # at the bounds: x1.2 above high, x0.8 below low, shifts, resamples
        config = {"lr": random.choice([0.001, 0.01]), "batch_size": random.choice([8, 64]),
                  "lr_scaling": random.choice(["none", "sqrt"])}
        new, _ = _explore(config, pbt._hyperparam_mutations, pbt._resample_probability,
                          pbt._perturbation_factors, pbt._custom_explore_fn)
        assert 0.001 <= new["lr"] <= 0.01 and 8 <= new["batch_size"] <= 64
        assert new["lr_scaling"] in ("none", "sqrt")
        seen.add(new["lr"] in (0.001, 0.01))
    assert seen == {True, False}  # some clipped to a bound, some moved within


# --- best.json and --set-from --------------------------------------------------------------

RECORD = {"metric": "val_acc", "mode": "max", "searched": {"lr": "loguniform(0.0001, 0.1)"},
          "grid": ["model"], "algorithm": "random", "scheduler": "asha", "num_samples": 3}


def test_best_json_ranks_completed_draws_first_then_further_then_by_value():
    rows = [  # (model, lr, seed, status, epoch, val_acc)
        ("ffn", 0.1, 0, "completed", 8, 0.90), ("ffn", 0.1, 1, "completed", 8, 0.94),
        ("ffn", 0.2, 0, "completed", 8, 0.93), ("ffn", 0.2, 1, "completed", 8, 0.93),
        ("ffn", 0.3, 0, "stopped", 2, 0.99), ("ffn", 0.3, 1, "stopped", 2, 0.99),
        ("gffn", 0.1, 0, "stopped", 4, 0.50), ("gffn", 0.1, 1, "stopped", 4, 0.50),
        ("gffn", 0.2, 0, "stopped", 2, 0.80), ("gffn", 0.2, 1, "stopped", 2, 0.80),
        ("gffn", 0.3, 0, "diverged", 1, math.nan), ("gffn", 0.3, 1, "error", 1, 0.99)]
    table = pd.DataFrame(rows, columns=["model", "lr", "seed", "status", "epoch", "val_acc"])
    table["trial_id"] = [f"t{i}" for i in range(len(table))]
    best = best_configurations(table, RECORD)
    cells = {e["config"]["model"]: e for e in best["per_configuration"]}
    # ffn: mean over seeds 0.92 (lr 0.1) < 0.93 (lr 0.2); the stopped 0.99 ranks below both
    assert cells["ffn"]["values"] == {"lr": 0.2} and cells["ffn"]["value"] == pytest.approx(0.93)
    assert cells["ffn"]["trial_ids"] == ["t2", "t3"]
    # gffn: all stopped: the draw that got furthest, whatever its value
    assert cells["gffn"]["values"] == {"lr": 0.1} and cells["gffn"]["epochs"] == 4
    assert best["best"]["config"] == {"model": "ffn", "lr": 0.2}
    assert best["by"] == ["model"] and best["searched"] == ["lr"]
    # mode min ranks by the lowest value
    low = best_configurations(table, {**RECORD, "mode": "min"})
    assert {e["config"]["model"]: e["values"]["lr"] for e in low["per_configuration"]} == \
        {"ffn": 0.1, "gffn": 0.1}
    assert best_configurations(table.assign(status="error"), RECORD) is None


def test_set_from_links_each_configurations_values_and_names_a_missing_one(tmp_path):
    best = {"by": ["model"], "searched": ["lr"], "per_configuration": [
        {"config": {"model": "ffn"}, "values": {"lr": 0.01}},
        {"config": {"model": "gffn"}, "values": {"lr": 0.002}}]}
    path = tmp_path / "best.json"
    path.write_text(json.dumps(best))
    profile = apply_best(SPACE, SMOKE, path)
    lrs = {(c["model"], c["batch_size"]): c["lr"] for c in profile.trial_configs()}
    assert lrs == {("ffn", 16): 0.01, ("ffn", 128): 0.01, ("gffn", 16): 0.002,
                   ("gffn", 128): 0.002}
    assert apply_best(SPACE, SMOKE, path, keep=("lr",)).trial_configs()[0]["lr"] == \
        SMOKE.config["lr"]  # a key the user --set keeps its value
    one = overridden("model=gffn")
    assert apply_best(SPACE, one, path).config["lr"] == 0.002
    best["per_configuration"].pop()
    path.write_text(json.dumps(best))
    with pytest.raises(UsageError, match="no values of lr for model=gffn"):
        apply_best(SPACE, SMOKE, path)
    path.write_text("{}")
    with pytest.raises(UsageError, match="not a sweep's best.json"):
        apply_best(SPACE, SMOKE, path)


# --- real searches through the CLI -------------------------------------------------------------

def sweep(tmp_path, env, *args, timeout=600, wandb="disabled"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "batch_size_gffn", "--profile", "smoke",
         "--storage", str(tmp_path / "runs"), "--wandb", wandb, *args],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path)


def newest(tmp_path) -> Path:
    return sorted((tmp_path / "runs").glob("batch_size_gffn-smoke-*"))[-1]


def results(sweep_dir: Path) -> pd.DataFrame:
    return pd.read_csv(sweep_dir / "results" / "trials.csv")


@pytest.mark.slow
def test_asha_stops_trials_best_json_is_the_best_validation_draw_and_set_from_reproduces_it(
        tmp_path, sweep_env):
    low, high = 1e-4, 1e-1
    tuned = ["--set", "epochs_b=8", "--set", "batch_size=64"]
    proc = sweep(tmp_path, sweep_env, *tuned, "--set", f"lr=loguniform({low},{high})",
                 "--num-samples", "4", "--scheduler", "asha", "--reduction-factor", "2",
                 wandb="offline")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep_dir = newest(tmp_path)
    table = results(sweep_dir)
    assert len(table) == 8 and set(table.status) <= {"completed", "stopped"}
    stopped = table[table.status == "stopped"]
    assert len(stopped) >= 1  # ASHA ended some early, each at one of its rungs (a trial
    assert set(stopped.epoch) <= {1, 2, 4}  # reports every epoch): 1 x 2^k below max_t 8
    assert (table[table.status == "completed"].epochs == 8).all()
    assert table.lr.between(low, high).all() and table.lr.nunique() == 4
    # each draw runs on both models (constant_grid_search)
    assert (table.groupby("lr").model.nunique() == 2).all()
    # the aggregates hold the completed trials only
    aggregated = pd.read_csv(sweep_dir / "results" / "aggregated.csv")
    assert aggregated.seeds.sum() == (table.status == "completed").sum()
    # best.json: per model, the completed draw with the best validation accuracy (or, with
    # none completed, the one ASHA let run furthest); never the test accuracy
    best = best_before = json.loads((sweep_dir / "results" / "best.json").read_text())
    assert best["metric"] == "val_acc" and best["by"] == ["model"]
    for entry in best["per_configuration"]:
        rows = table[table.model == entry["config"]["model"]]
        done = rows[rows.status == "completed"]
        expected = (done.loc[done.val_acc.idxmax()] if len(done)
                    else rows.sort_values(["epoch", "val_acc"]).iloc[-1])
        assert entry["values"]["lr"] == pytest.approx(expected.lr)
        assert entry["value"] == pytest.approx(expected.val_acc)
    search_md = (sweep_dir / "results" / "search.md").read_text()
    assert "Rungs of asha" in search_md and "stopped" in search_md
    assert (sweep_dir / "results" / "plots" / "search_lr.png").exists()
    assert "Claims need a grid sweep" in (sweep_dir / "REPRODUCTION.md").read_text()
    assert "stopped at epoch" in proc.stdout
    assert "searched lr ~ loguniform(0.0001, 0.1) (random, 4 draws), scheduler asha" in \
        proc.stdout and "claims need a grid sweep" in proc.stdout
    # the W&B summary run has the search's tables and its plot
    (summary,) = [p for p in find_offline_runs(sweep_dir)
                  if read_offline_run(p).run_id.startswith("summary-")]
    for name in ("best_trials", "rungs"):
        assert list(summary.glob(f"files/media/table/{name}_*.table.json")), name
    assert list(summary.glob("files/media/images/plots/search_lr*.png"))
    # the report redraws the search's files from the results alone
    for name in ("best.json", "search.md", "plots/search_lr.png"):
        (sweep_dir / "results" / name).unlink()
    report = subprocess.run([sys.executable, "-m", "orchestrator.report", str(sweep_dir)],
                            capture_output=True, text=True, env=sweep_env, timeout=300)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert json.loads((sweep_dir / "results" / "best.json").read_text()) == best_before
    assert "Rungs of asha" in (sweep_dir / "results" / "search.md").read_text()
    assert (sweep_dir / "results" / "plots" / "search_lr.png").exists()
    assert "[report] best on val_acc" in report.stdout

    # the grid at the values found: each model at its own tuned rate
    proc = sweep(tmp_path, sweep_env, *tuned, "--set-from",
                 str(sweep_dir / "results" / "best.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    grid = results(newest(tmp_path)).set_index("model")
    assert (grid.status == "completed").all() and len(grid) == 2
    for entry in best["per_configuration"]:
        model = entry["config"]["model"]
        assert grid.loc[model, "lr"] == pytest.approx(entry["values"]["lr"])
        if not entry["completed"]:
            continue
        # same config and seed as the tuned trial: the same validation accuracy
        assert grid.loc[model, "val_acc"] == pytest.approx(entry["value"], abs=1e-6)
    assert "claims" in proc.stdout  # a grid again: the claims are judged


def experiment_terminated(sweep_dir: Path) -> int:
    """Trials Tune's latest experiment snapshot records as finished."""
    count = 0
    for path in sweep_dir.glob("experiment_state-*.json"):
        try:
            data = json.loads(path.read_text())
        except ValueError:  # being written
            return 0
        count = sum(json.loads(state)["status"] == "TERMINATED"
                    for state, _ in data["trial_data"])
    return count


@pytest.mark.slow
def test_a_killed_optuna_search_resumes_its_searcher_and_draws_no_more(tmp_path, sweep_env):
    args = ["--set", "model=gffn", "--set", "batch_size=64", "--set", "epochs_b=30",
            "--set", "lr=loguniform(1e-4,1e-1)", "--num-samples", "5", "--search", "optuna",
            "--scheduler", "asha", "--max-concurrent-trials", "1"]
    tmp_path.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "driver.log"
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.sweep", "batch_size_gffn", "--profile", "smoke",
         "--storage", str(tmp_path / "runs"), "--wandb", "disabled", *args],
        env=sweep_env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=tmp_path,
        start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None:
        dirs = list((tmp_path / "runs").glob("batch_size_gffn-smoke-*"))
        if dirs and experiment_terminated(dirs[0]) >= 2:
            break
        time.sleep(0.2)
    assert driver.poll() is None, log.read_text()[-3000:]  # ended before it was killed
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its local Ray, for real
    driver.wait()
    sweep_dir = newest(tmp_path)
    drawn = {json.loads(s)["config"]["lr"] for path in sweep_dir.glob("experiment_state-*")
             for s, _ in json.loads(path.read_text())["trial_data"]}

    proc = sweep(tmp_path, sweep_env, *args, "--resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = results(sweep_dir)
    assert len(table) == 5 and set(table.status) <= {"completed", "stopped"}  # 5 draws
    assert "completed" in set(table.status)
    assert drawn <= set(table.lr)  # the draws made before the kill are kept
    assert table.lr.between(1e-4, 1e-1).all()


@pytest.mark.slow
def test_hyperopt_under_hyperband_and_a_pbt_population(tmp_path, sweep_env):
    fixed = ["--set", "model=gffn", "--set", "batch_size=64"]
    proc = sweep(tmp_path / "hyperband", sweep_env, *fixed, "--set", "epochs_b=9",
                 "--set", "lr=loguniform(1e-5,1e-1)", "--num-samples", "6",
                 "--search", "hyperopt", "--scheduler", "hyperband")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = results(newest(tmp_path / "hyperband"))
    assert len(table) == 6 and set(table.status) <= {"completed", "stopped"}
    assert table.lr.between(1e-5, 1e-1).all() and table.lr.nunique() == 6
    assert (table[table.status == "completed"].epochs == 9).all()
    assert (table[table.status == "stopped"].epoch < 9).all()

    proc = sweep(tmp_path / "pbt", sweep_env, *fixed, "--set", "epochs_b=4",
                 "--set", "lr=uniform(0.0005,0.05)", "--num-samples", "4", "--scheduler", "pbt",
                 "--max-concurrent-trials", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep_dir = newest(tmp_path / "pbt")
    table = results(sweep_dir)
    assert len(table) == 4 and (table.status == "completed").all()
    assert (table.epochs == 4).all()
    assert table.lr.between(0.0005, 0.05).all()  # mutations kept within the distribution
    # whether a trial is cloned depends on the order its reports reach the driver; where
    # one was, its new rate is within the distribution: [trial, source, ..., old, new config]
    log = sweep_dir / "pbt_global.txt"
    for *_, new in map(json.loads, log.read_text().splitlines() if log.exists() else []):
        assert 0.0005 <= new["lr"] <= 0.05
    assert json.loads((sweep_dir / "results" / "best.json").read_text())["search"] == \
        {"algorithm": "random", "scheduler": "pbt", "num_samples": 4}
