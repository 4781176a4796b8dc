"""A trial's result.json keeps every report when a scheduler pauses the trial and starts it
again (orchestrator.tune.result_log.ResultLog), where Ray Tune's JsonLoggerCallback copied
the storage's lagging copy over the driver's file and lost the reports since the last
sync. Both callbacks are Ray's real classes, driven as Tune drives them (start, results,
start again) on a trial whose staging directory and storage directory differ, as they do
in a sweep."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
import pytest
from ray.tune.logger import JsonLoggerCallback

from orchestrator.tune.result_log import ResultLog


class StagedTrial(SimpleNamespace):
    """What the callbacks read of a Tune trial (hashable, as a Trial is)."""
    __hash__ = object.__hash__


def staged_trial(tmp_path: Path):
    staging, storage = tmp_path / "staging", tmp_path / "storage"
    storage.mkdir()
    staging.mkdir()
    return StagedTrial(
        local_path=str(staging), config={"lr": 0.1}, checkpoint=object(),
        init_local_path=lambda: staging.mkdir(exist_ok=True),
        storage=SimpleNamespace(trial_fs_path=str(storage),
                                storage_filesystem=pyarrow.fs.LocalFileSystem()))


def sync(trial) -> None:
    """What the driver's sync does: the staging file to the storage."""
    shutil.copy(Path(trial.local_path, "result.json"), trial.storage.trial_fs_path)


@pytest.mark.parametrize("callback, kept", [(JsonLoggerCallback, [1, 2, 5]),
                                            (ResultLog, [1, 2, 3, 4, 5])])
def test_a_restarted_trial_keeps_the_reports_written_since_the_last_sync(tmp_path, callback,
                                                                          kept):
    trial, log = staged_trial(tmp_path), callback()
    log.log_trial_start(trial)
    for epoch in (1, 2):
        log.log_trial_result(epoch, trial, {"epoch": epoch})
    sync(trial)
    for epoch in (3, 4):  # reported, not yet synced, when the scheduler pauses the trial
        log.log_trial_result(epoch, trial, {"epoch": epoch})
    log.log_trial_start(trial)  # started again
    log.log_trial_result(5, trial, {"epoch": 5})
    rows = Path(trial.local_path, "result.json").read_text().splitlines()
    assert [json.loads(row)["epoch"] for row in rows] == kept


def test_a_resumed_driver_without_a_file_of_its_own_takes_the_storages(tmp_path):
    trial, log = staged_trial(tmp_path), ResultLog()
    Path(trial.storage.trial_fs_path, "result.json").write_text('{"epoch": 1}\n')
    log.log_trial_start(trial)
    log.log_trial_result(2, trial, {"epoch": 2})
    rows = Path(trial.local_path, "result.json").read_text().splitlines()
    assert [json.loads(row)["epoch"] for row in rows] == [1, 2]
