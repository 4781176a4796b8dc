"""Langevin restoration chains (NOTES.md C, eq. 2.27 / 4.8), advanced as one batch.

    x_{t+1} = x_t + (eta / 2) grad_x log p(x_t) + sqrt(eta) * xi_t,   xi_t ~ N(0, I)

Each chain may stop early once its approximate mass ||grad_x log p|| drops to `am_stop`;
afterwards `restore` projects onto the L-inf ball of radius eps around the start point and
clips to [0, 1]. All randomness comes from one generator whose state is part of the chain
state, and noise is drawn for every chain at every step (stopped or not), so a chain run in
pieces from saved states ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class ChainState:
    x: torch.Tensor           # current points (N, ...)
    start: torch.Tensor       # where each chain started (the flagged input)
    step: int                 # steps taken so far
    stopped: torch.Tensor     # (N,) bool: reached am_stop
    am: torch.Tensor          # (N,) approximate mass at the last step
    rng_state: torch.Tensor   # the noise generator's state

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> ChainState:
        return cls(**d)


def start_chains(x: torch.Tensor, seed: int) -> ChainState:
    """Chains starting at `x`, with a noise generator seeded by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    return ChainState(x=x.detach().clone(), start=x.detach().clone(), step=0,
                      stopped=torch.zeros(n, dtype=torch.bool),
                      am=torch.full((n,), math.nan), rng_state=generator.get_state())


def run_chains(log_prob_fn, state: ChainState, steps: int, eta: float = 1e-3,
               am_stop: float | None = None) -> ChainState:
    """Advance every chain by `steps` steps (stopped chains stay put); returns a new state."""
    generator = torch.Generator()
    generator.set_state(state.rng_state)
    x, stopped, am = state.x.clone(), state.stopped.clone(), state.am.clone()
    device = x.device
    for _ in range(steps):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(log_prob_fn(xg).sum(), xg)
        am = grad.flatten(1).norm(dim=1).cpu()
        if am_stop is not None:
            stopped |= am <= am_stop
        noise = torch.randn(x.shape, generator=generator).to(device)
        moving = (~stopped).to(device).view(-1, *([1] * (x.dim() - 1)))
        x = torch.where(moving, x + 0.5 * eta * grad + math.sqrt(eta) * noise, x).detach()
    return ChainState(x=x, start=state.start, step=state.step + steps, stopped=stopped, am=am,
                      rng_state=generator.get_state())


def restore(state: ChainState, eps: float) -> torch.Tensor:
    """The chains' end points projected onto the L-inf eps-ball around their start points,
    then clipped to [0, 1]."""
    return torch.maximum(torch.minimum(state.x, state.start + eps), state.start - eps).clamp(0, 1)
