"""Document 001's study: failure prediction (MCP, MC dropout, ConfidNet, last-layer Laplace,
deep ensembles) and OOD detection with dropout classifiers; the `failure_prediction` sweep
end to end (smoke through Ray Tune and W&B, then `orchestrator.ensemble`; the paper profile
on MNIST and FashionMNIST IDX files)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import command

from orchestrator.tracking.offline import find_offline_runs, read_offline_run
from workloads.data import load_dataset
from workloads.ensemble import ensemble_scores
from workloads.mistake_detection import error_pr_curve
from workloads.models import build_classifier
from workloads.scores import build_score, capabilities, fit_score
from workloads.training import fit_classifier


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = load_dataset("digits")
    model = build_classifier("dropout_mlp", data.input_shape, data.num_classes, width=64)
    return fit_classifier(model, data.x_train, data.y_train, epochs=15), data


def test_dropout_networks_offer_dropout_and_are_deterministic_in_eval_mode():
    lenet = build_classifier("lenet", (1, 28, 28), 10).eval()
    x = torch.rand(3, 1, 28, 28)
    assert "dropout" in capabilities(lenet) and lenet.features(x).shape == (3, 500)
    assert torch.equal(lenet(x), lenet(x))
    with pytest.raises(ValueError, match="28, 28"):
        build_classifier("lenet", (1, 8, 8), 10)


def test_error_pr_curve_by_hand():
    # scores, low = predicted error; errors at indices 0 and 2
    values = np.array([0.1, 0.9, 0.3, 0.8, 0.2])
    correct = np.array([False, True, False, True, True])
    curve = {round(r["recall"], 2): r["precision"]
             for r in error_pr_curve(values, correct, points=3)}
    # ranking by -score: 0.1 (error), 0.2 (right), 0.3 (error), ...: recall .5 at precision
    # 1 (first item); recall 1 first at the third item, precision 2/3
    assert curve == {0.0: 1.0, 0.5: 1.0, 1.0: pytest.approx(2 / 3)}


def test_confidnet_regresses_the_true_class_probability_and_leaves_the_classifier(trained):
    model, data = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    score = fit_score("confidnet", {"epochs": 60, "lr": 1e-3, "width": 64}, model, data)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # frozen
    assert score.losses[-1] < score.losses[0]
    with torch.no_grad():
        tcp = model(data.x_train).softmax(1).gather(1, data.y_train.view(-1, 1)).squeeze(1)
    predicted = score(model, data.x_train)
    assert ((predicted - tcp) ** 2).mean() < ((tcp.mean() - tcp) ** 2).mean() + 1e-6
    assert score.fit_split == "train"
    assert build_score("confidnet", split="validation").fit_split == "validation"
    inputs = data.x_test[:8].clone().requires_grad_(True)  # attacks can follow it
    values = score.forward(model, inputs)
    (grad,) = torch.autograd.grad(values.sum(), inputs)
    assert grad.abs().sum() > 0
    assert torch.allclose(values.detach(), score(model, data.x_test[:8]), atol=1e-6)


def test_laplace_with_a_huge_prior_precision_is_the_map_softmax(trained):
    """With prior precision 1e8 the last-layer posterior collapses on the trained weights:
    the probit predictive equals the MAP softmax, so the score equals MSP."""
    model, data = trained
    laplace = fit_score("laplace", {"prior_precision": 1e8}, model, data)
    msp = build_score("msp")(model, data.x_test)
    assert torch.allclose(laplace(model, data.x_test).float(), msp, atol=1e-4)
    fitted = fit_score("laplace", {}, model, data)  # marginal likelihood: less confident
    assert fitted(model, data.x_test).mean() < msp.mean()


def test_ensemble_scores_by_hand():
    # two members, one input: they agree (p = .8/.2) or disagree (.9/.1 and .1/.9)
    agree = torch.tensor([[[0.8, 0.2]], [[0.8, 0.2]]])
    disagree = torch.tensor([[[0.9, 0.1]], [[0.1, 0.9]]])

    def entropy(p):
        return -sum(v * math.log(v) for v in p)

    a, d = ensemble_scores(agree), ensemble_scores(disagree)
    assert a["ensemble_mcp"][0] == pytest.approx(0.8) and d["ensemble_mcp"][0] == 0.5
    assert a["ensemble_mi"][0] == pytest.approx(0.0, abs=1e-7)
    assert d["ensemble_mi"][0] == pytest.approx(-(entropy([0.5, 0.5]) - entropy([0.9, 0.1])))
    assert d["ensemble_entropy"][0] == pytest.approx(-entropy([0.5, 0.5]))


# --- the sweep, end to end ------------------------------------------------------------------

SCORES = {"msp", "msp_calibrated", "mc_dropout_vr", "mc_dropout_entropy", "mc_dropout_mi",
          "confidnet", "laplace"}


@pytest.mark.slow
def test_failure_prediction_smoke_sweep_then_the_ensemble_of_its_seeds(tmp_path, env):
    command("sweep", "failure_prediction", "--profile", "smoke", "--seeds", 2, "--storage",
            tmp_path, "--wandb", "offline", env=env)
    (sweep_dir,) = tmp_path.glob("failure_prediction-smoke-*")
    results = sweep_dir / "results"
    table = pd.read_csv(results / "trials.csv")
    assert len(table) == 2 and (table.status == "completed").all()
    mistakes = pd.read_csv(results / "mistakes.csv")
    assert set(mistakes.score) == SCORES
    for score in SCORES:
        assert table[f"mistake_aupr_error_{score}"].map(math.isfinite).all(), score
    curves = pd.read_csv(results / "pr_curves.csv")
    assert set(curves.score) == SCORES and curves.precision.between(0, 1).all()
    ood = pd.read_csv(results / "ood.csv")
    assert set(ood.score) == {"msp", "odin", "mc_dropout_vr", "mc_dropout_entropy",
                              "mc_dropout_mi"}
    assert (results / "plots" / "pr_curves.png").exists()
    reproduction = (sweep_dir / "REPRODUCTION.md").read_text()
    assert "confidnet_best_failure_aupr" in reproduction and "Document 003" not in reproduction
    runs = {run.run_id: run for run in map(read_offline_run, find_offline_runs(sweep_dir))}
    media = runs[table.trial_id[0]].path / "files" / "media" / "table"
    assert list(media.glob("pr_curves_*.table.json"))

    proc = command("ensemble", sweep_dir, "--wandb", "offline", env=env)
    assert "2 members" in proc.stdout
    (out,) = (sweep_dir / "ensemble").glob("ensemble-*")
    ensemble = pd.read_csv(out / "ensemble.csv")
    assert len(ensemble) == 1 and ensemble.members[0] == 2
    assert set(ensemble.trials[0].split("+")) == set(table.trial_id)
    failure = pd.read_csv(out / "failure.csv")
    assert set(failure.score) == {"ensemble_mcp", "ensemble_entropy", "ensemble_mi"}
    assert failure.auroc.between(0, 1).all()


@pytest.mark.slow
def test_failure_prediction_paper_profile_on_mnist_and_fashionmnist_files(tmp_path, env):
    """LeNet with dropout on MNIST-format files (IDX), FashionMNIST as an OOD set."""
    from test_datasets import write_idx

    data = tmp_path / "data"
    write_idx(data, "MNIST", 400, seed=0)
    write_idx(data, "FashionMNIST", 400, seed=1)
    proc = command("sweep", "failure_prediction", "--profile", "paper", "--set", "epochs_b=1",
                   "--set", "confidnet_epochs=2", "--set", "mc_passes=3", "--seeds", 1,
                   "--gpus-per-worker", 0, "--cpus-per-worker", 1, "--data-dir", data,
                   "--storage", tmp_path / "runs", "--wandb", "disabled", env=env)
    assert "OOD set kmnist of mnist is skipped" in proc.stdout
    (sweep_dir,) = (tmp_path / "runs").glob("failure_prediction-paper-*")
    table = pd.read_csv(sweep_dir / "results" / "trials.csv")
    assert len(table) == 1 and table.status[0] == "completed" and table.arch[0] == "lenet"
    ood = pd.read_csv(sweep_dir / "results" / "ood.csv")
    assert "fashionmnist" in set(ood.ood_set) and np.isfinite(ood.auroc).all()
