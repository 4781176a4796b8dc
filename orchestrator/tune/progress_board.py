"""Where a running trial says what it is doing between its reports: a small named Ray actor
that the sweep's driver starts and its console reads.

A trial's epochs reach the driver with its reports; its final stage (fitting scores, scoring
every OOD set, importance-weighted passes) may run for minutes without one, and a report
cannot be sent from there (on the Ray Train path only rank 0 evaluates, while the other
ranks wait at the next collective report). So the final stage tells `trial_progress(...)`
its step, which sends it, fire-and-forget, to the board; the console shows it beside the
trial. Works on both trial paths and on every node of a cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import ray

BOARD_PREFIX = "progress-board-"


@ray.remote(num_cpus=0, max_restarts=0)
class ProgressBoard:
    """The latest stage of each trial that sent one: trial id -> (text, time sent)."""

    def __init__(self) -> None:
        self.stages: dict[str, tuple[str, float]] = {}

    def say(self, trial_id: str, text: str, sent: float) -> None:
        self.stages[trial_id] = (text, sent)

    def snapshot(self) -> dict[str, tuple[str, float]]:
        return dict(self.stages)


def board_name(run_name: str) -> str:
    return BOARD_PREFIX + run_name


def start_board(run_name: str):
    """The sweep's board (a handle), started by the driver; it ends with the driver's Ray."""
    return ProgressBoard.options(name=board_name(run_name), get_if_exists=True).remote()


def read_board(board, timeout: float = 2.0) -> dict[str, tuple[str, float]]:
    """The board's stages, or {} when it does not answer within `timeout` seconds (the
    console must never hang on it)."""
    try:
        return ray.get(board.snapshot.remote(), timeout=timeout)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
        return {}


def trial_progress(board: str | None, trial_id: str | None) -> Callable[[str], None]:
    """`progress(text)` for a trial's final stage: sends `text` to the board named `board`
    (a no-op without a board or outside Ray). Never raises: progress is not worth a trial."""
    if not board or not trial_id:
        return _ignore
    try:
        handle = ray.get_actor(board)
    except ValueError:  # no such board (e.g. a sweep run with --verbose)
        return _ignore

    def progress(text: str) -> None:
        try:
            handle.say.remote(trial_id, text, time.time())
        except Exception:  # the board is gone: the driver is ending
            pass

    return progress


def _ignore(text: str) -> None:
    return None
