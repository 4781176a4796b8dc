"""A sweep on Ray's fake multi-node autoscaler (`ray.cluster_utils.AutoscalingCluster`):
worker nodes are started as real raylets on this machine when the sweep's trials ask for room.
Its start and end run `ray stop --force`, which ends every Ray on the machine: it runs alone
(`make test` runs the tests marked `alone` after the others)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cluster_e2e import final_table, reports, sweep_command

pytestmark = [pytest.mark.slow, pytest.mark.alone]


# Ray's fake multi-node provider (every node a raylet on this machine), in the cluster
# launcher's schema. Ray's wheel leaves out the provider's defaults file, which both
# `AutoscalingCluster` and the autoscaler's monitor read; the fixture supplies this one.
FAKE_PROVIDER_DEFAULTS = {
    "cluster_name": "fake-autoscaling", "max_workers": 2, "upscaling_speed": 1.0,
    "idle_timeout_minutes": 1.0, "head_node_type": "ray.head.default",
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                 "disable_node_updaters": True, "disable_launch_config_check": True},
    "available_node_types": {"ray.head.default": {"resources": {}, "node_config": {},
                                                  "max_workers": 0}},
    "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
    "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
    "worker_setup_commands": [], "head_start_ray_commands": [],
    "worker_start_ray_commands": []}


@pytest.fixture
def autoscaling_env(sweep_env, monkeypatch):
    """Ray's fake multi-node autoscaler (`AutoscalingCluster`): a head that offers no CPU to
    trials (as cluster.yaml's) and a worker type of 1 CPU, 0 to 2 nodes, launched as real
    raylets when trials ask for room. Its start and end run `ray stop --force`."""
    import ray.autoscaler._private.fake_multi_node as fake_multi_node
    import yaml
    from ray.cluster_utils import AutoscalingCluster

    defaults = Path(fake_multi_node.__file__).parent / "example.yaml"
    supplied = not defaults.exists()
    if supplied:
        defaults.write_text(yaml.safe_dump(FAKE_PROVIDER_DEFAULTS))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # `ray start` / `ray stop` run as commands: the ones of this interpreter's environment
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cluster = AutoscalingCluster(
        head_resources={"CPU": 0},
        worker_node_types={"cpu_node": {"resources": {"CPU": 1}, "node_config": {},
                                        "min_workers": 0, "max_workers": 2}})
    try:
        cluster.start(override_env={"RAY_AUTH_MODE": "disabled"})
        env = {**sweep_env, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "auto"}
        env.pop("RAY_TMPDIR", None)  # the job joins the cluster's session
        yield env
    finally:
        cluster.shutdown()
        if supplied:
            defaults.unlink()


def test_autoscaling_cluster_runs_trials_on_two_new_nodes_at_once(autoscaling_env, tmp_path):
    """4 trials on a cluster whose head has no CPU: the sweep sets no concurrency cap, the
    autoscaler sees all four trials' demand and starts both worker nodes, and trials run
    on the two of them at the same time (one trial at a time before the fix)."""
    proc = subprocess.run(sweep_command(tmp_path / "runs", "--set", "batch_size=16,32",
                                        "--set", "epochs_b=150"),
                          env=autoscaling_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "as many trials at once as the cluster grows to" in proc.stdout
    (sweep_dir,) = (tmp_path / "runs").glob("batch_size_gffn-smoke-*")
    assert (final_table(sweep_dir).status == "completed").all()
    spans = {trial: (rows[0]["node_id"], rows[0]["timestamp"], rows[-1]["timestamp"])
             for trial, rows in reports(sweep_dir).items()}
    assert len(spans) == 4 and len({node for node, _, _ in spans.values()}) == 2
    overlapping = [(a, b) for a, (node_a, start_a, end_a) in spans.items()
                   for b, (node_b, start_b, end_b) in spans.items()
                   if a < b and node_a != node_b and start_a < end_b and start_b < end_a]
    assert overlapping, spans
