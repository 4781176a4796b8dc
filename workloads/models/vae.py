"""The convolutional VAE of document 002 (section 3.3; NOTES.md E): a DCGAN-style encoder with
batch-norm layers, a Gaussian or 256-way categorical decoder, the beta-VAE objective, the
importance-weighted log-likelihood (IWAE, Burda et al. 2016) as log p(x), and the encoder's
batch-norm statistics adapted to the scored inputs (document 002, section 3.3.5, Fig. 3.7).

Objective (document 002, eq. 2.3): -ELBO_beta(x) = E_q[-log p(x|z)] + beta * KL(q(z|x) || N(0, I)),
beta = 1 the VAE, beta > 1 a beta-VAE (Higgins et al. 2017).

log p(x) >= IWAE_K(x) = E[log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x)], z_k ~ q(z|x)
(Burda et al. 2016; document 002, section 2.4.3): K = 1 is the ELBO; the bound tightens as K
grows. The document evaluates K = 5 and 50.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from workloads.models.modes import evaluating

DECODERS = ("gaussian", "categorical")
LOG_2PI = math.log(2 * math.pi)


class VAEInputError(ValueError):
    """An input the VAE cannot model (wrong shape, or values off its pixel grid)."""


def _downsamplings(size: int) -> int:
    """Stride-2 layers that halve `size` exactly down to at most 7 (8 -> 4, 28 -> 7, 32 -> 4)."""
    steps = 0
    while size % 2 == 0 and size > 7:
        size //= 2
        steps += 1
    return steps


class ConvVAE(nn.Module):
    """A convolutional VAE on images in [0, 1] of shape (C, H, W) on a grid of `levels` values.

    Encoder (DCGAN, Radford et al. 2016, as document 002 section 3.3.3): a 3x3 convolution,
    then stride-2 4x4 convolutions doubling the channels, each followed by `BatchNorm2d` and a
    LeakyReLU(0.2); a linear layer gives the posterior mean and log-variance. Decoder: the
    mirror image with transposed convolutions, ReLU and batch norm, ending in per-pixel
    parameters:
    - `gaussian`: mean sigmoid(o) and one learned log standard deviation per channel;
      trained on inputs dequantized by uniform noise of one grid step, centred on the clean
      value (document 002, section 3.3.3), so the learned scale cannot collapse;
    - `categorical`: logits over the `levels` pixel values (256 for 8-bit images).

    `forward(x)` returns the per-example reconstruction NLL and KL of one posterior sample:
    what the training objective needs, through `forward` so that DDP sees it.
    """

    provides = ("vae",)

    def __init__(self, input_shape: tuple[int, int, int], levels: int, latent_dim: int = 16,
                 hidden: int = 32, decoder: str = "gaussian"):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder '{decoder}'; use one of {', '.join(DECODERS)}")
        channels, height, width = input_shape
        if height != width:
            raise VAEInputError(f"square images only, got {height}x{width}")
        self.input_shape, self.levels, self.decoder_kind = tuple(input_shape), levels, decoder
        self.latent_dim = latent_dim
        steps = _downsamplings(height)
        self.code_size = height // 2 ** steps
        widths = [hidden * 2 ** i for i in range(steps + 1)]

        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1),
                                   nn.BatchNorm2d(widths[0]), nn.LeakyReLU(0.2)]
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv2d(w_in, w_out, 4, stride=2, padding=1), nn.BatchNorm2d(w_out),
                       nn.LeakyReLU(0.2)]
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        code = widths[-1] * self.code_size ** 2
        self.posterior = nn.Linear(code, 2 * latent_dim)

        self.project = nn.Linear(latent_dim, code)
        layers = [nn.Unflatten(1, (widths[-1], self.code_size, self.code_size)),
                  nn.BatchNorm2d(widths[-1]), nn.ReLU()]
        for w_in, w_out in zip(widths[::-1][:-1], widths[::-1][1:], strict=True):
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, stride=2, padding=1),
                       nn.BatchNorm2d(w_out), nn.ReLU()]
        out = channels if decoder == "gaussian" else channels * levels
        self.decoder = nn.Sequential(*layers, nn.Conv2d(widths[0], out, 3, padding=1))
        self.log_scale = nn.Parameter(torch.full((channels,), math.log(0.1)))

    # -- the two distributions -------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x), each (N, latent_dim)."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise VAEInputError(f"inputs of shape {tuple(x.shape[1:])}; the VAE models "
                                f"{self.input_shape}")
        mean, log_var = self.posterior(self.encoder(x)).chunk(2, dim=1)
        return mean, log_var.clamp(-12.0, 8.0)

    def decode_log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels, for inputs x (N, C, H, W) and latents z (N, K, d):
        (N, K). Gaussian: a density of the continuous x; categorical: the probability of x's
        pixel values on the grid of `levels`."""
        n, k = z.shape[:2]
        out = self.decoder(self.project(z.reshape(n * k, -1)))
        target = x.repeat_interleave(k, dim=0)
        if self.decoder_kind == "gaussian":
            log_scale = self.log_scale.view(1, -1, 1, 1)
            mean = torch.sigmoid(out)
            log_px = -0.5 * ((target - mean) / log_scale.exp()) ** 2 - log_scale - LOG_2PI / 2
        else:
            logits = out.view(n * k, self.input_shape[0], self.levels,
                              *self.input_shape[1:]).transpose(1, 2)  # classes on dim 1
            log_px = -F.cross_entropy(logits, pixel_levels(target, self.levels),
                                      reduction="none")
        return log_px.flatten(1).sum(1).view(n, k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction NLL, KL(q(z|x) || N(0, I))) per example, one reparameterised
        sample z ~ q(z|x) (Kingma and Welling 2014)."""
        mean, log_var = self.encode(x)
        z = mean + (0.5 * log_var).exp() * torch.randn_like(mean)
        recon = -self.decode_log_likelihood(x, z[:, None])[:, 0]
        kl = 0.5 * (mean ** 2 + log_var.exp() - 1.0 - log_var).sum(1)
        return recon, kl

    def dequantize(self, x: torch.Tensor, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
        """Training inputs of the Gaussian decoder: x + u / (levels - 1), u ~ U(-1/2, 1/2)
        (the categorical decoder models the grid values themselves)."""
        if self.decoder_kind != "gaussian":
            return x
        noise = torch.rand(x.shape, generator=generator).to(x.device) - 0.5
        return x + noise / (self.levels - 1)


def pixel_levels(x: torch.Tensor, levels: int) -> torch.Tensor:
    """The grid index of each pixel of x in [0, 1]: round(x * (levels - 1)), as class labels."""
    if x.min() < 0 or x.max() > 1:
        raise VAEInputError("pixel values must lie in [0, 1]")
    return torch.round(x * (levels - 1)).long()


def beta_vae_loss(model: nn.Module, x: torch.Tensor, beta: float = 1.0
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over the batch of recon + beta * KL (document 002, eq. 2.3), with its parts."""
    recon, kl = model(x)
    return (recon + beta * kl).mean(), {"recon": recon.detach().mean(),
                                        "kl": kl.detach().mean()}


def iwae_log_likelihood(posterior: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                        log_likelihood: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        x: torch.Tensor, samples: int,
                        generator: torch.Generator | None = None,
                        samples_per_pass: int | None = None) -> torch.Tensor:
    """IWAE_K(x) = logsumexp_k [log p(x|z_k) + log N(z_k; 0, I) - log q(z_k|x)] - log K,
    z_k ~ q(z|x) = N(mean, exp(log_var)) (Burda et al. 2016, eq. 8; document 002 section
    2.4.3). `posterior(x)` gives (mean, log_var), each (N, d); `log_likelihood(x, z)` gives
    log p(x|z) for z (N, K, d) as (N, K). The noise is drawn on the CPU from `generator`,
    so a score does not depend on the device. `samples_per_pass` bounds how many z per input
    one call of `log_likelihood` decodes (a 256-way decoder's logits are large)."""
    mean, log_var = posterior(x)
    std = (0.5 * log_var).exp()
    eps = torch.randn((len(x), samples, mean.shape[1]), generator=generator).to(mean)
    z = mean[:, None] + std[:, None] * eps
    log_prior = -0.5 * (z ** 2 + LOG_2PI).sum(-1)
    log_q = -0.5 * (eps ** 2 + LOG_2PI).sum(-1) - (0.5 * log_var).sum(-1, keepdim=True)
    step = samples_per_pass or samples
    log_px_z = torch.cat([log_likelihood(x, z[:, k:k + step]) for k in range(0, samples, step)],
                         dim=1)
    return torch.logsumexp(log_px_z + log_prior - log_q, dim=1) - math.log(samples)


def vae_log_likelihood(model: ConvVAE, x: torch.Tensor, samples: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """IWAE_K(x) of a `ConvVAE` (in nats; the modes of its batch-norm layers are the
    caller's: see `adapted_encoder`). Decodes at most about 2^24 output values per pass."""
    outputs = math.prod(model.input_shape) * (model.levels if model.decoder_kind ==
                                              "categorical" else 1)
    per_pass = max(1, min(samples, 2 ** 24 // max(1, len(x) * outputs)))
    return iwae_log_likelihood(model.encode, model.decode_log_likelihood, x, samples, generator,
                               per_pass)


@contextlib.contextmanager
def adapted_encoder(model: ConvVAE) -> Iterator[ConvVAE]:
    """Within the block, the encoder's batch-norm layers normalise with the statistics of the
    batch they see (train mode) instead of the training set's running statistics: document
    002's adaptation of BN statistics (section 3.3.5, Fig. 3.7; AdaBN, Li et al. 2017) on a
    batch of test inputs. The decoder stays in eval mode. Inside the block the layers track
    no statistics, so their running statistics and batch counters are left as they were."""
    layers = [m for m in model.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in layers]
    for m in layers:
        m.training, m.track_running_stats = True, False
    try:
        yield model
    finally:
        for m, (training, tracking) in zip(layers, saved, strict=True):
            m.training, m.track_running_stats = training, tracking


def latent_means(model: ConvVAE, x: torch.Tensor, adapted: bool = False,
                 batch_size: int = 128) -> torch.Tensor:
    """The posterior means of `x` (N, d), in batches of `batch_size` (with `adapted`, each
    batch normalises the encoder with its own statistics)."""
    device = next(model.parameters()).device
    context = adapted_encoder(model) if adapted else contextlib.nullcontext()
    with torch.no_grad(), evaluating(model), context:
        return torch.cat([model.encode(x[i:i + batch_size].to(device))[0].cpu()
                          for i in range(0, len(x), batch_size)])
