"""The OOD score interface, its registry, and the batching every score shares (NOTES.md D, E).

Register a score with `@register_score("name")` on an `OODScore` subclass in the module of
its family (`workloads.scores.softmax`, `.features`, `.density`, `.dropout`). A score
declares what it `requires` of a model (`logits`, `features`, `dropout`, `log_prob`); models
declare what they `provides`, and `applicable_scores(model)` matches the two.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from workloads.models.modes import dropout_layers, evaluating


class OODScore:
    """Base class: `fit` (optional) on ID training data, then `__call__(model, x)`.

    A score defines `forward(model, x)`: the score of one batch, differentiable in `x` (its
    graph kept), which is what an attack on the detector follows. `__call__` evaluates it
    over any number of inputs, in chunks, without a graph. A score with no differentiable
    form says why in `not_differentiable` and defines `__call__` itself.
    """

    name = ""
    requires: tuple[str, ...] = ("logits",)
    # the data `fit` takes: "train" (x_train, y_train), "validation" (held-out data in their
    # place), or "train+validation" (both: fit(model, x_train, y_train, x_val, y_val))
    fit_split = "train"
    in_default_set = True  # part of "every applicable score"
    batch_size: int | None = None  # inputs per chunk in __call__ (None: `eval_chunk`)
    not_differentiable: str | None = None

    def fit(self, model: nn.Module, x_train: torch.Tensor,
            y_train: torch.Tensor) -> OODScore:
        return self

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return _in_chunks(model, lambda batch: self.forward(model, batch), x,
                          self.batch_size or eval_chunk(model))


OOD_SCORES: dict[str, type[OODScore]] = {}


def register_score(name: str) -> Callable[[type[OODScore]], type[OODScore]]:
    def decorate(cls: type[OODScore]) -> type[OODScore]:
        if name in OOD_SCORES:
            raise ValueError(f"OOD score '{name}' is registered twice")
        cls.name = name
        OOD_SCORES[name] = cls
        return cls
    return decorate


def build_score(name: str, **params) -> OODScore:
    """An unfitted score by registry name, with its parameters."""
    if name not in OOD_SCORES:
        raise KeyError(f"unknown OOD score '{name}'; known: {', '.join(sorted(OOD_SCORES))}")
    return OOD_SCORES[name](**params)


FIT_SPLITS = ("train", "validation", "train+validation")


def fit_score(name: str, params: dict, model: nn.Module, data) -> OODScore:
    """Score `name` built with `params` and fitted on the split(s) of `data` (a
    `workloads.data.Dataset`) it declares in `fit_split`."""
    score = build_score(name, **params)
    if score.fit_split not in FIT_SPLITS:
        raise ValueError(f"score '{name}': fit_split {score.fit_split!r} is not one of "
                         f"{', '.join(FIT_SPLITS)}")
    if score.fit_split == "validation":
        return score.fit(model, data.x_val, data.y_val)
    if score.fit_split == "train+validation":
        return score.fit(model, data.x_train, data.y_train, data.x_val, data.y_val)
    return score.fit(model, data.x_train, data.y_train)


def fitted_score(name: str, spec: dict | OODScore, model: nn.Module, data) -> OODScore:
    """`spec` itself when it is an already fitted score (one fit serves several
    evaluations: a GMM of K = 1000 is costly), else `fit_score(name, spec, ...)`."""
    return spec if isinstance(spec, OODScore) else fit_score(name, spec, model, data)


def capabilities(model: nn.Module) -> set[str]:
    """What `model` offers to scores: its declared `provides`, plus `dropout` when it has
    dropout layers. Undeclared models are taken as classifiers (`logits`)."""
    offered = set(getattr(model, "provides", ("logits",)))
    if dropout_layers(model):
        offered.add("dropout")
    return offered


def applicable_scores(model: nn.Module) -> list[str]:
    """Names of the default-set scores whose requirements `model` meets, in registry order."""
    offered = capabilities(model)
    return [name for name, cls in OOD_SCORES.items()
            if cls.in_default_set and set(cls.requires) <= offered]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# Inputs per chunk of an evaluation without a graph. Large chunks keep an accelerator busy; on
# the CPU small ones are faster (1,024 CIFAR-sized inputs, 1 thread: DenseNet-BC-100 13.7 s in
# chunks of 32 against 32.4 s in chunks of 1,024; WRN-28-10 1.15x; benchmarks/
# bench_eval_chunk.py). The outputs agree up to float rounding (other kernel blocks).
ACCELERATOR_CHUNK, CPU_CHUNK = 1024, 32


def eval_chunk(model: nn.Module) -> int:
    """The default chunk of `batched_logits`, `penultimate_features` and a score's
    `__call__` on the model's device (the chunks a `FeatureCache` is keyed by)."""
    return CPU_CHUNK if _device(model).type == "cpu" else ACCELERATOR_CHUNK


@torch.no_grad()
def _in_chunks(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
               x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`forward` over `x` in chunks on the model's device, in eval mode, back on the CPU;
    every module's mode is left as it was (`workloads.models.modes`)."""
    device = _device(model)
    with evaluating(model):
        return torch.cat([forward(x[i:i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(x), batch_size)])


def batched_logits(model: nn.Module, x: torch.Tensor,
                   batch_size: int | None = None) -> torch.Tensor:
    """Logits of `model` on `x`, in eval mode, computed in chunks on the model's device
    (`eval_chunk` inputs each unless `batch_size` is given)."""
    return _in_chunks(model, model, x, batch_size or eval_chunk(model))


def penultimate_features(model: nn.Module, x: torch.Tensor,
                         batch_size: int | None = None) -> torch.Tensor:
    """The input of the model's final layer: `model.features(x)` (see workloads.models)."""
    if not hasattr(model, "features"):
        raise ValueError(f"{type(model).__name__} exposes no `features` (penultimate layer)")
    return _in_chunks(model, model.features, x, batch_size or eval_chunk(model))


def input_step(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
               epsilon: float) -> torch.Tensor:
    """The input preprocessing of ODIN / Mahalanobis: x + epsilon * sign(grad_x objective(x)),
    the step that raises `objective` (per example). The sign is a constant of x: gradients
    flow through the step as through the identity (what an attack on these scores follows,
    "BPDA" in Athalye et al. 2018)."""
    with torch.enable_grad():
        inputs = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(inputs).sum(), inputs)
    return x + epsilon * grad.sign()
