"""The approximate mass (NOTES.md B, eq. 3.32) and the regularized objective -log p(x) +
alpha * AM(x) (eq. 3.35), by double backpropagation."""

from __future__ import annotations

import math

import torch

from workloads.models.flows.transforms import FlowInputError


def approximate_mass(log_prob_fn, x: torch.Tensor, create_graph: bool = False,
                     differentiable_in_x: bool = False) -> torch.Tensor:
    """AM(x) = ||grad_x log p(x)||_2 per example (NOTES.md B, eq. 3.32); higher = more OOD.

    By default `x` is detached first: AM is a value, as detectors and scores need.
    With `create_graph=True` the result is differentiable in the model's parameters (double
    backpropagation), as the regularized objective needs. With `differentiable_in_x=True`
    the input gradient is taken of `x` itself, which must require grad (the very tensor an
    attack differentiates), with `create_graph`: AM keeps its graph to `x`, and
    `torch.autograd.grad(AM.sum(), x)` is the Hessian-vector product H g / ||g|| that an
    adaptive attack on the AM detector follows (NOTES.md C).
    """
    with torch.enable_grad():
        if differentiable_in_x:
            if not x.requires_grad:
                raise FlowInputError("differentiable_in_x needs an input that requires grad")
            create_graph = True
        else:
            x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_prob_fn(x).sum(), x, create_graph=create_graph)
    return grad.reshape(grad.shape[0], -1).norm(dim=1)


def penalized_nll(log_prob: torch.Tensor, x: torch.Tensor,
                  alpha: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """mean [ -log p(x) + alpha * ||grad_x log p(x)||_2 ] from `log_prob` computed on `x`
    (which requires grad), and its parts `nll` and `am` (NaN when alpha = 0: not computed).

    The input gradient uses `torch.autograd.grad` with `create_graph=True` (double
    backprop). It touches no parameter's `.grad`, so DDP's hooks fire once, in the final
    `backward()`, and the regularizer trains under Ray Train's DDP like any loss.
    """
    nll = -log_prob.mean()
    if alpha == 0:
        return nll, {"nll": nll.detach(), "am": torch.full_like(nll.detach(), math.nan)}
    (grad,) = torch.autograd.grad(log_prob.sum(), x, create_graph=True)
    mass = grad.reshape(grad.shape[0], -1).norm(dim=1).mean()
    return nll + alpha * mass, {"nll": nll.detach(), "am": mass.detach()}


def flow_objective(log_prob_fn, x: torch.Tensor,
                   alpha: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The regularized objective of NOTES.md B (eq. 3.35) on a batch, and its parts.

    `log_prob_fn` is called once, on `x`: pass a DDP-wrapped `Flow` itself so that Ray
    Train synchronises the gradients.
    """
    x = x.detach().requires_grad_(True)
    return penalized_nll(log_prob_fn(x), x, alpha)


def am_regularized_nll(log_prob_fn, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """The loss of `flow_objective` alone."""
    return flow_objective(log_prob_fn, x, alpha)[0]
