"""Scores of a density model (NOTES.md B): log p(x), the negated approximate mass, and the
likelihood corrections of document 002 (section 2.4.4-5): the likelihood ratio to a
background model, input complexity and typicality."""

from __future__ import annotations

import io
import zlib

import numpy as np
import torch
from PIL import Image

from workloads.models.flows.regularizer import approximate_mass
from workloads.models.modes import evaluating
from workloads.scores.base import OODScore, register_score


def _batches(model, x: torch.Tensor, size: int):
    """`x` in chunks of `size`, on the model's device."""
    device = next(model.parameters()).device
    for start in range(0, len(x), size):
        yield x[start:start + size].to(device)


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


@register_score("likelihood_ratio")
class LikelihoodRatio(OODScore):
    """LLR(x) = log p(x) - log p_background(x) (Ren et al. 2019; document 002, section
    2.4.4): the model's likelihood over that of `background`, a model of the same family
    trained on perturbed inputs (`workloads.training.background`; a sweep trains it in the trial
    with `background_mu` > 0). Higher = more in-distribution. Asked for by name. The
    background runs in eval mode as the model does (`evaluating`), its modes put back."""

    requires = ("log_prob",)
    in_default_set = False

    def __init__(self, background: torch.nn.Module | None = None, batch_size: int = 512):
        self.background, self.batch_size = background, batch_size

    def forward(self, model, x):
        if self.background is None:
            raise ValueError("likelihood_ratio needs a background model (train one with "
                             "--set background_mu=0.2 on a flow sweep)")
        with evaluating(self.background):
            return model.log_prob(x) - self.background.log_prob(x)


def _pixel_flow(model):
    """The flow of a density model (a `Flow`, or the `flow` of a DIGLM)."""
    return getattr(model, "flow", model)


def discrete_log2_probability(model, x: torch.Tensor) -> torch.Tensor:
    """log2 P(x) of the discrete pixels x (levels = the flow's pixel grid), from the density
    of their dequantized values: P(x) ~ p(x) / (levels-1)^D, i.e. -D * bits/dim."""
    flow = _pixel_flow(model)
    return -flow.dim * flow.bits_per_dim(model.log_prob(x))


def compressed_bits(x: torch.Tensor, levels: int, compressor: str = "png") -> torch.Tensor:
    """Code length in bits of each image of `x` (values in [0, 1] on a grid of `levels`)
    under a lossless compressor: "png" (Pillow, 8-bit grey or RGB) or "zlib" (level 9)."""
    pixels = np.rint(x.detach().cpu().double().numpy() * (levels - 1)).astype(np.uint8)
    lengths = []
    for image in pixels:
        if compressor == "zlib":
            lengths.append(len(zlib.compress(image.tobytes(), 9)))
        elif compressor == "png":
            if image.ndim != 3 or image.shape[0] not in (1, 3):
                raise ValueError(f"PNG needs (1 or 3, H, W) images, got {image.shape}")
            buffer = io.BytesIO()
            Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
                            ).save(buffer, format="PNG", optimize=True)
            lengths.append(len(buffer.getvalue()))
        else:
            raise ValueError(f"unknown compressor '{compressor}'; use 'png' or 'zlib'")
    return torch.tensor(lengths, dtype=torch.float64) * 8


@register_score("input_complexity")
class InputComplexity(OODScore):
    """IC(x) = log2 P(x) + C(x) (Serra et al. 2020; document 002, section 2.4.4): the
    likelihood in bits corrected by the input's code length C(x) under a lossless compressor,
    i.e. a likelihood ratio against the compressor as a universal model. Higher = more
    in-distribution. Pixel-grid inputs only; the compressor is not differentiable. The model
    runs in eval mode (`evaluating`: NOTES.md E's likelihoods are those of the trained model,
    batch norm on its running statistics, no dropout), every module's mode put back."""

    requires = ("log_prob",)
    in_default_set = False
    not_differentiable = "the compressor's code length has no gradient"

    def __init__(self, compressor: str = "png", batch_size: int = 256):
        if compressor not in ("png", "zlib"):
            raise ValueError(f"unknown compressor '{compressor}'; use 'png' or 'zlib'")
        self.compressor, self.batch_size = compressor, batch_size

    def __call__(self, model, x):
        levels = _pixel_flow(model).levels
        if levels is None:
            raise ValueError("input_complexity needs pixel inputs (a flow with `levels`)")
        with torch.no_grad(), evaluating(model):
            log2_p = torch.cat([discrete_log2_probability(model, chunk).double().cpu()
                                for chunk in _batches(model, x, self.batch_size)])
        return (log2_p + compressed_bits(x, levels, self.compressor)).float()


@register_score("typicality")
class Typicality(OODScore):
    """Typicality test (Nalisnick et al. 2019; document 002, section 2.4.5): how far the
    mean negative log-likelihood of a batch of M inputs lies from the entropy estimate H of
    the training data, -| mean(-log p(x_1..M)) - H |; higher = more typical = ID. M = 1 is
    the per-input score; with M > 1, consecutive groups of M inputs share their batch's
    score (the paper's batch test). `fit` estimates H on the training inputs and sets
    `threshold`, the paper's bootstrap epsilon (Nalisnick et al., Algorithm 1): the
    `quantile` (1 - alpha) of |mean NLL - H| over `resamples` batches of M inputs drawn with
    replacement from held-out validation data (batches of training inputs would sit closer
    to H than any unseen ID batch: the training NLL is what the model minimised). A batch is
    flagged OOD when its distance exceeds it. The model runs in eval mode for the fit and
    the scores alike (`evaluating`), every module's mode put back."""

    requires = ("log_prob",)
    in_default_set = False
    fit_split = "train+validation"

    def __init__(self, batch: int = 1, resamples: int = 1000, quantile: float = 0.99,
                 seed: int = 0, batch_size: int = 256):
        if batch < 1:
            raise ValueError("typicality: batch (M) must be >= 1")
        self.batch, self.resamples, self.quantile = batch, resamples, quantile
        self.seed, self.batch_size = seed, batch_size
        self.entropy: float | None = None
        self.threshold: float | None = None

    def _nll(self, model, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad(), evaluating(model):
            return -torch.cat([model.log_prob(chunk).double().cpu()
                               for chunk in _batches(model, x, self.batch_size)]).numpy()

    def fit(self, model, x_train, y_train, x_val=None, y_val=None):
        if x_val is None:
            raise ValueError("typicality draws its bootstrap batches from held-out data: "
                             "fit(model, x_train, y_train, x_val, y_val)")
        self.entropy = float(self._nll(model, x_train).mean())
        nll_val = self._nll(model, x_val)
        rng = np.random.default_rng(self.seed)
        draws = rng.integers(0, len(nll_val), size=(self.resamples, self.batch))
        self.threshold = float(np.quantile(np.abs(nll_val[draws].mean(axis=1) - self.entropy),
                                           self.quantile))
        return self

    def forward(self, model, x):
        if self.entropy is None:
            raise RuntimeError("typicality must be fitted on training data first")
        nll = -model.log_prob(x)
        if self.batch == 1:
            return -(nll - self.entropy).abs()
        groups = torch.arange(len(x), device=nll.device) // self.batch
        sums = torch.zeros(int(groups.max()) + 1, dtype=nll.dtype, device=nll.device)
        sums = sums.index_add(0, groups, nll)
        counts = torch.bincount(groups).to(nll.dtype)
        return -((sums / counts)[groups] - self.entropy).abs()

    def __call__(self, model, x):
        # groups of M must not be cut by the chunking: chunks of a multiple of M
        size = max(self.batch, (self.batch_size // self.batch) * self.batch)
        with torch.no_grad(), evaluating(model):
            return torch.cat([self.forward(model, chunk).detach().float().cpu()
                              for chunk in _batches(model, x, size)])
