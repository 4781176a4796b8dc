"""Langevin restoration chains (NOTES.md C, eq. 2.27 / 4.8), advanced as one batch.

    x_{t+1} = clip(x_t + (eta / 2) grad_x log p(x_t) + sqrt(eta) * xi_t),   xi_t ~ N(0, I)

`clip` keeps the chains in the pixel domain [0, 1] (the thesis does not say how it keeps
them there; at eta = 1e-3 the noise alone moves a pixel by ~0.03 per step, and a flow with
logit preprocessing has no density outside its domain). Each chain may stop early once its
approximate mass ||grad_x log p(x_t)|| drops to `am_stop`: it then stays at x_t. `restore`
projects the end points onto the L-inf ball of radius eps around the start points and clips
to [0, 1].

All randomness comes from one CPU generator whose state is part of the chain state, and noise
is drawn for every chain at every step (stopped or not), so chains run in pieces from saved
states end exactly where an uninterrupted run ends, and a chain checkpointed on one device
can resume on another.

A *probe* tunes `am_stop` in one run: given candidate values r_1..r_m, it records for every
chain the label predicted at the restored point where AM first dropped to each r_j, which is
where a chain run with `am_stop = r_j` would have stopped (`probe_accuracy`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from workloads.adversarial.attacks import project

# log_prob_fn(x) -> (N,) log p(x);  classify(x) -> (N,) labels
LogProbFn = Callable[[torch.Tensor], torch.Tensor]
ClassifyFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ChainState:
    x: torch.Tensor             # current points (N, ...)
    start: torch.Tensor         # where each chain started (the flagged input)
    step: int                   # steps taken so far
    stopped: torch.Tensor       # (N,) bool: AM reached am_stop
    stop_step: torch.Tensor     # (N,) step at which the chain stopped, -1 while it runs
    am: torch.Tensor            # (N,) approximate mass at the last step's point
    rng_state: torch.Tensor     # the noise generator's state
    computed: int = 0           # steps actually computed (all chains stopped: no more work)
    probe_am: torch.Tensor | None = None    # (m,) candidate am_stop values
    probe_pred: torch.Tensor | None = None  # (N, m) label at first AM <= r_j, -1 if not yet

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> ChainState:
        return cls(**d)

    def to(self, device: torch.device | str) -> ChainState:
        """The state with its chain tensors on `device` (the RNG state stays a CPU tensor)."""
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) and k != "rng_state" else v)
                 for k, v in self.to_dict().items()}
        return ChainState(**moved)

    @property
    def num_chains(self) -> int:
        return self.x.shape[0]


def start_chains(x: torch.Tensor, seed: int, probe_am: torch.Tensor | None = None,
                 ) -> ChainState:
    """Chains starting at `x`, with a noise generator seeded by `seed`.
    `probe_am`: candidate am_stop values to probe (see `probe_accuracy`)."""
    generator = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    probe_pred = None
    if probe_am is not None:
        probe_am = torch.as_tensor(probe_am, dtype=torch.float32).flatten().to(x.device)
        probe_pred = torch.full((n, len(probe_am)), -1, dtype=torch.long, device=x.device)
    return ChainState(x=x.detach().clone(), start=x.detach().clone(), step=0,
                      stopped=torch.zeros(n, dtype=torch.bool, device=x.device),
                      stop_step=torch.full((n,), -1, dtype=torch.long, device=x.device),
                      am=torch.full((n,), math.nan, device=x.device),
                      rng_state=generator.get_state(), probe_am=probe_am,
                      probe_pred=probe_pred)


def grad_log_prob(log_prob_fn: LogProbFn, x: torch.Tensor) -> torch.Tensor:
    """grad_x log p(x), one row per input: the work of one chain step (and its limit)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_prob_fn(xg).sum(), xg)
    return grad


def run_chains(log_prob_fn: LogProbFn, state: ChainState, steps: int, eta: float = 1e-3,
               am_stop: float | None = None, clip: tuple[float, float] | None = (0.0, 1.0),
               classify: ClassifyFn | None = None, eps: float | None = None) -> ChainState:
    """Advance every chain by `steps` steps (stopped chains stay put); returns a new state.

    With a probe in `state`, `classify` labels the points restored with radius `eps`
    (`restore`) where each chain's AM first drops to each probed value.
    """
    if eta <= 0 or steps < 0:
        raise ValueError(f"need eta > 0 and steps >= 0, got eta={eta}, steps={steps}")
    probing = state.probe_am is not None
    if probing and (classify is None or eps is None):
        raise ValueError("a probed chain needs `classify` and `eps`")
    device = state.x.device
    generator = torch.Generator()
    generator.set_state(state.rng_state)
    x, stopped, stop_step = state.x.clone(), state.stopped.clone(), state.stop_step.clone()
    probe_pred = state.probe_pred.clone() if probing else None
    am = state.am.clone()
    shape = (-1, *([1] * (x.dim() - 1)))
    sqrt_eta = math.sqrt(eta)
    computed = state.computed
    for t in range(state.step, state.step + steps):
        if am_stop is not None and bool(stopped.all()):
            break  # nothing moves any more; the step count still advances below
        grad = grad_log_prob(log_prob_fn, x)
        am = torch.where(stopped, am, grad.flatten(1).norm(dim=1))
        if probing:
            _probe(probe_pred, state.probe_am, am, x, state.start, classify, eps)
        if am_stop is not None:
            newly = ~stopped & (am <= am_stop)
            stop_step = torch.where(newly, torch.full_like(stop_step, t), stop_step)
            stopped |= newly
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(device)
        moved = x + (0.5 * eta) * grad + sqrt_eta * noise
        if clip is not None:
            moved = moved.clamp(*clip)
        x = torch.where(stopped.view(shape), x, moved).detach()
        computed += 1
    return ChainState(x=x, start=state.start, step=state.step + steps, stopped=stopped,
                      stop_step=stop_step, am=am, rng_state=generator.get_state(),
                      computed=computed, probe_am=state.probe_am, probe_pred=probe_pred)


def _probe(probe_pred: torch.Tensor, probe_am: torch.Tensor, am: torch.Tensor,
           x: torch.Tensor, start: torch.Tensor, classify: ClassifyFn, eps: float) -> None:
    """Record, in place, the restored label of chains whose AM first reaches a probed value."""
    hit = (probe_pred < 0) & (am.unsqueeze(1) <= probe_am.unsqueeze(0))
    rows = hit.any(dim=1).nonzero().flatten()
    if len(rows) == 0:
        return
    with torch.no_grad():
        labels = classify(project(x[rows], start[rows], eps))
    probe_pred[rows] = torch.where(hit[rows], labels.unsqueeze(1), probe_pred[rows])


def restore(state: ChainState, eps: float) -> torch.Tensor:
    """The chains' end points projected onto the L-inf eps-ball around their start points,
    then clipped to [0, 1]."""
    return project(state.x, state.start, eps, "Linf")


def probe_accuracy(probe_pred: torch.Tensor, final_labels: torch.Tensor, y: torch.Tensor,
                   ) -> torch.Tensor:
    """Accuracy of restoration with `am_stop = r_j` for each probed value r_j, from a probed
    run's `probe_pred` (N, m): a chain whose AM reached r_j is labelled where it first did,
    the others by `final_labels` (the labels of their restored end points). Returns (m,)."""
    labels = torch.where(probe_pred >= 0, probe_pred,
                         final_labels.to(probe_pred.device).unsqueeze(1))
    return (labels == y.to(labels.device).unsqueeze(1)).float().mean(dim=0)
