"""The project as a Ray cluster application, proven on this machine: a real multi-node Ray
cluster (`ray.cluster_utils.Cluster`: a head and worker nodes, each its own raylet), sweeps
and attack pools submitted to it through RAY_ADDRESS, and failures caused for real: a Ray
Train worker process killed, a worker node removed (the sweep driver killed: test_storage_s3;
checkpoints corrupted: test_driver_failures). In every case the final table must list exactly the
failure-free set of trials."""

import json
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import kill_when_running

# Each cluster keeps its files in the test's private Ray temp dir and its shutdown ends its own
# processes: these tests run beside others. The autoscaler's (`ray stop --force`) runs alone
# (test_autoscaling_cluster); a local sweep's driver killed is in test_storage_s3, its
# checkpoints corrupted in test_driver_failures.
pytestmark = pytest.mark.slow
SMOKE_TRIALS = {(16, "ffn"), (16, "gffn"), (128, "ffn"), (128, "gffn")}  # the smoke grid


def sweep_command(storage, *args):
    """The smoke sweep, every epoch checkpointed and reported (the failure tests need a
    checkpoint to resume from, and reports to watch, within a trial's first seconds)."""
    return [sys.executable, "-m", "orchestrator.sweep", "batch_size_gffn", "--profile",
            "smoke", "--storage", str(storage), "--wandb", "disabled", "--set",
            "checkpoint_every=1", "--set", "report_seconds=0", *map(str, args)]


def reports(sweep_dir):
    """Every trial's reports (Tune's result.json), by trial id."""
    out = {}
    for path in sweep_dir.glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def final_table(sweep_dir):
    table = pd.read_csv(sweep_dir / "results" / "trials.csv")
    assert table.trial_id.is_unique
    return table


def assert_failure_free_set(table, epochs):
    assert set(zip(table.batch_size, table.model)) == SMOKE_TRIALS and len(table) == 4
    assert (table.status == "completed").all() and (table.epochs == epochs).all()


def resumed_from_checkpoint(rows, lost_at, redo=3):
    """The reports after a worker change continue from a checkpoint, never from epoch 1,
    and redo at most `redo` epochs before `lost_at` (None: any number)."""
    changes = [i for i in range(1, len(rows)) if rows[i]["worker_pid"] != rows[i - 1]["worker_pid"]]
    assert changes, "no report came from a replacement worker"
    first = rows[changes[0]]
    assert first["epoch"] > 1, "the trial started over"
    if redo is not None:
        assert first["epoch"] >= lost_at - redo, (first["epoch"], lost_at)
    return first


def snapshotted(row):
    """A running trial whose checkpoints an experiment snapshot (every 1 s) has recorded."""
    return row.get("status") == "running" and row["loop_seconds"] >= 5


@pytest.fixture
def cluster_env(sweep_env, monkeypatch):
    """A 1-CPU head and a 1-CPU worker node, and the environment of a job submitted to them.

    Ray's token authentication is off for this test cluster: an earlier in-process
    `ray.init` of the test session may have switched this process to token mode, and the
    nodes and jobs must agree on one mode (a real cluster's nodes share a token)."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # inherited by the nodes started below
    monkeypatch.setenv("RAY_TMPDIR", sweep_env["RAY_TMPDIR"])  # the nodes' and the job's
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    env = {**sweep_env, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": cluster.address}
    yield cluster, worker, env
    cluster.shutdown()


def test_sweep_and_attack_pool_run_on_several_nodes(cluster_env, tmp_path):
    cluster, worker, env = cluster_env
    proc = subprocess.run(sweep_command(tmp_path / "runs"), env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"connecting to {cluster.address}" in proc.stdout
    (sweep_dir,) = (tmp_path / "runs").glob("batch_size_gffn-smoke-*")
    table = final_table(sweep_dir)
    assert_failure_free_set(table, epochs=1)
    assert table.node_id.nunique() == 2  # trials ran on the head and on the worker node

    trial = table.trial_id[0]
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.attack", str(sweep_dir), "--trial", trial,
         "--attack", "pgd", "--steps", "20", "--eps", "0.1", "--n", "160", "--batch-size",
         "20", "--num-actors", "2", "--wandb", "disabled"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (attack_dir,) = (sweep_dir / "attacks").glob(f"{trial}-pgd-*")
    summary = json.loads((attack_dir / "summary.json").read_text())
    assert len(summary["units_by_node"]) == 2  # one actor per node, both did units
    assert worker.node_id in summary["units_by_node"]
    assert sum(summary["units_by_node"].values()) == summary["units_computed"]


def test_worker_node_removed_mid_sweep_its_trials_are_rescheduled(cluster_env, tmp_path):
    cluster, worker, env = cluster_env
    driver = subprocess.Popen(sweep_command(tmp_path / "runs", "--set", "epochs_b=60"),
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    lost_trial, lost_at, deadline = None, None, time.time() + 180
    while lost_trial is None and time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
        for sweep_dir in (tmp_path / "runs").glob("batch_size_gffn-smoke-*"):
            for trial_id, rows in reports(sweep_dir).items():
                last = rows[-1]
                if last["node_id"] == worker.node_id and 3 <= last["epoch"] < 50:
                    lost_trial, lost_at = trial_id, last["epoch"]
    assert lost_trial is not None, "no trial was seen running on the worker node"
    cluster.remove_node(worker)  # the node's raylet and every process on it die
    cluster.add_node(num_cpus=1)  # a replacement, as an autoscaler would add
    output, _ = driver.communicate(timeout=400)
    assert driver.returncode == 0, output[-3000:]
    (sweep_dir,) = (tmp_path / "runs").glob("batch_size_gffn-smoke-*")
    table = final_table(sweep_dir)
    assert_failure_free_set(table, epochs=60)
    rows = reports(sweep_dir)[lost_trial]
    first = resumed_from_checkpoint(rows, lost_at)
    assert first["node_id"] != worker.node_id  # rescheduled on another node
    assert rows[-1]["epoch"] == 60


def test_ray_train_worker_killed_mid_trial_resumes_from_its_checkpoint(sweep_env, tmp_path):
    """A DDP trial (2 Ray Train workers): SIGKILL one worker process; Ray Train restarts the
    worker group from the latest checkpoint and the trial completes."""
    driver = subprocess.Popen(
        sweep_command(tmp_path / "runs", "--num-workers", 2, "--set", "batch_size=128",
                      "--set", "model=gffn", "--set", "epochs_b=60"),
        env=sweep_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, lost_at = time.time() + 180, None
    while lost_at is None and time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
        for sweep_dir in (tmp_path / "runs").glob("batch_size_gffn-smoke-*"):
            for rows in reports(sweep_dir).values():
                if rows[-1]["epoch"] >= 5:
                    lost_at = rows[-1]["epoch"]
    assert lost_at is not None, "the trial did not get going"
    killer, killed = kill_when_running("RayTrainWorker", timeout=30)
    killer.join()
    assert killed, "no Ray Train worker process was found"
    output, _ = driver.communicate(timeout=400)
    assert driver.returncode == 0, output[-3000:]
    (sweep_dir,) = (tmp_path / "runs").glob("batch_size_gffn-smoke-*")
    table = final_table(sweep_dir)
    assert len(table) == 1 and table.status[0] == "completed" and table.epochs[0] == 60
    (rows,) = reports(sweep_dir).values()
    resumed_from_checkpoint(rows, lost_at)
    assert rows[-1]["epoch"] == 60


def test_without_ray_address_a_sweep_starts_its_own_ray(sweep_env, monkeypatch, tmp_path):
    """A Ray left running on the machine (here a head with no CPU, recorded in Ray's
    ray_current_cluster file as `ray start` records it) is not joined by a sweep run
    without RAY_ADDRESS: `ray.init(address=None)` joined it, and this sweep then found
    "0 CPU" and refused to run."""
    import ray._private.services as services
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # where `ray start` records the Ray it leaves running: the temp dir the sweep uses too
    monkeypatch.setenv("RAY_TMPDIR", sweep_env["RAY_TMPDIR"])
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        assert services.find_bootstrap_address(None) == cluster.address  # the precondition
        env = {**sweep_env, "RAY_AUTH_MODE": "disabled"}
        proc = subprocess.run(sweep_command(tmp_path / "runs"), env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "starting Ray locally" in proc.stdout
        (sweep_dir,) = (tmp_path / "runs").glob("batch_size_gffn-smoke-*")
        assert_failure_free_set(final_table(sweep_dir), epochs=1)
    finally:
        cluster.shutdown()
