"""The attack-pool part of `benchmarks/gpu_check.py`: the pool of `orchestrator.pools.attack`
with 4 actors of 0.25 GPU each (one GPU shared by four), attacking a small CNN with PGD.

What it checks: the 4 actors start and each reports its device (CUDA, the same GPU for all
four; the CPU in the dry run, where the actors take no GPU); every unit is computed; the
actors' logits equal the CPU model's to a tolerance; the adversarial inputs stay in the
eps-ball and in [0, 1]; and they equal, to a tolerance, the same units computed one after
another on the CPU in this process (`pools.attack.attack_unit`, seeded from each unit's
start as the pool seeds it). The tolerances allow for CUDA's TF32 convolutions, which can
flip the sign of a near-zero input gradient.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator.pools.attack import AttackPool, AttackWorker, attack_unit
from workloads.models import SmallCNN

ROOT = Path(__file__).resolve().parents[1]
ACTORS, GPU_FRACTION = 4, 0.25
# Pass criteria (set without a GPU at hand; the measured values are recorded beside them).
LOGIT_RTOL, LOGIT_ATOL = 1e-2, 1e-3   # of max |logit|
MIN_AGREEMENT = 0.9                   # elements of x_adv within 1e-5 of the CPU units'
MAX_ACCURACY_GAP = 0.05               # robust accuracy, pool vs CPU units


class ProbedAttackWorker(AttackWorker):
    """The pool's actor, able to say where it runs and to return its model's logits."""

    def where(self) -> dict[str, Any]:
        import ray

        info = {"device": str(self.device), "pid": os.getpid(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "cuda_available": torch.cuda.is_available()}
        if self.device.type == "cuda":
            info["gpu_name"] = torch.cuda.get_device_name(self.device)
        return info

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x.to(self.device)).cpu()


class ProbedAttackPool(AttackPool):
    worker_class = ProbedAttackWorker


def start_ray() -> None:
    """A local Ray (or the cluster at RAY_ADDRESS) whose workers can import this module."""
    import ray

    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR")
    else:
        ray.init(address="local", include_dashboard=False, logging_level="ERROR")


def serial_units(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 config: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The pool's units of a one-stage attack, computed in this process on the CPU: the
    inputs classified right, in batches of `batch_size`, each seeded from its start; the
    adversarial inputs (x where the attack failed) and the robust flags."""
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    x_adv, stage, size = x.clone(), config["attack"], config["batch_size"]
    order = robust.nonzero().flatten()
    flags = robust.clone()
    for start in range(0, len(order), size):
        index = order[start:start + size]
        attacked = attack_unit(model, x[index], y[index], stage, start, config).detach()
        with torch.no_grad():
            fooled = model(attacked).argmax(1) != y[index]
        x_adv[index[fooled]] = attacked[fooled]
        flags[index[fooled]] = False
    return x_adv, flags


def check_pool(dry: bool, note: Callable[[str], None] = lambda text: None) -> dict[str, Any]:
    """Run the pool check; its record, `status` "ok" or "failed" with `failures`."""
    import ray

    started = time.perf_counter()
    n, batch, steps = (16, 4, 3) if dry else (256, 32, 10)
    gpus, cpus = (0.0, 0.5) if dry else (GPU_FRACTION, 1.0)
    torch.manual_seed(0)
    model = SmallCNN((3, 32, 32), 10).eval()
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cpu_logits = model(x)
    y = cpu_logits.argmax(1)  # every input starts classified right: every input is attacked
    config = {"attack": "pgd", "eps": 8 / 255, "steps": steps, "seed": 0, "batch_size": batch}
    record: dict[str, Any] = {"actors_asked": ACTORS, "gpus_per_actor": gpus,
                              "cpus_per_actor": cpus, "inputs": n, "attack": config}
    start_ray()
    try:
        record["ray_start_seconds"] = time.perf_counter() - started
        note(f"Ray up in {record['ray_start_seconds']:.1f} s; starting {ACTORS} actors of "
             f"{gpus:g} GPU + {cpus:g} CPU")
        with tempfile.TemporaryDirectory() as out, \
                ProbedAttackPool(model, ACTORS, cpus, gpus) as pool:
            actors_started = time.perf_counter()
            record["actors"] = ray.get([actor.where.remote() for actor in pool.actors])
            record["actors_start_seconds"] = time.perf_counter() - actors_started
            logits = ray.get([actor.logits.remote(x) for actor in pool.actors])
            result = pool.run(x, y, config, out)
        x_ref, robust_ref = serial_units(model, x, y, config)
    finally:
        ray.shutdown()
    record.update(seconds=result.seconds, samples_per_s=result.samples_per_second,
                  units_computed=result.units_computed,
                  robust_accuracy_pool=result.robust_accuracy[result.stages[-1]])
    note(f"{len(record['actors'])} actors on {sorted({a['device'] for a in record['actors']})}, "
         f"{result.units_computed} units in {result.seconds:.1f} s "
         f"({result.samples_per_second:.0f} samples/s)")
    scale = cpu_logits.abs().max().item()
    record.update(
        robust_accuracy_cpu=robust_ref.float().mean().item(),
        logits_max_abs_diff=max((lg - cpu_logits).abs().max().item() for lg in logits),
        x_adv_max_abs_diff=(result.x_adv - x_ref).abs().max().item(),
        x_adv_agreement=((result.x_adv - x_ref).abs() <= 1e-5).float().mean().item(),
        flags_agreement=(result.robust == robust_ref).float().mean().item(),
        linf_max=(result.x_adv - x).abs().max().item(),
        in_unit_range=bool(result.x_adv.min() >= 0 and result.x_adv.max() <= 1),
        tolerances={"logits": f"{LOGIT_ATOL} + {LOGIT_RTOL} x max|logit|",
                    "x_adv_agreement_min": MIN_AGREEMENT,
                    "robust_accuracy_gap_max": MAX_ACCURACY_GAP})
    record["failures"] = pool_failures(record, dry, scale, -(-n // batch))
    record["status"] = "failed" if record["failures"] else "ok"
    record["total_seconds"] = time.perf_counter() - started
    return record


def pool_failures(record: dict[str, Any], dry: bool, logit_scale: float,
                  units: int) -> list[str]:
    """What the pool's record shows wrong, one line each."""
    failures, actors = [], record["actors"]
    if len(actors) != ACTORS:
        failures.append(f"{len(actors)} of {ACTORS} actors started")
    devices = {a["device"].split(":")[0] for a in actors}
    want = "cpu" if dry else "cuda"
    if devices != {want}:
        failures.append(f"actors on {sorted(devices)}, expected {want}")
    if not dry and len({tuple(a["gpu_ids"]) for a in actors}) != 1:
        failures.append(f"actors on different GPUs: {[a['gpu_ids'] for a in actors]}")
    if record["units_computed"] != units:
        failures.append(f"{record['units_computed']} units computed, expected {units}")
    if record["logits_max_abs_diff"] > LOGIT_ATOL + LOGIT_RTOL * logit_scale:
        failures.append(f"actors' logits differ from the CPU model's by "
                        f"{record['logits_max_abs_diff']:.3g} (scale {logit_scale:.3g})")
    if record["linf_max"] > record["attack"]["eps"] + 1e-6:
        failures.append(f"adversarial inputs leave the eps-ball: {record['linf_max']:.4g}")
    if not record["in_unit_range"]:
        failures.append("adversarial inputs leave [0, 1]")
    if record["x_adv_agreement"] < MIN_AGREEMENT:
        failures.append(f"adversarial inputs equal the CPU units' in "
                        f"{record['x_adv_agreement']:.1%} of elements (< {MIN_AGREEMENT:.0%})")
    gap = abs(record["robust_accuracy_pool"] - record["robust_accuracy_cpu"])
    if gap > MAX_ACCURACY_GAP:
        failures.append(f"robust accuracy {record['robust_accuracy_pool']:.3f} on the pool, "
                        f"{record['robust_accuracy_cpu']:.3f} on the CPU units")
    return failures
