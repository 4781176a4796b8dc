"""What the actor pools share: actor resources, job directories that survive failures, unit
files, and progress output.

A pool job writes everything it finishes under its directory `out/`:
`job.json` (what was asked: the fingerprint of config, model and inputs) and one file per
finished unit. A rerun with `resume=True` checks the fingerprint and loads the finished
units instead of recomputing them; a different job in the same directory is refused.
Unit files are written atomically (a temporary file renamed into place), so a unit file is
either complete or absent, whenever the process dies.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

JOB_FILE = "job.json"
ProgressFn = Callable[[dict[str, Any]], None]


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
    from orchestrator.session import select_device

    return select_device(use_gpu=gpus_per_actor > 0)


# --- job directories ------------------------------------------------------------------------

def _digest(update, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        update(str((t.dtype, tuple(t.shape))).encode())
        update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, nn.Module):
        for name, tensor in value.state_dict().items():
            update(name.encode())
            _digest(update, tensor)
    else:
        update(json.dumps(value, sort_keys=True, default=str).encode())


def fingerprint(*parts: Any) -> str:
    """A SHA-256 of configs, tensors and model weights: names one job exactly."""
    sha = hashlib.sha256()
    for part in parts:
        _digest(sha.update, part)
    return sha.hexdigest()[:16]


def open_job(out: str | Path, kind: str, config: dict[str, Any], digest: str,
             resume: bool) -> Path:
    """Create (or, with `resume`, reopen) the job directory `out`.

    Resuming a directory that holds a different job (another config, model or inputs)
    raises PoolError naming the differing config keys; without `resume`, earlier unit
    files of the directory are removed so that nothing stale is mixed in.
    """
    out = Path(out)
    path = out / JOB_FILE
    job = {"kind": kind, "fingerprint": digest, "config": config}
    if resume and path.exists():
        earlier = json.loads(path.read_text())
        if earlier.get("fingerprint") != digest:
            old = earlier.get("config", {})
            changed = sorted(k for k in {*old, *config} if old.get(k) != config.get(k))
            what = (f"settings differ: {', '.join(changed)}" if changed
                    else "the model or the inputs differ")
            raise PoolError(f"cannot resume {out}: it holds another {kind} job ({what})")
        return out
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("units/*.pt"), *out.glob("chains/*.pt")]:
        stale.unlink()
    save_json(job, path)
    return out


def save_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def save_unit(obj: dict[str, Any], path: Path) -> None:
    """Write a unit file atomically: complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_unit(path: Path) -> dict[str, Any]:
    """Read a unit file with `weights_only=True` (tensors and plain values only: a file
    cannot run code). A corrupt or truncated file raises PoolError naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors all mean "unreadable"
        raise PoolError(f"unit file {path} is corrupt or truncated ({error.__class__.__name__}"
                        f"); delete it to recompute that unit") from None


# --- progress -------------------------------------------------------------------------------

class Progress:
    """A progress line on stderr: redrawn in place on a terminal, otherwise printed every
    `interval` seconds (and at the end) so that logs stay readable."""

    def __init__(self, label: str, interval: float = 10.0, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval
        self.started = time.perf_counter()
        self._last = -math.inf
        self._text = ""

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def update(self, text: str, fraction: float | None = None, force: bool = False) -> None:
        """Show `text`, after a bar filled to `fraction` (0..1) when given."""
        if fraction is not None:
            filled = int(round(20 * min(max(fraction, 0.0), 1.0)))
            text = f"[{'#' * filled}{'.' * (20 - filled)}] {fraction:4.0%} {text}"
        self._text = text
        now = time.perf_counter()
        if self.tty:
            print(f"\r[{self.label}] {text}\033[K", end="", file=self.stream, flush=True)
        elif force or now - self._last >= self.interval:
            print(f"[{self.label}] {text}", file=self.stream, flush=True)
            self._last = now

    def close(self) -> None:
        if self.tty and self._text:
            print(file=self.stream, flush=True)


def eta_text(seconds: float) -> str:
    """`, ETA 1m05s` for the remaining `seconds` ("" when unknown or none)."""
    if not math.isfinite(seconds) or seconds <= 0:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    text = f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes \
        else f"{secs}s"
    return f", ETA {text}"
