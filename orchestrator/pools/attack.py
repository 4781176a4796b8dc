"""The attack pool: adversarial attacks spread over Ray actors, unit by unit (NOTES.md C, D).

Each actor receives the model once (through the object store) and attacks units of work. A
unit is a fixed-size batch of the inputs still robust before an attack stage, named by the
stage and its index range, and seeded from that range: which actor runs it, and how many
actors there are, does not change its result. For AutoAttack the units are exactly the
batches one serial `pyautoattack` call forms, stage after stage (pyautoattack seeds every
batch alike), so the pool reproduces that call bit for bit.

Every finished unit is written to `<out>/units/` (`pools.units`); a rerun with `resume=True`
loads them instead of recomputing. Ray restarts an actor whose process dies and retries the
unit it was running (a bounded number of times, `pools.base.ACTOR_RESTARTS`); the retried
unit gives the same result, so a failure changes nothing but the time taken.

    with AttackPool(model, num_actors=4, gpus_per_actor=0.25) as pool:
        result = pool.run(x, y, {"attack": "autoattack", "version": "standard",
                                 "eps": 8 / 255}, out="runs/attack")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator.pools.base import ModelActors, node_id, worker_device
from orchestrator.pools.progress import Progress, ProgressFn
from orchestrator.pools.stage_plan import StagePlan
from orchestrator.pools.units import fingerprint, load_unit, open_job, save_unit
from workloads.adversarial import attacks as A
from workloads.adversarial import unit_seed
from workloads.adversarial.detector_attacks import ScoreAttack, score_attack_unit

OWN_ATTACKS = ("fgsm", "bim", "pgd", "apgd", "apgd_adaptive")
ATTACKS = ("autoattack", *OWN_ATTACKS)
# The config keys that decide an attack's result (the job's identity on resume).
RESULT_KEYS = ("attack", "version", "attacks", "eps", "norm", "steps", "restarts", "lam",
               "seed", "batch_size")


def attack_stages(config: dict[str, Any]) -> list[str]:
    """The stages of the attack in `config`, in order (AutoAttack: its attacks)."""
    if config["attack"] == "autoattack":
        return A.autoattack_stages(config.get("version", "standard"), config.get("attacks"))
    if config["attack"] not in OWN_ATTACKS:
        raise A.AttackError(f"unknown attack '{config['attack']}'; known: "
                            f"{', '.join(ATTACKS)}")
    return [config["attack"]]


def attack_unit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, stage: str, start: int,
                config: dict[str, Any]) -> torch.Tensor:
    """One unit: `stage` of the attack in `config` on the batch that starts at `start`."""
    eps, norm, seed = config["eps"], config.get("norm", "Linf"), config.get("seed", 0)
    if config["attack"] == "autoattack":
        return A.autoattack_stage(model, x, y, stage, eps, norm,
                                  config.get("version", "standard"), config.get("attacks"),
                                  seed)
    generator = torch.Generator().manual_seed(unit_seed(seed, start))  # CPU: any device
    if stage == "fgsm":
        return A.fgsm(model, x, y, eps)
    if stage in ("bim", "pgd"):
        return A.pgd(model, x, y, eps, config.get("steps", 10), norm=norm,
                     random_start=stage == "pgd", generator=generator)
    loss = A.adaptive_loss(config.get("lam", 1.0)) if stage == "apgd_adaptive" \
        else A.cross_entropy_loss
    return A.apgd(model, x, y, eps, config.get("steps", 100), norm, loss,
                  n_restarts=config.get("restarts", 1), generator=generator)


class AttackWorker:
    """A Ray actor: holds the model (on its GPU if it has one) and attacks units."""

    def __init__(self, model: nn.Module, threads: int = 1, gpus: float = 0):
        torch.set_num_threads(threads)
        self.device = worker_device(gpus)
        self.model = model.to(self.device).eval()

    def pid(self) -> int:
        import os

        return os.getpid()

    def run(self, stage: str, start: int, index: torch.Tensor, x: torch.Tensor,
            y: torch.Tensor, config: dict[str, Any]) -> dict[str, Any]:
        x, y = x.to(self.device), y.to(self.device)
        x_adv = attack_unit(self.model, x, y, stage, start, config)
        with torch.no_grad():
            fooled = self.model(x_adv).argmax(1) != y
        return {"stage": stage, "start": start, "index": index, "x_adv": x_adv.cpu(),
                "fooled": fooled.cpu(), "node_id": node_id()}

    def attack_score(self, name: str, score, direction: int, eps: float, start: int,
                     x: torch.Tensor, config: dict[str, Any]) -> dict[str, Any]:
        """One unit of a `ScoreAttack`: APGD on the fitted `score` itself."""
        x_adv, values = score_attack_unit(self.model, score, x.to(self.device), direction,
                                          eps, start, config)
        return {"name": name, "start": start, "x_adv": x_adv.cpu(), "score": values.cpu(),
                "node_id": node_id()}


@dataclass
class AttackResult:
    x_adv: torch.Tensor                 # adversarial inputs (= x where the attack failed)
    robust: torch.Tensor                # (N,) bool: still correctly classified
    robust_accuracy: dict[str, float]   # "clean", then after each stage
    fooled_by: list[str]                # per sample: "clean" (misclassified), a stage, or ""
    seconds: float = 0.0
    units_computed: int = 0
    units_loaded: int = 0
    stages: list[str] = field(default_factory=list)
    units_by_node: dict[str, int] = field(default_factory=dict)  # computed units per node

    @property
    def samples_per_second(self) -> float:
        return len(self.robust) / self.seconds if self.seconds else float("nan")


class AttackPool(ModelActors):
    """`num_actors` Ray actors holding one model; `run` attacks inputs with them.

    The actors (and the model shipped to them) live until `close()`, so one pool serves any
    number of attacks on the same model without starting actors again.
    """

    worker_class = AttackWorker

    def run(self, x: torch.Tensor, y: torch.Tensor, config: dict[str, Any],
            out: str | Path, resume: bool = False, label: str = "attack",
            on_progress: ProgressFn | None = None) -> AttackResult:
        """Attack (x, y) with `config`; finished units go to `out/units/`."""
        from ray.util import ActorPool

        stages = attack_stages(config)
        batch_size = int(config.get("batch_size", 100))
        if batch_size < 1:
            raise A.AttackError("batch_size must be >= 1")
        job_config = {k: config.get(k) for k in RESULT_KEYS}
        out = open_job(out, "attack", job_config,
                       fingerprint(job_config, self.model, x, y), resume)
        with torch.no_grad():
            robust = self.model(x).argmax(1) == y
        result = AttackResult(x.clone(), robust, {"clean": robust.float().mean().item()},
                              ["" if r else "clean" for r in robust.tolist()], stages=stages)
        plan = StagePlan(len(stages), robust.nonzero().flatten().tolist(), batch_size)
        # A fresh ActorPool per run: results still in flight from a run that failed must
        # not be taken for this run's (the actors themselves are reused).
        pool = ActorPool(self.actors)
        progress = Progress(label)
        fooled_at = [0] * len(stages)
        attacked = 0  # samples in the units computed by this run

        def finish(unit: dict[str, Any]) -> None:
            s = stages.index(unit["stage"])
            fooled = unit["index"][unit["fooled"]]
            result.x_adv[fooled] = unit["x_adv"][unit["fooled"]]
            result.robust[fooled] = False
            for i in fooled.tolist():
                result.fooled_by[i] = unit["stage"]
            fooled_at[s] += len(fooled)
            plan.complete(s, unit["start"] // batch_size, unit["fooled"].tolist())

        def launch() -> None:
            """Submit every unit that can run now (a loaded unit may unlock more)."""
            while new := plan.new_units():
                for s, start, index in new:
                    path = unit_path(out, stages[s], start, len(index))
                    if resume and path.exists():
                        finish(load_unit(path))
                        result.units_loaded += 1
                    else:
                        pool.submit(lambda actor, u: actor.run.remote(*u),
                                    (stages[s], start, torch.tensor(index), x[index],
                                     y[index], config))

        launch()
        while not plan.finished():
            unit = pool.get_next_unordered()
            keep_unit(result, unit, unit_path(out, unit["stage"], unit["start"],
                                              len(unit["index"])))
            finish(unit)
            launch()
            attacked += len(unit["index"])
            rate = attacked / progress.elapsed()
            progress.update(f"{unit['stage']}: {plan.units_done()} units, {attacked} samples "
                            f"attacked, {rate:.1f} samples/s", fraction=plan.fraction())
            if on_progress is not None:
                on_progress({"stage": unit["stage"], "units_done": plan.units_done(),
                             "samples_attacked": attacked, "samples_per_s": rate})
        robust_count = int(len(plan.inputs[0]))
        for s, stage in enumerate(stages):
            robust_count -= fooled_at[s]
            result.robust_accuracy[stage] = robust_count / len(x)
        progress.update("done, robust accuracy " + ", ".join(
            f"{k} {v:.3f}" for k, v in result.robust_accuracy.items()), fraction=1.0,
            force=True)
        progress.close()
        result.seconds = progress.elapsed()
        return result


@dataclass
class ScoreAttackResult:
    x_adv: dict[str, torch.Tensor]   # per attack name: the attacked inputs
    score: dict[str, torch.Tensor]   # per attack name: the score at them
    seconds: float = 0.0
    units_computed: int = 0
    units_loaded: int = 0
    units_by_node: dict[str, int] = field(default_factory=dict)


def run_score_attacks(pool: AttackPool, attacks: list[ScoreAttack], scores: dict[str, Any],
                      config: dict[str, Any], out: str | Path, resume: bool = False,
                      label: str = "detector attack",
                      on_progress: ProgressFn | None = None) -> ScoreAttackResult:
    """Attack detectors on the pool's actors: every `ScoreAttack` in units of
    `config["batch_size"]` inputs (APGD on the score, `config["steps"]` iterations in
    `config["norm"]`), each unit seeded from its index range, so the result does not depend
    on the actors. Each fitted score travels once through the object store; finished units
    go to `out/units/`, and `resume` loads them instead of recomputing."""
    import ray
    from ray.util import ActorPool

    batch_size = int(config.get("batch_size", 100))
    if batch_size < 1:
        raise A.AttackError("batch_size must be >= 1")
    job_config = {**{k: config.get(k) for k in ("steps", "norm", "seed", "batch_size")},
                  "attacks": [[a.name, a.score, a.direction, a.eps] for a in attacks]}
    out = open_job(out, "score attack", job_config,
                   fingerprint(job_config, pool.model, *[a.x for a in attacks]), resume)
    refs = {name: ray.put(scores[name]) for name in {a.score for a in attacks}}
    result = ScoreAttackResult({a.name: a.x.clone() for a in attacks},
                               {a.name: torch.empty(len(a.x)) for a in attacks})

    def finish(unit: dict[str, Any]) -> None:
        stop = unit["start"] + len(unit["score"])
        result.x_adv[unit["name"]][unit["start"]:stop] = unit["x_adv"]
        result.score[unit["name"]][unit["start"]:stop] = unit["score"]

    actors = ActorPool(pool.actors)
    total = 0
    for attack in attacks:
        for start in range(0, len(attack.x), batch_size):
            part = attack.x[start:start + batch_size]
            path = unit_path(out, attack.name, start, len(part))
            total += 1
            if resume and path.exists():
                finish(load_unit(path))
                result.units_loaded += 1
                continue
            actors.submit(lambda actor, u: actor.attack_score.remote(*u),
                          (attack.name, refs[attack.score], attack.direction, attack.eps,
                           start, part, config))
    progress = Progress(label)
    attacked = 0
    while actors.has_next():
        unit = actors.get_next_unordered()
        keep_unit(result, unit, unit_path(out, unit["name"], unit["start"], len(unit["score"])))
        finish(unit)
        attacked += len(unit["score"])
        done = result.units_computed + result.units_loaded
        rate = attacked / progress.elapsed()
        progress.update(f"{done}/{total} units, {attacked} inputs attacked, {rate:.1f} "
                        f"inputs/s", fraction=done / total)
        if on_progress is not None:
            on_progress({"units_done": done, "units_total": total,
                         "samples_attacked": attacked, "samples_per_s": rate})
    progress.update("done", fraction=1.0, force=True)
    progress.close()
    result.seconds = progress.elapsed()
    return result


def keep_unit(result: AttackResult | ScoreAttackResult, unit: dict[str, Any],
              path: Path) -> None:
    """Write a computed unit to `path` and count it, and its node, in `result`."""
    save_unit(unit, path)
    result.units_computed += 1
    node = unit.get("node_id", "?")
    result.units_by_node[node] = result.units_by_node.get(node, 0) + 1


def unit_path(out: Path, stage: str, start: int, size: int) -> Path:
    return out / "units" / f"{stage}_{start:07d}_{start + size:07d}.pt"


def run_attack_pool(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    config: dict[str, Any], out: str | Path, num_actors: int = 2,
                    cpus_per_actor: float = 1, gpus_per_actor: float = 0,
                    resume: bool = False, on_progress: ProgressFn | None = None,
                    ) -> AttackResult:
    """One attack on a pool started for it and closed after it."""
    with AttackPool(model, num_actors, cpus_per_actor, gpus_per_actor) as pool:
        return pool.run(x, y, config, out, resume=resume, on_progress=on_progress)
