"""A local sweep's checkpoints corrupted or poisoned after the driver was killed mid-sweep, for
real, with the storage given as a file:// URI (the driver killed and resumed with nothing
corrupted: test_storage_s3, from S3). The driver starts its own Ray in its own process group
and only that group is killed, so this runs beside other tests (test_cluster_e2e's clusters
run alone)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cluster_e2e import (
    final_table,
    reports,
    snapshotted,
    sweep_command,
)

pytestmark = pytest.mark.slow


def start_and_kill_driver(storage, env, *args, wait_for, cwd=None):
    """Start a sweep in its own process group and SIGKILL the group (the driver and the
    local Ray it started) once `wait_for(reports)` holds. Returns the sweep directory."""
    driver = subprocess.Popen(sweep_command(storage, *args), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True,
                              cwd=cwd)
    where = Path(str(storage).removeprefix("file://"))
    deadline = time.time() + 180
    while time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
        dirs = list(where.glob("batch_size_gffn-smoke-*"))
        if dirs and wait_for(reports(dirs[0])):
            break
    assert driver.poll() is None, "the sweep ended before the driver could be killed"
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    (sweep_dir,) = where.glob("batch_size_gffn-smoke-*")
    return sweep_dir


def test_corrupt_checkpoints_are_named_refused_and_the_sweep_goes_on(sweep_env, tmp_path):
    """After a driver crash, one trial's checkpoints are truncated and another's hold a
    pickle that would run code: on --resume both trials end as errors naming the file, no
    code runs, and the third trial (pending at the crash: 2 run at once) completes."""
    def two_running(trials):
        return sum(snapshotted(rows[-1]) for rows in trials.values()) >= 2

    storage = f"file://{tmp_path / 'store'}"  # a URI: the code path of s3://
    grid = ("--set", "model=gffn", "--set", "batch_size=128,256,512", "--set", "epochs_b=400")
    sweep_dir = start_and_kill_driver(storage, sweep_env, *grid, wait_for=two_running,
                                      cwd=tmp_path)
    running = [t for t, rows in reports(sweep_dir).items() if rows[-1]["status"] == "running"]
    truncated, poisoned = running[:2]
    marker = tmp_path / "code-from-a-checkpoint-ran"
    for state in sweep_dir.glob(f"*_{truncated}_*/checkpoint_*/state.pt"):
        state.write_bytes(state.read_bytes()[:200])
    poison = [str(p) for p in sweep_dir.glob(f"*_{poisoned}_*/checkpoint_*/state.pt")]
    subprocess.run([sys.executable, "-c", POISON, str(marker), *poison], check=True,
                   env=sweep_env)
    proc = subprocess.run(sweep_command(storage, *grid, "--resume"),
                          env=sweep_env, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # not a crash
    assert "some trials did not finish" in proc.stderr
    assert not marker.exists()
    # the experiment in the storage, the results table in ./runs of the driver
    table = final_table(tmp_path / "runs" / sweep_dir.name).set_index("trial_id")
    assert len(table) == 3
    for trial_id in (truncated, poisoned):
        assert table.loc[trial_id, "status"] == "error"
        assert "state.pt" in table.loc[trial_id, "error"]
        assert "corrupt" in table.loc[trial_id, "error"]
    others = table.drop(index=[truncated, poisoned])
    assert (others.status == "completed").all()


POISON = """
import sys, torch
class Payload:
    def __reduce__(self):
        return (open, (sys.argv[1], "w"))  # loading this would create the marker file
for path in sys.argv[2:]:
    torch.save({"model": Payload()}, path)
"""
