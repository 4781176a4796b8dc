"""GradCon (Kwon et al., "Backpropagated Gradient Representations for Anomaly Detection",
ECCV 2020; thesis [100], section 3.3.6, Tables 3.2/3.3, NOTES.md G): a convolutional
autoencoder trained with a gradient constraint, and its gradient-based anomaly score.

Training (thesis eq. 3.26-3.28, without the latent loss Omega: the CAE has none):

    J = L + alpha * L_grad,   L = MSE(De(En(x)), x)   (mean over the batch and pixels)
    L_grad = -mean_i cos(dL/dW_i, g_i),   g_i = (1 / (k - 1)) sum_{t < k} dJ^t/dW_i

over the weights W_i of the decoder's transposed convolutions (the decoder is constrained,
the encoder not), g_i the running mean of the training gradients of J before this step.
The first step has no history: L_grad = 0 there.

Score (higher = more like the normal class, per input, its own backward pass):

    score(x) = -L(x) + beta * mean_i cos(dL(x)/dW_i, g_i)

Settings and where they come from:
- alpha = 0.03 (`grad-loss-weight` default of the official code, train.py) and beta = 0.12
  = 4 alpha (its eval.py; the thesis: "beta = 4 alpha"). The thesis writes the score as
  L_grad + beta L; the paper's code (eval.py, `gradcon_score`) uses -L + beta cos, which is
  what we compute (higher = normal).
- Only the weights (not biases) of the 4 transposed convolutions, the reference the mean of
  `.grad` of the full loss J after each backward (ae_grad_reg.py, train); cosines per layer
  averaged over the layers.
- The CAE: `workloads.models.conv_stacks` (the official layers; paddings ours so any size
  fits). Adam, lr 1e-3, batch 64 (train.py).
Ours differs: the official code keeps the weights of the epoch with the lowest validation
loss (out of up to 1000 epochs); we keep the last epoch's. The thesis calls GradCon's model
a VAE; the official code trains a CAE by default (`GradConCAE`, also a `GradConVAE`): ours
is the CAE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from workloads.models.conv_stacks import ARCHES, down_stack, up_stack


class GradConAE(nn.Module):
    """The convolutional autoencoder of GradCon with the running mean of past training
    gradients of its constrained layers as buffers (`reference_<i>`, `reference_count`):
    saved with the weights, read by the score."""

    provides = ("gradcon",)

    def __init__(self, input_shape: tuple[int, ...], arch: str = "paper"):
        super().__init__()
        channels, size = input_shape[0], input_shape[-1]
        self.down = down_stack(channels, ARCHES[arch])
        self.up = up_stack(channels, ARCHES[arch], size)
        for i, weight in enumerate(self.constrained_weights()):
            self.register_buffer(f"reference_{i}", torch.zeros_like(weight))
        self.register_buffer("reference_count", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def constrained_names(self) -> list[str]:
        """Parameter names of the decoder's transposed-convolution weights."""
        return [f"up.{i}.weight" for i, m in enumerate(self.up)
                if isinstance(m, nn.ConvTranspose2d)]

    def constrained_weights(self) -> list[nn.Parameter]:
        parameters = dict(self.named_parameters())
        return [parameters[name] for name in self.constrained_names()]

    def references(self) -> list[torch.Tensor]:
        return [getattr(self, f"reference_{i}") for i in range(len(self.constrained_names()))]

    @torch.no_grad()
    def update_references(self, gradients: list[torch.Tensor]) -> None:
        """Add one step's gradients to the running means: g <- g + (grad - g) / (k + 1)."""
        count = int(self.reference_count) + 1
        for reference, gradient in zip(self.references(), gradients):
            reference += (gradient - reference) / count
        self.reference_count.fill_(count)


def gradient_constraint_loss(gradients: list[torch.Tensor],
                             references: list[torch.Tensor]) -> torch.Tensor:
    """L_grad = -mean over layers of cos(gradient_i, reference_i), each flattened (thesis eq.
    3.26). A zero reference gives cosine 0 (torch's cosine_similarity eps)."""
    cosines = [F.cosine_similarity(g.flatten(), r.flatten(), dim=0)
               for g, r in zip(gradients, references)]
    return -torch.stack(cosines).mean()


def gradcon_step(model: GradConAE, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                 alpha: float) -> dict[str, float]:
    """One training step of J = L + alpha L_grad; then the references take this step's
    gradients of J. Returns the batch's `loss`, `recon` (L) and `grad_loss` (L_grad)."""
    optimizer.zero_grad()
    recon = F.mse_loss(model(x), x)
    weights = model.constrained_weights()
    if int(model.reference_count) == 0:
        grad_loss = torch.zeros((), device=x.device)
    else:
        gradients = torch.autograd.grad(recon, weights, create_graph=True)
        grad_loss = gradient_constraint_loss(list(gradients), model.references())
    loss = recon + alpha * grad_loss
    loss.backward()
    model.update_references([w.grad for w in weights])
    optimizer.step()
    return {"loss": loss.item(), "recon": recon.item(), "grad_loss": grad_loss.item()}


def gradcon_scores(model: GradConAE, x: torch.Tensor, beta: float) -> torch.Tensor:
    """-L(x) + beta * mean_i cos(dL(x)/dW_i, g_i) for each input alone (per-example
    gradients by `torch.func`, as the official batch of 1); shape (N,)."""
    names = model.constrained_names()
    weights = {name: p.detach() for name, p in model.named_parameters() if name in names}
    references = model.references()

    def reconstruction_loss(constrained, xi):
        recon = functional_call(model, constrained, (xi.unsqueeze(0),), strict=False)
        return F.mse_loss(recon, xi.unsqueeze(0))

    gradients, losses = vmap(grad_and_value(reconstruction_loss), in_dims=(None, 0))(
        weights, x)
    cosines = torch.stack([F.cosine_similarity(gradients[name].flatten(1),
                                               reference.flatten().unsqueeze(0), dim=1)
                           for name, reference in zip(names, references)], dim=1)
    return -losses + beta * cosines.mean(dim=1)
