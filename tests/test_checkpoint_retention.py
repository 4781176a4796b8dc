"""CheckpointRetention never deletes a checkpoint an experiment snapshot in storage may point
to, keeps the newest `keep` of each trial, and cuts finished trials down to `keep`."""

from types import SimpleNamespace

import pyarrow.fs
import pytest

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
    resumed.get_state()  # Tune's final snapshot, taken before on_experiment_end
    resumed.on_experiment_end([])
    assert alive(other_dir) == [3, 4]


def test_without_snapshots_retention_fails_loudly_naming_the_ray_version(tmp_path, monkeypatch):
    """If Tune stopped calling Callback.get_state at its snapshots, nothing could be deleted
    safely: an error naming Ray's version, not checkpoints piling up in silence."""
    import ray

    from orchestrator.tune import checkpoint_retention

    retention = CheckpointRetention(keep=3)
    trial = SimpleNamespace(trial_id="t1")
    retention.on_checkpoint(0, [], trial, checkpoint(tmp_path / "t1", 0))
    with pytest.raises(checkpoint_retention.RetentionError, match=ray.__version__):
        retention.on_experiment_end([])
    monkeypatch.setattr(checkpoint_retention, "SNAPSHOT_TIMEOUT_S", 0.0)
    with pytest.raises(checkpoint_retention.RetentionError, match="get_state"):
        retention.on_checkpoint(0, [], trial, checkpoint(tmp_path / "t1", 1))


@pytest.mark.slow
def test_tune_calls_get_state_at_its_snapshots_and_retention_prunes(tmp_path, monkeypatch):
    """On a real Tune run (snapshots every second, as the sweep sets them), the callback is
    told of snapshots and the trial ends with `keep` checkpoints: the Tune behaviour the
    retention relies on, checked against the installed Ray."""
    import time

    import ray
    from ray import tune

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")

    def trainable(config):
        for step in range(12):
            directory = tmp_path / "ckpt" / str(step)
            directory.mkdir(parents=True)
            (directory / "state.pt").write_bytes(b"x")
            tune.report({"step": step}, checkpoint=tune.Checkpoint.from_directory(directory))
            time.sleep(0.4)

    retention = CheckpointRetention(keep=3)
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        tune.Tuner(trainable, run_config=tune.RunConfig(
            name="retention", storage_path=str(tmp_path / "store"), callbacks=[retention],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None), verbose=0)).fit()
    finally:
        ray.shutdown()
    assert retention._count >= 3
    (trial_dir,) = [p for p in (tmp_path / "store" / "retention").iterdir() if p.is_dir()]
    assert len(list(trial_dir.glob("checkpoint_*"))) == 3
