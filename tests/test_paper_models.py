"""The paper profiles' real architectures on the CPU, end to end: for each paper profile,
its model exactly as the sweep builds it (DenseNet-BC-100, WRN-28-10, LeNet with dropout, the
paper VAE, the G-ODIN CNN, the paper flows and DIGLM, GradCon's and OCGAN's paper networks,
the GFFN CNN), shrunk only in data and epochs: its dataset read from small files written in
the real format (IDX, CIFAR pickles), one short epoch of the loop's own objective, then the
loop's whole final stage, twice, with the guarantees of tests/test_evaluation_invariance.py:
every module's mode, parameter and buffer unchanged, and the same metrics the second time.

These run the models' full depth on a handful of inputs (a WRN-28-10 forward pass is about
0.3 s per 32x32 image on one core), so they are marked slow; CI runs them.
"""

import dataclasses
import math

import pytest
import torch
from conftest import assert_model_unchanged, model_state
from test_datasets import write_cifar, write_idx

from search_spaces import get_search_space
from workloads.data import load_trial_data
from workloads.models import DIGLM
from workloads.models.factory import build_anomaly_model, build_model
from workloads.studies.class_anomaly import anomaly_final_stage
from workloads.studies.classifier import classifier_final_stage
from workloads.studies.failure_prediction import failure_prediction_final_stage
from workloads.studies.feature_gmm import feature_gmm_final_stage
from workloads.studies.generative import generative_final_stage, generative_objective
from workloads.studies.ood_baselines import ood_baselines_final_stage
from workloads.studies.vae_ood import vae_final_stage, vae_objective
from workloads.training.class_anomaly import anomaly_optimizers, train_anomaly_epoch
from workloads.training.epochs import train_epoch, train_one_epoch
from workloads.training.losses import classifier_loss

# sweep, what picks its trial from the paper grid, the final stage, and config overrides
# that shrink work, not the model (score sets, sample counts, epochs of inner fits)
CASES = {
    "batch_size_gffn-cnn-cifar10": ("batch_size_gffn", {"dataset": "cifar10", "model": "gffn"},
                                    classifier_final_stage, {}),
    "feature_gmm-densenet100-cifar100": (
        "feature_gmm", {"dataset": "cifar100", "arch": "densenet100"},
        feature_gmm_final_stage,
        {"gmm_components": "2+3", "purify_steps": 2, "purify_nu": "0+1"}),
    "feature_gmm-wrn28_10-cifar100": (
        "feature_gmm", {"dataset": "cifar100", "arch": "wrn28_10"},
        feature_gmm_final_stage,
        {"gmm_components": "2+3", "purify_steps": 2, "purify_nu": "0+1"}),
    "failure_prediction-lenet-mnist": ("failure_prediction", {"arch": "lenet"},
                                       failure_prediction_final_stage,
                                       {"mc_passes": 3, "confidnet_epochs": 2}),
    "ood_baselines-cnn-fashionmnist": (
        "ood_baselines", {"dataset": "fashionmnist", "arch": "cnn"},
        ood_baselines_final_stage,
        {"energy_epochs": 1, "energy_batch_size": 8, "outlier_batch_size": 16}),
    "ood_baselines-godin_cnn-cifar10": (
        "ood_baselines", {"dataset": "cifar10", "arch": "godin_cnn"},
        ood_baselines_final_stage, {"energy_epochs": 0}),
    "vae_ood-gaussian-fashionmnist": (
        "vae_ood", {"dataset": "fashionmnist", "decoder": "gaussian"}, vae_final_stage,
        {"iwae_samples": "2+3", "svm_samples": 16}),
    "vae_ood-categorical-cifar10": (
        "vae_ood", {"dataset": "cifar10", "decoder": "categorical"}, vae_final_stage,
        {"iwae_samples": "2", "svm_samples": 16}),
    "alpha_flow-fashionmnist": ("alpha_flow", {"dataset": "fashionmnist"},
                                generative_final_stage, {}),
    "alpha_flow-cifar10": ("alpha_flow", {"dataset": "cifar10"},
                           generative_final_stage, {}),
    "alpha_diglm-mnist": ("alpha_diglm", {"dataset": "mnist"},
                          generative_final_stage, {}),
    "class_anomaly-gradcon-mnist": ("class_anomaly", {"dataset": "mnist", "method": "gradcon"},
                                    anomaly_final_stage, {"normal_class": 1}),
    "class_anomaly-ocgan-cifar10": ("class_anomaly", {"dataset": "cifar10", "method": "ocgan"},
                                    anomaly_final_stage, {"normal_class": 1}),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """MNIST, FashionMNIST (IDX), CIFAR-10 and CIFAR-100 (pickles), a few dozen images each,
    written as the real archives hold them."""
    root = tmp_path_factory.mktemp("data")
    write_idx(root, "MNIST", 400, seed=0)
    write_idx(root, "FashionMNIST", 400, seed=1)
    write_cifar(root, "cifar10", 400, seed=2)
    write_cifar(root, "cifar100", 1000, seed=3, test_n=100)
    return root


def paper_config(sweep: str, pick: dict, overrides: dict, data_dir) -> dict:
    """The config of the first trial of `sweep`'s paper grid that matches `pick`."""
    for config in get_search_space(sweep).profile("paper").trial_configs():
        if all(config.get(k) == v for k, v in pick.items()):
            return {**config, **overrides, "data_dir": str(data_dir), "seed": 0}
    raise AssertionError(f"no paper trial of {sweep} has {pick}")


def shrunk(data, train=16, val=24, other=8):
    """The dataset cut to a handful of inputs per split and OOD set (the model is not;
    `mahalanobis_lee` tunes on two halves of at least 20 validation inputs)."""
    return dataclasses.replace(
        data, x_train=data.x_train[:train], y_train=data.y_train[:train],
        x_val=data.x_val[:val], y_val=data.y_val[:val], x_test=data.x_test[:other],
        y_test=data.y_test[:other], ood={k: v[:other] for k, v in data.ood.items()})


def one_epoch(model, data, config, loop: str) -> None:
    """A short epoch (batches of 8) of the loop's own objective and optimizer."""
    torch.manual_seed(0)
    batch = 8
    if loop == "class_anomaly":
        optimizers = anomaly_optimizers(model, config)
        train_anomaly_epoch(model, optimizers, data.x_train, {**config, "batch_size": batch}, 0,
                            torch.device("cpu"))
        return
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    if loop == "vae_ood":
        objective = vae_objective(model, torch.Generator().manual_seed(0), config["beta"])
        train_epoch(model, optimizer, objective, data.x_train, data.y_train, batch, 0)
    elif loop == "generative":
        flow = model.flow if isinstance(model, DIGLM) else model
        objective = generative_objective(flow, torch.Generator().manual_seed(0),
                                               config["alpha"],
                                               config["beta"] if isinstance(model, DIGLM)
                                               else None)
        train_epoch(model, optimizer, objective, data.x_train, data.y_train, batch, 0)
    else:
        loss = classifier_loss(config["model"])
        train_one_epoch(model, optimizer, lambda z, t: loss(z, t, config["log_partition"]),
                        data.x_train, data.y_train, batch, 0)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_paper_model_runs_its_final_stage_and_is_left_as_found(case, data_dir):
    sweep, pick, final_stage, overrides = CASES[case]
    config = paper_config(sweep, pick, overrides, data_dir)
    loop = get_search_space(sweep).loop
    data = shrunk(load_trial_data(config))
    if loop == "class_anomaly":
        model = build_anomaly_model(config, data.input_shape)
    else:
        model = build_model(config, data)
    if hasattr(model, "standardize"):
        model.standardize.fit(data.x_train)
    one_epoch(model, data, config, loop)
    model.eval()  # as the loops hand a trained model to its final stage
    before = model_state(model)
    first, _ = final_stage(model, data, config)
    assert_model_unchanged(model, before)
    second, _ = final_stage(model, data, config)
    assert_model_unchanged(model, before)
    differ = {k: (v, second.get(k)) for k, v in first.items() if not _same(v, second.get(k))}
    assert not differ, f"{case}: a second final stage gave other metrics: {differ}"
    aurocs = [v for k, v in first.items() if k.startswith("auroc_")]
    assert aurocs and all(0.0 <= v <= 1.0 for v in aurocs), case


def test_every_paper_profile_has_a_case():
    """A new sweep's paper profile needs its case here (the sweeps whose loop is shared
    with another, e.g. lr_scaling's classifier CNN, are covered by that one's)."""
    covered = {sweep for sweep, *_ in CASES.values()}
    from search_spaces import sweep_names

    loops_covered = {get_search_space(s).loop for s in covered}
    for name in sweep_names():
        space = get_search_space(name)
        assert name in covered or space.loop in loops_covered, name
