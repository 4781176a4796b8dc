"""OOD scores: small units with one interface, found through a registry (NOTES.md D, E).

A score is built by name with its parameters, fitted once on in-distribution training data
(a no-op for most), then called on inputs:

    score = build_score("mahalanobis").fit(model, x_train, y_train)
    values = score(model, x)          # shape (N,); higher means "more in-distribution"
    score.forward(model, x)           # one batch, differentiable in x (attacks follow it)

The interface and registry are in `base`; one module per family registers its scores:
`softmax` (msp, msp_calibrated, max_logit, energy, lnz, odin), `features` (mahalanobis,
gmm), `mahalanobis` (mahalanobis_lee: Lee et al.'s layers, input step and layer weights),
`density` (log_px, neg_am), `vae` (iwae: a VAE's importance-weighted log p(x)),
`dropout` (mc_dropout), `confidnet` (a head trained to
predict the true-class probability), `laplace` (last-layer Laplace, laplace-torch);
`anomaly` (gradcon, ocgan: the class-anomaly baselines' scores),
`pytorch_ood_detectors` adapts
pytorch-ood's post-hoc detectors (vim, knn, react, ash, dice, gradnorm, ...; by name).
A score fits on the training split, or on the validation split where it says so
(`fit_split`, msp_calibrated); `fit_score` picks it.
"""

# isort: off
# Importing a family registers its scores; this order is the order of "every applicable
# score" (tables, the OOD stage): the classifier's own scores first, the density's last.
from workloads.scores import softmax  # noqa: F401
from workloads.scores import features  # noqa: F401
from workloads.scores import mahalanobis  # noqa: F401  (mahalanobis_lee, by name)
from workloads.scores import dropout  # noqa: F401
from workloads.scores import confidnet  # noqa: F401  (asked for by name)
from workloads.scores import laplace  # noqa: F401  (asked for by name)
from workloads.scores import density  # noqa: F401
from workloads.scores import vae  # noqa: F401
from workloads.scores import anomaly  # noqa: F401  (gradcon, ocgan: class anomaly)
from workloads.scores import pytorch_ood_detectors  # noqa: F401  (asked for by name)
# isort: on
from workloads.scores.base import (
    OOD_SCORES,
    OODScore,
    applicable_scores,
    batched_logits,
    build_score,
    capabilities,
    fit_score,
    fitted_score,
    input_step,
    penultimate_features,
    register_score,
)

__all__ = [
    "OOD_SCORES", "OODScore", "applicable_scores", "batched_logits", "build_score",
    "capabilities", "fit_score", "fitted_score",
    "input_step", "penultimate_features", "register_score",
]
