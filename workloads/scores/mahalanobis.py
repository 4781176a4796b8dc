"""Lee et al.'s Mahalanobis detector (NeurIPS 2018) in full: several layers, input
preprocessing, and a logistic regression over the layers, tuned on ID validation data and
FGSM adversarial examples of it (no OOD data). `mahalanobis` (`workloads.scores.features`)
stays the penultimate-only form without preprocessing (document 003's baseline).

Layers. A classifier names the modules whose outputs are its intermediate layers in
`feature_layers` (module names, `model.get_submodule`); they are read with forward hooks
during one pass of `model.features(x)`, 4-D maps averaged over space as in Lee et al.'s
`sample_estimator`, and the penultimate `features(x)` is always the last layer. A model
without `feature_layers` gives the penultimate layer only. `FeatureCache` is looked through
(its cache would skip the hooks).

The reference is github.com/pokaxpoka/deep_Mahalanobis_detector (`lib_generation.py`:
`sample_estimator`, `get_Mahalanobis_score`; `ADV_Samples.py`; `ADV_Regression.py`). As
there: per-layer spatial means; class means and the covariance of the class-centred
features over all N (their `EmpiricalCovariance`), its pseudo-inverse; the closest class on
the clean input and a step of eps down its distance; the max over classes at the stepped
input; their seven eps; `LogisticRegressionCV` with its defaults; the regression fitted on
half of the tuning pairs, eps chosen by AUROC on the other half (`ADV_Regression.py`).
Otherwise:
- M_l = -d, theirs -d / 2: a scale the layer weights absorb;
- sign(0) = 0 (torch.sign, `input_step`), theirs +1 (torch.ge): only where a gradient
  component is exactly 0;
- the regression sees each layer's scores standardized (their raw scores differ in scale
  by orders of magnitude), its weights mapped back to the raw scores;
- tuning pairs: every validation input and its FGSM example (their attack-detection runs
  keep only correctly classified inputs whose attack succeeds, and add Gaussian-noised
  inputs as positives; the OOD "validation on adversarial samples" has no published code,
  and the filter can leave a small validation split almost empty); FGSM clipped to [0, 1]
  (theirs to the normalized range's overall min and max);
- gradients pass straight through the steps (theirs are detached), for attacks;
- float64 distances.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from functools import partial

import numpy as np
import torch
from torch import nn

from workloads.adversarial.attacks import fgsm
from workloads.models.feature_cache import unwrapped
from workloads.models.modes import evaluating
from workloads.scores.base import OODScore, _device, input_step, register_score
from workloads.scores.features import Mahalanobis

PENULTIMATE = "features"  # the name of the last layer: the model's `features(x)`


def feature_layer_names(model: nn.Module) -> tuple[str, ...]:
    """The layers of `layer_features(model, x)`: the declared `feature_layers`, then the
    penultimate layer."""
    return (*getattr(unwrapped(model), "feature_layers", ()), PENULTIMATE)


def _pooled(output: torch.Tensor) -> torch.Tensor:
    """A layer's output as one vector per input: maps averaged over their spatial axes."""
    if output.dim() > 2:
        return output.flatten(2).mean(2)
    return output.flatten(1).clone()  # a copy: later in-place ops cannot change it


def _keep(captured: dict, name: str, module: nn.Module, inputs, output) -> None:
    captured[name] = _pooled(output)


@contextlib.contextmanager
def capturing(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, the output of each module of `names` (pooled) is kept, by name, at
    every forward pass; the hooks are removed on leaving, whatever happens."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            handles.append(model.get_submodule(name).register_forward_hook(
                partial(_keep, captured, name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def layer_features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The features of every layer of `feature_layer_names(model)` (each N x D_l), from one
    pass of `features(x)`; differentiable in `x`. The caller sets the mode (eval)."""
    inner = unwrapped(model)
    names = feature_layer_names(inner)[:-1]
    with capturing(inner, names) as captured:
        penultimate = inner.features(x)
    missing = [name for name in names if name not in captured]
    if missing:
        raise RuntimeError(f"{type(inner).__name__}.features(x) did not run its declared "
                           f"feature_layers {missing}")
    return [captured[name] for name in names] + [penultimate.flatten(1)]


class LayerGaussian:
    """One layer's class-conditional Gaussians with a tied covariance: the means and
    precision (pseudo-inverse) of `mahalanobis` (`Mahalanobis.fit_features`), kept as a
    whitening W with W W^T = precision, so that the distances are
    |f W - mu_c W|^2 = (f - mu_c)^T precision (f - mu_c) at O(N D^2 + N K D)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        fitted = Mahalanobis().fit_features(features, labels)
        self.means, self.precision = fitted.means, fitted.precision
        eigenvalues, vectors = torch.linalg.eigh(self.precision)
        self.whitening = vectors * eigenvalues.clamp_min(0).sqrt()
        self.whitened_means = self.means @ self.whitening

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """max_c -(f - mu_c)^T precision (f - mu_c), float64, differentiable in f."""
        whitening = self.whitening.to(features.device)
        z = features.double() @ whitening
        distances = (z[:, None, :] - self.whitened_means.to(z.device)[None]).square().sum(2)
        return (-distances).max(dim=1).values


def fit_layer_weights(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """Lee et al.'s logistic regression of `labels` (1 = ID) on per-layer scores (N x L):
    scikit-learn's `LogisticRegressionCV` with the defaults of their code (L2, C the best
    of 10 by 5-fold accuracy), fitted on the scores standardized per layer (ours: their
    raw scores differ in scale by orders of magnitude); returned as weights and bias on the
    raw scores, so that scores @ weights + bias is the regression's log-odds of ID."""
    from sklearn.linear_model import LogisticRegressionCV
    from threadpoolctl import threadpool_limits

    mean, scale = scores.mean(0), scores.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    # one thread: a few hundred rows, and a busy machine's thread pools cost 10x the fit;
    # scikit-learn 1.9 announces new defaults (none that we use changes)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        regression = LogisticRegressionCV(scoring="accuracy").fit((scores - mean) / scale,
                                                                  labels)
    weights = regression.coef_[0] / scale
    return weights, float(regression.intercept_[0] - weights @ mean)


@register_score("mahalanobis_lee")
class MahalanobisLee(OODScore):
    """Lee et al. (2018): for each layer l (`feature_layer_names`), class means and a tied
    covariance of its training features, M_l(x) = max_c -(f_l(x) - mu_lc)^T Sigma_l^+
    (f_l(x) - mu_lc) after the input step x + eps sign(grad_x M_l(x)) (which raises the
    score of the closest class: their `get_Mahalanobis_score`), combined as
    sum_l w_l M_l + b, the log-odds of a logistic regression.

    eps (of their seven, `EPS_GRID`) and w, b are tuned without OOD data, as in the
    paper's "validation on adversarial samples": the ID validation inputs are the positives
    and their FGSM adversarial examples (one step of `fgsm_step` = 0.05 in [0, 1] pixel
    units, their `ADV_Samples.py` FGSM step `adv_noise` on inputs normalized by the
    per-channel std, against the true label, clipped to [0, 1]) the stand-in OOD set. As in
    their `ADV_Regression.py`, the regression is fitted on one half of the pairs (the first
    half of the validation split and its adversarial examples) and eps is the one whose
    regression has the highest AUROC on the other half (ties: the first in their order);
    the score keeps that half's regression. The test OOD sets are never used."""

    requires = ("features",)
    in_default_set = False  # asked for by name (ood_baselines)
    fit_split = "train+validation"
    EPS_GRID = (0.0, 0.01, 0.005, 0.002, 0.0014, 0.001, 0.0005)  # their m_list, in order
    FGSM_STEP = 0.05

    def __init__(self, eps_grid: Sequence[float] = EPS_GRID, fgsm_step: float = FGSM_STEP,
                 batch_size: int = 256):
        self.eps_grid, self.fgsm_step = tuple(eps_grid), fgsm_step
        self.batch_size = batch_size
        self.layers: tuple[str, ...] = ()
        self.gaussians: list[LayerGaussian] = []
        self.epsilon: float | None = None
        self.weights: torch.Tensor | None = None  # (L,), float64
        self.bias = 0.0
        self.validation_auroc: dict[float, float] = {}

    # -- per-layer scores ---------------------------------------------------------------

    def layer_score(self, model: nn.Module, x: torch.Tensor, layer: int) -> torch.Tensor:
        """M_l(x) of layer `layer` without an input step (N,), float64."""
        return self.gaussians[layer].score(layer_features(model, x)[layer])

    def preprocessed(self, model: nn.Module, x: torch.Tensor, layer: int,
                     epsilon: float | None = None) -> torch.Tensor:
        """x + eps sign(grad_x M_l(x)): the step that raises the score of the closest class
        of layer `layer` (Lee et al.'s x - eps sign(grad_x of its distance)); gradients pass
        straight through it (`input_step`)."""
        epsilon = self.epsilon if epsilon is None else epsilon
        return input_step(partial(self.layer_score, model, layer=layer), x, epsilon)

    def layer_scores(self, model: nn.Module, x: torch.Tensor,
                     epsilon: float | None = None) -> torch.Tensor:
        """(N, L) float64: M_l of each layer after its own input step of `epsilon` (default
        the fitted one); differentiable in x (the step's sign is a constant of x)."""
        epsilon = self.epsilon if epsilon is None else epsilon
        if not epsilon:
            features = layer_features(model, x)
            if len(features) != len(self.gaussians):
                raise ValueError(f"mahalanobis_lee was fitted on {len(self.gaussians)} layers "
                                 f"{self.layers}; this model has {len(features)}")
            return torch.stack([g.score(f) for g, f in zip(self.gaussians, features)], dim=1)
        return torch.stack([self.layer_score(model, self.preprocessed(model, x, layer, epsilon),
                                             layer) for layer in range(len(self.gaussians))],
                           dim=1)

    def _chunked(self, model: nn.Module, compute, x: torch.Tensor) -> list:
        """`compute(batch)` for each chunk of `x` (on the model's device), in eval mode,
        without a graph."""
        device = _device(model)
        with torch.no_grad(), evaluating(model):
            return [compute(x[i:i + self.batch_size].to(device))
                    for i in range(0, len(x), self.batch_size)]

    def layer_scores_of(self, model: nn.Module, x: torch.Tensor,
                        epsilon: float | None = None) -> torch.Tensor:
        """`layer_scores` over any number of inputs, without a graph."""
        return torch.cat(self._chunked(
            model, lambda b: self.layer_scores(model, b, epsilon).double().cpu(), x))

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """FGSM examples of (x, y) at `fgsm_step`, the stand-in OOD set of `fit`."""
        device = _device(model)
        with evaluating(model):
            return torch.cat([fgsm(model, x[i:i + self.batch_size].to(device),
                                   y[i:i + self.batch_size].to(device), self.fgsm_step).cpu()
                              for i in range(0, len(x), self.batch_size)])

    # -- fit and score ------------------------------------------------------------------

    def fit(self, model, x_train, y_train, x_val=None, y_val=None):
        if x_val is None or y_val is None:
            raise ValueError("mahalanobis_lee tunes eps and the layer weights on held-out "
                             "data: fit(model, x_train, y_train, x_val, y_val)")
        if len(x_val) < 20:
            raise ValueError(f"mahalanobis_lee needs 20 or more validation inputs (two "
                             f"halves, 5-fold CV), got {len(x_val)}")
        from sklearn.metrics import roc_auc_score

        self.layers = feature_layer_names(model)
        train = [torch.cat(layer) for layer in zip(*self._chunked(
            model, lambda b: [f.double().cpu() for f in layer_features(model, b)], x_train))]
        self.gaussians = [LayerGaussian(f, y_train) for f in train]
        x_adv = self.adversarial(model, x_val, y_val)
        half = len(x_val) // 2  # pairs (x, FGSM(x)) of the first half fit, the rest select
        labels = np.r_[np.ones(half), np.zeros(half)]
        held_out = np.r_[np.ones(len(x_val) - half), np.zeros(len(x_val) - half)]
        best, self.validation_auroc = -np.inf, {}
        for epsilon in self.eps_grid:
            clean = self.layer_scores_of(model, x_val, epsilon).numpy()
            adv = self.layer_scores_of(model, x_adv, epsilon).numpy()
            weights, bias = fit_layer_weights(np.r_[clean[:half], adv[:half]], labels)
            auroc = roc_auc_score(held_out, np.r_[clean[half:], adv[half:]] @ weights + bias)
            self.validation_auroc[epsilon] = float(auroc)
            if auroc > best:
                best, self.epsilon = auroc, epsilon
                self.weights, self.bias = torch.from_numpy(weights), bias
        return self

    def forward(self, model, x):
        if self.weights is None:
            raise RuntimeError("mahalanobis_lee must be fitted (train + validation) first")
        scores = self.layer_scores(model, x)
        return (scores @ self.weights.to(scores) + self.bias).float()
