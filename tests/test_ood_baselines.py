"""Thesis Table 3.1's baselines (sections 3.3, 3.6.6): Liu et al.'s energy-bounded loss by
hand, the training outlier sets, G-ODIN's optimizer, parameter counts matched to the flow,
the bad-input checks, and the `ood_baselines` sweep end to end through Ray Tune and W&B."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import command, command_in_process, train_digits_classifier
from pytorch_ood.loss import EnergyRegularizedLoss
from sklearn.metrics import roc_auc_score
from test_datasets import write_cifar, write_idx

from orchestrator.tracking.offline import find_offline_runs, read_offline_run
from search_spaces import get_search_space
from workloads.data import load_dataset, load_image_dataset, match_shape
from workloads.data.outliers import load_outliers, resolve_outlier_set, shuffled_pixels
from workloads.models import build_classifier, build_generative_model
from workloads.models.factory import classifier_options
from workloads.training.energy_finetuning import (
    energy,
    energy_bounded_loss,
    finetune_with_outliers,
    mean_energy,
)
from workloads.training.epochs import classifier_optimizer

# --- Liu et al.'s loss (thesis eq. 3.20-3.21) -------------------------------------------------


def liu_loss_by_hand(logits_in, targets, logits_out, m_in, m_out, weight):
    """CE + lambda * (mean_in max(0, E_in - m_in)^2 + mean_out max(0, m_out - E_out)^2),
    E = -log sum_k exp f_k, one example at a time in float64."""
    def e(row):
        return -math.log(sum(math.exp(v) for v in row))

    ce = [-(row[y] - math.log(sum(math.exp(v) for v in row)))
          for row, y in zip(logits_in.tolist(), targets.tolist())]
    hinge_in = [max(0.0, e(row) - m_in) ** 2 for row in logits_in.tolist()]
    hinge_out = [max(0.0, m_out - e(row)) ** 2 for row in logits_out.tolist()]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return mean(ce) + weight * (mean(hinge_in) + mean(hinge_out))


def test_energy_bounded_loss_is_liu_et_al_by_hand_and_pytorch_ood():
    torch.manual_seed(0)
    logits_in = 3 * torch.randn(6, 4, dtype=torch.float64)
    logits_out = 3 * torch.randn(9, 4, dtype=torch.float64)  # more outliers than ID: the
    targets = torch.tensor([0, 1, 2, 3, 1, 0])               # two means differ from one mean
    m_in, m_out = -3.0, -2.0
    e_in, e_out = energy(logits_in), energy(logits_out)
    assert torch.allclose(e_in, -torch.logsumexp(logits_in, 1))
    # the margins cut through both batches: some hinges are active, some are zero
    assert (e_in > m_in).any() and (e_in < m_in).any()
    assert (e_out < m_out).any() and (e_out > m_out).any()
    ours = energy_bounded_loss(logits_in, targets, logits_out, m_in, m_out, weight=0.1)
    expected = liu_loss_by_hand(logits_in, targets, logits_out, m_in, m_out, 0.1)
    assert ours.item() == pytest.approx(expected, rel=1e-10)
    labels = torch.cat([targets, torch.full((9,), -1)])
    pood = EnergyRegularizedLoss(alpha=0.1, margin_in=m_in, margin_out=m_out)
    assert ours.item() == pytest.approx(pood(torch.cat([logits_in, logits_out]), labels).item())
    # with every ID energy below m_in and every outlier's above m_out, only CE is left
    loose = energy_bounded_loss(logits_in, targets, logits_out, m_in=100.0, m_out=-100.0,
                                weight=0.1)
    assert loose.item() == pytest.approx(F.cross_entropy(logits_in, targets).item())


def test_finetuning_lowers_id_energy_and_raises_the_outliers():
    model, data = train_digits_classifier(epochs=10, width=64)
    outliers = shuffled_pixels(data.x_train, seed=1)
    before = mean_energy(model, data.x_train), mean_energy(model, outliers)
    # margins past both means: both hinges bind (above m_out, an outlier adds no loss)
    history = finetune_with_outliers(model, data.x_train, data.y_train, outliers, epochs=3,
                                     lr=0.01, batch_size=32, outlier_batch_size=64,
                                     m_in=before[0] - 3, m_out=before[1] + 3, weight=0.1,
                                     seed=0)
    after = mean_energy(model, data.x_train), mean_energy(model, outliers)
    assert [h["epoch"] for h in history] == [1, 2, 3] and not model.training
    assert after[0] < before[0] and after[1] > before[1]
    assert after[1] - after[0] > before[1] - before[0]  # the energy gap widens


def test_finetuning_with_dropout_is_seeded_and_refuses_a_batch_larger_than_the_data():
    """Dropout's masks follow `seed` (two fine-tunings of one copy agree to the bit; they
    came from the caller's random state, so the ood_baselines final stage gave other
    numbers when run twice), and the caller's random state is left alone. A batch larger
    than the training set meant no step at all (ZeroDivisionError); now a clear error."""
    import copy

    from workloads.models import build_classifier

    data = load_dataset("digits")
    torch.manual_seed(0)
    model = build_classifier("dropout_mlp", data.input_shape, data.num_classes, width=32)
    outliers = shuffled_pixels(data.x_train, seed=1)
    settings = dict(epochs=1, lr=0.01, batch_size=64, outlier_batch_size=64, m_in=-5.0,
                    m_out=-1.0, weight=0.1, seed=3)
    tuned = []
    for _ in range(2):
        copied = copy.deepcopy(model)
        torch.manual_seed(len(tuned))  # a different caller state each time
        state = torch.random.get_rng_state()
        finetune_with_outliers(copied, data.x_train, data.y_train, outliers, **settings)
        assert torch.equal(torch.random.get_rng_state(), state)
        tuned.append(copied.state_dict())
    assert all(torch.equal(tuned[0][k], tuned[1][k]) for k in tuned[0])
    with pytest.raises(ValueError, match="exceeds the 20 training inputs"):
        finetune_with_outliers(copy.deepcopy(model), data.x_train[:20], data.y_train[:20],
                               outliers, **settings)


# --- training outlier sets ------------------------------------------------------------------

def test_shuffled_pixels_permutes_each_image_on_its_own():
    data = load_dataset("digits", ood=False)
    out = shuffled_pixels(data.x_train, seed=3)
    assert out.shape == data.x_train.shape
    flat_in, flat_out = data.x_train.flatten(1), out.flatten(1)
    assert torch.equal(flat_in.sort(1).values, flat_out.sort(1).values)  # same pixels each
    assert (flat_in != flat_out).any(1).float().mean() > 0.99            # other positions
    assert torch.equal(out, shuffled_pixels(data.x_train, seed=3))
    assert not torch.equal(out, shuffled_pixels(data.x_train, seed=4))
    rgb = torch.rand(5, 3, 4, 4)
    moved = shuffled_pixels(rgb, seed=0).flatten(2)
    # a pixel's three channels move together: every output pixel is an input pixel
    pixels = {tuple(v) for v in rgb.flatten(2).permute(0, 2, 1).reshape(-1, 3).tolist()}
    assert all(tuple(v) in pixels for v in moved.permute(0, 2, 1).reshape(-1, 3).tolist())


def test_outlier_sets_pair_as_the_thesis_and_stay_off_the_test_ood_sets():
    assert resolve_outlier_set("auto", "cifar10") == "svhn"        # thesis 3.6.6
    assert resolve_outlier_set("auto", "fashionmnist") == "mnist"
    assert resolve_outlier_set("auto", "digits") == "shuffled_pixels"
    for name, dataset in (("auto", "mnist"), ("tinyimages", "cifar10"), ("mnist", "mnist")):
        with pytest.raises(ValueError):
            resolve_outlier_set(name, dataset)
    data = load_dataset("digits")
    outliers = load_outliers("auto", data, seed=0)
    assert len(outliers) == len(data.x_train)
    assert set(data.ood) == {"gaussian_noise", "uniform_noise", "natural_patches"}
    flat = outliers.flatten(1)
    for x in (data.x_test, *data.ood.values()):  # no outlier is an evaluation input
        assert not (torch.cdist(flat, x.flatten(1)) < 1e-6).any()
    # the ID pixel histogram is kept; the noise sets' is not
    assert torch.equal(outliers.flatten().sort().values, data.x_train.flatten().sort().values)


def test_mnist_outliers_of_fashionmnist_are_mnist_training_images(tmp_path):
    write_idx(tmp_path, "MNIST", 200, seed=0)
    write_idx(tmp_path, "FashionMNIST", 200, seed=1)
    data = load_dataset("fashionmnist", tmp_path)
    outliers = load_outliers("auto", data, tmp_path)
    mnist = load_image_dataset("mnist", tmp_path)
    assert torch.equal(outliers, match_shape(mnist.x_train, data.input_shape))
    assert torch.equal(data.ood["mnist"], mnist.x_test[:len(data.x_test)])  # the test split
    assert not (torch.cdist(outliers.flatten(1), data.ood["mnist"].flatten(1)) < 1e-6).any()
    with pytest.raises(ValueError, match="data directory"):
        load_outliers("mnist", load_dataset("digits"))


# --- G-ODIN's optimizer (Hsu et al. 2020) ---------------------------------------------------

def test_godin_optimizer_leaves_the_class_vectors_of_h_undecayed():
    model = build_classifier("godin_mlp", (1, 8, 8), 10, width=16)
    optimizer, _ = classifier_optimizer(model, {"optimizer": "sgd", "weight_decay": 5e-4,
                                                "nesterov": False}, lr=0.1)
    decayed, free = optimizer.param_groups
    assert decayed["weight_decay"] == 5e-4 and free["weight_decay"] == 0.0
    assert [p is model.head.class_vectors.weight for p in free["params"]] == [True]
    assert len(decayed["params"]) == len(list(model.parameters())) - 1
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # a step on zero gradients: only the decay moves
    optimizer.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved == (name != "head.class_vectors.weight" and before[name].abs().sum() > 0)
    plain = classifier_optimizer(build_classifier("mlp", (1, 8, 8), 10), {}, lr=1e-3)[0]
    assert len(plain.param_groups) == 1


# --- parameter counts matched to the flow (thesis 3.6.6) ------------------------------------

SHAPES = {"digits": ((1, 8, 8), 17), "fashionmnist": ((1, 28, 28), 256),
          "cifar10": ((3, 32, 32), 256)}


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("profile", ["local", "paper"])
def test_classifier_widths_match_the_alpha_flow_flows(profile):
    from search_spaces.ood_baselines import FLOW_PARAMS

    flows = {}
    for config in get_search_space("alpha_flow").profile(profile).trial_configs():
        shape, levels = SHAPES[config["dataset"]]
        flows.setdefault(config["dataset"], count(build_generative_model(config, shape,
                                                                         levels, 10)))
    assert flows == FLOW_PARAMS[profile]
    configs = get_search_space("ood_baselines").profile(profile).trial_configs()
    assert {c["arch"].startswith("godin") for c in configs} == {True, False}
    for config in configs:
        shape, _ = SHAPES[config["dataset"]]
        params = count(build_classifier(config["arch"], shape, 10,
                                        **classifier_options(config)))
        assert abs(params / flows[config["dataset"]] - 1) < 0.01, (config["arch"], params)


# --- the sweep ------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, message", [
    ("outlier_set=svhn", "svhn"),                      # not on disk (no --data-dir files)
    ("outlier_set=tinyimages", "must be one of"),
    ("energy_m_in=0", "m_in must be below m_out"),
    ("energy_epochs=-1", "must be >= 0"),
    ("finetuned_scores=godin", "godin"),               # the plain MLP has no G-ODIN head
])
def test_bad_settings_exit_2_before_ray_starts(tmp_path, env, setting, message):
    proc = command_in_process("sweep", "ood_baselines", "--profile", "smoke", "--storage",
                              tmp_path, "--data-dir", tmp_path / "data", "--wandb", "disabled",
                              "--set", setting, env=env)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert message in proc.stdout + proc.stderr
    assert not list(tmp_path.glob("ood_baselines-*"))


@pytest.mark.slow
def test_ood_baselines_smoke_sweep(tmp_path, env):
    command("sweep", "ood_baselines", "--profile", "smoke", "--storage", tmp_path, "--wandb",
            "offline", env=env)
    (sweep_dir,) = tmp_path.glob("ood_baselines-smoke-*")
    results = sweep_dir / "results"
    table = pd.read_csv(results / "trials.csv")
    assert sorted(table.arch) == ["godin_mlp", "mlp"] and (table.status == "completed").all()
    assert (table.num_params > 0).all()
    plain = table[table.arch == "mlp"].iloc[0]
    for column in ("auroc_energy_ft", "auroc_msp_ft", "test_acc_ft", "energy_in_after",
                   "energy_out_after", "auroc_gradnorm", "auroc_mahalanobis"):
        assert math.isfinite(plain[column]), column
    assert math.isfinite(table[table.arch == "godin_mlp"].auroc_godin.iloc[0])
    ood = pd.read_csv(results / "ood.csv")
    scores = {"mlp": {"msp", "energy", "mahalanobis", "mahalanobis_lee", "gradnorm",
                      "energy_ft", "msp_ft"},
              "godin_mlp": {"godin", "msp", "energy", "mahalanobis", "mahalanobis_lee",
                            "gradnorm"}}
    for arch, expected in scores.items():
        assert set(ood[ood.arch == arch].score) == expected
    assert set(ood.ood_set) == {"gaussian_noise", "uniform_noise", "natural_patches"}
    assert ood.auroc.between(0, 1).all() and (ood.n == 360).all()  # balanced counts
    # per-example outputs: every trial's AUROCs recomputed from them, exactly
    examples = pd.read_parquet(results / "examples.parquet")
    assert set(examples.trial_id) == set(table.trial_id)
    for _, trial in table.iterrows():
        rows = examples[examples.trial_id == trial.trial_id]
        test = rows[rows.split == "test"]
        assert len(test) == 360 and test["index"].is_unique
        assert test.correct.mean() == pytest.approx(trial.test_acc, abs=1e-6)
        for score in scores[trial.arch]:
            aurocs = []
            for ood_set in ("gaussian_noise", "uniform_noise", "natural_patches"):
                ood_rows = rows[rows.split == ood_set]
                id_values = test[f"score_{score}"].to_numpy(np.float64)
                ood_values = ood_rows[f"score_{score}"].to_numpy(np.float64)
                labels = np.r_[np.ones(len(id_values)), np.zeros(len(ood_values))]
                auroc = roc_auc_score(labels, np.r_[id_values, ood_values])
                assert auroc == trial[f"ood_{score}_{ood_set}_auroc"], (score, ood_set)
                aurocs.append(auroc)
            assert np.mean(aurocs) == pytest.approx(trial[f"auroc_{score}"], abs=1e-15)
    reproduction = (sweep_dir / "REPRODUCTION.md").read_text()
    for text in ("Thesis Table 3.1 baselines", "digits -> uniform_noise",
                 "fashionmnist -> mnist", "energy_finetuning_beats_energy",
                 "godin_below_mahalanobis"):
        assert text in reproduction
    runs = {run.run_id: run for run in map(read_offline_run, find_offline_runs(sweep_dir))}
    assert set(table.trial_id) <= set(runs)


@pytest.mark.slow
def test_ood_baselines_paper_profile_on_fashionmnist_mnist_and_cifar_files(tmp_path, env):
    """The paper profile's four setups (energy fine-tuning and G-ODIN on FashionMNIST and
    CIFAR-10) on files in their real formats (IDX, CIFAR pickles), narrowed to one epoch. The
    thesis' CIFAR-10 outliers are SVHN, whose .mat files torchvision MD5-checks (test-written
    files cannot pass), so every trial takes MNIST's training split as outliers here."""
    data = tmp_path / "data"
    write_idx(data, "FashionMNIST", 200, seed=0)
    write_idx(data, "MNIST", 200, seed=1)
    write_cifar(data, "cifar10", 200, seed=2)
    proc = command("sweep", "ood_baselines", "--profile", "paper", "--set", "epochs_b=1",
                   "--set", "energy_epochs=1", "--set", "width=16", "--set",
                   "outlier_set=mnist", "--seeds", 1, "--gpus-per-worker", 0,
                   "--cpus-per-worker", 1, "--data-dir", data, "--storage", tmp_path / "runs",
                   "--wandb", "disabled", env=env)
    assert "OOD set kmnist of fashionmnist is skipped" in proc.stdout
    (sweep_dir,) = (tmp_path / "runs").glob("ood_baselines-paper-*")
    table = pd.read_csv(sweep_dir / "results" / "trials.csv")
    assert sorted(zip(table.dataset, table.arch)) == [
        ("cifar10", "cnn"), ("cifar10", "godin_cnn"), ("fashionmnist", "cnn"),
        ("fashionmnist", "godin_cnn")]
    assert (table.status == "completed").all()
    ood = pd.read_csv(sweep_dir / "results" / "ood.csv")
    assert {("fashionmnist", "mnist"), ("cifar10", "fashionmnist")} <= set(
        zip(ood.dataset, ood.ood_set))
    assert {"godin", "energy_ft", "mahalanobis"} <= set(ood.score)
    assert np.isfinite(ood.auroc).all()
    assert "fashionmnist -> mnist" in (sweep_dir / "REPRODUCTION.md").read_text()
