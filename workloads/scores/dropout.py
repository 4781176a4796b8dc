"""Monte-Carlo dropout uncertainty as a score (NOTES.md E; document 001, NOTES.md G).

The three uncertainties of NOTES.md E -- variation ratio, predictive entropy, mutual
information -- and ConfidNet's MC-dropout baseline are read off the same T stochastic
passes. A study asks for them as four `mc_dropout` scores of different `kind`
(`workloads.studies.failure_prediction`: `mc_dropout_vr`, `_entropy`, `_mi`, `_avg`), each
called on the same inputs. The passes over one input set are drawn once and every kind
derived from them; they are kept in `PASSES`, which the scores share: the later kinds run
no forward pass (T passes per input set for all four, not 4T; the same numbers, the masks
being seeded the same way).

The fourth kind, `averaged_prediction`, is the baseline as Corbière et al.'s code computes
it (github.com/valeoai/ConfidNet, confidnet/learners/default_learner.py, `evaluate` with
mode "mc_dropout"): the T passes' LOGITS averaged, the confidence the negative entropy of
the softmax of that average, sum_k p_k log(p_k + 1e-9), and the prediction its argmax. Their
`Metrics` (confidnet/utils/metrics.py) counts errors against that averaged prediction, not
the deterministic model's: the score says so (`predicts`, `predict`), and
`workloads.evaluation.mistake_detection.evaluate_mistakes` scores it against its own errors.

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

KINDS = ("variation_ratio", "predictive_entropy", "mutual_information")  # of the softmaxes
AVERAGED = "averaged_prediction"  # ConfidNet's code: of the mean logits, with its prediction
PREDICTION = "prediction"  # PassCache's key of the averaged prediction


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


def averaged_prediction(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ConfidNet's MC-dropout evaluation (confidnet/learners/default_learner.py, mode
    "mc_dropout") from the logits of T passes, shape (T, N, K): p = softmax(mean of the
    logits); the uncertainty -sum_k p_k log(p_k + 1e-9) (the entropy of p, their epsilon)
    and the prediction argmax_k p_k."""
    probs = F.softmax(logits.mean(0), dim=1)
    return -(probs * torch.log(probs + 1e-9)).sum(dim=1), probs.argmax(dim=1)


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
    return sample_logits_and_softmax(model, x, passes, seed)[1]


def sample_logits_and_softmax(model: nn.Module, x: torch.Tensor, passes: int,
                              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits and the softmax outputs (each (T, N, K), on the CPU) of the passes of
    `sample_passes`: the same passes, the softmax taken on the model's device as there."""
    dropouts = dropout_layers(model)
    if not dropouts:
        raise ValueError(f"{type(model).__name__} has no dropout layers for MC dropout")
    device = _device(model)
    accelerator = device.type != "cpu"
    with torch.random.fork_rng(devices=[device] if accelerator else [],
                               device_type=device.type if accelerator else None):
        _seed_device(device, seed)
        logits, probs = [], []
        with torch.no_grad(), evaluating(model, train=dropouts):  # batch norm stays in eval
            for _ in range(passes):
                out = model(x.to(device))
                logits.append(out.cpu())
                probs.append(out.softmax(dim=1).cpu())
    return torch.stack(logits), torch.stack(probs)


def pass_values(model: nn.Module, x: torch.Tensor, passes: int,
                seed: int) -> dict[str, torch.Tensor]:
    """Every kind's uncertainty (N,) of one draw of the passes, and under `PREDICTION` the
    averaged prediction (N,) of `averaged_prediction`."""
    logits, probs = sample_logits_and_softmax(model, x, passes, seed)
    entropy, prediction = averaged_prediction(logits)
    return {**uncertainties(probs), AVERAGED: entropy, PREDICTION: prediction}


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
    """The MC-dropout uncertainties (and averaged predictions) of the last `size` (model,
    inputs, passes, seed), shared by every `MCDropout`: the kinds asked for on the same
    inputs, and `predict`, draw the passes once.

    Inputs are keyed as `FeatureCache` keys its chunks: by the tensor's device, dtype, data
    pointer, shape, strides and version (an in-place change bumps it); the entry holds weak
    references only (no input, model or pass is kept alive: each entry is 5 x N numbers)."""

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
        """Every kind's uncertainty of `model` on `x`, and its averaged prediction
        (`pass_values`), drawn once per (model as it is, inputs as they are, passes, seed)."""
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
        values = pass_values(model, x, passes, seed)
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
    the mean softmax), `mutual_information` (predictive entropy - mean entropy), or
    `averaged_prediction` (ConfidNet's code: entropy of the softmax of the mean logits,
    `averaged_prediction`). The passes are drawn once per input set for every kind
    (`PASSES`), seeded with `seed` without moving the caller's RNG.

    `predict(model, x)` is the averaged prediction (argmax of the softmax of the mean
    logits) of the same passes; `predicts` is true for `averaged_prediction`, whose
    failures are that prediction's errors (as ConfidNet's code counts them), and false for
    the other kinds, evaluated against the deterministic model's errors."""

    KINDS = (*KINDS, AVERAGED)
    requires = ("logits", "dropout")
    not_differentiable = ("stochastic: each call draws new dropout masks (an attack would need "
                          "an expectation over masks), and the variation ratio counts votes")

    def __init__(self, kind: str = "predictive_entropy", passes: int = 20, seed: int = 0):
        if kind not in self.KINDS:
            raise ValueError(f"unknown MC-dropout kind '{kind}'; known: {', '.join(self.KINDS)}")
        self.kind, self.passes, self.seed = kind, passes, seed
        self.predicts = kind == AVERAGED

    def __call__(self, model, x):
        return -PASSES.of(model, x, self.passes, self.seed)[self.kind]

    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The averaged prediction (N,) of the passes this score's values come from."""
        return PASSES.of(model, x, self.passes, self.seed)[PREDICTION].clone()
