"""What `benchmarks/gpu_check.py` runs per model: every distinct model of the sweeps' `paper`
profiles (read from `search_spaces`, not listed by hand), how its loop trains it and which
final stage evaluates it, all through the sweeps' own code (`workloads.studies`,
`workloads.models.factory`).

A model is one (loop, architecture keys, input shape) of a paper grid: trials that differ
only in seed, batch size, learning rate, alpha, dataset of the same shape, ... train the same
network and share one check. Its batch sizes are the grid's smallest and largest.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from search_spaces import get_search_space, sweep_names
from workloads.models import DIGLM, build_generative_model, build_model, build_vae
from workloads.models.factory import build_anomaly_model
from workloads.models.flows import IMAGE_FLOW_PRESETS
from workloads.studies import LOOPS
from workloads.studies.class_anomaly import anomaly_final_stage
from workloads.studies.classifier import classifier_final_stage
from workloads.studies.generative import flow_of, generative_final_stage, generative_objective
from workloads.studies.vae_ood import vae_final_stage, vae_objective
from workloads.training.class_anomaly import anomaly_optimizers, train_anomaly_epoch
from workloads.training.epochs import (
    AUGMENTATIONS,
    classifier_optimizer,
    seeded_generator,
    train_epoch,
    train_one_epoch,
)
from workloads.training.losses import classifier_loss
from workloads.training.lr_scaling import scaled_lr

# The paper datasets as the loaders build them: input shape, classes, and the training
# split's size (`load_image_dataset` holds out 10% of the training files for validation;
# CelebA: its official training partition). Facts of the datasets, for the projections.
DATASETS: dict[str, tuple[tuple[int, int, int], int, int]] = {
    "mnist": ((1, 28, 28), 10, 54_000), "fashionmnist": ((1, 28, 28), 10, 54_000),
    "kmnist": ((1, 28, 28), 10, 54_000), "svhn": ((3, 32, 32), 10, 65_931),
    "cifar10": ((3, 32, 32), 10, 45_000), "cifar100": ((3, 32, 32), 100, 45_000),
    "celeba": ((3, 32, 32), 2, 162_770)}
LEVELS = 256  # 8-bit pixels

CLASSIFIER_LOOPS = ("classifier", "feature_gmm", "failure_prediction", "ood_baselines")
# The config keys that decide the network a loop trains (with the input shape).
MODEL_KEYS = {**dict.fromkeys(CLASSIFIER_LOOPS, ("arch", "width", "model")),
              "generative": ("model", "flow", "flow_preset", "num_couplings", "depth",
                             "num_scales", "num_blocks", "hidden"),
              "vae_ood": ("decoder", "hidden", "latent_dim"),
              "class_anomaly": ("method", "arch")}
SMALL_ARCHES = ("mlp", "cnn", "dropout_mlp", "godin_mlp", "godin_cnn")  # take `width`


@dataclass
class ModelSpec:
    """One paper model: its name, the sweeps that train it, its loop, one paper trial's
    config (`config`), and the datasets and batch sizes of its trials."""

    name: str
    sweeps: list[str]
    loop: str
    config: dict[str, Any]
    datasets: list[str]
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return DATASETS[self.config["dataset"]][0]

    @property
    def num_classes(self) -> int:
        return DATASETS[self.config["dataset"]][1]

    def train_size(self, dataset: str) -> int:
        """Training inputs of one epoch on `dataset` (class anomaly: about one class)."""
        _, classes, size = DATASETS[dataset]
        return size // classes if self.loop == "class_anomaly" else size


def _label(loop: str, config: dict[str, Any]) -> str:
    if loop in CLASSIFIER_LOOPS:
        parts = [config["arch"], config["model"] if config["model"] != "ffn" else "",
                 f"w{config['width']}" if config.get("width", 0) > 0 else ""]
        return "-".join(p for p in parts if p)
    if loop == "vae_ood":
        return f"vae-{config['decoder']}"
    if loop == "class_anomaly":
        return config["method"]
    return config["model"]


def paper_models() -> list[ModelSpec]:
    """Every distinct model of every sweep's paper profile, in sweep order. Of a model's
    trials, the one checked has the fewest classes (the same network, a cheaper final stage
    on little data) and an alpha > 0 where alpha is swept (the approximate-mass objective,
    double backprop)."""
    specs: dict[tuple, ModelSpec] = {}
    for sweep in sweep_names():
        space = get_search_space(sweep)
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for config in space.profile("paper").trial_configs():
            shape = DATASETS[config["dataset"]][0]
            key = (space.loop, shape, *(config.get(k) for k in MODEL_KEYS[space.loop]))
            groups.setdefault(key, []).append(config)
        for key, configs in groups.items():
            chosen = min(configs, key=lambda c: (DATASETS[c["dataset"]][1],
                                                 c.get("alpha", 1.0) <= 0))
            datasets = list(dict.fromkeys(c["dataset"] for c in configs))
            batches = sorted({int(c["batch_size"]) for c in configs})
            if key in specs:  # the same model in another sweep (lr_scaling's CNNs)
                spec = specs[key]
                spec.sweeps.append(sweep)
                spec.datasets = list(dict.fromkeys(spec.datasets + datasets))
                batches = sorted(set(spec.batch_sizes) | set(batches))
            else:
                spec = specs[key] = ModelSpec(
                    f"{sweep}/{_label(space.loop, chosen)}-{chosen['dataset']}", [sweep],
                    space.loop, chosen, datasets)
            spec.batch_sizes = sorted({batches[0], batches[-1]})
    return list(specs.values())


def dry_model_overrides(spec: ModelSpec) -> dict[str, Any]:
    """Config keys that shrink a model for the CPU dry run where its factory allows it (the
    CIFAR DenseNet, Wide ResNet, LeNet and the class-anomaly CAEs keep their size)."""
    config = spec.config
    if spec.loop in CLASSIFIER_LOOPS:
        return {"width": 16} if config["arch"] in SMALL_ARCHES else {}
    if spec.loop == "generative":
        if config["flow"] == "vector":
            return {"num_couplings": 2, "hidden": 8}
        scales = IMAGE_FLOW_PRESETS.get(config["flow_preset"], {}).get(
            "num_scales", config["num_scales"])
        return {"flow_preset": "", "num_scales": scales, "num_blocks": 1, "hidden": 8}
    if spec.loop == "vae_ood":
        return {"hidden": 8, "latent_dim": 4}
    if config["method"] == "ocgan":
        return {"ocgan_latent_dim": 4, "ocgan_hidden": 8}
    return {}


def final_overrides(spec: ModelSpec, dry: bool) -> dict[str, Any]:
    """Final-stage settings sized to the check's small data (a GMM needs fewer components
    than training inputs; a batch no larger than the split), and the training outlier set of
    energy fine-tuning drawn from the ID inputs (`shuffled_pixels`): no dataset files are
    read here. Everything else is the paper profile's."""
    config, out = spec.config, {}
    if "outlier_set" in config:
        out["outlier_set"] = "shuffled_pixels"
    if "gmm_components" in config:
        out["gmm_components"] = "2+3" if dry else "10+50"
    if dry:
        small = {"purify_steps": 2, "mc_passes": 2, "confidnet_epochs": 1, "energy_epochs": 1,
                 "energy_batch_size": 4, "outlier_batch_size": 4, "iwae_samples": "2+3",
                 "bn_batch": 4}
        out.update({k: v for k, v in small.items() if k in config})
        if spec.loop == "generative" and "gmm" in (config.get("score_params") or {}):
            out["score_params"] = {**config["score_params"], "gmm": {"components": 2}}
    return out


# --- training: the loops' own epoch functions ---------------------------------------------

Epoch = Callable[[torch.Tensor, torch.Tensor, int, int], float]  # (x, y, batch, epoch) -> loss


def build_trainer(spec: ModelSpec, config: dict[str, Any], x_fit: torch.Tensor,
                  device: torch.device) -> tuple[nn.Module, Callable[[int], Epoch]]:
    """The untrained model of `config` on `device`, built as its loop builds it, and
    `epoch_for(batch_size)`: one epoch of the loop's training over given inputs, with the
    loop's optimizer, schedule, objective and augmentation (`x_fit`: the inputs a model
    with a `standardize` layer takes its statistics from, as the loop does)."""
    shape, seed = spec.input_shape, config["seed"]
    if spec.loop in CLASSIFIER_LOOPS:
        data = _shape_only(spec)
        model = build_model(config, data)
        if hasattr(model, "standardize"):
            model.standardize.fit(x_fit)
        model = model.to(device)
        loss, kind = classifier_loss(config["model"]), config["log_partition"]
        augment = AUGMENTATIONS[config.get("augment", "none")]

        def classifier_epoch(batch: int) -> Epoch:
            lr = scaled_lr(config["lr"], batch, config["reference_batch_size"],
                           config["lr_scaling"])
            optimizer, scheduler = classifier_optimizer(model, config, lr)

            def run(x, y, b, epoch):
                stats = train_one_epoch(model, optimizer, lambda lg, t: loss(lg, t, kind), x, y,
                                        b, epoch, seed=seed, device=device, augment=augment)
                if scheduler is not None:
                    scheduler.step()
                return stats.loss
            return run
        return model, classifier_epoch
    if spec.loop == "generative":
        model = build_generative_model(config, shape, LEVELS, spec.num_classes).to(device)
        diglm = isinstance(model, DIGLM)
        optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"],
                                     weight_decay=config.get("weight_decay", 0.0))

        def run(x, y, b, epoch):
            objective = generative_objective(
                flow_of(model), seeded_generator(seed, epoch, 0), config["alpha"],
                config["beta"] if diglm else None)
            return train_epoch(model, optimizer, objective, x, y, b, epoch, seed=seed,
                               device=device, max_grad_norm=config.get("max_grad_norm")).loss
        return model, lambda batch: run
    if spec.loop == "vae_ood":
        model = build_vae(config, shape, LEVELS).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])

        def run_vae(x, y, b, epoch):
            objective = vae_objective(model, seeded_generator(seed, epoch, 0), config["beta"])
            return train_epoch(model, optimizer, objective, x, y, b, epoch, seed=seed,
                               device=device).loss
        return model, lambda batch: run_vae
    model = build_anomaly_model(config, shape).to(device)
    optimizers = anomaly_optimizers(model, config)

    def run_anomaly(x, y, b, epoch):
        return train_anomaly_epoch(model, optimizers, x, {**config, "batch_size": b}, epoch,
                                   device)["loss"]
    return model, lambda batch: run_anomaly


def _shape_only(spec: ModelSpec):
    """What `build_model` reads of a dataset: its input shape, classes and levels."""
    from workloads.data import Dataset

    empty = torch.zeros((0, *spec.input_shape))
    labels = torch.zeros(0, dtype=torch.long)
    return Dataset(spec.config["dataset"], empty, labels, empty, labels, empty, labels,
                   num_classes=spec.num_classes)


# --- final stages: what each loop runs on its trained model ---------------------------------

def final_stage(loop: str) -> Callable:
    """The final stage `loop` runs on its trained model (in eval mode, as every loop hands
    it over): the one its `LOOPS` entry is given (`ClassifierLoop`'s default,
    `classifier_final_stage`, otherwise), `vae_final_stage`, `generative_final_stage` or
    `anomaly_final_stage`."""
    if loop in CLASSIFIER_LOOPS:
        entry = LOOPS[loop]
        stage = entry.keywords.get("final_stage") if isinstance(entry, functools.partial) \
            else None
        return stage or classifier_final_stage
    return {"vae_ood": vae_final_stage, "generative": generative_final_stage,
            "class_anomaly": anomaly_final_stage}[loop]
