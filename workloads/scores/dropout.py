"""Monte-Carlo dropout uncertainty as a score (NOTES.md E; document 001, NOTES.md G).

The three uncertainties of NOTES.md E -- variation ratio, predictive entropy, mutual
information -- are read off the same T stochastic passes. A study asks for them as three
`mc_dropout` scores of different `kind` (`workloads.studies.failure_prediction`: `mc_dropout_vr`,
`_entropy`, `_mi`), each called on the same inputs. The passes over one input set are drawn
once and all three uncertainties derived from them; they are kept in `PASSES`, which the
three scores share: the second and third kind run no forward pass (T passes per input set
for all three, not 3T; the same numbers, the masks being seeded the same way).

The masks come from the default generator of the model's device (`nn.Dropout` takes no
generator of its own), seeded with the score's `seed` inside `torch.random.fork_rng`: the
score is reproducible and the caller's global RNG is left where it was.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workloads.models.modes import dropout_layers, evaluating
from workloads.scores.base import OODScore, _device, register_score

KINDS = ("variation_ratio", "predictive_entropy", "mutual_information")


def uncertainties(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each kind of MC-dropout uncertainty (NOTES.md E) from the softmax outputs `probs` of
    T passes, shape (T, N, K): `variation_ratio` (1 - share of the modal prediction),
    `predictive_entropy` (entropy of the mean softmax), `mutual_information` (predictive
    entropy - mean entropy of the passes)."""
    passes, classes = probs.shape[0], probs.shape[2]
    votes = F.one_hot(probs.argmax(2), classes).sum(0)
    mean = probs.mean(0)
    entropy_of_mean = -(mean * mean.clamp_min(1e-12).log()).sum(1)
    mean_entropy = -(probs * probs.clamp_min(1e-12).log()).sum(2).mean(0)
    return {"variation_ratio": 1.0 - votes.max(1).values.float() / passes,
            "predictive_entropy": entropy_of_mean,
            "mutual_information": entropy_of_mean - mean_entropy}


def _seed_device(device: torch.device, seed: int) -> None:
    """Seed the generators dropout draws from on `device` (the CPU's, and the device's own),
    and no other: `torch.manual_seed` would also (lazily) reseed every CUDA device."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    elif device.type != "cpu":
        torch.get_device_module(device.type).manual_seed(seed)


def sample_passes(model: nn.Module, x: torch.Tensor, passes: int, seed: int) -> torch.Tensor:
    """Softmax outputs (T, N, K), on the CPU, of `passes` forward passes of `model` over all
    of `x` with its dropout layers on and every other module in eval mode (batch norm on its
    running statistics; `evaluating`). The masks are drawn from the device's default
    generator seeded with `seed` under `fork_rng`: the caller's RNG state is put back."""
    dropouts = dropout_layers(model)
    if not dropouts:
        raise ValueError(f"{type(model).__name__} has no dropout layers for MC dropout")
    device = _device(model)
    accelerator = device.type != "cpu"
    with torch.random.fork_rng(devices=[device] if accelerator else [],
                               device_type=device.type if accelerator else None):
        _seed_device(device, seed)
        with torch.no_grad(), evaluating(model, train=dropouts):  # batch norm stays in eval
            return torch.stack([model(x.to(device)).softmax(dim=1).cpu()
                                for _ in range(passes)])


@dataclass
class _Entry:
    """One input set's uncertainties, and what they are of: the model and the tensor that
    owns the inputs' memory (weakly: a dead one voids the entry), the model's parameters and
    buffers (which tensors, how often changed in place) and its dropout rates."""

    model: weakref.ref
    owner: weakref.ref
    state: tuple
    values: dict[str, torch.Tensor]


class PassCache:
    """The MC-dropout uncertainties of the last `size` (model, inputs, passes, seed), shared
    by every `MCDropout`: the kinds asked for on the same inputs draw the passes once.

    Inputs are keyed as `FeatureCache` keys its chunks: by the tensor's device, dtype, data
    pointer, shape, strides and version (an in-place change bumps it); the entry holds weak
    references only (no input, model or pass is kept alive: each entry is 3 x N floats)."""

    def __init__(self, size: int = 16):
        self.size = size
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def _state(model: nn.Module) -> tuple:
        tensors = (*model.parameters(), *model.buffers())
        return (tuple((t.data_ptr(), t._version) for t in tensors),
                tuple(m.p for m in dropout_layers(model)))

    def of(self, model: nn.Module, x: torch.Tensor, passes: int,
           seed: int) -> dict[str, torch.Tensor]:
        """Every kind's uncertainty of `model` on `x` (`uncertainties` of `sample_passes`),
        drawn once per (model as it is, inputs as they are, passes, seed)."""
        owner = x if x._base is None else x._base
        key = (id(model), id(owner), x.device, x.dtype, x.data_ptr(), tuple(x.shape),
               x.stride(), x._version, passes, seed)
        state = self._state(model)
        entry = self._entries.get(key)
        if (entry is not None and entry.model() is model and entry.owner() is owner
                and entry.state == state):
            self.hits += 1
            self._entries.move_to_end(key)
            return entry.values
        self.misses += 1
        values = uncertainties(sample_passes(model, x, passes, seed))
        self._entries[key] = _Entry(weakref.ref(model), weakref.ref(owner), state, values)
        self._entries.move_to_end(key)
        for stale in [k for k, e in self._entries.items()
                      if e.model() is None or e.owner() is None]:
            del self._entries[stale]
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return values

    def clear(self) -> None:
        self._entries.clear()


PASSES = PassCache()


@register_score("mc_dropout")
class MCDropout(OODScore):
    """Monte-Carlo dropout (Gal & Ghahramani 2016; NOTES.md E): `passes` stochastic forward
    passes with dropout on; the score is the negated uncertainty `kind`:
    `variation_ratio` (1 - share of the modal prediction), `predictive_entropy` (entropy of
    the mean softmax) or `mutual_information` (predictive entropy - mean entropy). The
    passes are drawn once per input set for every kind (`PASSES`), seeded with `seed`
    without moving the caller's RNG."""

    KINDS = KINDS
    requires = ("logits", "dropout")
    not_differentiable = ("stochastic: each call draws new dropout masks (an attack would need "
                          "an expectation over masks), and the variation ratio counts votes")

    def __init__(self, kind: str = "predictive_entropy", passes: int = 20, seed: int = 0):
        if kind not in self.KINDS:
            raise ValueError(f"unknown MC-dropout kind '{kind}'; known: {', '.join(self.KINDS)}")
        self.kind, self.passes, self.seed = kind, passes, seed

    def __call__(self, model, x):
        return -PASSES.of(model, x, self.passes, self.seed)[self.kind]
