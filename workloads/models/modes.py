"""Train / eval modes for the span of a computation, put back module by module as found.

`model.train(flag)` sets the flag of *every* submodule, so restoring a saved `model.training`
that way overwrites the modes of submodules that differed from the root: a wrapper
(`FeatureCache`) in train mode around a classifier in eval mode, or a classifier in eval mode
with its dropout layers in train mode (MC dropout). Once batch norm is left in train mode,
every later forward pass normalises with batch statistics and overwrites the running ones;
dropout stays on. Evaluation code therefore saves each module's own flag and puts each back:

    with evaluating(model):                      # every module in eval mode
        logits = model(x)
    with evaluating(model, train=dropouts):      # eval, except the given layers
        samples = [model(x) for _ in range(passes)]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from torch import nn


def module_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Each module of `model` (the root first) with its own `training` flag."""
    return [(module, module.training) for module in model.modules()]


def restore_modes(saved: list[tuple[nn.Module, bool]]) -> None:
    """Put back the flags `module_modes` saved, each on its own module (never recursively)."""
    for module, flag in saved:
        module.training = flag


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """The dropout layers of `model` (what MC dropout and ConfidNet's training turn on)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


@contextlib.contextmanager
def evaluating(model: nn.Module, train: Iterable[nn.Module] = ()) -> Iterator[nn.Module]:
    """Within the block, `model` is in eval mode except the modules of `train` (e.g. its
    dropout layers, for MC dropout); afterwards every module has the flag it had before."""
    saved = module_modes(model)
    try:
        model.eval()
        for module in train:
            module.train()
        yield model
    finally:
        restore_modes(saved)
