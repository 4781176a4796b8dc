"""Trial checkpoints that a resumed sweep can always find.

Tune's own `CheckpointConfig(num_to_keep=k)` deletes a trial's checkpoint as soon as k newer
ones exist. The experiment snapshot that `--resume` reads is written separately (every few
seconds), so with short epochs a driver killed between the two leaves a snapshot pointing
at a deleted checkpoint, and Tune gives up on that trial ("Could not recover from
checkpoint as it does not exist on storage anymore"; seen in tests with 20 ms epochs).

`CheckpointRetention` replaces `num_to_keep`: it deletes a checkpoint only when it is older
than the trial's newest `keep` checkpoints *and* older than every checkpoint the last
`HISTORY` experiment snapshots recorded for the trial (Tune uploads a snapshot
asynchronously and skips an upload while the previous one runs, so the one in storage may
be a few snapshots old). A finished trial is cut down to `keep` checkpoints once later
snapshots record it as finished, and every trial at the end of the experiment (after
Tune's final, waited-for snapshot).

A checkpoint that Tune holds as a trial's current one is never deleted: under Population
Based Training a clone waiting to start holds its donor's checkpoint, which the donor's
later checkpoints would otherwise push out (seen: "Could not recover from checkpoint as it
does not exist on storage anymore" for a PB2 clone).

Tune calls `get_state` on every callback whenever it saves the experiment's state (the
public `Callback.get_state`, "called automatically by Tune to periodically checkpoint
callback state"), which is how the callback knows a snapshot was taken. That it is called
once per snapshot is Tune's behaviour, not its documented promise: if a Tune version stops
calling it, nothing is deleted, so the callback fails loudly (`RetentionError`, naming the
Ray version) instead of letting checkpoints pile up; `tests/test_checkpoint_retention.py`
checks the behaviour on a real Tune run.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from ray.tune import Callback

HISTORY = 3  # snapshots that may still be the one in storage
# Tune snapshots the experiment every TUNE_GLOBAL_CHECKPOINT_S (the sweep sets 1-60 s); no
# get_state call in this long after the first checkpoint means Tune no longer calls it.
SNAPSHOT_TIMEOUT_S = 300.0


class RetentionError(RuntimeError):
    """Tune did not report its experiment snapshots: retention cannot delete safely."""

    def __init__(self, why: str):
        import ray

        super().__init__(f"CheckpointRetention: {why} with Ray {ray.__version__}; old "
                         f"checkpoints cannot be deleted safely. Use a Ray version the "
                         f"suite has passed on (pyproject.toml pins it).")


class CheckpointRetention(Callback):
    def __init__(self, keep: int = 3):
        self.keep = keep
        self._paths: dict[str, list[str]] = {}    # trial id -> its live checkpoints, oldest first
        self._snapshots: deque[dict[str, str]] = deque(maxlen=HISTORY)  # newest per trial
        self._count = 0                            # snapshots seen
        self._finished: dict[str, int] = {}        # trial id -> snapshots seen when it ended
        self._filesystem = None
        self._first_checkpoint: float | None = None  # monotonic time
        self._trials: list = []                    # Tune's trials (their current checkpoints)

    def __getstate__(self):  # Tune pickles callbacks with the experiment: keep the setting only
        return {"keep": self.keep}

    def __setstate__(self, state):
        self.__init__(**state)

    def get_state(self) -> dict | None:
        """Called by Tune at each experiment snapshot: remember what it points to."""
        self._snapshots.append({t: paths[-1] for t, paths in self._paths.items() if paths})
        self._count += 1
        for trial_id, ended in list(self._finished.items()):
            if self._count > ended + HISTORY:  # a snapshot recording the end is in storage
                self._delete(trial_id, len(self._paths.get(trial_id, [])) - self.keep)
                del self._finished[trial_id]
        return None

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._finished[trial.trial_id] = self._count

    def on_experiment_end(self, trials: list, **info) -> None:
        if self._paths and self._count == 0:
            raise RetentionError("Tune never called Callback.get_state at a snapshot")
        for trial_id, paths in self._paths.items():  # the final snapshot is written
            self._delete(trial_id, len(paths) - self.keep)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any,
                      **info) -> None:
        self._filesystem = checkpoint.filesystem
        self._trials = trials
        if self._first_checkpoint is None:
            self._first_checkpoint = time.monotonic()
        elif self._count == 0 and time.monotonic() - self._first_checkpoint > SNAPSHOT_TIMEOUT_S:
            raise RetentionError(f"no Callback.get_state call in {SNAPSHOT_TIMEOUT_S:.0f} s "
                                 f"of checkpoints")
        paths = self._paths.get(trial.trial_id)
        if paths is None:  # first checkpoint seen for this trial, e.g. after --resume
            paths = self._paths[trial.trial_id] = self._existing(checkpoint.path)
        if checkpoint.path not in paths:
            paths.append(checkpoint.path)
        self._prune(trial.trial_id)

    def _existing(self, path: str) -> list[str]:
        """The trial's checkpoint directories already in storage (from before a resume)."""
        import pyarrow.fs

        parent = path.rsplit("/", 1)[0]
        infos = self._filesystem.get_file_info(pyarrow.fs.FileSelector(parent))
        return sorted(i.path for i in infos if i.type == pyarrow.fs.FileType.Directory
                      and i.base_name.startswith("checkpoint_") and i.path != path)

    def _prune(self, trial_id: str) -> None:
        paths = self._paths[trial_id]
        if len(self._snapshots) < HISTORY:
            return  # too few snapshots taken to know one is in storage: delete nothing
        cut = len(paths) - self.keep
        for snapshot in self._snapshots:
            if snapshot.get(trial_id) in paths:
                cut = min(cut, paths.index(snapshot[trial_id]))
        self._delete(trial_id, cut)

    def _held(self) -> set[str]:
        """The checkpoints Tune holds as trials' current ones (a clone: its donor's)."""
        return {t.checkpoint.path for t in self._trials if getattr(t, "checkpoint", None)}

    def _delete(self, trial_id: str, count: int) -> None:
        """Delete the trial's `count` oldest checkpoints but those a trial holds."""
        paths = self._paths.get(trial_id, [])
        if count <= 0:
            return
        held, kept = self._held(), []
        for path in paths[:count]:
            if path in held:
                kept.append(path)
                continue
            try:
                self._filesystem.delete_dir(path)
            except (FileNotFoundError, OSError):
                pass  # already gone
        paths[:count] = kept
