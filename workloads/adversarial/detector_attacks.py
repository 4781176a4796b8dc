"""Adaptive attacks on OOD detectors as units of work, plain PyTorch (NOTES.md C, D).

A `ScoreAttack` moves inputs within eps to raise a detector's score (OOD inputs made to look
in-distribution) or lower it (ID inputs made to look OOD), with APGD on the score itself.
Its inputs are cut into units of `batch_size`, each seeded from its index range
(`unit_seed`), so the result never depends on who runs a unit: the attack pool's actors
(`orchestrator.pools.attack.run_score_attacks`) or this process (`attack_serially`, for a
notebook), which give the same values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workloads.adversarial import unit_seed
from workloads.adversarial.attacks import apgd_on_score
from workloads.models.modes import evaluating


@dataclass
class ScoreAttack:
    """Inputs `x` moved within `eps` to raise (`direction` +1: OOD inputs made to look
    in-distribution) or lower (-1: ID inputs made to look OOD) the score `score`."""

    name: str       # names the attack's unit files, e.g. "neg_am-gaussian-eps0.0314"
    score: str      # key of the fitted score (an `OODScore`) it attacks
    x: torch.Tensor
    direction: int
    eps: float


def score_attack_unit(model: nn.Module, score, x: torch.Tensor, direction: int, eps: float,
                      start: int, config: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """One unit of a `ScoreAttack` (its inputs from index `start`, on the model's device):
    the attacked inputs and the score at them, the model in eval mode (each module's mode
    put back after). `config`: `steps` (APGD iterations, 100), `norm` ("Linf") and `seed`
    (0)."""
    with evaluating(model):
        x_adv = apgd_on_score(lambda z: score.forward(model, z), x, eps, direction,
                              config.get("steps", 100), config.get("norm", "Linf"),
                              generator=torch.Generator().manual_seed(
                                  unit_seed(config.get("seed", 0), start)))
        return x_adv, score(model, x_adv)


def attack_serially(model: nn.Module, attacks: list[ScoreAttack], scores: dict[str, Any],
                    config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every attack's score at its attacked inputs, unit by unit in this process (the units
    and seeds of the attack pool; `config["batch_size"]` inputs a unit, default 100)."""
    batch_size = int(config.get("batch_size", 100))
    device = next(model.parameters()).device
    values = {}
    for attack in attacks:
        parts = []
        for start in range(0, len(attack.x), batch_size):
            chunk = attack.x[start:start + batch_size].to(device)
            _, score_values = score_attack_unit(model, scores[attack.score], chunk,
                                                attack.direction, attack.eps, start, config)
            parts.append(score_values.cpu())
        values[attack.name] = torch.cat(parts)
    return values
