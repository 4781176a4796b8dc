"""The alpha_flow and alpha_diglm sweeps end to end: real Ray Tune, Ray Train (2 gloo DDP
workers with the double-backprop regularizer), W&B offline, the OOD stage and its report."""

import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import run_captured

from orchestrator.tracking.offline import find_offline_runs, read_offline_run
from workloads.data import load_trial_data
from workloads.models import build_generative_model

pytestmark = pytest.mark.slow
OOD_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95", "tnr95")


def run_sweep(tmp_path, env, name, *args, timeout=600):
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = run_captured(
        [sys.executable, "-m", "orchestrator.sweep", name, "--profile", "smoke",
         "--storage", str(tmp_path / "runs"), *args],
        env=env, timeout=timeout, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "runs").glob(f"{name}-smoke-*")
    results = sweep_dir / "results"
    return proc, sweep_dir, pd.read_csv(results / "trials.csv"), pd.read_csv(results / "ood.csv")


def check_ood_stage(sweep_dir, table, ood, scores, sets_per_trial):
    """Every (trial, score, OOD set) has finite metrics; the report and W&B have them."""
    assert (table.status == "completed").all()
    assert set(ood.score) == set(scores)
    for trial_id, rows in ood.groupby("trial_id"):
        assert len(rows) == len(scores) * sets_per_trial[trial_id], trial_id
    for metric in OOD_METRICS:
        assert ood[metric].map(math.isfinite).all(), metric
    assert (ood.n > 0).all()
    results = sweep_dir / "results"
    report = (results / "ood.md").read_text()
    assert report.count("### ") == len(table)  # one Table-3.1-style block per trial
    assert "digits -> uniform_noise" in report or "other_classes" in report
    for trial_id in table.trial_id:
        assert (results / "plots" / f"hist_{trial_id}.png").exists()

    runs = [run for run in map(read_offline_run, find_offline_runs(sweep_dir))
            if not run.run_id.startswith("summary-")]  # the trials' runs
    assert len(runs) == len(table)
    by_trial = table.set_index("trial_id")
    for run in runs:
        assert run.config["dequantization"] == by_trial.loc[run.run_id, "dequantization"]
        for score in scores:
            assert run.summary[f"auroc_{score}"] == pytest.approx(
                by_trial.loc[run.run_id, f"auroc_{score}"], rel=1e-9)
        (table_file,) = run.path.glob("files/media/table/ood_*.table.json")
        logged = json.loads(table_file.read_text())
        assert len(logged["data"]) == len(ood[ood.trial_id == run.run_id])
        assert {"score", "ood_set", "auroc", "tnr95"} <= set(logged["columns"])


def test_alpha_flow_smoke_with_class_anomaly_option(tmp_path, sweep_env):
    proc, sweep_dir, table, ood = run_sweep(tmp_path, sweep_env, "alpha_flow",
                                            "--set", "normal_class=-1,1", "--wandb", "offline")
    assert len(table) == 4
    assert set(zip(table.alpha, table.normal_class)) == {(0.0, -1), (2.0, -1), (0.0, 1),
                                                         (2.0, 1)}
    assert set(table.dequantization) == {"centred"}  # the convention is in every row
    for column in ("test_bpd", "test_log_px", "test_am", "val_bpd", "auroc_log_px",
                   "auroc_neg_am"):
        assert table[column].map(math.isfinite).all(), column
    assert table.train_am.isna().tolist() == (table.alpha == 0).tolist()  # only when alpha>0
    sets = {row.trial_id: (1 if row.normal_class >= 0 else 3) for row in table.itertuples()}
    check_ood_stage(sweep_dir, table, ood, ["log_px", "neg_am"], sets)
    anomaly = ood[ood.normal_class == 1]
    assert set(anomaly.ood_set) == {"other_classes"}
    # digits test has 36 ones, scored against the whole other-class test split (324)
    assert (anomaly.n_id == 36).all() and (anomaly.n == 324).all()

    # The training-time diagnostic (smoke: every epoch): AUROC of log p(x) and -AM per
    # epoch, score and OOD set, in the trial's W&B history, diagnostic.csv and a plot.
    diagnostic = pd.read_csv(sweep_dir / "results" / "diagnostic.csv")
    assert len(diagnostic) == sum(2 * 2 * n for n in sets.values())  # epochs x scores x sets
    assert set(diagnostic.epoch) == {1, 2} and set(diagnostic.score) == {"log_px", "neg_am"}
    assert diagnostic.auroc.between(0, 1).all() and "alpha" in diagnostic
    for score in ("log_px", "neg_am"):
        assert (sweep_dir / "results" / "plots" / f"diagnostic_{score}.png").exists()
    history = {run.run_id: run.history for run in map(read_offline_run,
                                                       find_offline_runs(sweep_dir))}
    row = diagnostic[(diagnostic.epoch == 2) & (diagnostic.score == "neg_am")].iloc[0]
    logged = [h for h in history[row.trial_id]
              if h.get(f"diag_auroc_neg_am_{row.ood_set}") is not None]
    assert [h["epoch"] for h in logged] == [1, 2]
    assert logged[-1][f"diag_auroc_neg_am_{row.ood_set}"] == pytest.approx(row.auroc)

    # The report redraws ood.md and the histograms from the saved files alone.
    results = sweep_dir / "results"
    (results / "ood.md").unlink()
    for png in [*(results / "plots").glob("hist_*.png"),
                *(results / "plots").glob("diagnostic_*.png")]:
        png.unlink()
    report = subprocess.run([sys.executable, "-m", "orchestrator.report", str(sweep_dir)],
                            capture_output=True, text=True, env=sweep_env, timeout=120)
    assert report.returncode == 0, report.stderr
    assert (results / "ood.md").read_text().count("### ") == 4
    assert len(list((results / "plots").glob("hist_*.png"))) == 4
    assert len(list((results / "plots").glob("diagnostic_*.png"))) == 2


def test_alpha_diglm_smoke_on_ray_train_ddp_keeps_checkpoints(alpha_diglm_ddp_sweep):
    stdout, sweep_dir = alpha_diglm_ddp_sweep  # conftest: `--num-workers 2 --wandb offline`
    table = pd.read_csv(sweep_dir / "results" / "trials.csv")
    ood = pd.read_csv(sweep_dir / "results" / "ood.csv")
    assert "TorchTrainer, 2 workers" in stdout
    assert len(table) == 2 and set(table.alpha) == {0.0, 2.0}
    for column in ("test_acc", "test_ece", "test_bpd", "test_am", "val_acc", "train_ce"):
        assert table[column].map(math.isfinite).all(), column
    assert (table.test_acc > 0.3).all()  # 2 epochs: well above chance (0.1)
    scores = ["msp", "max_logit", "energy", "odin", "mahalanobis", "gmm", "log_px", "neg_am"]
    check_ood_stage(sweep_dir, table, ood, scores, dict.fromkeys(table.trial_id, 3))

    # The final checkpoint of every trial reloads into a working DIGLM (for the defense).
    trial = table.iloc[0]
    (state_file,) = sorted((sweep_dir / "train").glob(f"train-{trial.trial_id}/checkpoint_*/"
                                                      "state.pt"))[-1:]
    state = torch.load(state_file, weights_only=False)
    config = {k: v for k, v in json.loads(trial.to_json()).items() if v is not None}
    data = load_trial_data(config)
    model = build_generative_model(config, data.input_shape, data.levels, data.num_classes)
    model.load_state_dict(state["model"])
    accuracy = (model.predict(data.x_test) == data.y_test).float().mean().item()
    assert accuracy == pytest.approx(trial.test_acc, abs=1e-6)


def test_a_diverging_flow_ends_as_diverged_and_the_others_train_a_background_model(
        tmp_path, sweep_env):
    """A flow whose loss diverges ends as `diverged` and the sweep goes on. With
    `background_mu` > 0 each completed trial also trains Ren et al.'s background flow on
    perturbed inputs, and the OOD stage adds the likelihood ratio to the requested scores."""
    _, sweep_dir, table, ood = run_sweep(
        tmp_path, sweep_env, "alpha_flow", "--set", "lr=1e6,1e-3", "--set", "background_mu=0.2",
        "--set", "background_epochs=1", "--set", "ood_scores=log_px+neg_am",
        "--wandb", "disabled")
    by_lr = table.set_index(["lr", "alpha"])
    assert len(table) == 4  # lr x alpha (0 and 2)
    assert (by_lr.loc[1e6, "status"] == "diverged").all()
    assert (by_lr.loc[1e6, "diverged_epoch"] == 1).all()
    assert (by_lr.loc[1e-3, "status"] == "completed").all()
    completed = set(table[table.status == "completed"].trial_id)
    assert set(ood.trial_id) == completed  # only completed trials have an OOD stage
    assert "diverged" in (sweep_dir / "results" / "trials.md").read_text()

    assert by_lr.loc[1e-3, "background_train_nll"].map(math.isfinite).all()
    assert set(ood.score) == {"log_px", "neg_am", "likelihood_ratio"}
    assert ood[ood.score == "likelihood_ratio"].auroc.between(0, 1).all()
    assert by_lr.loc[1e-3, "auroc_likelihood_ratio"].map(math.isfinite).all()
