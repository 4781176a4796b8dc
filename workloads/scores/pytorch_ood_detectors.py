"""The post-hoc detectors of pytorch-ood (Kirchheim et al. 2022, Apache 2.0) as our scores.

pytorch-ood implements 30+ OOD detectors in PyTorch; this module puts those that work on a
trained classifier (no outlier exposure, no text encoder) behind our interface through one
adapter, `PytorchOODScore`:

    score = build_score("vim").fit(model, x_train, y_train)
    values = score(model, x)      # higher = more in-distribution (pytorch-ood's score negated)

Each registration below names the pytorch-ood class, what of our model its constructor takes
(by its parameter names: `model`, `encoder`, `head`, ...; resolved by `MODEL_PARTS`), what
the model must offer (`requires`, as for every score), and its default parameters; keyword
arguments of `build_score` override them. Where we have our own implementation (MSP, max
logit, energy, ODIN, Mahalanobis, GMM, MC dropout) it stays the registered one;
tests/test_pytorch_ood_scores.py checks ours against pytorch-ood's.

What a model offers (see `workloads.models`): `logits` = `model(x)`; `features` =
`model.features(x)`, the penultimate layer, with `model.head` the final linear layer
(logits = head(features)); `feature_maps` = `model.feature_maps(x)` (B x C x H x W) with
`model.head_from_feature_maps` the rest of the network.

Not adapted: MCM (needs a CLIP text encoder), WeightedEBO (needs learned weights),
OpenMax's Weibull fit is kept (`openmax`), Gram / MultiMahalanobis / NAC-UE (need lists of
layers: not yet), MCD (ours is `mc_dropout`), TemperatureScaling (fitted on validation NLL,
not an OOD detector of its own), GradUncertainty (not an OOD detector in its paper).

pytorch-ood scores without keeping a graph (it decorates `predict` with `torch.no_grad`), so
the adapted detectors are evaluated, not attacked (`not_differentiable`).

pytorch-ood is imported when a detector is first built, not with this module: importing it
pulls in torchvision and torch's compiler (~2 s), which every sweep driver and trial process
would otherwise pay at start-up, whether or not it asks for an adapted score.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workloads.models.modes import evaluating
from workloads.scores.base import OODScore, _device, register_score

if TYPE_CHECKING:
    import pytorch_ood.detector as pood

# pytorch-ood warns once per fit that it picked the CPU when no device was set; we set it.
logging.getLogger("pytorch_ood").setLevel(logging.ERROR)

MODEL_PARTS: dict[str, Callable[[nn.Module], Any]] = {
    "model": lambda model: model,
    "encoder": lambda model: model.features,
    "head": lambda model: model.head,
    "w": lambda model: model.head.weight.detach(),
    "b": lambda model: model.head.bias.detach(),
    "maps_backbone": lambda model: model.feature_maps,
    "maps_head": lambda model: model.head_from_feature_maps,
    "head_only": lambda model: _head_parameter_filter(model),
    "half_feature_dim": lambda model: model.head.in_features // 2,
}
"""What a detector's constructor can be given: a part of our model, or a value derived
from it."""


def _head_parameter_filter(model: nn.Module) -> Callable[[str], bool]:
    """Whether a parameter name of `model` is one of its final layer's: by identity, so
    that a wrapper's names (`FeatureCache`: `model.head.weight`) select it too."""
    head = {id(p) for p in model.head.parameters()}
    names = {name for name, p in model.named_parameters() if id(p) in head}
    return names.__contains__


class PytorchOODScore(OODScore):
    """A pytorch-ood detector on our model: built from the model's parts at `fit` (or at the
    first call, for a detector that needs no fitting), fitted on the ID training data in
    batches of `batch_size`, its outlier score negated."""

    detector_name: str           # the class's name in `pytorch_ood.detector`
    parts: dict[str, str] = {}   # constructor parameter -> MODEL_PARTS key
    defaults: dict[str, Any] = {}
    in_default_set = False       # asked for by name: `--set ood_scores=msp+vim+knn`
    not_differentiable = "pytorch-ood scores without a graph (torch.no_grad)"
    batch_size = 256

    def __init__(self, **params: Any):
        self.params = {**self.defaults, **params}
        self.detector: pood.Detector | None = None
        self._model_id: int | None = None

    @classmethod
    def detector_class(cls) -> type[pood.Detector]:
        """pytorch-ood's class (imported on first use)."""
        return getattr(importlib.import_module("pytorch_ood.detector"), cls.detector_name)

    def _build(self, model: nn.Module) -> pood.Detector:
        parts = {name: MODEL_PARTS[part](model) for name, part in self.parts.items()}
        self.detector = self.detector_class()(**parts, **self.params)
        self._model_id = id(model)
        return self.detector

    def fit(self, model: nn.Module, x_train: torch.Tensor,
            y_train: torch.Tensor) -> PytorchOODScore:
        detector = self._build(model)
        loader = DataLoader(TensorDataset(x_train, y_train), batch_size=self.batch_size)
        with torch.no_grad(), evaluating(model):
            detector.fit(loader)
        return self

    def __call__(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.detector is None or self._model_id != id(model):
            if self.detector_class().requires_fit:
                raise RuntimeError(f"score '{self.name}' must be fitted on the model first")
            self._build(model)
        device = _device(model)
        with evaluating(model):
            scores = [-self.detector.predict(x[i:i + self.batch_size].to(device)).detach().cpu()
                      for i in range(0, len(x), self.batch_size)]
        return torch.cat(scores)


def adapt(name: str, detector_name: str, parts: dict[str, str],
          requires: tuple[str, ...], **defaults: Any) -> type[PytorchOODScore]:
    """Register pytorch-ood's detector class `detector_name` as score `name`."""
    cls = type(detector_name, (PytorchOODScore,), {
        "__doc__": f"pytorch-ood's {detector_name} (`pytorch_ood.detector.{detector_name}`).",
        "__module__": __name__, "detector_name": detector_name, "parts": parts,
        "requires": requires, "defaults": defaults})
    return register_score(name)(cls)


MODEL = {"model": "model"}
ENCODER = {"encoder": "encoder"}
ENCODER_HEAD = {"encoder": "encoder", "head": "head"}
FEATURES_HEAD = {"backbone": "encoder", "head": "head"}   # penultimate features as "maps"
MAPS_HEAD = {"backbone": "maps_backbone", "head": "maps_head"}

# On logits.
adapt("entropy", "Entropy", MODEL, ("logits",))
adapt("gen", "GEN", MODEL, ("logits",))
adapt("kl_matching", "KLMatching", MODEL, ("logits",))
adapt("openmax", "OpenMax", MODEL, ("logits",))
# Gradients of the last layer's weights, as in Huang et al. (2021).
adapt("gradnorm", "GradNorm", {**MODEL, "param_filter": "head_only"}, ("features",))
# On penultimate features (and the final layer).
adapt("knn", "KNN", ENCODER, ("features",))
adapt("rmd", "RMD", ENCODER, ("features",))
adapt("vim", "ViM", {**ENCODER, "w": "w", "b": "b", "d": "half_feature_dim"},
      ("features",))
adapt("dice", "DICE", {**ENCODER, "w": "w", "b": "b"}, ("features",), p=0.7)
adapt("she", "SHE", ENCODER_HEAD, ("features",))
adapt("nnguide", "NNGuide", ENCODER_HEAD, ("features",))
adapt("nci", "NCI", ENCODER_HEAD, ("features",))
adapt("pnml", "PNML", ENCODER_HEAD, ("features",))
adapt("fdbd", "fDBD", ENCODER_HEAD, ("features",))
adapt("lts", "LTS", ENCODER_HEAD, ("features",))
# Activation shaping: ReAct and VRA clip the penultimate activations, as in their papers.
adapt("react", "ReAct", FEATURES_HEAD, ("features",))
adapt("vra", "VRA", FEATURES_HEAD, ("features",))
# On convolutional feature maps.
adapt("ash", "ASH", MAPS_HEAD, ("feature_maps",))
adapt("scale", "SCALE", MAPS_HEAD, ("feature_maps",))
adapt("rankfeat", "RankFeat", MAPS_HEAD, ("feature_maps",))
