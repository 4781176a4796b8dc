"""Models by config: what a trial of a sweep trains, and what a job rebuilds from its
checkpoint. A config with `model` = `flow` or `diglm` gives a generative model (its `flow`
body and pixel preprocessing keys, NOTES.md B, C); any other `model` (`ffn`, `gffn`: the loss,
not the network) gives the classifier `arch`."""

from __future__ import annotations

from typing import Any

from torch import nn

from workloads.data.dataset import Dataset
from workloads.models.classifiers import CLASSIFIERS, build_classifier
from workloads.models.diglm import DIGLM
from workloads.models.flows.density import Flow
from workloads.models.flows.presets import build_flow
from workloads.models.gradcon import GradConAE
from workloads.models.ocgan import OCGAN
from workloads.models.vae import ConvVAE

GENERATIVE_MODELS = ("flow", "diglm")


def build_generative_model(config: dict[str, Any], input_shape: tuple[int, ...], levels: int,
                           num_classes: int) -> nn.Module:
    """The flow or DIGLM a trial of `config` trains (also used to reload its checkpoint)."""
    if config["flow"] == "vector":
        body = {"num_couplings": config["num_couplings"], "hidden": config["hidden"],
                "depth": config["depth"]}
    elif config.get("flow_preset"):
        body = {"preset": config["flow_preset"]}
    else:
        body = {"num_scales": config["num_scales"], "num_blocks": config["num_blocks"],
                "hidden": config["hidden"]}
    flow = build_flow(config["flow"], input_shape, levels, config["dequantization"],
                      config["logit_lambda"], **body)
    return flow if config["model"] == "flow" else DIGLM(flow, num_classes)


def build_vae(config: dict[str, Any], input_shape: tuple[int, ...], levels: int) -> ConvVAE:
    """The `ConvVAE` of a `vae_ood` trial (document 002): `decoder`, `latent_dim`, `hidden`."""
    return ConvVAE(input_shape, levels, latent_dim=config["latent_dim"], hidden=config["hidden"],
                   decoder=config["decoder"])


ANOMALY_METHODS = ("gradcon", "ocgan")


def build_anomaly_model(config: dict[str, Any], input_shape: tuple[int, ...],
                        ) -> GradConAE | OCGAN:
    """The class-anomaly baseline of a `class_anomaly` trial (NOTES.md G): `method` gradcon
    or ocgan, its conv `arch` (`conv_stacks.ARCHES`), OCGAN's `ocgan_latent_dim` and
    `ocgan_hidden`."""
    if config["method"] == "gradcon":
        return GradConAE(input_shape, config["arch"])
    if config["method"] == "ocgan":
        return OCGAN(input_shape, config["arch"], config["ocgan_latent_dim"],
                     config["ocgan_hidden"])
    raise ValueError(f"unknown class-anomaly method {config['method']!r}; known: "
                     f"{', '.join(ANOMALY_METHODS)}")


def build_model(config: dict[str, Any], data: Dataset) -> nn.Module:
    """The untrained model of a trial's `config` for `data`."""
    if config["model"] == "vae":
        return build_vae(config, data.input_shape, data.levels)
    if config["model"] in GENERATIVE_MODELS:
        return build_generative_model(config, data.input_shape, data.levels, data.num_classes)
    return build_classifier(config["arch"], data.input_shape, data.num_classes,
                            **classifier_options(config))


def classifier_options(config: dict[str, Any]) -> dict[str, Any]:
    """The classifier's size options a config sets: `width` (the MLP's hidden units, the
    CNN's dense units; `ood_baselines` matches parameter counts with it), when > 0."""
    return {"width": int(config["width"])} if config.get("width", 0) > 0 else {}


def model_provides(config: dict[str, Any]) -> tuple[str, ...]:
    """What the model of a trial's `config` offers to OOD scores (its class's `provides`),
    known without building it or reading data."""
    if config["model"] == "vae":
        return ConvVAE.provides
    if config["model"] in GENERATIVE_MODELS:
        return (Flow if config["model"] == "flow" else DIGLM).provides
    return CLASSIFIERS[config["arch"]].provides
