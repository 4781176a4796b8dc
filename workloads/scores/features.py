"""Scores on a model's penultimate features (NOTES.md D): Mahalanobis distance to class means
and the log density of a diagonal Gaussian mixture."""

from __future__ import annotations

import math

import numpy as np
import torch

from workloads.scores.base import OODScore, input_step, penultimate_features, register_score


@register_score("mahalanobis")
class Mahalanobis(OODScore):
    """Max over classes of the negative Mahalanobis distance of penultimate features to the
    class means under a shared covariance (Lee et al. 2018; NOTES.md D, E). With
    `epsilon > 0`, inputs first take a step that raises the score (input preprocessing).
    The penultimate layer only, eps 0 unless set: document 003's baseline; Lee et al.'s
    full detector (several layers, eps and layer weights tuned) is `mahalanobis_lee`
    (`workloads.scores.mahalanobis`)."""

    requires = ("features",)

    def __init__(self, epsilon: float = 0.0, batch_size: int = 256):
        self.epsilon, self.batch_size = epsilon, batch_size
        self.means: torch.Tensor | None = None
        self.precision: torch.Tensor | None = None

    def fit(self, model, x_train, y_train):
        return self.fit_features(penultimate_features(model, x_train), y_train)

    def fit_features(self, features: torch.Tensor, labels: torch.Tensor) -> Mahalanobis:
        """Class means and the shared (tied) covariance of `features` (N x D) by `labels`;
        its pseudo-inverse is the precision (also for one layer of `mahalanobis_lee`)."""
        features = features.double()
        classes = torch.unique(labels)
        self.means = torch.stack([features[labels == c].mean(0) for c in classes])
        centred = features - self.means[torch.searchsorted(classes, labels)]
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
        return self.log_density(model.features(x)).float()

    def log_density(self, features: torch.Tensor) -> torch.Tensor:
        """log p(features) under the mixture (float64, differentiable in the features)."""
        if self.mixture is None:
            raise RuntimeError("GMM score used before fit()")
        f = features.double().flatten(1)
        means = torch.tensor(self.mixture.means_).to(f)            # (K, D)
        precisions = torch.tensor(self.mixture.precisions_).to(f)  # (K, D), 1 / var
        weights = torch.tensor(self.mixture.weights_).to(f)
        # sum_d prec (f - mu)^2, expanded into matrix products as sklearn does: (N, K)
        squared = (f ** 2) @ precisions.T - 2 * f @ (means * precisions).T \
            + (means ** 2 * precisions).sum(1)
        log_gauss = -0.5 * (f.shape[1] * math.log(2 * math.pi) + squared) \
            + 0.5 * precisions.log().sum(1)
        return torch.logsumexp(log_gauss + weights.log(), dim=1)
