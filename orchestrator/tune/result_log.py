"""Each trial's result.json (its every report, which reports/collect.py reads back as the
trial's epochs): Ray Tune's `JsonLoggerCallback`, without losing reports.

The driver writes a trial's result.json in its staging directory and syncs it to the
storage with the experiment's snapshots. Tune's callback copies the storage's copy over the
staging file each time the trial (re)starts, to resume a file written by an earlier
driver; but a trial that a scheduler paused and started again (hyperband, pbt, pb2) then
got the storage's copy, which lags the staging file by the reports since the last sync:
they were lost (seen under PBT: a trial's result.json missing epochs 4-6). Here the
storage's copy is taken only when the driver has none of its own (a resumed driver).
"""

from __future__ import annotations

from pathlib import Path

from ray.tune.logger import JsonLoggerCallback


class ResultLog(JsonLoggerCallback):
    def _restore_from_remote(self, file_name: str, trial) -> None:
        if Path(trial.local_path, file_name).exists():
            return  # this driver's own file: newer than the storage's copy
        super()._restore_from_remote(file_name, trial)
