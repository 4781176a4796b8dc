"""Document 001's study: failure prediction (MCP, MC dropout, ConfidNet, last-layer Laplace,
deep ensembles) and OOD detection with dropout classifiers; the `failure_prediction` sweep
end to end (smoke through Ray Tune and W&B, then `orchestrator.ensemble`; the paper profile
on MNIST and FashionMNIST IDX files)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BNDropoutNet, command
from torch import nn

from orchestrator.tracking.offline import find_offline_runs, read_offline_run
from workloads.data import load_dataset
from workloads.evaluation.ensemble import ensemble_scores
from workloads.evaluation.metrics import failure_metrics
from workloads.evaluation.mistake_detection import error_pr_curve
from workloads.models import FeatureCache, build_classifier
from workloads.scores import build_score, capabilities, fit_score
from workloads.training.epochs import fit_classifier


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
    assert score.fit_split == "train+validation"  # trained on train, its epoch chosen on val
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


# --- ConfidNet as Corbière et al.'s code trains it -----------------------------------------



@pytest.fixture(scope="module")
def bn_trained(trained):
    torch.manual_seed(1)
    data = trained[1]
    return fit_classifier(BNDropoutNet(), data.x_train, data.y_train, epochs=3), data


FAST = {"epochs": 2, "lr": 1e-3, "width": 32}  # a small head, two epochs: seconds


def test_tcp_loss_is_their_weighted_mse():
    from workloads.scores.confidnet import tcp_loss

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # predicts 0, 1; labels 0, 0: one error
    confidence, y = torch.tensor([[0.0], [1.0]]), torch.tensor([0, 0])
    p0 = torch.softmax(logits, 1)[:, 0]
    c = torch.sigmoid(confidence[:, 0])
    expected = ((c[0] - p0[0]) ** 2 + 3.0 * (c[1] - p0[1]) ** 2) / 2
    assert torch.isclose(tcp_loss(logits, confidence, y, weighting=3.0), expected)


def test_confidnet_keeps_the_epoch_of_best_validation_aupr_error(trained, monkeypatch):
    model, data = trained
    val_correct = (model(data.x_val).argmax(1) == data.y_val).numpy()
    score = fit_score("confidnet", {**FAST, "epochs": 6}, model, data)
    history = score.val_aupr_error
    assert len(history) == 6 and score.best_epoch == int(np.nanargmax(history)) + 1
    recomputed = failure_metrics(score(model, data.x_val).numpy(), val_correct)["aupr_error"]
    assert recomputed == pytest.approx(max(history), abs=1e-9)  # the head kept is that epoch's

    # the choice itself, on validation AUPR-errors given by hand: epoch 2 of 4 is kept, and
    # its head is the one a 2-epoch fit ends with (the same seed: the same trajectory)
    import workloads.scores.confidnet as confidnet

    def given(values):
        it = iter(values)
        monkeypatch.setattr(confidnet, "failure_metrics", lambda *a: {"aupr_error": next(it)})

    given([0.2, 0.6, 0.4, 0.1])
    peak = fit_score("confidnet", {**FAST, "epochs": 4}, model, data)
    given([0.2, 0.6])
    two = fit_score("confidnet", {**FAST, "epochs": 2}, model, data)
    given([0.1, 0.2, 0.3, 0.4])
    last = fit_score("confidnet", {**FAST, "epochs": 4}, model, data)
    assert (peak.best_epoch, two.best_epoch, last.best_epoch) == (2, 2, 4)
    assert torch.equal(peak(model, data.x_test), two(model, data.x_test))
    assert not torch.equal(peak(model, data.x_test), last(model, data.x_test))
    given([float("nan")] * 3)  # no validation error: AUPR-error undefined, the last epoch
    assert fit_score("confidnet", {**FAST, "epochs": 3}, model, data).best_epoch == 3


def _record_dropout(model):
    """Every call of a dropout layer (the model's, or a deep copy's: hooks are copied):
    (the module, its training flag)."""
    calls = []
    handles = [m.register_forward_hook(lambda m, i, o: calls.append((m, m.training)))
               for m in model.modules() if isinstance(m, nn.Dropout)]
    return calls, handles


def test_confidnet_dropout_is_on_in_phase_1_steps_and_off_in_phase_2(bn_trained):
    model, data = bn_trained
    model.eval()
    mine = {m for m in model.modules() if isinstance(m, nn.Dropout)}
    calls, handles = _record_dropout(model)
    try:
        fit_score("confidnet", {**FAST, "finetune_epochs": 1}, model, data)
        steps = 2 * math.ceil(len(data.x_train) / 128)
        assert sum(flag for m, flag in calls if m in mine) == steps  # every phase-1 step
        copied = [flag for m, flag in calls if m not in mine]
        assert copied and not any(copied)  # phase 2: the copy's dropout off
        calls.clear()
        fit_score("confidnet", {**FAST, "dropout": False}, model, data)
        assert calls and not any(flag for _, flag in calls)  # the comparison: no dropout
    finally:
        for handle in handles:
            handle.remove()


def _snapshot(model):
    return ([(name, m.training) for name, m in model.named_modules()],
            {k: v.clone() for k, v in model.state_dict().items()},
            [(p.requires_grad, p.grad) for p in model.parameters()])


@pytest.mark.parametrize("modes", ["train", "mc_dropout"])
@pytest.mark.parametrize("wrapped", [False, True])
def test_confidnet_leaves_a_batchnorm_dropout_classifier_exactly_as_found(bn_trained, modes,
                                                                          wrapped):
    model, data = bn_trained
    model.train()  # BN in train mode would update its statistics on any forward pass
    if modes == "mc_dropout":
        model.eval()
        model.features[4].train()
    scored = FeatureCache(model) if wrapped else model
    flags, state, grads = _snapshot(model)
    try:
        score = fit_score("confidnet", {**FAST, "finetune_epochs": 1}, scored, data)
        assert _snapshot(model)[0] == flags
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        assert [(p.requires_grad, p.grad) for p in model.parameters()] == grads
        values = score(scored, data.x_test)
        assert torch.isfinite(values).all()
        after_flags, after_state, _ = _snapshot(model)
        assert after_flags == flags
        assert all(torch.equal(state[k], v) for k, v in after_state.items())
    finally:
        model.eval()


def test_confidnet_phase_2_fine_tunes_a_copy_and_is_deterministic(bn_trained):
    model, data = bn_trained
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = {**FAST, "finetune_epochs": 2, "finetune_lr": 1e-3}
    rng = torch.get_rng_state()
    score = fit_score("confidnet", params, model, data)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random state is kept
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    copy = score.encoder.state_dict()
    changed = [k for k in state if not torch.equal(state[k], copy[k])]
    assert {"features.1.weight", "features.2.weight"} <= set(changed)  # linear, BN affine
    assert not {"features.2.running_mean", "features.2.running_var"} & set(changed)  # BN eval
    assert len(score.finetune_val_aupr_error) == 2 and score.finetune_best_epoch in (1, 2)
    x = data.x_test
    with torch.no_grad():  # the score reads the copy's features, not the model's
        expected = torch.sigmoid(score.head(score.encoder.features(x))).squeeze(1)
        original = torch.sigmoid(score.head(model.features(x))).squeeze(1)
    assert torch.allclose(score(model, x), expected) and not torch.allclose(expected, original)
    again = fit_score("confidnet", params, model, data)
    assert torch.equal(score(model, x), again(model, x))  # same seed, same score
    assert score.val_aupr_error == again.val_aupr_error


# --- the sweep, end to end ------------------------------------------------------------------

SCORES = {"msp", "msp_calibrated", "mc_dropout_vr", "mc_dropout_entropy", "mc_dropout_mi",
          "mc_dropout_avg", "confidnet", "laplace"}


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
                              "mc_dropout_mi", "mc_dropout_avg"}
    assert (results / "plots" / "pr_curves.png").exists()
    reproduction = (sweep_dir / "REPRODUCTION.md").read_text()
    assert "confidnet_best_failure_aupr" in reproduction and "Document 003" not in reproduction
    # ODIN's eps chosen on the validation inputs, from Liang et al.'s grid, and reported
    assert table.odin_epsilon.between(0, 0.004).all()
    # the verdicts' intervals cover seeds and test inputs, from the per-example outputs
    assert reproduction.count("seeds and test inputs (t over seeds + 200 resamples of the "
                              "test inputs)") == 3
    examples = pd.read_parquet(results / "examples.parquet")
    assert set(examples.trial_id) == set(table.trial_id)
    assert {"score_mc_dropout_avg", "prediction_mc_dropout_avg"} <= set(examples.columns)
    aggregated = pd.read_csv(results / "aggregated.csv")
    assert aggregated.mistake_aupr_error_confidnet_boot_lo.notna().all()
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
