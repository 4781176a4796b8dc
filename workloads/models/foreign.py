"""Any classifier as this project's models: a researcher's own `nn.Module` whose forward
returns logits (a torchvision ResNet, a model trained elsewhere), served to every detector
that it can serve.

The detectors read a model through a few parts (`workloads.scores`): `logits` = model(x);
`features` = the penultimate activations with `head` the final linear layer (logits =
head(features)); `feature_maps` (B x C x H x W) with `head_from_feature_maps` the rest of
the network. `ForeignClassifier` finds them without touching the model's code, by forward
hooks: `head` is the last `nn.Linear` the model calls (or the module named by `head=`),
`features` its input, and `feature_maps` the input of the global pooling module the model
calls before it. Each part is offered (`provides`) only where a probe batch shows that it
reproduces the model's own logits; where not, `unavailable` says why (e.g. a model that
scales its logits after the last layer, or pools with a function rather than a module).
"""

from __future__ import annotations

import torch
from torch import nn

from workloads.models.modes import evaluating

POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)
TOLERANCE = 1e-4  # relative: a part reproduces the logits to float32 rounding


class _InputOf(nn.Module):
    """`forward(x)`: the input the wrapped model gives `module` when it runs on x (the
    model's own forward, a forward pre-hook reading the argument). Holds the model without
    registering it (its parameters stay the wrapper's own, once)."""

    def __init__(self, model: nn.Module, module: nn.Module, flatten: bool):
        super().__init__()
        self._parts = (model, module)
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model, module = self._parts
        seen: list[torch.Tensor] = []
        handle = module.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        try:
            model(x)
        finally:
            handle.remove()
        if not seen:
            raise RuntimeError("the model did not call the module whose input is read")
        return seen[-1].flatten(1) if self.flatten else seen[-1]


class _PoolThenHead(nn.Module):
    """head(flatten(pool(maps))): the network after its feature maps."""

    def __init__(self, pool: nn.Module, head: nn.Module):
        super().__init__()
        self._parts = (pool, head)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        pool, head = self._parts
        return head(pool(maps).flatten(1))


def _called_in_order(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """The leaf modules of `model` in the order its forward on x calls them."""
    names = {module: name for name, module in model.named_modules()}
    order: list[nn.Module] = []
    handles = [module.register_forward_pre_hook(lambda m, _: order.append(m))
               for module in model.modules() if not list(module.children())]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return [(names[m], m) for m in order]


def _reproduces(logits: torch.Tensor, other: torch.Tensor) -> bool:
    scale = logits.abs().max().clamp_min(1.0)
    return logits.shape == other.shape and bool(((logits - other).abs() <= TOLERANCE * scale).all())


class ForeignClassifier(nn.Module):
    """`model` (any nn.Module returning logits) with the parts the detectors read, found on
    `probe` (a small batch of its inputs); `head`: the name of its final linear layer when it
    is not the last `nn.Linear` the model calls."""

    def __init__(self, model: nn.Module, probe: torch.Tensor, head: str | None = None):
        super().__init__()
        self.model = model
        self.unavailable: dict[str, str] = {}
        provides = ["logits"]
        with evaluating(model), torch.no_grad():
            logits = model(probe)
            if logits.dim() != 2:
                raise ValueError(f"the model returns a tensor of shape {tuple(logits.shape)}, "
                                 f"not logits (batch x classes)")
            self.num_logits = logits.shape[1]
            called = _called_in_order(model, probe)
            head_module = self._find_head(model, called, head)
            if head_module is not None:
                features = _InputOf(model, head_module, flatten=False)(probe)
                if features.dim() != 2:
                    self.unavailable["features"] = (
                        f"the input of its last linear layer "
                        f"({self._name(model, head_module)}) has shape "
                        f"{tuple(features.shape)}, not batch x features")
                elif not _reproduces(logits, head_module(features)):
                    self.unavailable["features"] = (
                        f"the model changes the output of its last linear layer "
                        f"({self._name(model, head_module)}) before returning it")
                else:
                    self._head = (head_module,)  # not registered: its parameters once
                    self.features = _InputOf(model, head_module, flatten=True)
                    provides.append("features")
            pool = self._find_pool(called, head_module)
            if "features" not in provides and "feature_maps" not in self.unavailable:
                self.unavailable["feature_maps"] = "needs the features, which it does not serve"
            if head_module is not None and "features" in provides:
                if pool is None:
                    self.unavailable["feature_maps"] = ("no pooling module is called before "
                                                        "the last linear layer")
                else:
                    self.feature_maps = _InputOf(model, pool, flatten=False)
                    self.head_from_feature_maps = _PoolThenHead(pool, head_module)
                    maps = self.feature_maps(probe)
                    try:
                        rest = self.head_from_feature_maps(maps) if maps.dim() == 4 else None
                    except RuntimeError:  # shapes that do not chain: other layers between
                        rest = None
                    if rest is not None and _reproduces(logits, rest):
                        provides.append("feature_maps")
                    else:
                        self.unavailable["feature_maps"] = (
                            "pooling, flattening and the last linear layer do not give "
                            "the model's logits (other layers between them)")
        self.provides = tuple(provides)

    def _find_head(self, model: nn.Module, called, name: str | None) -> nn.Module | None:
        if name is not None:
            module = model.get_submodule(name)  # AttributeError names a missing module
            if not isinstance(module, nn.Linear):
                raise ValueError(f"head '{name}' is a {type(module).__name__}, not nn.Linear")
            if all(m is not module for _, m in called):
                raise ValueError(f"head '{name}' is not called by the model's forward")
            return module
        linears = [m for _, m in called if isinstance(m, nn.Linear)]
        if not linears:
            self.unavailable["features"] = "the model calls no nn.Linear layer"
            self.unavailable["feature_maps"] = self.unavailable["features"]
            return None
        return linears[-1]

    @staticmethod
    def _find_pool(called, head: nn.Module | None) -> nn.Module | None:
        modules = [m for _, m in called]
        if head is None or head not in modules:
            return None
        before = modules[:modules.index(head)]
        pools = [m for m in before if isinstance(m, POOLS)]
        return pools[-1] if pools else None

    @property
    def head(self) -> nn.Module:
        """The model's final linear layer (the detectors' `head`)."""
        if not hasattr(self, "_head"):
            raise AttributeError("the model has no final linear layer the detectors can use")
        return self._head[0]

    @staticmethod
    def _name(model: nn.Module, module: nn.Module) -> str:
        return next((n for n, m in model.named_modules() if m is module), "?")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
