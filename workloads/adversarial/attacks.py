"""Adversarial attacks (NOTES.md C, D): FGSM, BIM/PGD (L-inf, L2), Auto-PGD with any loss
(the adaptive attack on CE - lambda * AM) or on a detector's score, and AutoAttack through
`pyautoattack`.

Every attack takes a batch `(x, y)` of inputs in [0, 1] and returns adversarial inputs of
the same shape, inside the eps-ball around `x` and inside [0, 1]. Randomness comes only from
the `torch.Generator` passed in, so a batch seeded the same way gives the same result
whichever process runs it.

A loss is `loss_fn(model, x, y) -> (loss per example to maximise, logits)`: the logits of the
same forward pass say which iterates misclassify, as in the reference APGD.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workloads.models.flows.regularizer import approximate_mass
from workloads.models.modes import evaluating

NORMS = ("Linf", "L2")
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# An APGD objective of a batch: (value per example to maximise, success per example or None)
Objective = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


class AttackError(ValueError):
    """Bad attack settings (unknown norm or attack, eps out of range)."""


def cross_entropy_loss(model: nn.Module, x: torch.Tensor,
                       y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(x)
    return F.cross_entropy(logits, y, reduction="none"), logits


def adaptive_loss(lam: float) -> LossFn:
    """CE - lam * AM(x) (NOTES.md C): an attack that also keeps the approximate mass low,
    against a detector that flags high AM. Needs a model with `log_prob` (DIGLM).

    When `x` requires grad (inside an attack), AM is computed on `x` itself with its graph
    (`approximate_mass(..., differentiable_in_x=True)`), so the input gradient of this loss
    holds the AM term's Hessian-vector product: the attack is adaptive, by double backprop.
    """

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        ce, logits = cross_entropy_loss(model, x, y)
        if not lam:
            return ce, logits
        mass = approximate_mass(model.log_prob, x, differentiable_in_x=x.requires_grad)
        return ce - lam * mass, logits

    loss.__name__ = f"ce_minus_{lam:g}_am"
    return loss


def _check(norm: str, eps: float) -> None:
    if norm not in NORMS:
        raise AttackError(f"norm must be one of {NORMS}, got {norm!r}")
    if not eps > 0:
        raise AttackError(f"eps must be positive, got {eps}")


def _norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example L-inf or L2 norm, shaped to broadcast against `t`."""
    flat = t.flatten(1)
    size = flat.abs().max(1).values if norm == "Linf" else (flat ** 2).sum(1).sqrt()
    return size.view(-1, *([1] * (t.dim() - 1)))


def _normalize(t: torch.Tensor, norm: str) -> torch.Tensor:
    """t / (||t|| + 1e-12), per example (the reference APGD's `normalize`)."""
    return t / (_norm(t, norm) + 1e-12)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str = "Linf") -> torch.Tensor:
    """Onto the eps-ball of `norm` around `x`, then into [0, 1]. The arithmetic is that of the
    reference APGD (Croce & Hein's `autopgd_base.py`), so that ours reproduces it exactly."""
    if norm == "Linf":
        return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    delta = x_adv - x
    return (x + _normalize(delta, "L2") * torch.clamp(_norm(delta, "L2"), max=eps)).clamp(0, 1)


def _ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    return grad.sign() if norm == "Linf" else _normalize(grad, "L2")


def _loss_and_grad(model, loss_fn, x_adv, y):
    with torch.enable_grad():
        x_adv = x_adv.detach().requires_grad_(True)
        loss, _ = loss_fn(model, x_adv, y)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return loss.detach(), grad.detach()


def _uniform_start(x: torch.Tensor, eps: float, norm: str,
                   generator: torch.Generator | None) -> torch.Tensor:
    """PGD's random start: uniform noise in the L-inf box, or a random L2 direction."""
    if norm == "Linf":
        noise = 2 * torch.rand(x.shape, generator=generator, dtype=x.dtype) - 1
    else:
        noise = _normalize(torch.randn(x.shape, generator=generator, dtype=x.dtype), "L2")
    return project(x + eps * noise.to(x.device), x, eps, norm)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
         loss_fn: LossFn = cross_entropy_loss) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): one L-inf step of size eps."""
    _check("Linf", eps)
    _, grad = _loss_and_grad(model, loss_fn, x, y)
    return project(x + eps * grad.sign(), x, eps)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10,
        step_size: float | None = None, norm: str = "Linf", random_start: bool = True,
        generator: torch.Generator | None = None,
        loss_fn: LossFn = cross_entropy_loss) -> torch.Tensor:
    """Projected gradient ascent (Madry et al. 2018). Without `random_start` this is BIM
    (Kurakin et al. 2017). Step size defaults to 2.5 * eps / steps."""
    _check(norm, eps)
    step_size = step_size if step_size is not None else 2.5 * eps / steps
    x_adv = _uniform_start(x, eps, norm, generator) if random_start else x.clone()
    for _ in range(steps):
        _, grad = _loss_and_grad(model, loss_fn, x_adv, y)
        x_adv = project(x_adv + step_size * _ascent_direction(grad, norm), x, eps, norm)
    return x_adv


# --- Auto-PGD ---------------------------------------------------------------------------------

@dataclass
class APGDRun:
    """What one APGD run found, per example."""

    x_best: torch.Tensor     # the iterate of highest objective
    loss_best: torch.Tensor  # its objective
    success: torch.Tensor    # (N,) bool: some iterate succeeded (e.g. misclassified)
    x_success: torch.Tensor  # the last iterate that succeeded (the start where none did)


def _objective_and_grad(objective: Objective, x_adv: torch.Tensor):
    with torch.enable_grad():
        x_adv = x_adv.detach().requires_grad_(True)
        value, success = objective(x_adv)
        (grad,) = torch.autograd.grad(value.sum(), x_adv)
    success = torch.zeros(len(value), dtype=torch.bool, device=value.device) \
        if success is None else success.detach()
    return value.detach(), success, grad.detach()


def _apgd_start(x: torch.Tensor, eps: float, norm: str,
                generator: torch.Generator | None) -> torch.Tensor:
    """APGD's random start: uniform (L-inf) or Gaussian (L2) noise scaled to norm eps."""
    draw = torch.rand if norm == "Linf" else torch.randn
    noise = draw(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    if norm == "Linf":
        noise = 2 * noise - 1
    return (x + eps * _normalize(noise, norm)).clamp(0.0, 1.0)


def apgd_run(objective: Objective, x: torch.Tensor, eps: float, n_iter: int = 100,
             norm: str = "Linf", rho: float = 0.75,
             generator: torch.Generator | None = None) -> APGDRun:
    """One run of Auto-PGD (Croce & Hein 2020, Algorithm 1) maximising `objective`, step for
    step as the reference implementation (`APGDAttack.attack_single_run` of auto-attack /
    pyautoattack) does it:

    - start: x + eps * u / ||u|| (u uniform in [-1, 1] for L-inf, Gaussian for L2), in [0, 1];
    - step size 2 eps; momentum 0.75 (none in the first iteration): z = P(x_k + eta g),
      x_{k+1} = P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}));
    - checkpoints: the first after max(int(0.22 N), 1) iterations, each window then shorter
      by max(int(0.03 N), 1) down to max(int(0.06 N), 1);
    - at a checkpoint, an example halves its step and restarts from its best iterate (with
      that iterate's gradient) when its objective rose in at most rho * k of the window's k
      steps (each compared with the step before: the reference's `check_oscillation`), or
      when its step was not halved at the previous checkpoint and its best objective has
      not improved since. As in the reference, the first window's earliest comparison is
      against a zero "step before".

    With the same seed the random start is the reference's (its global CPU generator seeded
    as our `generator`), so on the same model the iterates agree to float rounding.
    """
    _check(norm, eps)
    n = len(x)
    shape = (n, *([1] * (x.dim() - 1)))
    x_adv = _apgd_start(x, eps, norm, generator)
    value, success, grad = _objective_and_grad(objective, x_adv)
    x_success, succeeded = x_adv.clone(), success.clone()
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), value.clone()
    step = torch.full(shape, 2.0 * eps, dtype=x.dtype, device=x.device)
    x_old = x_adv.clone()
    values = torch.zeros(n_iter, n, dtype=value.dtype, device=value.device)
    window, min_window, shrink = (max(int(f * n_iter), 1) for f in (0.22, 0.06, 0.03))
    since_check = 0
    best_at_check = loss_best.clone()
    halved_at_check = torch.ones(n, dtype=torch.bool, device=x.device)
    for i in range(n_iter):
        momentum = 0.75 if i > 0 else 1.0
        last_move, x_old = x_adv - x_old, x_adv
        z = project(x_adv + step * _ascent_direction(grad, norm), x, eps, norm)
        x_adv = project(x_adv + (z - x_adv) * momentum + last_move * (1 - momentum), x, eps,
                        norm)
        value, success, grad = _objective_and_grad(objective, x_adv)
        x_success = torch.where(success.view(shape), x_adv, x_success)
        succeeded |= success
        values[i] = value
        improved = value > loss_best
        x_best = torch.where(improved.view(shape), x_adv, x_best)
        grad_best = torch.where(improved.view(shape), grad, grad_best)
        loss_best = torch.where(improved, value, loss_best)
        since_check += 1
        if since_check == window:
            rises = sum((values[i - j] > values[i - j - 1]).float() for j in range(window))
            halve = (rises <= window * rho) | (~halved_at_check & (best_at_check >= loss_best))
            step = torch.where(halve.view(shape), step / 2.0, step)
            x_adv = torch.where(halve.view(shape), x_best, x_adv)
            grad = torch.where(halve.view(shape), grad_best, grad)
            halved_at_check, best_at_check = halve, loss_best.clone()
            window, since_check = max(window - shrink, min_window), 0
    return APGDRun(x_best, loss_best, succeeded, x_success)


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, n_iter: int = 100,
         norm: str = "Linf", loss_fn: LossFn = cross_entropy_loss, rho: float = 0.75,
         n_restarts: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Auto-PGD (Croce & Hein 2020) with any loss to maximise (`apgd_run`), as the reference
    `APGDAttack.perturb`: inputs the model already misclassifies are left alone; each
    restart attacks the inputs still classified correctly, from a new random start. Returns,
    per input, the last iterate that misclassified it, else the input itself.

    What still differs from the reference: nothing in the algorithm. The random starts equal
    the reference's only when `generator` is seeded as the reference's `seed` and the inputs
    are batched alike; in the attack pool each unit is seeded from its index range instead.
    """
    _check(norm, eps)
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    x_adv = x.clone()
    for _ in range(n_restarts):
        index = robust.nonzero().flatten()
        if len(index) == 0:
            break
        target = y[index]

        def objective(z: torch.Tensor, target=target):
            value, logits = loss_fn(model, z, target)
            return value, logits.detach().argmax(1) != target

        run = apgd_run(objective, x[index], eps, n_iter, norm, rho, generator)
        fooled = index[run.success]
        x_adv[fooled] = run.x_success[run.success]
        robust[fooled] = False
    return x_adv.detach()


def apgd_on_score(score_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                  eps: float, direction: int, n_iter: int = 100, norm: str = "Linf",
                  rho: float = 0.75, generator: torch.Generator | None = None) -> torch.Tensor:
    """APGD on a detector's score itself: raise it (`direction=+1`: OOD inputs made to look
    in-distribution) or lower it (`-1`: ID inputs made to look OOD) within the eps-ball.
    `score_fn(x)` must be differentiable in x (`OODScore.differentiable`). Returns, per
    input, the best iterate, or the input itself where no iterate beat it."""
    if direction not in (1, -1):
        raise AttackError(f"direction must be +1 or -1, got {direction}")

    def objective(z: torch.Tensor):
        return direction * score_fn(z), None

    run = apgd_run(objective, x, eps, n_iter, norm, rho, generator)
    with torch.no_grad():
        clean = direction * score_fn(x)
    keep_clean = (clean >= run.loss_best).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(keep_clean, x, run.x_best).detach()


AUTOATTACK_VERSIONS = ("standard", "custom")
AUTOATTACK_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


def autoattack_stages(version: str, attacks: list[str] | None = None) -> list[str]:
    """The attacks AutoAttack runs one after another for `version`, in order."""
    if version == "standard":
        return ["apgd-ce", "apgd-t", "fab-t", "square"]
    if version != "custom":
        raise AttackError(f"AutoAttack version must be one of {AUTOATTACK_VERSIONS}")
    unknown = [a for a in attacks or [] if a not in AUTOATTACK_ATTACKS]
    if not attacks or unknown:
        raise AttackError(f"custom AutoAttack needs attacks from {', '.join(AUTOATTACK_ATTACKS)}"
                          f"{'; unknown: ' + ', '.join(unknown) if unknown else ''}")
    return list(attacks)


def _adversary(model: nn.Module, eps: float, norm: str, version: str,
               attacks: list[str] | None, seed: int):
    import logging

    from pyautoattack import AutoAttack

    _check(norm, eps)
    stages = autoattack_stages(version, attacks)
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    device = next(model.parameters()).device
    adversary = AutoAttack(model, norm=norm, eps=eps, version=version, device=device,
                           seed=seed, attacks=stages if version == "custom" else None)
    adversary.verbose = False
    return adversary


def _run_adversary(adversary, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   batch_size: int) -> torch.Tensor:
    if x.dim() != 4:
        raise AttackError("AutoAttack needs (N, C, H, W) images (its Square attack is 2-D)")
    with evaluating(model):
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return x_adv.detach()


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
               norm: str = "Linf", version: str = "standard",
               attacks: list[str] | None = None, seed: int = 0,
               batch_size: int | None = None) -> torch.Tensor:
    """AutoAttack (Croce & Hein 2020) through `pyautoattack`: `standard` (APGD-CE, APGD-T,
    FAB-T, Square) or `custom` with `attacks`, e.g. ["apgd-ce"]. One
    `run_standard_evaluation` call over `x` in batches of `batch_size` (default: all)."""
    adversary = _adversary(model, eps, norm, version, attacks, seed)
    return _run_adversary(adversary, model, x, y, batch_size or len(x))


def autoattack_stage(model: nn.Module, x: torch.Tensor, y: torch.Tensor, stage: str,
                     eps: float, norm: str = "Linf", version: str = "standard",
                     attacks: list[str] | None = None, seed: int = 0) -> torch.Tensor:
    """One attack of AutoAttack's sequence (`stage`, configured as `version` configures it)
    on one batch of still-robust inputs. pyautoattack seeds every batch with `seed` and
    batches each attack over the inputs that survived the previous ones, so running the
    stages in order on the same batches reproduces one `autoattack` call exactly."""
    adversary = _adversary(model, eps, norm, version, attacks, seed)
    if stage not in adversary.attacks_to_run:
        raise AttackError(f"'{stage}' is not an attack of this AutoAttack configuration")
    adversary.attacks_to_run = [stage]
    return _run_adversary(adversary, model, x, y, len(x))
