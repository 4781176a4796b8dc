"""Adversarial attacks (NOTES.md C, D): FGSM, BIM/PGD (L-inf, L2), APGD with any loss (the
adaptive attack on CE - lambda * AM), and AutoAttack through `pyautoattack`.

Every attack takes a batch `(x, y)` of inputs in [0, 1] and returns adversarial inputs of
the same shape, inside the eps-ball around `x` and inside [0, 1]. Randomness comes only from
the `torch.Generator` passed in, so a batch seeded the same way gives the same result
whichever process runs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from workloads.flows import approximate_mass

NORMS = ("Linf", "L2")
# A loss to maximise, per example: loss_fn(model, x, y) -> (N,)
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class AttackError(ValueError):
    """Bad attack settings (unknown norm or attack, eps out of range)."""


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y, reduction="none")


def adaptive_loss(lam: float) -> LossFn:
    """CE - lam * AM(x) (NOTES.md C): an attack that also keeps the approximate mass low,
    against a detector that flags high AM. Needs a model with `log_prob` (DIGLM)."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mass = approximate_mass(model.log_prob, x, create_graph=True) if lam else 0.0
        return cross_entropy_loss(model, x, y) - lam * mass

    loss.__name__ = f"ce_minus_{lam:g}_am"
    return loss


def _check(norm: str, eps: float) -> None:
    if norm not in NORMS:
        raise AttackError(f"norm must be one of {NORMS}, got {norm!r}")
    if not eps > 0:
        raise AttackError(f"eps must be positive, got {eps}")


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str = "Linf") -> torch.Tensor:
    """Onto the eps-ball of `norm` around `x`, then into [0, 1]."""
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * torch.clamp(eps / _flat_norm(delta), max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def _loss_and_grad(model, loss_fn, x_adv, y):
    with torch.enable_grad():
        x_adv = x_adv.detach().requires_grad_(True)
        loss = loss_fn(model, x_adv, y)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return loss.detach(), grad.detach()


def _ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    return grad.sign() if norm == "Linf" else grad / _flat_norm(grad)


def _random_start(x: torch.Tensor, eps: float, norm: str,
                  generator: torch.Generator | None) -> torch.Tensor:
    if norm == "Linf":
        noise = 2 * torch.rand(x.shape, generator=generator, dtype=x.dtype) - 1
    else:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        noise = noise / _flat_norm(noise)
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
    x_adv = _random_start(x, eps, norm, generator) if random_start else x.clone()
    for _ in range(steps):
        _, grad = _loss_and_grad(model, loss_fn, x_adv, y)
        x_adv = project(x_adv + step_size * _ascent_direction(grad, norm), x, eps, norm)
    return x_adv


def _apgd_checkpoints(n_iter: int) -> list[int]:
    """Iterations at which APGD may halve its step: p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (Croce & Hein 2020, section 3.2)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(q * n_iter) for q in p[1:] if q <= 1})


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, n_iter: int = 100,
         norm: str = "Linf", loss_fn: LossFn = cross_entropy_loss, rho: float = 0.75,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Auto-PGD (Croce & Hein 2020) with any per-example loss to maximise: momentum 0.75,
    step 2 eps halved at checkpoints where the loss stalled, restart from the best point.
    Returns, per example, the iterate that misclassified it (if any), else the best-loss one.
    """
    _check(norm, eps)
    checkpoints = set(_apgd_checkpoints(n_iter))
    n = x.shape[0]
    shape = (n, *([1] * (x.dim() - 1)))
    step = torch.full(shape, 2.0 * eps, dtype=x.dtype, device=x.device)
    x_adv = _random_start(x, eps, norm, generator)
    loss, grad = _loss_and_grad(model, loss_fn, x_adv, y)
    best_loss, x_best, grad_best = loss.clone(), x_adv.clone(), grad.clone()
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    x_fooled = torch.where(fooled.view(shape), x_adv, x)
    x_prev = x_adv.clone()
    increases = torch.zeros(n, device=x.device)
    last_checkpoint, best_at_checkpoint = 0, best_loss.clone()
    step_reduced = torch.ones(n, dtype=torch.bool, device=x.device)
    for k in range(n_iter):
        z = project(x_adv + step * _ascent_direction(grad, norm), x, eps, norm)
        momentum = 0.75 if k > 0 else 1.0
        new = project(x_adv + momentum * (z - x_adv) + (1 - momentum) * (x_adv - x_prev),
                      x, eps, norm)
        x_prev, x_adv = x_adv, new
        loss, grad = _loss_and_grad(model, loss_fn, x_adv, y)
        with torch.no_grad():
            now_fooled = model(x_adv).argmax(1) != y
        x_fooled = torch.where((now_fooled & ~fooled).view(shape), x_adv, x_fooled)
        fooled |= now_fooled
        improved = loss > best_loss
        increases += improved.float()
        x_best = torch.where(improved.view(shape), x_adv, x_best)
        grad_best = torch.where(improved.view(shape), grad, grad_best)
        best_loss = torch.where(improved, loss, best_loss)
        if k + 1 in checkpoints:
            window = k + 1 - last_checkpoint
            stalled = increases < rho * window
            unchanged = ~step_reduced & (best_at_checkpoint >= best_loss)
            halve = stalled | unchanged
            step = torch.where(halve.view(shape), step / 2, step)
            x_adv = torch.where(halve.view(shape), x_best, x_adv)  # restart from the best
            grad = torch.where(halve.view(shape), grad_best, grad)
            step_reduced = halve
            increases.zero_()
            last_checkpoint, best_at_checkpoint = k + 1, best_loss.clone()
    return torch.where(fooled.view(shape), x_fooled, x_best).detach()


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
    was_training = model.training
    model.eval()
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    model.train(was_training)
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
