"""Models by config: what a trial of a sweep trains, and what a job rebuilds from its
checkpoint. A config with `model` = `flow` or `diglm` gives a generative model (its `flow`
body and pixel preprocessing keys, NOTES.md B, C); any other `model` (`ffn`, `gffn`: the loss,
not the network) gives the classifier `arch`."""

from __future__ import annotations

from typing import Any

from torch import nn

from workloads.data.datasets import Dataset
from workloads.models.classifiers import CLASSIFIERS, build_classifier
from workloads.models.diglm import DIGLM
from workloads.models.flows.density import Flow
from workloads.models.flows.presets import build_flow

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


def build_model(config: dict[str, Any], data: Dataset) -> nn.Module:
    """The untrained model of a trial's `config` for `data`."""
    if config["model"] in GENERATIVE_MODELS:
        return build_generative_model(config, data.input_shape, data.levels, data.num_classes)
    return build_classifier(config["arch"], data.input_shape, data.num_classes)


def model_provides(config: dict[str, Any]) -> tuple[str, ...]:
    """What the model of a trial's `config` offers to OOD scores (its class's `provides`),
    known without building it or reading data."""
    if config["model"] in GENERATIVE_MODELS:
        return (Flow if config["model"] == "flow" else DIGLM).provides
    return CLASSIFIERS[config["arch"]].provides
