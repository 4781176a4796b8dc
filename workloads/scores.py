"""OOD scores: small units with one interface, found through a registry (NOTES.md D, E).

A score is built by name with its parameters, fitted once on in-distribution training data
(a no-op for most), then called on inputs:

    score = build_score("mahalanobis").fit(model, x_train, y_train)
    values = score(model, x)          # shape (N,); higher means "more in-distribution"

Register new scores with `@register_score("name")` on an `OODScore` subclass. A score
declares what it `requires` of a model (`logits`, `features`, `dropout`, `log_prob`);
models declare what they `provides`, and `applicable_scores(model)` matches the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workloads.flows import approximate_mass
from workloads.losses import log_partition


class OODScore:
    """Base class: `fit` (optional) on ID training data, then `__call__(model, x)`.

    A score defines `forward(model, x)`: the score of one batch, differentiable in `x` (its
    graph kept), which is what an attack on the detector follows. `__call__` evaluates it
    over any number of inputs, in chunks, without a graph. A score with no differentiable
    form says why in `not_differentiable` and defines `__call__` itself.
    """

    name = ""
    requires: tuple[str, ...] = ("logits",)
    in_default_set = True  # part of "every applicable score"
    batch_size = 1024      # inputs per chunk in __call__
    not_differentiable: str | None = None

    def fit(self, model: nn.Module, x_train: torch.Tensor,
            y_train: torch.Tensor) -> OODScore:
        return self

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return _in_chunks(model, lambda batch: self.forward(model, batch), x, self.batch_size)


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


def capabilities(model: nn.Module) -> set[str]:
    """What `model` offers to scores: its declared `provides`, plus `dropout` when it has
    dropout layers. Undeclared models are taken as classifiers (`logits`)."""
    offered = set(getattr(model, "provides", ("logits",)))
    if any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules()):
        offered.add("dropout")
    return offered


def applicable_scores(model: nn.Module) -> list[str]:
    """Names of the default-set scores whose requirements `model` meets, in registry order."""
    offered = capabilities(model)
    return [name for name, cls in OOD_SCORES.items()
            if cls.in_default_set and set(cls.requires) <= offered]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _in_chunks(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
               x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`forward` over `x` in chunks on the model's device, in eval mode, back on the CPU."""
    device = _device(model)
    was_training = model.training
    model.eval()
    out = torch.cat([forward(x[i:i + batch_size].to(device)).float().cpu()
                     for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def batched_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits of `model` on `x`, in eval mode, computed in chunks on the model's device."""
    return _in_chunks(model, model, x, batch_size)


def penultimate_features(model: nn.Module, x: torch.Tensor,
                         batch_size: int = 1024) -> torch.Tensor:
    """The input of the model's final layer: `model.features(x)` (see workloads.models)."""
    if not hasattr(model, "features"):
        raise ValueError(f"{type(model).__name__} exposes no `features` (penultimate layer)")
    return _in_chunks(model, model.features, x, batch_size)


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


@register_score("msp")
class MaxSoftmaxProbability(OODScore):
    """Max softmax probability (MSP / MCP; Hendrycks & Gimpel 2017)."""

    def forward(self, model, x):
        return model(x).softmax(dim=1).max(dim=1).values


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


@register_score("mahalanobis")
class Mahalanobis(OODScore):
    """Max over classes of the negative Mahalanobis distance of penultimate features to the
    class means under a shared covariance (Lee et al. 2018; NOTES.md D, E). With
    `epsilon > 0`, inputs first take a step that raises the score (input preprocessing)."""

    requires = ("features",)

    def __init__(self, epsilon: float = 0.0, batch_size: int = 256):
        self.epsilon, self.batch_size = epsilon, batch_size
        self.means: torch.Tensor | None = None
        self.precision: torch.Tensor | None = None

    def fit(self, model, x_train, y_train):
        features = penultimate_features(model, x_train).double()
        classes = torch.unique(y_train)
        self.means = torch.stack([features[y_train == c].mean(0) for c in classes])
        centred = features - self.means[torch.searchsorted(classes, y_train)]
        covariance = centred.T @ centred / len(features)
        self.precision = torch.linalg.pinv(covariance, hermitian=True)
        return self

    def _score(self, features: torch.Tensor) -> torch.Tensor:
        means = self.means.to(features)
        precision = self.precision.to(features)
        diff = features[:, None, :] - means[None, :, :]  # (N, K, D)
        distances = torch.einsum("nkd,de,nke->nk", diff, precision, diff)
        return (-distances).max(dim=1).values

    def forward(self, model, x):
        if self.means is None:
            raise RuntimeError("Mahalanobis score used before fit()")

        def score(inputs):
            return self._score(model.features(inputs).double())

        return score(input_step(score, x, self.epsilon) if self.epsilon else x).float()


@register_score("mc_dropout")
class MCDropout(OODScore):
    """Monte-Carlo dropout (Gal & Ghahramani 2016; NOTES.md E): `passes` stochastic forward
    passes with dropout on; the score is the negated uncertainty `kind`:
    `variation_ratio` (1 - share of the modal prediction), `predictive_entropy` (entropy of
    the mean softmax) or `mutual_information` (predictive entropy - mean entropy)."""

    KINDS = ("variation_ratio", "predictive_entropy", "mutual_information")
    requires = ("logits", "dropout")
    not_differentiable = ("stochastic: each call draws new dropout masks (an attack would need "
                          "an expectation over masks), and the variation ratio counts votes")

    def __init__(self, kind: str = "predictive_entropy", passes: int = 20, seed: int = 0):
        if kind not in self.KINDS:
            raise ValueError(f"unknown MC-dropout kind '{kind}'; known: {', '.join(self.KINDS)}")
        self.kind, self.passes, self.seed = kind, passes, seed

    def __call__(self, model, x):
        dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        if not dropouts:
            raise ValueError(f"{type(model).__name__} has no dropout layers for MC dropout")
        device = _device(model)
        was_training = model.training
        model.eval()
        for layer in dropouts:
            layer.train()
        torch.manual_seed(self.seed)
        with torch.no_grad():
            probs = torch.stack([model(x.to(device)).softmax(dim=1).cpu()
                                 for _ in range(self.passes)])  # (T, N, K)
        model.train(was_training)
        mean = probs.mean(0)
        if self.kind == "variation_ratio":
            votes = F.one_hot(probs.argmax(2), probs.shape[2]).sum(0)
            uncertainty = 1.0 - votes.max(1).values.float() / self.passes
        else:
            entropy_of_mean = -(mean * mean.clamp_min(1e-12).log()).sum(1)
            uncertainty = entropy_of_mean
            if self.kind == "mutual_information":
                mean_entropy = -(probs * probs.clamp_min(1e-12).log()).sum(2).mean(0)
                uncertainty = entropy_of_mean - mean_entropy
        return -uncertainty


@register_score("gmm")
class FeatureGMM(OODScore):
    """Log density of penultimate features under a diagonal-covariance Gaussian mixture
    fitted by EM on ID training features, labels unused (NOTES.md D; K=100 for mistakes,
    1000 for OOD in the paper; small K suits small data). The mixture is scikit-learn's;
    the density is evaluated in torch (as sklearn's `score_samples`, in float64), so that
    it is differentiable in x."""

    requires = ("features",)

    def __init__(self, components: int = 10, seed: int = 0):
        self.components, self.seed = components, seed
        self.mixture = None

    def fit(self, model, x_train, y_train):
        from sklearn.mixture import GaussianMixture

        features = penultimate_features(model, x_train).numpy().astype(np.float64)
        self.mixture = GaussianMixture(self.components, covariance_type="diag",
                                       reg_covar=1e-4, random_state=self.seed).fit(features)
        return self

    def forward(self, model, x):
        if self.mixture is None:
            raise RuntimeError("GMM score used before fit()")
        f = model.features(x).double().flatten(1)
        means = torch.tensor(self.mixture.means_).to(f)            # (K, D)
        precisions = torch.tensor(self.mixture.precisions_).to(f)  # (K, D), 1 / var
        weights = torch.tensor(self.mixture.weights_).to(f)
        # sum_d prec (f - mu)^2, expanded into matrix products as sklearn does: (N, K)
        squared = (f ** 2) @ precisions.T - 2 * f @ (means * precisions).T \
            + (means ** 2 * precisions).sum(1)
        log_gauss = -0.5 * (f.shape[1] * math.log(2 * math.pi) + squared) \
            + 0.5 * precisions.log().sum(1)
        return torch.logsumexp(log_gauss + weights.log(), dim=1).float()


@register_score("log_px")
class LogLikelihood(OODScore):
    """log p(x) of a density model (flow, DIGLM), in nats; bits/dim = -log p(x) / (D ln 2)
    (+ a constant) ranks inputs identically, so it is not a separate score (NOTES.md B, E)."""

    requires = ("log_prob",)

    def __init__(self, batch_size: int = 512):
        self.batch_size = batch_size

    def forward(self, model, x):
        return model.log_prob(x)


@register_score("neg_am")
class NegativeApproximateMass(OODScore):
    """-AM(x) = -||grad_x log p(x)||_2 (NOTES.md B, eq. 3.32): AM is high off the data
    manifold, so its negation is higher in distribution. Differentiable in x by double
    backprop when x requires grad (`approximate_mass(..., differentiable_in_x=True)`)."""

    requires = ("log_prob",)

    def __init__(self, batch_size: int = 256):
        self.batch_size = batch_size

    def forward(self, model, x):
        return -approximate_mass(model.log_prob, x, differentiable_in_x=x.requires_grad)


def mann_whitney(scores_correct: np.ndarray, scores_wrong: np.ndarray) -> dict[str, float]:
    """One-sided Mann-Whitney U test that correct predictions score higher than wrong ones
    (NOTES.md D): the U statistic, its p-value, and U / (n1 n2) (= AUROC of the separation)."""
    from scipy.stats import mannwhitneyu

    scores_correct = np.asarray(scores_correct, dtype=np.float64).ravel()
    scores_wrong = np.asarray(scores_wrong, dtype=np.float64).ravel()
    result = mannwhitneyu(scores_correct, scores_wrong, alternative="greater")
    return {"u": float(result.statistic), "p_value": float(result.pvalue),
            "auroc": float(result.statistic) / (len(scores_correct) * len(scores_wrong))}
