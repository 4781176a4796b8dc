"""The VAE's likelihood as an OOD score (document 002, sections 2.4.3, 3.3.2, 3.3.5): the
importance-weighted bound IWAE_K(x) on log p(x), with the encoder's batch norm in eval mode or
adapted to each batch of scored inputs."""

from __future__ import annotations

import contextlib

import torch

from workloads.models.vae import adapted_encoder, vae_log_likelihood
from workloads.scores.base import OODScore, register_score

BN_MODES = ("eval", "adapted")


@register_score("iwae")
class IWAELogLikelihood(OODScore):
    """IWAE_K(x), in nats, of a `ConvVAE` (Burda et al. 2016; document 002 evaluates K = 5
    and 50): higher = more in-distribution. `bn="eval"` normalises the encoder with the
    training set's running statistics; `bn="adapted"` with the statistics of each batch of
    `bn_batch` scored inputs (document 002, section 3.3.5, Fig. 3.7): an input's score then
    depends on the batch it is scored in, which is the document's test-time setting (a batch
    of test inputs from one source). The posterior noise comes from a generator seeded with
    `seed` for every batch, so a score is reproducible."""

    requires = ("vae",)

    def __init__(self, samples: int = 5, bn: str = "eval", bn_batch: int = 128, seed: int = 0):
        if samples < 1:
            raise ValueError(f"iwae: samples must be >= 1, got {samples}")
        if bn not in BN_MODES:
            raise ValueError(f"iwae: unknown bn '{bn}'; use one of {', '.join(BN_MODES)}")
        self.samples, self.bn, self.seed = samples, bn, seed
        self.batch_size = bn_batch

    def forward(self, model, x):
        generator = torch.Generator().manual_seed(self.seed)
        context = adapted_encoder(model) if self.bn == "adapted" else contextlib.nullcontext()
        with context:
            return vae_log_likelihood(model, x, self.samples, generator)
