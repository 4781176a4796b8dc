"""Searches with Ray Tune's own search algorithms and schedulers (orchestrator.tune.search):
distributions in --set, the checks before Ray starts, best.json and --set-from, and real
searches through the CLI (ASHA stopping trials, optuna resumed after its driver is killed,
hyperopt under HyperBand, a PBT population)."""

import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

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


def test_a_metric_not_reported_or_a_flag_the_scheduler_ignores_is_refused_before_ray():
    searched = overridden("lr=loguniform(1e-4,1e-2)", "epochs_b=8", "model=gffn",
                          "batch_size=64")
    with pytest.raises(UsageError, match="--metric val_acc_typo: not reported every epoch "
                                         "by the trials of 'batch_size_gffn'; use one of "
                                         "train_loss, val_acc, val_nll"):
        resolve_search(SPACE, searched, metric="val_acc_typo", mode="max")
    assert resolve_search(SPACE, searched, metric="val_nll", mode="min").metric == "val_nll"
    vae = get_search_space("vae_ood")
    with pytest.raises(UsageError, match="use one of train_loss, val_loss"):
        resolve_search(vae, vae.profile("smoke"), metric="val_acc", mode="max")
    for flags, message in [({"scheduler": "hyperband", "grace_period": 2}, "--grace-period: "
                            "only asha and median use it, not --scheduler hyperband"),
                           ({"scheduler": "pbt", "grace_period": 2}, "--grace-period: only"),
                           ({"grace_period": 2}, "not --scheduler fifo"),
                           ({"scheduler": "pbt", "reduction_factor": 3.0},
                            "--reduction-factor: only asha and hyperband"),
                           ({"scheduler": "hyperband", "across_grid": True},
                            "--across-grid: only asha and median")]:
        with pytest.raises(UsageError, match=message):
            resolve_search(SPACE, searched, **flags)
    with pytest.raises(UsageError, match="PB2 explores numeric ranges only"):
        resolve_search(SPACE, overridden("lr_scaling=choice(none,sqrt)", "epochs_b=8",
                                         "model=gffn", "batch_size=64"), scheduler="pb2")


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


@pytest.mark.parametrize("across_grid", [True, False])
def test_asha_compares_a_trial_within_its_grid_cell_unless_asked_across(across_grid):
    """Ray's ASHA (max_t 4, factor 2: rungs at epochs 1 and 2), two cells of the grid: three
    gffn trials at 0.9 reach rung 1 first, then an ffn trial at 0.5. Across the grid it is
    below the rung's cutoff and stopped; within its cell it is the first at the rung and
    goes on."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from orchestrator.tune.schedulers import trial_scheduler

    profile = overridden("lr=loguniform(1e-4,1e-2)", "epochs_b=4", "batch_size=64")
    search = resolve_search(SPACE, profile, scheduler="asha", reduction_factor=2,
                            across_grid=across_grid)
    assert search.cells == (() if across_grid else ("model",))
    scheduler = trial_scheduler(search, profile)
    assert scheduler.set_search_properties("val_acc", "max")
    trials = [Trial("__fake", stub=True, trial_id=f"t{i}",
                    config={"model": "gffn" if i < 3 else "ffn"}) for i in range(4)]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
        trial.set_status(Trial.RUNNING)
    for trial in trials[:3]:
        assert scheduler.on_trial_result(None, trial, {"epoch": 1, "val_acc": 0.9}) == \
            TrialScheduler.CONTINUE
    decision = scheduler.on_trial_result(None, trials[3], {"epoch": 1, "val_acc": 0.5})
    assert decision == (TrialScheduler.STOP if across_grid else TrialScheduler.CONTINUE)


@pytest.mark.parametrize("across_grid", [True, False])
def test_the_median_rule_compares_a_trial_within_its_grid_cell_unless_asked_across(
        across_grid):
    """Ray's MedianStoppingRule (grace 1, 3 trials before it judges): three gffn trials at
    0.9 at epoch 1, then an ffn trial at 0.5. Across the grid it is below the median and
    stopped; within its cell it has no others to be judged by."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from orchestrator.tune.schedulers import trial_scheduler

    profile = overridden("lr=loguniform(1e-4,1e-2)", "epochs_b=4", "batch_size=64")
    search = resolve_search(SPACE, profile, scheduler="median", across_grid=across_grid)
    scheduler = trial_scheduler(search, profile)
    assert scheduler.set_search_properties("val_acc", "max")

    class Controller:  # what the median rule asks of Tune's controller
        def get_trials(self):
            return trials

        def get_live_trials(self):
            return trials

    trials = [Trial("__fake", stub=True, trial_id=f"t{i}",
                    config={"model": "gffn" if i < 3 else "ffn"}) for i in range(4)]
    for trial in trials:
        scheduler.on_trial_add(Controller(), trial)
        trial.set_status(Trial.RUNNING)
    for trial in trials[:3]:
        result = {"epoch": 1, "val_acc": 0.9}
        scheduler.on_trial_result(Controller(), trial, result)
        trial.update_last_result(result)
    decision = scheduler.on_trial_result(Controller(), trials[3], {"epoch": 1, "val_acc": 0.5})
    assert decision == (TrialScheduler.STOP if across_grid else TrialScheduler.CONTINUE)


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


def test_set_from_applies_values_only_where_a_key_the_search_held_fixed_matches(tmp_path):
    """A search with model=gffn fixed found lr for GFFN only: a sweep that also runs FFN
    is refused, naming the key; batch_size, which this space carries values across (a
    base rate at the reference batch size), may differ."""
    best = {"by": [], "searched": ["lr"], "fixed": {"model": "gffn", "batch_size": 64},
            "per_configuration": [{"config": {}, "values": {"lr": 0.002}}]}
    path = tmp_path / "best.json"
    path.write_text(json.dumps(best))
    with pytest.raises(UsageError, match="found with model=gffn held fixed; this sweep also "
                                         "runs model=ffn: add --set model=gffn"):
        apply_best(SPACE, SMOKE, path)
    profile = apply_best(SPACE, overridden("model=gffn"), path)  # batch sizes 16 and 128
    assert {(c["batch_size"], c["lr"]) for c in profile.trial_configs()} == \
        {(16, 0.002), (128, 0.002)}
    assert "batch_size" in SPACE.carried_across
    assert apply_best(SPACE, SMOKE, path, keep=("model",))  # the user's --set model wins


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


def reports(sweep_dir: Path) -> dict[str, list[dict]]:
    """Every report of every trial, from the trials' own result.json files."""
    return {path.parent.name.split("_")[3]: [json.loads(line) for line in path.open()]
            for path in sweep_dir.glob("*/result.json")}


@pytest.mark.slow
def test_asha_with_seeds_one_at_a_time_best_json_at_one_budget_and_set_from_reproduces_it(
        tmp_path, sweep_env):
    low, high = 1e-4, 1e-1
    tuned = ["--set", "epochs_b=8", "--set", "batch_size=64", "--seeds", "2"]
    proc = sweep(tmp_path, sweep_env, *tuned, "--set", f"lr=loguniform({low},{high})",
                 "--num-samples", "3", "--scheduler", "asha", "--reduction-factor", "2",
                 "--max-concurrent-trials", "1", wandb="offline")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep_dir = newest(tmp_path)
    table = results(sweep_dir)
    assert len(table) == 12 and set(table.status) <= {"completed", "stopped"}
    stopped = table[table.status == "stopped"]
    assert len(stopped) >= 1  # ASHA ended some early, each at one of its rungs (a trial
    assert set(stopped.epoch) <= {1, 2, 4}  # reports every epoch): 1 x 2^k below max_t 8
    assert (table[table.status == "completed"].epochs == 8).all()
    assert table.lr.between(low, high).all() and table.lr.nunique() == 3
    # the console: each trial numbered, its lr to 4 significant digits, a stopped one with
    # its epoch and validation metric (it has no test metrics)
    lines = re.findall(r"^\[trial (\d+)/12\] (.*)$", proc.stdout, re.MULTILINE)
    assert [int(n) for n, _ in lines] == list(range(1, 13)), proc.stdout[-3000:]
    shown = [re.search(r" lr=([^ :]+)", line).group(1) for _, line in lines]
    assert {float(t) for t in shown} == {float(f"{lr:.4g}") for lr in table.lr}, shown
    stopped_lines = [line for _, line in lines if ": stopped at epoch " in line]
    assert len(stopped_lines) == len(stopped), stopped_lines
    assert all(re.search(r": stopped at epoch [124], val_acc [\d.]+", line)
               and "test_acc" not in line for line in stopped_lines), stopped_lines
    trials_md = (sweep_dir / "results" / "trials.md").read_text()
    for lr in table.lr.unique():
        cell = re.compile(rf"\| +{re.escape(f'{lr:.4g}')} +\|")
        assert cell.search(proc.stdout) and cell.search(trials_md), lr
    # each draw runs on both models and both seeds (constant_grid_search)
    assert (table.groupby("lr").model.nunique() == 2).all()
    assert (table.groupby(["lr", "model"]).seed.nunique() == 2).all()
    # --max-concurrent-trials 1 held for a random search: no trial ran while another did
    # (each trial's span from its loop's start to its last report, from its own reports)
    spans = sorted((rows[0]["reported_at"] - rows[0]["loop_seconds"], rows[-1]["reported_at"])
                   for rows in reports(sweep_dir).values())
    assert len(spans) == 12
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:])), spans
    # the aggregates hold the completed trials only
    aggregated = pd.read_csv(sweep_dir / "results" / "aggregated.csv")
    assert aggregated.seeds.sum() == (table.status == "completed").sum()
    # best.json: per model, the draws compared at one budget: a draw whose seeds all
    # completed by the mean of their last values; any other at the furthest epoch both its
    # seeds reached, the mean of their values there (from their own reports); completed
    # draws first, then the furthest; never the test accuracy
    best = best_before = json.loads((sweep_dir / "results" / "best.json").read_text())
    assert best["metric"] == "val_acc" and best["by"] == ["model"]
    assert best["fixed"] == {"batch_size": 64}  # the profile's grid key the search held
    every = reports(sweep_dir)
    expected = {}
    for (model, lr), draw in table.groupby(["model", "lr"]):
        done = (draw.status == "completed").all()
        epoch = int(draw.epoch.min())
        values = [next(r["val_acc"] for r in every[t.split("_")[-1]] if r["epoch"] == epoch)
                  for t in draw.trial_id]
        value = draw.val_acc.mean() if done else sum(values) / 2
        expected.setdefault(model, []).append((done, epoch if not done else 8, value, lr))
    for entry in best["per_configuration"]:
        done, epoch, value, lr = max(expected[entry["config"]["model"]])
        assert entry["values"]["lr"] == pytest.approx(lr)
        assert entry["value"] == pytest.approx(value)
        assert entry["completed"] == done and entry["trials"] == 2
        assert entry["compared_at"] == ("end" if done else f"epoch {epoch}")
    search_md = (sweep_dir / "results" / "search.md").read_text()
    assert "Rungs of asha" in search_md and "stopped" in search_md
    assert (sweep_dir / "results" / "plots" / "search_lr.png").exists()
    assert "Claims need a grid sweep" in (sweep_dir / "REPRODUCTION.md").read_text()
    assert "stopped at epoch" in proc.stdout
    assert "searched lr ~ loguniform(0.0001, 0.1) (random, 3 draws), scheduler asha" in \
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
    # found at batch size 64, a base rate this space carries across batch sizes
    assert apply_best(SPACE, overridden("epochs_b=8", "batch_size=32,64"),
                      sweep_dir / "results" / "best.json").grid["batch_size"] == [32, 64]

    # the grid at the values found: each model at its own tuned rate
    proc = sweep(tmp_path, sweep_env, *tuned, "--set-from",
                 str(sweep_dir / "results" / "best.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    grid = results(newest(tmp_path))
    assert (grid.status == "completed").all() and len(grid) == 4
    for entry in best["per_configuration"]:
        rows = grid[grid.model == entry["config"]["model"]]
        assert rows.lr.to_numpy() == pytest.approx([entry["values"]["lr"]] * 2)
        if not entry["completed"]:
            continue
        # same configs and seeds as the tuned draw: the same validation accuracy
        assert rows.val_acc.mean() == pytest.approx(entry["value"], abs=1e-6)
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
    # the console numbers the trials on from those finished before the kill
    numbers = [int(n) for n in re.findall(r"^\[trial (\d+)/5\] ", proc.stdout, re.MULTILINE)]
    assert numbers and numbers[0] >= 3 and numbers == list(range(numbers[0], 6)), \
        proc.stdout[-3000:]
    table = results(sweep_dir)
    assert len(table) == 5 and set(table.status) <= {"completed", "stopped"}  # 5 draws
    assert "completed" in set(table.status)
    assert drawn <= set(table.lr)  # the draws made before the kill are kept
    assert table.lr.between(1e-4, 1e-1).all()


ASHA = ["--set", "lr=loguniform(1e-4,1e-1)", "--num-samples", "3", "--scheduler", "asha"]
GRID = ["--set", "lr=0.001,0.01"]


@pytest.mark.slow
@pytest.mark.parametrize("signum, group, search", [
    (signal.SIGINT, True, ASHA),    # Ctrl-C in a terminal: the driver and its Ray
    (signal.SIGTERM, False, GRID),  # `kill`, `timeout`, a scheduler: the driver alone
], ids=["ctrl-c-asha", "sigterm-grid"])
def test_an_interrupted_sweep_writes_no_search_result_or_verdict_and_says_how_to_resume(
        tmp_path, sweep_env, signum, group, search):
    """Ctrl-C while an ASHA search runs, or SIGTERM to a grid sweep's driver: Tune ends the
    fit and returns normally; the running trials are `interrupted` (not "stopped" as if
    ASHA had ended them), no best.json, search.md or verdict is drawn from part of a run,
    the exit code is the shell's for the signal, and the last line is the command that
    resumes it."""
    args = ["batch_size_gffn", "--profile", "smoke", "--storage", str(tmp_path / "runs"),
            "--wandb", "disabled", "--set", "model=gffn", "--set", "batch_size=64",
            "--set", "epochs_b=400", *search]
    tmp_path.mkdir(parents=True, exist_ok=True)
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.sweep", *args],
                              env=sweep_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=tmp_path, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None:  # a trial past epoch 20
        if any(json.loads(line).get("epoch", 0) > 20 for path in
               (tmp_path / "runs").glob("*/*/result.json") for line in path.open()
               if line.strip()):
            break
        time.sleep(0.2)
    assert driver.poll() is None, driver.communicate()
    if group:
        os.killpg(driver.pid, signum)
    else:
        driver.send_signal(signum)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 128 + signum, out[-3000:] + err[-3000:]  # 130, 143
    sweep_dir = newest(tmp_path)
    table = results(sweep_dir)
    # the trials ASHA ended are stopped, the one still running interrupted
    assert "interrupted" in set(table.status) and set(table.status) <= {"stopped",
                                                                        "interrupted"}
    assert (table[table.status == "interrupted"].epoch > 20).any()  # the one we waited for
    assert not (sweep_dir / "results" / "best.json").exists()
    assert not (sweep_dir / "results" / "search.md").exists()
    assert "interrupted: " in out and "no best.json or search.md from a partial run" in out
    # no verdicts drawn from part of a run: REPRODUCTION.md says so
    assert "partial: " in (sweep_dir / "REPRODUCTION.md").read_text()
    assert "the documents' claims" not in out
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and f"interrupted by {signum.name}" in last
    assert last.endswith(
        "resume with: python -m orchestrator.sweep " + shlex.join(args) + " --resume")


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

    # PBT and PB2: 6 trials, 2 at a time, 12 epochs, a perturbation every 3. The two trials
    # drawn near 1e-5 stay at the bottom, so some trial is cloned (every run of this test so
    # far cloned 1-3); what the scheduler decided must be what ran.
    for scheduler in ("pbt", "pb2"):
        proc = sweep(tmp_path / scheduler, sweep_env, *fixed, "--set", "epochs_b=12",
                     "--set", "lr=loguniform(1e-5,1e-1)", "--num-samples", "6",
                     "--scheduler", scheduler, "--max-concurrent-trials", "2")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        sweep_dir = newest(tmp_path / scheduler)
        table = population_ran_its_schedules(sweep_dir)
        # the result is the best trial's schedule; --set-from refuses it in one line
        best = json.loads((sweep_dir / "results" / "best.json").read_text())
        assert best["search"] == {"algorithm": "random", "scheduler": scheduler,
                                  "num_samples": 6}
        top = best["best"]["trial_id"]  # a best trial (clones may tie)
        assert best["best"]["value"] == table.val_acc[top] == table.val_acc.max()
        assert best["best"]["schedule"] == table.schedule[top]
        assert f"Schedules of the population ({scheduler}" in \
            (sweep_dir / "results" / "search.md").read_text()
        with pytest.raises(UsageError, match=f"a {scheduler} search's result is a schedule"):
            apply_best(SPACE, overridden("model=gffn", "batch_size=64", "epochs_b=12"),
                       sweep_dir / "results" / "best.json")


def population_ran_its_schedules(sweep_dir: Path) -> pd.DataFrame:
    """The checks of a PBT / PB2 sweep (6 trials, 12 epochs, batch 64) on what its trials
    ran, from their own checkpoints and reports; returns trials.csv by trial id."""
    table = results(sweep_dir).set_index("trial_id")
    assert len(table) == 6 and (table.status == "completed").all()
    assert (table.epochs == 12).all() and table.lr.between(1e-5, 1e-1).all()
    every = reports(sweep_dir)
    cloned = 0
    for trial_id, row in table.iterrows():
        # the trial's last checkpoint trained at its config's rate (batch 64 = the
        # reference: scaled_lr is lr), which is its reported scaled_lr
        last = sorted(Path(row.trial_dir).glob("checkpoint_*"))[-1]
        state = torch.load(last / "state.pt", weights_only=True)
        assert {g["lr"] for g in state["optimizer"]["param_groups"]} == {row.lr}, trial_id
        assert row.scaled_lr == row.lr
        # its schedule (kept in its checkpoints) ends with its own config
        schedule = state["schedule"]
        assert schedule[-1]["trial_id"] == trial_id and schedule[-1]["lr"] == row.lr
        assert all(1 <= s["from_epoch"] <= 12 for s in schedule)
        rows = every[trial_id.split("_")[-1]]
        assert [r["status"] for r in rows].count("completed") == 1  # reported its end once
        if len(schedule) == 1:
            continue
        cloned += 1
        donor, own = schedule[-2], schedule[-1]
        # every report from the exploit on ran at the new rate, starting right after the
        # donor's checkpoint, and differs from the donor's report of the same epoch
        restart = max(i for i, r in enumerate(rows) if r["epoch"] == own["from_epoch"])
        after = rows[restart:]  # (before the exploit, it may have run these epochs itself)
        assert [r["epoch"] for r in after] == list(range(own["from_epoch"], 13))
        assert {r["scaled_lr"] for r in after} == {row.lr}
        donors = {r["epoch"]: r for r in every[donor["trial_id"].split("_")[-1]]}
        if own["from_epoch"] in donors and donors[own["from_epoch"]]["scaled_lr"] != row.lr:
            assert after[0]["val_nll"] != donors[own["from_epoch"]]["val_nll"]
        assert f"lr={row.lr:.4g} from epoch {own['from_epoch']}" in row.schedule
    assert cloned >= 1, table.schedule.tolist()
    return table


# --- seeds, BOHB and the searchers' own settings ------------------------------------------

ONE_CELL = ("lr=loguniform(1e-4,1e-1)", "model=gffn", "batch_size=64", "epochs_b=9")


def built(search, profile, bare=False):
    """The Tune searcher of `search`, given the sweep's space as Tune gives it (`bare`: the
    searcher alone, without its seeds' repeater)."""
    from dataclasses import replace

    from orchestrator.tune.search import param_space, search_algorithm

    searcher = search_algorithm(replace(search, seeds=()) if bare else search)
    searcher.set_search_properties(search.metric, search.mode,
                                   param_space(profile, search, "data"))
    return searcher


@pytest.mark.parametrize("algorithm", ["optuna", "hyperopt", "bohb"])
def test_seeds_run_each_draw_of_a_model_based_searcher_once_per_seed(algorithm):
    """`--seeds 2` (the grid seed=0,1) with a model-based searcher: Tune's Repeater runs a
    draw once per seed, the trial's config names its seed, and the searcher is told the
    draw's mean over its seeds. The random search keeps its grid of seeds."""
    from ray import tune

    from orchestrator.tune.repeater import SeedRepeater
    from orchestrator.tune.search import param_space

    profile = overridden(*ONE_CELL, "seed=0,1")
    search = resolve_search(SPACE, profile, algorithm=algorithm)
    assert search.seeds == (0, 1) and search.settings()["seeds"] == [0, 1]
    assert search.scheduler == ("hyperband" if algorithm == "bohb" else "fifo")
    assert "seed" not in param_space(profile, search, "data")  # the repeater's
    searcher = built(search, profile)
    assert isinstance(searcher, SeedRepeater) and searcher.repeat == 2
    configs = {t: searcher.suggest(t) for t in ("a", "b", "c", "d")}
    assert [configs[t]["seed"] for t in "abcd"] == [0, 1, 0, 1]
    assert configs["a"]["lr"] == configs["b"]["lr"] != configs["c"]["lr"] == configs["d"]["lr"]
    assert not any("__trial_index__" in c for c in configs.values())
    inner = searcher.searcher

    def told():  # what the searcher holds of the first draw's end
        if algorithm == "optuna":
            return [t.value for t in inner._ot_study.trials if t.value is not None]
        if algorithm == "hyperopt":
            return [-t["result"]["loss"] for t in inner._hpopt_trials.trials
                    if "loss" in t["result"]]
        return ["a"] if "a" not in inner.trial_to_params else []  # BOHB forgets it

    searcher.on_trial_complete("a", {"val_acc": 0.2})
    assert told() == []  # the draw's other seed is still running
    searcher.on_trial_complete("b", {"val_acc": 0.4})
    assert told() == (["a"] if algorithm == "bohb" else [pytest.approx(0.3)])
    random = resolve_search(SPACE, profile)
    assert random.seeds == () and \
        param_space(profile, random, "data")["seed"] == tune.grid_search([0, 1])


def test_optuna_learns_the_mean_over_a_draws_seeds():
    profile = overridden(*ONE_CELL, "seed=3,5")
    searcher = built(resolve_search(SPACE, profile, algorithm="optuna"), profile)
    assert [searcher.suggest(t)["seed"] for t in ("a", "b")] == [3, 5]
    searcher.on_trial_complete("a", {"val_acc": 0.5})
    searcher.on_trial_complete("b", {"val_acc": 0.7})
    (trial,) = searcher.searcher._ot_study.trials
    assert trial.value == pytest.approx(0.6)


@pytest.mark.parametrize("ours", [False, True])
def test_a_resumed_repeater_runs_the_missing_seeds_of_its_last_draw(tmp_path, ours):
    """Tune checkpoints a searcher and restores it on --resume. Ray's Repeater saves only
    the searcher within: a draw whose seed 0 was made before the driver died got no seed 1
    (the next trial started a new draw), and the draw's end was never told. Ours saves its
    groups too."""
    from ray.tune.search import Repeater

    from orchestrator.tune.repeater import SeedRepeater

    profile = overridden(*ONE_CELL, "seed=0,1")
    search = resolve_search(SPACE, profile, algorithm="optuna")

    def repeater():
        searcher = built(search, profile, bare=True)
        return SeedRepeater(searcher, (0, 1)) if ours else Repeater(searcher, repeat=2)

    first = repeater()
    drawn = first.suggest("a")
    first.save_to_dir(str(tmp_path))
    again = repeater()
    again.restore_from_dir(str(tmp_path))
    resumed = again.suggest("b")
    if ours:
        assert (resumed["lr"], resumed["seed"]) == (drawn["lr"], 1)
        again.on_trial_complete("a", {"val_acc": 0.2})
        again.on_trial_complete("b", {"val_acc": 0.4})
        assert again.searcher._ot_study.trials[0].value == pytest.approx(0.3)
    else:
        assert resumed["__trial_index__"] == 0  # a new draw: the first one lost its seed 1


def test_bohb_runs_under_hyperband_for_bohb_and_learns_each_budget_over_the_seeds():
    from ray.tune.schedulers import HyperBandForBOHB
    from ray.tune.search.bohb import TuneBOHB

    from orchestrator.tune.schedulers import trial_scheduler

    profile = overridden(*ONE_CELL, "seed=0,1")
    search = resolve_search(SPACE, profile, algorithm="bohb", reduction_factor=3.0)
    assert (search.scheduler, search.max_t, search.startup_draws) == ("hyperband", 9, 2)
    assert isinstance(trial_scheduler(search, profile), HyperBandForBOHB)
    assert resolve_search(SPACE, profile, algorithm="bohb", scheduler="hyperband",
                          reduction_factor=3.0) == search
    for scheduler in ("fifo", "asha", "median", "pbt"):
        with pytest.raises(UsageError, match=f"--search bohb with --scheduler {scheduler}: "
                                             f"BOHB decides with its own HyperBand"):
            resolve_search(SPACE, profile, algorithm="bohb", scheduler=scheduler)
    searcher = built(search, profile)
    bohb = searcher.searcher
    assert isinstance(bohb, TuneBOHB)
    assert bohb.bohber.min_points_in_model == 2  # one searched key, and one
    for trial_id in ("a", "b"):
        searcher.suggest(trial_id)
    searcher.on_pause("a"), searcher.on_pause("b")  # HyperBandForBOHB's calls
    assert bohb.paused == {"a"}  # BOHB knows the draw by its first trial
    at_3 = {"hyperband_info": {"budget": 3}}
    searcher.on_trial_result("a", {"val_acc": 0.5, **at_3})
    assert 3 not in bohb.bohber.configs  # until each seed reported the budget
    searcher.on_trial_result("b", {"val_acc": 0.7, **at_3})
    assert bohb.bohber.losses[3] == [pytest.approx(-0.6)]  # BOHB minimises: -mean


def test_bohb_draws_the_same_values_again_from_its_model_too():
    """hpbandster samples its model from numpy's global generator: seeded with the search."""
    profile = overridden(*ONE_CELL)
    search = resolve_search(SPACE, profile, algorithm="bohb")

    def draws():
        bohb = built(search, profile)
        for i in range(6):
            bohb.suggest(f"t{i}")
            if i < 4:  # four results at a budget: BOHB's model draws the rest
                bohb.on_trial_result(f"t{i}", {"val_acc": 0.5 + 0.1 * i,
                                               "hyperband_info": {"budget": 1}})
        assert 1 in bohb.bohber.kde_models
        return [bohb.trial_to_params[f"t{i}"]["lr"] for i in range(6)]

    assert draws() == draws()


def test_the_searchers_settings_are_resolved_checked_and_given_to_tunes_searchers():
    profile = overridden(*ONE_CELL, "lr_scaling=choice(none,sqrt)")
    profile = profile.__class__(**{**profile.__dict__, "num_samples": 8})

    def resolve(algorithm="optuna", **flags):
        return resolve_search(SPACE, profile, algorithm=algorithm, **flags)

    assert [resolve(a).startup_draws for a in ("optuna", "hyperopt", "bohb", "random")] == \
        [10, 20, 3, 0]  # Ray's defaults; bohb: the searched keys + 1
    search = resolve(startup_draws=4, start_at=["lr=0.01,lr_scaling=sqrt",
                                                 " lr_scaling=none , lr=1e-3 "],
                     time_budget_s=30.0)
    assert search.start_at == ({"lr": 0.01, "lr_scaling": "sqrt"},
                               {"lr_scaling": "none", "lr": 0.001})
    assert {k: search.settings()[k] for k in ("startup_draws", "start_at", "time_budget_s")} \
        == {"startup_draws": 4, "time_budget_s": 30.0,
            "start_at": [{"lr": 0.01, "lr_scaling": "sqrt"}, {"lr_scaling": "none", "lr": 0.001}]}
    assert Search.of(search.settings()) == search  # as sweep.json records it
    optuna = built(search, profile)
    assert optuna._sampler._n_startup_trials == 4
    assert [optuna.suggest(t) for t in "ab"] == [dict(p) for p in search.start_at]
    hyperopt = built(resolve("hyperopt", startup_draws=5, start_at=["lr=0.01,lr_scaling=sqrt"]),
                     profile)
    assert hyperopt.algo.keywords["n_startup_jobs"] == 5
    first = hyperopt.suggest("a")
    assert (first["lr"], first["lr_scaling"]) == (0.01, "sqrt")
    bohb = built(resolve("bohb", startup_draws=6, start_at=["lr=0.01,lr_scaling=sqrt"]),
                 profile)
    assert bohb.bohber.min_points_in_model == 6
    assert bohb.suggest("a") == {"lr": 0.01, "lr_scaling": "sqrt"}
    for flags, message in [
            ({"algorithm": "random", "startup_draws": 3}, "--startup-draws: only --search "
             "optuna, hyperopt, bohb draw from a model; --search random draws every value"),
            ({"algorithm": "random", "start_at": ["lr=0.01"]}, "--start-at: only --search"),
            ({"startup_draws": 0}, "--startup-draws 0: must be >= 1"),
            ({"algorithm": "bohb", "startup_draws": 2},
             "--startup-draws 2: BOHB's model needs at least the searched keys \\+ 1 = 3"),
            ({"start_at": ["lr=0.5,lr_scaling=none"]},
             "--start-at lr=0.5: outside lr ~ loguniform\\(0.0001, 0.1\\)"),
            ({"start_at": ["lr=fast,lr_scaling=none"]}, "--start-at lr=fast: expected float"),
            ({"start_at": ["lr=0.01,lr_scaling=cubic"]}, "--start-at lr_scaling=cubic: outside"),
            ({"start_at": ["lr=0.01"]}, "--start-at lr=0.01: give every searched key "
             "\\(missing lr_scaling\\)"),
            ({"start_at": ["lr=0.01,epochs=3"]}, "--start-at epochs: not a searched key; "
             "searched: lr, lr_scaling"),
            ({"start_at": ["lr"]}, "--start-at expects KEY=VALUE"),
            ({"start_at": ["lr=0.01,lr_scaling=none"] * 9}, "--start-at: 9 points, more than "
             "the 8 draws of --num-samples"),
            ({"time_budget_s": 0.0}, "--time-budget-s must be a positive number of seconds")]:
        with pytest.raises(UsageError, match=message):
            resolve(**flags)


def test_a_model_based_searcher_runs_a_quarter_of_its_draws_at_once_also_on_a_cluster():
    from orchestrator.tune.searchers import trials_at_once

    def search(algorithm, draws, *seeds):
        return Search(algorithm=algorithm, num_samples=draws, seeds=seeds)

    cluster = None  # concurrent_trials' answer on a cluster: no cap
    assert trials_at_once(search("optuna", 8), cluster, None) == 2
    assert trials_at_once(search("hyperopt", 8, 0, 1, 2), cluster, None) == 6  # x its seeds
    assert trials_at_once(search("bohb", 3), cluster, None) == 1
    assert trials_at_once(search("optuna", 100), 16, None) == 16  # what fits, locally
    assert trials_at_once(search("optuna", 100), 16, 40) == 40  # --max-concurrent-trials
    assert trials_at_once(search("random", 100), cluster, None) is None
    assert trials_at_once(search("random", 100), 16, None) == 16


def test_startup_note_says_when_a_search_is_a_random_one():
    from orchestrator.tune.searchers import startup_note

    profile = overridden(*ONE_CELL)
    eight = profile.__class__(**{**profile.__dict__, "num_samples": 8})
    assert startup_note(resolve_search(SPACE, eight, algorithm="optuna")) == (
        "[sweep] note: optuna draws its first 10 values at random; with --num-samples 8 this "
        "is a random search (--startup-draws N)")
    assert startup_note(resolve_search(SPACE, eight, algorithm="optuna", startup_draws=4)) \
        is None
    assert startup_note(resolve_search(SPACE, eight)) is None


def test_a_missing_bohb_package_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "hpbandster" else real(name, *a))
    with pytest.raises(UsageError) as error:
        resolve_search(SPACE, overridden(*ONE_CELL), algorithm="bohb")
    assert str(error.value) == ("--search bohb needs the package hpbandster, which is not "
                                "installed: pip install 'robustness-lab[search]'")


def test_the_searcher_flags_reach_the_checks_before_ray(tmp_path):
    """Through the CLI: one line, exit 2, before Ray starts."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    base = [sys.executable, "-m", "orchestrator.sweep", "batch_size_gffn", "--profile",
            "smoke", "--storage", str(tmp_path), "--set", "lr=loguniform(1e-4,1e-1)",
            "--set", "model=gffn", "--set", "batch_size=64", "--num-samples", "2"]
    cases = [(["--search", "bohb", "--scheduler", "asha"], "--search bohb with --scheduler asha"),
             (["--search", "optuna", "--start-at", "lr=2"], "--start-at lr=2: outside"),
             (["--startup-draws", "3"], "--startup-draws: only --search"),
             (["--time-budget-s", "-1"], "--time-budget-s must be a positive")]
    procs = [subprocess.Popen([*base, *flags], env=env, cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for flags, _ in cases]
    for proc, (_, message) in zip(procs, cases):
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, stderr
        assert len(stderr.strip().splitlines()) == 1 and message in stderr, stderr


@pytest.mark.slow
def test_optuna_with_seeds_runs_each_draw_on_both_seeds_and_ranks_it_by_their_mean(
        tmp_path, sweep_env):
    proc = sweep(tmp_path, sweep_env, "--set", "model=gffn", "--set", "batch_size=64",
                 "--set", "epochs_b=3", "--set", "lr=loguniform(1e-4,1e-1)",
                 "--num-samples", "3", "--search", "optuna", "--seeds", "2",
                 "--start-at", "lr=0.01", "--time-budget-s", "900")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ("[sweep] note: optuna draws its first 10 values at random; with --num-samples 3 "
            "this is a random search (--startup-draws N)") in proc.stdout
    sweep_dir = newest(tmp_path)
    table = results(sweep_dir)
    assert len(table) == 6 and (table.status == "completed").all()
    draws = table.groupby("lr")
    assert len(draws) == 3 and 0.01 in set(table.lr)  # the --start-at point drawn first
    assert all(sorted(draw.seed) == [0, 1] for _, draw in draws)  # a draw on both seeds
    assert all(draw.val_nll.nunique() == 2 for _, draw in draws)  # each seed trained its own
    best = json.loads((sweep_dir / "results" / "best.json").read_text())
    seeds = table[table.lr == best["best"]["config"]["lr"]]
    assert len(seeds) == 2 and best["best"]["value"] == pytest.approx(seeds.val_acc.mean())
    assert best["best"]["value"] == pytest.approx(draws.val_acc.mean().max())
    record = json.loads((sweep_dir / "sweep.json").read_text())["settings"]["search"]
    assert (record["seeds"], record["start_at"], record["startup_draws"],
            record["time_budget_s"]) == ([0, 1], [{"lr": 0.01}], 10, 900.0)
