"""Actor pools: attacks spread over Ray actors, shard by shard (NOTES.md C, D).

Each actor receives the model once (through the object store) and attacks units of work. A
unit is a fixed-size batch of the inputs still robust before an attack stage, named by the
stage and its index range, and seeded from that range: which actor runs it, and how many
actors there are, does not change its result. For AutoAttack the units are exactly the
batches one serial `pyautoattack` call forms, stage after stage, so the pool reproduces it.

Every finished unit is written to `<out>/units/`; a rerun with `resume=True` loads them
instead of recomputing. Actors are restarted by Ray when their process dies, and the unit
they were running is retried (`max_restarts=-1`, `max_task_retries=-1`).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workloads import attacks as A

OWN_ATTACKS = ("fgsm", "bim", "pgd", "apgd", "apgd_adaptive")


def attack_stages(config: dict[str, Any]) -> list[str]:
    if config["attack"] == "autoattack":
        return A.autoattack_stages(config.get("version", "standard"), config.get("attacks"))
    if config["attack"] not in OWN_ATTACKS:
        raise A.AttackError(f"unknown attack '{config['attack']}'; known: autoattack, "
                            f"{', '.join(OWN_ATTACKS)}")
    return [config["attack"]]


def attack_unit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, stage: str, start: int,
                config: dict[str, Any]) -> torch.Tensor:
    """One unit: `stage` of the attack in `config` on the batch that starts at `start`."""
    eps, norm, seed = config["eps"], config.get("norm", "Linf"), config.get("seed", 0)
    if config["attack"] == "autoattack":
        return A.autoattack_stage(model, x, y, stage, eps, norm, config.get("version",
                                  "standard"), config.get("attacks"), seed)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
    if stage == "fgsm":
        return A.fgsm(model, x, y, eps)
    if stage in ("bim", "pgd"):
        return A.pgd(model, x, y, eps, config.get("steps", 10), norm=norm,
                     random_start=stage == "pgd", generator=generator)
    loss = A.adaptive_loss(config.get("lam", 1.0)) if stage == "apgd_adaptive" \
        else A.cross_entropy_loss
    return A.apgd(model, x, y, eps, config.get("steps", 100), norm, loss, generator=generator)


class AttackWorker:
    """A Ray actor: holds the model, attacks units."""

    def __init__(self, model: nn.Module, threads: int = 1):
        torch.set_num_threads(threads)
        self.model = model.eval()

    def pid(self) -> int:
        return os.getpid()

    def run(self, stage: str, start: int, index: torch.Tensor, x: torch.Tensor,
            y: torch.Tensor, config: dict[str, Any]) -> dict[str, Any]:
        x_adv = attack_unit(self.model, x, y, stage, start, config)
        with torch.no_grad():
            fooled = self.model(x_adv).argmax(1) != y
        return {"stage": stage, "start": start, "index": index, "x_adv": x_adv,
                "fooled": fooled}


def run_attack_pool(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    config: dict[str, Any], out: str | Path, num_actors: int = 2,
                    cpus_per_actor: float = 1, gpus_per_actor: float = 0,
                    resume: bool = False) -> dict[str, Any]:
    """Attack (x, y) with `config` on `num_actors` Ray actors. Returns `x_adv`, the per-sample
    `robust` flags, `robust_accuracy` after each stage (and `clean`)."""
    import ray
    from ray.util import ActorPool

    stages = attack_stages(config)
    batch_size = config.get("batch_size", 100)
    units_dir = Path(out) / "units"
    units_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    x_adv = x.clone()
    accuracy = {"clean": robust.float().mean().item()}
    worker = ray.remote(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor, max_restarts=-1,
                        max_task_retries=-1)(AttackWorker)
    model_ref = ray.put(model)
    actors = [worker.remote(model_ref, max(1, int(cpus_per_actor))) for _ in range(num_actors)]
    pool = ActorPool(actors)
    started, done = time.perf_counter(), 0
    for stage in stages:
        survivors = robust.nonzero().flatten()
        units, results = [], []
        for start in range(0, len(survivors), batch_size):
            path = units_dir / f"{stage}_{start:07d}_{start + batch_size:07d}.pt"
            index = survivors[start:start + batch_size]
            if resume and path.exists():
                results.append(torch.load(path))
            else:
                units.append((stage, start, index, path))
        pending = {(u[0], u[1]): u[3] for u in units}
        for result in pool.map_unordered(
                lambda a, u: a.run.remote(u[0], u[1], u[2], x[u[2]], y[u[2]], config), units):
            path = pending[(result["stage"], result["start"])]
            torch.save(result, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").rename(path)  # a unit file is complete or absent
            results.append(result)
            done += len(result["index"])
            rate = done / (time.perf_counter() - started)
            print(f"\r[attack] {stage}: {len(results)} units, {done} samples, {rate:.1f} "
                  f"samples/s", end="", file=sys.stderr, flush=True)
        for result in results:
            fooled = result["index"][result["fooled"]]
            x_adv[fooled] = result["x_adv"][result["fooled"]]
            robust[fooled] = False
        accuracy[stage] = robust.float().mean().item()
    print(file=sys.stderr)
    for actor in actors:
        ray.kill(actor)
    return {"x_adv": x_adv, "robust": robust, "robust_accuracy": accuracy}
