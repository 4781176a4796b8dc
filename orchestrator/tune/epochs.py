"""The epoch driver: runs any train loop (`workloads.training.loop.EpochLoop`) through a
`Session`, on both training paths (Tune in-process and Ray Train DDP).

What every loop shares is here, once: restore from the latest checkpoint (a trial whose
final checkpoint was written reports its result again), the epochs, divergence
(`status="diverged"`), the best validation epoch and its weights, early stopping, the
checkpoint clock, the reports (batched by the session), the schedule of a population's
trial (`record_schedule`), and the final stage on rank 0 while the other ranks wait at the
collective report.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from orchestrator.tune.schedulers import SCHEDULE_KEYS
from orchestrator.tune.session import Session
from workloads.training.loop import EpochLoop, unwrap

# A loop's factory: (config, worker) -> its EpochLoop, model and data built.
LoopFactory = Callable[[dict[str, Any], Session], EpochLoop]


class CheckpointClock:
    """When a running trial saves a checkpoint: every `checkpoint_every` epochs, or (with
    `checkpoint_every` 0, the default) once `checkpoint_seconds` (default 30) of the trial
    have passed since the last one; the end of a trial always saves. A failure loses at
    most that much work; tiny epochs no longer pay for a checkpoint each."""

    def __init__(self, config: dict[str, Any]):
        self.every = int(config.get("checkpoint_every", 0) or 0)
        self.seconds = float(config.get("checkpoint_seconds", 30.0))
        self.last = time.monotonic()

    def due(self, epoch: int) -> bool:
        if self.every > 0:
            return (epoch + 1) % self.every == 0
        if time.monotonic() - self.last < self.seconds:
            return False
        self.last = time.monotonic()
        return True


def _finite(metrics: dict[str, Any], keys: tuple[str, ...]) -> bool:
    return all(math.isfinite(metrics.get(key, math.nan)) for key in keys)


def _fresh_state(loop: EpochLoop) -> dict[str, Any]:
    state = {"epoch": -1, "steps": 0, "train_seconds": 0.0, **loop.initial_state()}
    if loop.best is not None:
        metric, mode = loop.best
        state.update({f"best_{metric}": -math.inf if mode == "max" else math.inf,
                      "best_epoch": -1, "best_model": None})
    return state


def _improved(loop: EpochLoop, metrics: dict[str, Any], state: dict[str, Any]) -> bool:
    metric, mode = loop.best
    value, best = metrics[metric], state[f"best_{metric}"]
    return value > best if mode == "max" else value < best


SCHEDULE = "schedule"  # state and final artifacts: the segments that ran


def record_schedule(config: dict[str, Any], state: dict[str, Any], trial_id: str) -> None:
    """What a trial under Population Based Training actually ran, kept in its state (and
    so in its checkpoints, which a clone inherits with the weights): a segment per run of
    the loop whose trial or values of the `schedule_keys` differ from the last one's,
    `{"from_epoch": first epoch it trains (1-based), "trial_id": who ran it, key: value}`.
    The segments before a clone's exploit are its donor's lineage."""
    keys = [k for k in str(config.get(SCHEDULE_KEYS) or "").split("+") if k]
    if not keys:
        return
    segment = {"from_epoch": state["epoch"] + 2, "trial_id": trial_id,
               **{k: config[k] for k in keys}}
    schedule = state.setdefault(SCHEDULE, [])
    same = ("trial_id", *keys)
    if not schedule or any(schedule[-1].get(k) != segment[k] for k in same):
        schedule.append(segment)


def run_epochs(make_loop: LoopFactory, config: dict[str, Any], session: Session) -> None:
    """Train the loop `make_loop(config, session)` builds, reporting through `session`.

    Reports every epoch: `epoch` (1-based), the loop's training metrics, `steps`,
    `train_seconds` (the training epochs only), its validation metrics, `loop_seconds`
    (wall time of this run of the loop, data loading included) and `status` ("running",
    then "completed" or "diverged" with `diverged_epoch`). The last report adds the loop's
    `epochs_metric`, `best_epoch` (a loop with a best epoch) and the final stage's metrics;
    its checkpoint keeps them (`final_metrics`) and the final artifacts (final.json).
    """
    loop_started = time.perf_counter()
    clock = CheckpointClock(config)
    torch.manual_seed(config["seed"])
    loop = make_loop(config, session)

    state, final_artifacts = session.restore()
    if state is not None and "final_metrics" in state and (
            loop.patience is not None or state["epoch"] + 1 >= loop.epochs):
        # Restarted after its final checkpoint was written: report the result again.
        session.report(state["final_metrics"], state=state, final=final_artifacts)
        return
    if state is None:
        state = _fresh_state(loop)
    else:
        state = {**loop.initial_state(), **state}  # entries a later version added
        loop.load_state_dict(state)
    record_schedule(config, state, session.trial_id)

    for epoch in range(state["epoch"] + 1, loop.epochs):
        started = time.perf_counter()
        train = loop.train_epoch(epoch)
        state["train_seconds"] += time.perf_counter() - started
        state["steps"] += train.pop("steps")
        state["epoch"] = epoch
        metrics = {"epoch": epoch + 1, **train, "steps": state["steps"],
                   "train_seconds": state["train_seconds"]}
        if math.isfinite(metrics["train_loss"]):
            metrics.update(loop.validate(epoch, state))
        metrics["loop_seconds"] = time.perf_counter() - loop_started
        if not _finite(metrics, loop.diverges_on):
            session.report({**metrics, **{key: math.nan for key in loop.nan_when_diverged},
                            "status": "diverged", "diverged_epoch": epoch + 1})
            return
        if loop.best is not None and _improved(loop, metrics, state):
            state.update({f"best_{loop.best[0]}": metrics[loop.best[0]], "best_epoch": epoch})
            if loop.keep_best_weights:
                state["best_model"] = copy.deepcopy(unwrap(loop.model).state_dict())
        patience_over = (loop.patience is not None
                         and epoch - state["best_epoch"] >= loop.patience)
        state.update(loop.state_dict())
        if not (patience_over or epoch + 1 == loop.epochs):
            session.report({**metrics, "status": "running"},
                           state=state if clock.due(epoch) else None)
            continue
        if loop.best is not None:
            metrics["best_epoch"] = state["best_epoch"] + 1
        metrics.update({loop.epochs_metric: epoch + 1, "status": "completed"})
        if session.rank != 0:  # rank 0 evaluates; the others wait at the collective report
            session.report(metrics)
            return
        session.progress("final stage")
        final, artifacts = loop.final_stage(loop.evaluated(state), state, session.progress)
        if SCHEDULE in state:
            artifacts = {**artifacts, SCHEDULE: state[SCHEDULE]}
        metrics.update(final, loop_seconds=time.perf_counter() - loop_started)
        state["final_metrics"] = metrics
        session.report(metrics, state=state, final=artifacts)
        return
