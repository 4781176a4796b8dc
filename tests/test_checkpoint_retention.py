"""CheckpointRetention never deletes a checkpoint an experiment snapshot in storage may point
to, keeps the newest `keep` of each trial, and cuts finished trials down to `keep`."""

from types import SimpleNamespace

import pyarrow.fs

from orchestrator.tune.checkpoint_retention import CheckpointRetention


def checkpoint(trial_dir, n):
    path = trial_dir / f"checkpoint_{n:06d}"
    path.mkdir(parents=True)
    (path / "state.pt").write_bytes(b"x")
    return SimpleNamespace(path=str(path), filesystem=pyarrow.fs.LocalFileSystem())


def alive(trial_dir):
    return sorted(int(p.name.split("_")[1]) for p in trial_dir.glob("checkpoint_*"))


def test_snapshot_references_survive_and_the_rest_is_pruned(tmp_path):
    retention = CheckpointRetention(keep=3)
    trial = SimpleNamespace(trial_id="t1")
    trial_dir = tmp_path / "t1"
    retention.get_state()  # snapshot A: the trial has no checkpoint yet
    for n in range(10):  # too few snapshots so far: nothing may be deleted
        retention.on_checkpoint(0, [], trial, checkpoint(trial_dir, n))
    assert alive(trial_dir) == list(range(10))
    retention.get_state()  # B points at 9
    retention.get_state()  # C points at 9
    for n in range(10, 20):
        retention.on_checkpoint(0, [], trial, checkpoint(trial_dir, n))
    assert alive(trial_dir) == list(range(9, 20))  # B or C may be what a resume reads
    retention.get_state()  # D points at 19; C (in history) still at 9
    retention.on_checkpoint(0, [], trial, checkpoint(trial_dir, 20))
    assert alive(trial_dir) == list(range(9, 21))
    retention.get_state()  # E at 20
    retention.get_state()  # F at 20: the history (D, E, F) starts at 19
    retention.on_checkpoint(0, [], trial, checkpoint(trial_dir, 21))
    assert alive(trial_dir) == [19, 20, 21]  # the newest 3, 19 among them


def test_finished_trials_are_cut_to_keep_and_a_resume_adopts_old_checkpoints(tmp_path):
    retention = CheckpointRetention(keep=2)
    trial = SimpleNamespace(trial_id="t2")
    trial_dir = tmp_path / "t2"
    for n in range(5):
        retention.on_checkpoint(0, [], trial, checkpoint(trial_dir, n))
    retention.on_trial_complete(0, [], trial)
    for _ in range(3):
        retention.get_state()
    assert len(alive(trial_dir)) == 5  # the end may not be recorded in storage yet
    retention.get_state()
    assert alive(trial_dir) == [3, 4]

    resumed = CheckpointRetention(keep=2)  # a new driver after --resume
    other_dir = tmp_path / "t3"
    for n in range(4):
        checkpoint(other_dir, n)  # left by the killed driver
    resumed.on_checkpoint(0, [], SimpleNamespace(trial_id="t3"), checkpoint(other_dir, 4))
    resumed.on_experiment_end([])
    assert alive(other_dir) == [3, 4]
