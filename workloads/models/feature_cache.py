"""One forward pass per input for all the scores of an evaluation.

MSP, temperature-scaled MSP, max logit, Mahalanobis and every GMM each run the classifier
over the same training, validation, test and OOD inputs; on a DenseNet that is most of an
evaluation's time. `FeatureCache` wraps a classifier with `features` and `head` and keeps
`features(x)` for each input chunk it has seen (by the chunk's storage, shape and strides),
so each chunk goes through the network once. Only in eval mode and without gradients: an
input that requires grad, a model with any layer in train mode (MC dropout), or a pass inside
a `torch.func` transform, is always recomputed. Only chunks that are views of another tensor
(the scores' `x[i:i + batch]` of a dataset's tensors) are kept: a computed input (ODIN's
perturbed one) is not, so the cache holds no copies of inputs. Use it for the span of one
evaluation over inputs that stay alive and unchanged. The chunks are keyed as the scores hand
them to the model: on the CPU they are views of the dataset and repeat; on a GPU each chunk is
a fresh copy (not a view), so there the cache is bypassed: correct, but no faster (keying the
CPU chunk before the copy is left to do). A change to any parameter or buffer of the model
(an optimizer step, loaded weights, batch-norm statistics updated by a pass in train mode)
empties the cache, so a cache that outlives such a change still answers for the model as it is.
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureCache(nn.Module):
    """`model` with `features(x)` remembered per input chunk; `forward` = head(features).

    The wrapper has no mode of its own: `training` is the wrapped model's, and `train(mode)`
    / `eval()` set the wrapped model's modules (as on the model itself)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.provides = getattr(model, "provides", ("logits", "features"))
        # key -> (the input, its features); holding the input keeps its memory from being
        # reused by another tensor that would then share its key
        self._features: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._state = self._model_state()  # the model the cached features are of
        self.hits = self.misses = 0

    @property
    def head(self) -> nn.Module:
        """The wrapped model's final layer (not registered a second time: `torch.func`'s
        `functional_call`, which GradNorm uses, swaps a module's parameters by one name and
        would leave the other name's copy swapped)."""
        return self.model.head

    @property
    def training(self) -> bool:
        model = self.__dict__.get("_modules", {}).get("model")
        return model.training if model is not None else False

    @training.setter
    def training(self, mode: bool) -> None:
        """Ignored: `nn.Module.train(mode)` sets this flag, then those of the children, the
        wrapped model's modules, which hold the mode."""

    @staticmethod
    def _key(x: torch.Tensor) -> tuple:
        return (x.device, x.dtype, x.data_ptr(), tuple(x.shape), x.stride(), x._version)

    def _cacheable(self, x: torch.Tensor) -> bool:
        """Plain evaluation of a view: no graph, no layer in train mode (MC dropout), not
        inside a `torch.func` transform (GradNorm's per-example gradients swap the
        parameters for wrapped ones: their features must not outlive the transform)."""
        return not (x.requires_grad or torch.is_grad_enabled() or x._base is None
                    or torch._C._functorch.maybe_current_level() is not None
                    or any(m.training for m in self.model.modules()))

    def _model_state(self) -> tuple:
        """Which tensors hold the model's parameters and buffers, and how often each was
        changed in place (`_version`: optimizer steps, `load_state_dict`, BN statistics)."""
        return tuple((t.data_ptr(), t._version) for t in (*self.model.parameters(),
                                                          *self.model.buffers()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if not self._cacheable(x):
            return self.model.features(x)
        state = self._model_state()
        if state != self._state:  # the model changed: its cached features are stale
            self._features.clear()
            self._state = state
        key = self._key(x)
        if key not in self._features:
            self.misses += 1
            self._features[key] = (x, self.model.features(x))
        else:
            self.hits += 1
        return self._features[key][1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.feature_maps(x)

    def head_from_feature_maps(self, maps: torch.Tensor) -> torch.Tensor:
        return self.model.head_from_feature_maps(maps)


def feature_cached(model: nn.Module) -> FeatureCache:
    """`model` with a feature cache: itself if it already is one (a caller that wrapped it
    shares its cache with the callee), a new `FeatureCache` otherwise."""
    return model if isinstance(model, FeatureCache) else FeatureCache(model)


def unwrapped(model: nn.Module) -> nn.Module:
    """The classifier behind a `FeatureCache` (the model itself otherwise)."""
    while isinstance(model, FeatureCache):
        model = model.model
    return model
