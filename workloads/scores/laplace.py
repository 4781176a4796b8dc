"""A last-layer Laplace approximation (MacKay 1992; Daxberger et al. 2021, `laplace-torch`):
a Gaussian posterior over the class layer's weights around the trained ones, with a
Kronecker-factored Hessian and the prior precision fitted by marginal likelihood; the score
is the maximum of the probit-approximated predictive probabilities (the Bayesian baseline
of document 001)."""

from __future__ import annotations

import warnings

import torch

from workloads.models.modes import evaluating
from workloads.scores.base import OODScore, _device, register_score


@register_score("laplace")
class LastLayerLaplace(OODScore):
    """max_k p(y = k | x) under laplace-torch's last-layer `Laplace` (GLM predictive,
    probit link), fitted on the training split; the prior precision by marginal likelihood,
    or fixed (`prior_precision` >= 0, as given: 0 is a flat prior, whose posterior is
    singular unless the last layer's Hessian has full rank)."""

    requires = ("logits", "features")
    in_default_set = False
    not_differentiable = "laplace-torch's predictive is computed without a graph"

    def __init__(self, hessian: str = "kron", batch: int = 256,
                 prior_precision: float | None = None):
        if prior_precision is not None and prior_precision < 0:
            raise ValueError(f"laplace: prior_precision must be >= 0, got {prior_precision}")
        self.hessian, self.batch, self.prior_precision = hessian, batch, prior_precision
        self.laplace = None

    def fit(self, model, x_train, y_train):
        with warnings.catch_warnings():  # its dependencies' torch.jit deprecation notices
            warnings.simplefilter("ignore", FutureWarning)
            from laplace import Laplace

        device = _device(model)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x_train.to(device), y_train.to(device)),
            batch_size=self.batch)
        prior = 1.0 if self.prior_precision is None else self.prior_precision  # 0.0 is a prior
        with evaluating(model), warnings.catch_warnings():
            # "By default `link_approx` is `probit`": as we call it
            warnings.filterwarnings("ignore", message=".*link_approx.*")
            self.laplace = Laplace(model, "classification", subset_of_weights="last_layer",
                                   hessian_structure=self.hessian, prior_precision=prior)
            self.laplace.fit(loader)
            if self.prior_precision is None:
                self.laplace.optimize_prior_precision(method="marglik", pred_type="glm",
                                                      link_approx="probit")
        return self

    def forward(self, model, x):
        if self.laplace is None:
            raise RuntimeError("laplace must be fitted on training data first")
        with torch.no_grad():
            probs = self.laplace(x, pred_type="glm", link_approx="probit")
        return probs.max(dim=1).values
