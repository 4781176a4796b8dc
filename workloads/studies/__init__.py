"""One module per study: its train loop and its evaluation, plain PyTorch. A module that
defines `LOOP` (an `EpochLoop` class, or a factory `(config, worker) -> EpochLoop`) is a
loop a search space names by the module's name (`SearchSpace.loop`); the epoch driver
(`orchestrator.tune.epochs.run_epochs`) runs it. A module may also define `fit_scores`
(`(model, data, config, requested)` -> fitted scores) where its study fits scores its own
way (e.g. feature_gmm's "gmm": one GMM per K of `gmm_components`).

Adding a study is this module and its search space: nothing is registered by hand.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from types import ModuleType
from typing import Any

from workloads.evaluation.ood_evaluation import resolve_scores
from workloads.scores import OODScore, fit_score
from workloads.training.loop import EpochLoop, Worker


def _study_modules() -> dict[str, ModuleType]:
    return {info.name: importlib.import_module(f"{__name__}.{info.name}")
            for info in pkgutil.iter_modules(__path__)}


_MODULES = _study_modules()
# loop name (a search space's `loop`) -> (config, worker) -> the EpochLoop, built
LOOPS: dict[str, Callable[[dict[str, Any], Worker], EpochLoop]] = {
    name: module.LOOP for name, module in _MODULES.items() if hasattr(module, "LOOP")}
# loop name -> how its study fits the scores of a trial
SCORE_FITTERS: dict[str, Callable[..., dict[str, OODScore]]] = {
    name: module.fit_scores for name, module in _MODULES.items()
    if hasattr(module, "fit_scores")}


def loop_class(loop: str, config: dict[str, Any]) -> type[EpochLoop]:
    """The `EpochLoop` class a trial of `loop` with `config` runs (a `LOOP` is a class, a
    partial of one, or a factory that names its class as `loop_class(config)`)."""
    factory = LOOPS[loop]
    factory = getattr(factory, "func", factory)
    return factory if isinstance(factory, type) else factory.loop_class(config)


def fitted_scores(loop: str, model, data, config: dict[str, Any],
                  requested: str) -> dict[str, OODScore]:
    """The scores of `requested` (names joined by "+", or "all") for a trained model of
    `loop`'s trials, fitted as its study fits them (`SCORE_FITTERS`), else each with its
    registered defaults on its split."""
    if loop in SCORE_FITTERS:
        return SCORE_FITTERS[loop](model, data, config, requested)
    return {name: fit_score(name, params, model, data)
            for name, params in resolve_scores(model, requested).items()}
