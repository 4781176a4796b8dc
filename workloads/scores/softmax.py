"""Scores on a classifier's logits (NOTES.md E): MSP, temperature-scaled MSP, max logit,
energy, ln Z, ODIN."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workloads.evaluation.temperature import fit_temperature
from workloads.scores.base import OODScore, batched_logits, input_step, register_score
from workloads.training.losses import log_partition


@register_score("msp")
class MaxSoftmaxProbability(OODScore):
    """Max softmax probability (MSP / MCP; Hendrycks & Gimpel 2017)."""

    def forward(self, model, x):
        return model(x).softmax(dim=1).max(dim=1).values


@register_score("msp_calibrated")
class CalibratedMSP(OODScore):
    """MSP after temperature scaling (Guo et al. 2017): max_k softmax(f(x) / T)_k with T
    fitted on the validation split's NLL (`workloads.evaluation.temperature`); the "calibrated MSP"
    baseline of document 003 (NOTES.md D). Asked for by name."""

    in_default_set = False
    fit_split = "validation"

    def __init__(self):
        self.temperature: float | None = None

    def fit(self, model, x_val, y_val):
        self.temperature = fit_temperature(batched_logits(model, x_val), y_val)
        return self

    def forward(self, model, x):
        if self.temperature is None:
            raise RuntimeError("msp_calibrated must be fitted on validation data first")
        return (model(x) / self.temperature).softmax(dim=1).max(dim=1).values


@register_score("godin")
class GeneralizedODIN(OODScore):
    """Generalized ODIN (Hsu et al. 2020; thesis section 3.3.2, eq. 3.7-3.8): S(x) =
    max_i h_i(x), the class term of a `workloads.models.godin` head, after the input step
    x~ = x - eps sign(-grad_x S(x)); eps is the value of `eps_grid` (the paper's six) that
    maximizes the mean S over the validation inputs, no OOD data needed."""

    requires = ("godin",)
    in_default_set = False
    fit_split = "validation"
    EPS_GRID = (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08)

    def __init__(self, eps_grid: tuple[float, ...] = EPS_GRID, batch_size: int = 256):
        self.eps_grid, self.batch_size = tuple(eps_grid), batch_size
        self.epsilon: float | None = None
        self.validation_means: dict[float, float] = {}

    @staticmethod
    def _max_h(model, inputs):
        return model.head.h(model.features(inputs)).max(dim=1).values

    def _stepped(self, model, x, epsilon):
        def objective(inputs):
            return self._max_h(model, inputs)

        return self._max_h(model, input_step(objective, x, epsilon))

    def fit(self, model, x_val, y_val):
        for epsilon in self.eps_grid:
            self.epsilon = epsilon
            self.validation_means[epsilon] = self(model, x_val).double().mean().item()
        self.epsilon = max(self.validation_means, key=self.validation_means.get)
        return self

    def forward(self, model, x):
        if self.epsilon is None:
            raise RuntimeError("godin must be fitted on validation data first (it picks eps)")
        return self._stepped(model, x, self.epsilon)


@register_score("max_logit")
class MaxLogit(OODScore):
    """The largest logit (Hendrycks et al. 2022; NOTES.md D baseline)."""

    def forward(self, model, x):
        return model(x).max(dim=1).values


@register_score("energy")
class NegativeEnergy(OODScore):
    """-E(x) = T * logsumexp(f(x) / T) (Liu et al. 2020; NOTES.md E)."""

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def forward(self, model, x):
        t = self.temperature
        return t * torch.logsumexp(model(x) / t, dim=1)


@register_score("lnz")
class LogPartition(OODScore):
    """ln Z(x), the GFFN's unnormalized log p(x) (NOTES.md A). For other models it equals
    the energy score at T = 1, so it is asked for by name rather than in the default set."""

    in_default_set = False

    def __init__(self, kind: str = "logsumexp"):
        self.kind = kind

    def forward(self, model, x):
        return log_partition(model(x), self.kind)


@register_score("odin")
class ODIN(OODScore):
    """ODIN (Liang et al. 2018): temperature-scaled MSP after a small input step that
    raises it, x' = x - eps * sign(-grad_x log max_k softmax(f(x)/T)_k). Attacks
    differentiate through the step with its sign held fixed (`input_step`)."""

    def __init__(self, temperature: float = 1000.0, epsilon: float = 0.0014,
                 batch_size: int = 256):
        self.temperature, self.epsilon, self.batch_size = temperature, epsilon, batch_size

    def forward(self, model, x):
        # log MSP at temperature T is what the step raises; its exp is the score
        def log_msp(inputs):
            return F.log_softmax(model(inputs) / self.temperature, dim=1).max(dim=1).values

        return log_msp(input_step(log_msp, x, self.epsilon)).exp()
