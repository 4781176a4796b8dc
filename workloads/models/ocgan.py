"""OCGAN (Perera, Nallapati, Xiang, "OCGAN: One-class Novelty Detection Using GANs with
Constrained Latent Representations", CVPR 2019; thesis [101], section 3.3.7, Tables
3.2/3.3, NOTES.md G) at small scale.

Four parts in one module (`OCGAN`): a denoising autoencoder whose encoder ends in tanh (a
latent space (-1, 1)^d), a latent discriminator D_l (uniform samples s ~ U[-1, 1]^d are
"real", codes En(x + n) "fake"), a visual discriminator D_v (images x of the normal class
real, De(s) fake) and a classifier C (reconstructions De(En(x + n)) "good", De(s) "bad").
One training step (`ocgan_step`, the paper's Algorithm 1), each part updated in turn with
the others fixed:

1. classifier: BCE(C(De(l1)), 1) + BCE(C(De(s)), 0), l1 = En(x + n);
2. discriminators: l_latent + l_visual (thesis eq. 3.30, 3.31);
3. informative-negative mining: `mining_steps` gradient steps on s that lower the
   classifier's confidence that De(s) is a good image (towards BCE(C(De(s)), 0)), s kept
   in [-1, 1];
4. autoencoder: 10 l_MSE + l_visual + l_latent on the generator's side (Dv(De(s_mined))
   and Dl(l1) labelled real), l_MSE = ||x - De(En(x + n))||^2 (eq. 3.29: summed over
   pixels, mean over the batch); the weight 10 is the thesis' and the paper's.

Score (higher = more like the normal class): -MSE(De(En(x)), x) per input, without noise
(the thesis: "assumed ... the reconstruction loss l_MSE", section 3.3.7).

Settings and sources: noise n ~ N(0, 0.2^2) (the thesis' N(0, 0.2), read as a standard
deviation; the official code's default variance is 0.02), 5 mining steps (the paper, as
we read it; the official code at hand, andgan.py, takes 1); Adam, lr 2e-4, betas (0.5,
0.999) and a latent of 16 dimensions (the official code's options.py defaults); mining
step size 2 per input (andgan.py: lr / batch with lr = 2 x batch on per-input losses).
The autoencoder's loss weights are the paper's and the thesis' (10 l_MSE + l_visual +
l_latent); the official code weighs them otherwise (10 on the latent term, 500 on a
per-pixel L2) and trains with batches of 512.
Simplified: the encoder, decoder, D_v and C are `conv_stacks` (no batch normalization, no
per-dataset networks of the paper); D_l is a two-layer MLP; mining starts at the first step
(the official code waits 150 epochs); the mined latents are clamped to [-1, 1] (the
official code parametrizes them through tanh).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from workloads.models.conv_stacks import ARCHES, down_stack, encoder_sizes, up_stack

RECONSTRUCTION_WEIGHT = 10.0  # the paper's and thesis' weight of l_MSE in the AE's loss


def _image_critic(channels: int, widths: tuple[int, ...], size: int) -> nn.Sequential:
    """Convolutions (LeakyReLU 0.2), then one logit: the visual discriminator, the
    classifier."""
    flat = widths[-1] * encoder_sizes(size, len(widths))[-1] ** 2
    return nn.Sequential(down_stack(channels, widths, lambda: nn.LeakyReLU(0.2)),
                         nn.Flatten(), nn.Linear(flat, 1))


class OCGAN(nn.Module):
    """Encoder (tanh latent of `latent_dim`), decoder, latent discriminator (`hidden`
    units), visual discriminator and classifier."""

    provides = ("ocgan",)

    def __init__(self, input_shape: tuple[int, ...], arch: str = "paper",
                 latent_dim: int = 16, hidden: int = 64):
        super().__init__()
        channels, size = input_shape[0], input_shape[-1]
        widths = ARCHES[arch]
        self.code_shape = (widths[-1], *[encoder_sizes(size, len(widths))[-1]] * 2)
        flat = math.prod(self.code_shape)
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(down_stack(channels, widths), nn.Flatten(),
                                     nn.Linear(flat, latent_dim), nn.Tanh())
        self.decoder_input = nn.Sequential(nn.Linear(latent_dim, flat), nn.ReLU())
        self.decoder_body = up_stack(channels, widths, size)
        self.latent_discriminator = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2), nn.Linear(hidden, 1))
        self.visual_discriminator = _image_critic(channels, widths, size)
        self.classifier = _image_critic(channels, widths, size)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder_body(self.decoder_input(z).view(-1, *self.code_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction De(En(x)), without noise."""
        return self.decode(self.encode(x))

    def autoencoder_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.decoder_input.parameters(),
                *self.decoder_body.parameters()]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [*self.latent_discriminator.parameters(),
                *self.visual_discriminator.parameters()]


def ocgan_optimizers(model: OCGAN, lr: float = 2e-4) -> dict[str, torch.optim.Optimizer]:
    """Adam (betas 0.5, 0.999) for the autoencoder, the two discriminators and the
    classifier."""
    def adam(parameters):
        return torch.optim.Adam(parameters, lr=lr, betas=(0.5, 0.999))

    return {"autoencoder": adam(model.autoencoder_parameters()),
            "discriminators": adam(model.discriminator_parameters()),
            "classifier": adam(model.classifier.parameters())}


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def classifier_loss(model: OCGAN, good: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """BCE of the classifier: reconstructions `good` (1), images of random latents `bad`
    (0)."""
    return _bce(model.classifier(good), 1.0) + _bce(model.classifier(bad), 0.0)


def discriminator_loss(model: OCGAN, x: torch.Tensor, codes: torch.Tensor,
                       s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(l_latent, l_visual) of the discriminators (thesis eq. 3.30, 3.31): D_l tells
    uniform samples `s` (1) from codes (0); D_v real images `x` (1) from De(s) (0)."""
    latent = _bce(model.latent_discriminator(s), 1.0) + \
        _bce(model.latent_discriminator(codes), 0.0)
    visual = _bce(model.visual_discriminator(x), 1.0) + \
        _bce(model.visual_discriminator(model.decode(s).detach()), 0.0)
    return latent, visual


def classifier_confidence(model: OCGAN, s: torch.Tensor) -> torch.Tensor:
    """C's probability that De(s) is a good image, per latent."""
    return torch.sigmoid(model.classifier(model.decode(s))).squeeze(1)


def mine_negatives(model: OCGAN, s: torch.Tensor, steps: int = 5,
                   step_size: float = 2.0) -> torch.Tensor:
    """Informative-negative mining: `steps` gradient steps on each latent of `s` down
    BCE(C(De(s)), 0) (its classifier's confidence falls), clamped to [-1, 1]. The networks
    are unchanged."""
    s = s.detach().clone()
    for _ in range(steps):
        s.requires_grad_(True)
        loss = F.binary_cross_entropy_with_logits(
            model.classifier(model.decode(s)), torch.zeros(len(s), 1, device=s.device),
            reduction="sum")  # summed: each latent follows its own gradient
        (gradient,) = torch.autograd.grad(loss, s)
        s = (s.detach() - step_size * gradient).clamp(-1.0, 1.0)
    return s.detach()


def autoencoder_loss(model: OCGAN, x: torch.Tensor, noisy: torch.Tensor,
                     mined: torch.Tensor) -> dict[str, torch.Tensor]:
    """The autoencoder's terms: `mse` (||x - De(En(noisy))||^2 per input, mean), `latent`
    (D_l calls its codes uniform samples), `visual` (D_v calls De(mined) real) and `loss` =
    10 mse + visual + latent."""
    codes = model.encode(noisy)
    mse = (model.decode(codes) - x).pow(2).flatten(1).sum(dim=1).mean()
    latent = _bce(model.latent_discriminator(codes), 1.0)
    visual = _bce(model.visual_discriminator(model.decode(mined)), 1.0)
    return {"loss": RECONSTRUCTION_WEIGHT * mse + visual + latent, "mse": mse,
            "latent": latent, "visual": visual}


def ocgan_step(model: OCGAN, optimizers: dict[str, torch.optim.Optimizer], x: torch.Tensor,
               generator: torch.Generator, noise_std: float = 0.2, mining_steps: int = 5,
               mining_step_size: float = 2.0) -> dict[str, float]:
    """One step of the paper's Algorithm 1 on a batch `x` of the normal class (noise and
    uniform latents drawn with `generator`): classifier, discriminators, negative mining,
    autoencoder. Returns each part's loss."""
    noise = torch.randn(x.shape, generator=generator).to(x.device) * noise_std
    s = (torch.rand(len(x), model.latent_dim, generator=generator) * 2 - 1).to(x.device)
    noisy = x + noise
    with torch.no_grad():
        codes = model.encode(noisy)
        good, bad = model.decode(codes), model.decode(s)

    optimizers["classifier"].zero_grad()
    c_loss = classifier_loss(model, good, bad)
    c_loss.backward()
    optimizers["classifier"].step()

    optimizers["discriminators"].zero_grad()
    latent, visual = discriminator_loss(model, x, codes, s)
    (latent + visual).backward()
    optimizers["discriminators"].step()

    mined = mine_negatives(model, s, mining_steps, mining_step_size)

    optimizers["autoencoder"].zero_grad()
    parts = autoencoder_loss(model, x, noisy, mined)
    parts["loss"].backward()
    optimizers["autoencoder"].step()
    return {"loss": parts["loss"].item(), "recon": parts["mse"].item(),
            "classifier": c_loss.item(), "disc_latent": latent.item(),
            "disc_visual": visual.item(), "gen_latent": parts["latent"].item(),
            "gen_visual": parts["visual"].item()}


def ocgan_scores(model: OCGAN, x: torch.Tensor) -> torch.Tensor:
    """-MSE(De(En(x)), x) per input (mean over its pixels); shape (N,)."""
    return -(model(x) - x).pow(2).flatten(1).mean(dim=1)
