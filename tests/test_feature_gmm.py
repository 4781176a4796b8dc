"""Document 003's study: its CIFAR classifiers, training settings and the `feature_gmm`
sweep (smoke through Ray Tune and W&B, then adversarial detection on the attack pool; the
paper profile on CIFAR-100 pickles, a Tiny ImageNet folder and FashionMNIST IDX files)."""

import collections
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BNDropoutNet, command, train_digits_classifier

from orchestrator.tracking.offline import find_offline_runs, read_offline_run
from orchestrator.tune.epochs import run_epochs
from orchestrator.tune.session import LocalSession
from search_spaces import get_search_space
from workloads.adversarial.purification import purification_table
from workloads.models import FeatureCache, build_classifier
from workloads.scores import build_score
from workloads.studies import failure_prediction as failure_prediction_study
from workloads.studies import feature_gmm as feature_gmm_study
from workloads.studies.classifier import ClassifierLoop
from workloads.training.epochs import classifier_optimizer, translate_and_flip


def test_translate_and_flip_moves_each_image_by_at_most_two_pixels():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1
    out = translate_and_flip(x, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        matches = [(dy, dx, flip) for dy in range(5) for dx in range(5) for flip in (0, 1)
                   if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8].flip(2)
                                  if flip else padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert matches, i
    flips = [translate_and_flip(x[:1], generator=torch.Generator().manual_seed(s))
             for s in range(40)]
    assert any(not torch.equal(f, flips[0]) for f in flips)


def test_sgd_nesterov_with_milestones_divides_the_learning_rate():
    model = torch.nn.Linear(3, 2)
    optimizer, scheduler = classifier_optimizer(
        model, {"optimizer": "sgd", "weight_decay": 1e-4, "lr_milestones": "2+4"}, lr=0.1)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD)
    assert group["nesterov"] and group["momentum"] == 0.9 and group["weight_decay"] == 1e-4
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    optimizer, scheduler = classifier_optimizer(model, {}, lr=1e-3)
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    with pytest.raises(ValueError, match="optimizer"):
        classifier_optimizer(model, {"optimizer": "lbfgs"}, lr=1.0)


@pytest.mark.parametrize("arch, kwargs", [
    ("densenet100", {"layers_per_block": 2}),       # small versions of the same classes
    ("wrn28_10", {"depth": 10, "widen_factor": 1}),
])
def test_cifar_classifiers_expose_features_head_and_feature_maps(arch, kwargs):
    torch.manual_seed(0)
    model = build_classifier(arch, (3, 32, 32), 100, **kwargs)
    x = torch.rand(4, 3, 32, 32)
    model.standardize.fit(x)
    assert torch.allclose(model.standardize(x).mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    model.eval()
    features = model.features(x)
    assert features.shape[0] == 4 and features.shape[1] > 0
    assert torch.allclose(model(x), model.head(features), atol=1e-5)
    assert torch.allclose(model(x), model.head_from_feature_maps(model.feature_maps(x)),
                          atol=1e-5)
    if arch == "densenet100":  # 003: tanh keeps the features bounded
        assert features.abs().max() <= 1
    with pytest.raises(ValueError, match="32, 32"):
        build_classifier(arch, (1, 28, 28), 10)


def test_densenet_bc_100_has_its_published_size():
    model = build_classifier("densenet100", (3, 32, 32), 100)
    assert 0.79e6 < sum(p.numel() for p in model.parameters()) < 0.81e6  # "0.8M"
    assert model.features(torch.rand(1, 3, 32, 32)).shape == (1, 342)


def test_purification_table_has_a_row_per_split_and_setting():
    model, data = train_digits_classifier()
    gmm = build_score("gmm", components=3).fit(model, data.x_train, data.y_train)
    rows = purification_table(model, gmm.log_density,
                              {"validation": (data.x_val, data.y_val),
                               "test": (data.x_test, data.y_test)}, [0.1, 0.01], [0.0, 1.0],
                              steps=2)
    assert len(rows) == 2 * 2 * 2
    assert {r["split"] for r in rows} == {"validation", "test"}
    for row in rows:
        n = len(data.x_val if row["split"] == "validation" else data.x_test)
        change = (row["fixed"] - row["broken"]) / n
        assert row["accuracy_after"] - row["accuracy_before"] == pytest.approx(change)


# --- the sweep, end to end ------------------------------------------------------------------

@pytest.mark.slow
def test_feature_gmm_smoke_sweep_then_adversarial_detection(tmp_path, env):
    command("sweep", "feature_gmm", "--profile", "smoke", "--storage", tmp_path, "--wandb",
            "offline", env=env)
    (sweep_dir,) = tmp_path.glob("feature_gmm-smoke-*")
    results = sweep_dir / "results"
    table = pd.read_csv(results / "trials.csv")
    assert sorted(table.arch) == ["cnn", "mlp"] and (table.status == "completed").all()
    assert (table.temperature > 0).all() and table.test_ece_calibrated.notna().all()
    mistakes = pd.read_csv(results / "mistakes.csv")
    scores = {"gmm", "gmm_2", "msp", "msp_calibrated", "max_logit", "mahalanobis"}
    assert set(mistakes.score) == scores and len(mistakes) == 2 * len(scores)
    assert ((mistakes.mw_p > 0) & (mistakes.mw_p <= 1)).all()
    assert (mistakes.n_wrong + mistakes.n_correct == 360).all()
    ood = pd.read_csv(results / "ood.csv")
    assert set(ood.score) == scores and {"gaussian_noise", "natural_patches"} <= set(ood.ood_set)
    purification = pd.read_csv(results / "purification.csv")
    assert len(purification) == 2 * 2 * 2  # trials x splits x (eps 0.1; nu 0, 1)
    for column in ("mistake_auroc_gmm", "mistake_mw_p_gmm", "auroc_gmm",
                   "purify_best_test_gain"):
        assert table[column].map(math.isfinite).all(), column
    assert "| gmm " in (results / "mistakes.md").read_text()
    assert (results / "plots" / "mistakes.png").exists()
    reproduction = (sweep_dir / "REPRODUCTION.md").read_text()
    for heading in ("Document 003 Tables 1-3", "Document 003 section 4.1",
                    "Document 003 Table 4", "gmm_separates_mistakes"):
        assert heading in reproduction
    runs = {run.run_id: run for run in map(read_offline_run, find_offline_runs(sweep_dir))}
    for trial_id in table.trial_id:
        media = runs[trial_id].path / "files" / "media" / "table"
        for name in ("ood", "mistakes", "purification"):
            assert list(media.glob(f"{name}_*.table.json")), (trial_id, name)

    trial = table.trial_id[table.arch == "mlp"].iloc[0]
    proc = command("attack", sweep_dir, "--trial", trial, "--target", "adversarial",
                   "--n", 90, "--eps", "0.05,0.2", "--steps", 3, "--num-actors", 2,
                   "--wandb", "offline", env=env)
    assert "FGSM" in proc.stdout and "BIM" in proc.stdout
    (out,) = (sweep_dir / "attacks").glob(f"{trial}-adversarial-*")
    frame = pd.read_csv(out / "adversarial.csv")
    assert len(frame) == 2 * 2 * len(scores)  # attacks x eps x scores
    assert set(frame.score) == scores
    by_eps = frame.groupby(["attack", "eps"]).n_adversarial.first()
    assert by_eps[("fgsm", 0.2)] > by_eps[("fgsm", 0.05)] > 0  # more fooled at larger eps
    assert frame.auroc.between(0, 1).all()
    assert (out / "adversarial.png").exists() and (out / "adversarial.md").exists()
    assert json.loads((out / "summary.json").read_text())["attacks"] == ["fgsm", "bim"]


@pytest.mark.slow
def test_feature_gmm_paper_profile_on_cifar100_tiny_imagenet_and_fashionmnist_files(
        tmp_path, env):
    """The paper profile's path on files in their real formats: CIFAR-100 pickles, a Tiny
    ImageNet folder and FashionMNIST IDX files (SVHN absent: skipped with a note), with
    DenseNet-BC-100 for one epoch (the WRN-28-10 setup overridden: too slow on a CPU), on
    300 training images: a quarter of 400 is held out for validation (one per class)."""
    from test_datasets import write_cifar, write_idx, write_tiny_imagenet

    data = tmp_path / "data"
    write_cifar(data, "cifar100", 400, seed=0, test_n=100)
    write_tiny_imagenet(data, 40, seed=1)
    write_idx(data, "FashionMNIST", 200, seed=2)
    proc = command("sweep", "feature_gmm", "--profile", "paper", "--set", "dataset=cifar100",
                   "--set", "arch=densenet100", "--set", "epochs_b=1", "--set",
                   "batch_size=50", "--set", "val_fraction=0.25", "--set",
                   "gmm_components=2+3", "--set", "purify_steps=2", "--set", "purify_nu=0",
                   "--seeds", 1, "--gpus-per-worker", 0, "--cpus-per-worker", 1,
                   "--data-dir", data, "--storage", tmp_path / "runs",
                   "--wandb", "disabled", env=env, timeout=900)
    assert "OOD set svhn of cifar100 is skipped: train_32x32.mat" in proc.stdout
    (sweep_dir,) = (tmp_path / "runs").glob("feature_gmm-paper-*")
    table = pd.read_csv(sweep_dir / "results" / "trials.csv")
    assert len(table) == 2 and (table.status == "completed").all()
    assert set(table.optimizer) == {"sgd"} and set(table.arch) == {"densenet100"}
    assert set(table.lr_milestones) == {"150+175", "60+120+160"}  # the two setups
    assert (table.steps == 300 // 50).all()  # one epoch on the 300 images not held out
    ood = pd.read_csv(sweep_dir / "results" / "ood.csv")
    assert {"tinyimagenet", "fashionmnist", "gaussian_noise"} <= set(ood.ood_set)
    assert "svhn" not in set(ood.ood_set)
    assert np.isfinite(ood.auroc).all()
    reproduction = (sweep_dir / "REPRODUCTION.md").read_text()
    assert "cifar100 -> tinyimagenet" in reproduction and "(003: 96.75/96.78/96.67)" in reproduction


def test_feature_cache_shares_one_forward_pass_and_changes_no_score():
    model, data = train_digits_classifier()
    cached = FeatureCache(model)
    misses = []
    for name, params in (("msp", {}), ("max_logit", {}), ("mahalanobis", {}),
                         ("gmm", {"components": 3}), ("gmm", {"components": 5})):
        plain = build_score(name, **params).fit(model, data.x_train, data.y_train)
        shared = build_score(name, **params).fit(cached, data.x_train, data.y_train)
        assert torch.equal(plain(model, data.x_test), shared(cached, data.x_test)), name
        misses.append(cached.misses)
    # max logit reuses MSP's test features; the GMMs reuse Mahalanobis' training ones
    assert misses[1] == misses[0] and misses[4] == misses[3] == misses[2]
    assert cached.hits >= 6
    x = data.x_test[:4].clone().requires_grad_(True)  # a gradient path is never cached
    (grad,) = torch.autograd.grad(cached(x).sum(), x)
    assert grad.abs().sum() > 0 and cached.misses == misses[-1]
    with torch.no_grad():
        before = cached.features(data.x_test)
        data.x_test.mul_(0.5)  # an input changed in place is recomputed
        assert torch.equal(cached.features(data.x_test), model.features(data.x_test))
        assert not torch.equal(cached.features(data.x_test), before)


def test_feature_cache_forgets_the_features_of_a_model_that_changed():
    """A cache that outlives a change of the model (batch-norm statistics updated by a pass in
    train mode, an optimizer step, loaded weights) answers for the model as it is now."""
    torch.manual_seed(0)
    model, x = BNDropoutNet().eval(), torch.randn(40, 1, 8, 8)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    cached = FeatureCache(model)

    def agrees():
        with torch.no_grad():
            return torch.equal(cached.features(x[:20]), model.features(x[:20]))

    with torch.no_grad():
        first = cached.features(x[:20])
        model.train()(x)  # updates the BN running statistics in place
        model.eval()
    assert agrees() and not torch.equal(cached.features(x[:20]), first)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    torch.nn.functional.cross_entropy(model(x), torch.zeros(40, dtype=torch.long)).backward()
    optimizer.step()
    assert agrees()
    model.load_state_dict(trained)
    with torch.no_grad():
        assert agrees() and torch.equal(cached.features(x[:20]), first)


@pytest.mark.parametrize("study", ["feature_gmm", "failure_prediction", "batch_size_gffn"])
def test_a_classifier_trial_runs_its_network_over_the_training_set_once_after_training(study):
    """The final stage's scores and the trial's training accuracy share one forward pass per
    training chunk (the GMMs' training features were computed a second time for `train_acc`:
    a quarter of a DenseNet trial's time on the paper profile)."""
    loops = {"feature_gmm": feature_gmm_study.LOOP, "failure_prediction":
             failure_prediction_study.LOOP, "batch_size_gffn": ClassifierLoop}
    profile = get_search_space(study).profile("smoke")
    config = {**profile.config, **{key: values[0] for key, values in profile.grid.items()}}
    passes = collections.Counter()

    def make_loop(config, session):
        loop = loops[study](config, session)
        x_train = loop.data.x_train

        def count(module, args):
            (x,) = args
            if not module.training and x._base is x_train:
                passes[x.storage_offset(), len(x)] += 1

        loop.model.features.register_forward_pre_hook(count)
        return loop

    session = LocalSession(num_threads=1)
    run_epochs(make_loop, config, session)
    assert session.reports[-1]["status"] == "completed"
    assert passes and set(passes.values()) == {1}, passes
