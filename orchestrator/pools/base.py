"""What the actor pools share: actors of a worker class holding one model, their resources
and bounded restarts, and where an actor runs (node, device). Job directories and unit
files are in `pools.units`, the progress line in `pools.progress`."""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import torch
from torch import nn

from orchestrator.interrupts import reinstall


class PoolError(ValueError):
    """A pool job that cannot run as asked: bad resources, a mismatched resume, a corrupt
    unit file. The message names what to change (or the file)."""


# A dead actor process is restarted and its unit retried, a bounded number of times: a unit
# that kills its process every time (out of memory, say) ends the job instead of looping.
ACTOR_RESTARTS, UNIT_RETRIES = 5, 3


def actor_options(cpus_per_actor: float, gpus_per_actor: float) -> dict[str, Any]:
    """Ray actor options: resources, and restarts that retry the unit an actor was running
    when its process died. A fractional `gpus_per_actor` packs several actors on one GPU."""
    if cpus_per_actor < 0 or gpus_per_actor < 0 or cpus_per_actor + gpus_per_actor == 0:
        raise PoolError("an actor needs CPUs or GPUs: --cpus-per-actor and "
                        "--gpus-per-actor must be >= 0 and not both 0")
    if gpus_per_actor > 1 and gpus_per_actor != int(gpus_per_actor):
        raise PoolError(f"--gpus-per-actor {gpus_per_actor}: above 1 it must be a whole "
                        f"number of GPUs")
    return {"num_cpus": cpus_per_actor, "num_gpus": gpus_per_actor,
            "max_restarts": ACTOR_RESTARTS, "max_task_retries": UNIT_RETRIES}


def actor_threads(cpus_per_actor: float) -> int:
    """torch threads of an actor: its whole CPUs (at least one)."""
    return max(1, int(cpus_per_actor))


def check_capacity(num_actors: int, cpus_per_actor: float, gpus_per_actor: float,
                   resources: dict[str, float], can_grow: bool) -> int:
    """How many of the actors fit in `resources` at once (at least 1). Raises PoolError
    when not even one fits and the cluster cannot grow (a local Ray)."""
    if num_actors < 1:
        raise PoolError("--num-actors must be >= 1")
    need = {"CPU": cpus_per_actor, "GPU": gpus_per_actor}
    fits = [resources.get(k, 0) / v for k, v in need.items() if v > 0]
    fitting = int(math.floor(min(fits) + 1e-9)) if fits else num_actors
    if fitting < 1 and not can_grow:
        have = ", ".join(f"{resources.get(k, 0):g} {k}" for k, v in need.items() if v > 0)
        raise PoolError(f"one actor needs {cpus_per_actor:g} CPU and {gpus_per_actor:g} GPU, "
                        f"this machine has {have}; lower --cpus-per-actor / "
                        f"--gpus-per-actor")
    return max(1, min(num_actors, fitting))


def start_actors(worker_class: type, model: nn.Module, num_actors: int,
                 cpus_per_actor: float, gpus_per_actor: float) -> tuple[list, Any]:
    """Start `num_actors` actors of `worker_class(model, threads, gpus)`, the model shipped
    once through the object store; returns the actors and the model's object reference,
    which the caller keeps for as long as the actors live (Ray rebuilds a restarted actor
    from it). On a local Ray, only as many actors as fit at once are started (the others
    would wait forever); a cluster (RAY_ADDRESS) may grow to fit them all."""
    import ray

    options = actor_options(cpus_per_actor, gpus_per_actor)
    can_grow = bool(os.environ.get("RAY_ADDRESS"))
    fitting = check_capacity(num_actors, cpus_per_actor, gpus_per_actor,
                             ray.cluster_resources(), can_grow)
    count = num_actors if can_grow else fitting
    if count < num_actors:
        print(f"[pool] {num_actors} actors of {cpus_per_actor:g} CPU + {gpus_per_actor:g} GPU "
              f"do not fit on this machine at once; starting {count}", file=sys.stderr)
    remote = ray.remote(**options)(worker_class)
    model_ref = ray.put(model)
    threads = actor_threads(cpus_per_actor)
    return [remote.remote(model_ref, threads, gpus_per_actor) for _ in range(count)], model_ref


class ModelActors:
    """Ray actors of `worker_class`, each holding one model, alive until `close()` (or the
    end of a `with` block). Subclasses set `worker_class` and add what the actors do."""

    worker_class: type

    def __init__(self, model: nn.Module, num_actors: int = 2, cpus_per_actor: float = 1,
                 gpus_per_actor: float = 0):
        self.model = model.cpu().eval()
        self.actors, self.model_ref = start_actors(self.worker_class, self.model, num_actors,
                                                   cpus_per_actor, gpus_per_actor)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors, self.model_ref = [], None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def node_id() -> str:
    """The Ray node this process runs on."""
    import ray

    return ray.get_runtime_context().get_node_id()


def worker_device(gpus_per_actor: float) -> torch.device:
    """The device of an actor: the GPU Ray assigned to it, else the CPU."""
    from orchestrator.tune.session import select_device

    return select_device(use_gpu=gpus_per_actor > 0)


def start_ray() -> None:
    """Join the cluster at RAY_ADDRESS, or start Ray on this machine."""
    import ray

    if not ray.is_initialized():
        # "local" without RAY_ADDRESS: a new Ray, never one a `ray start` left running; a
        # local one without the dashboard, as a sweep's (a process and a web server taking
        # ~1 core-s at start from the pool's actors; a cluster keeps its own)
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address or "local", logging_level="WARNING",
                 **({} if address else {"include_dashboard": False}))
        reinstall()  # ray.init sets its own SIGTERM handler: ours decides
