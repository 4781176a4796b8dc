"""A local sweep's failures caused for real: the driver killed mid-sweep (resumed from storage
given as a file:// URI), and checkpoints corrupted or poisoned after such a crash. Each driver
starts its own Ray in its own process group and only that group is killed, so these run beside
other tests (test_cluster_e2e's clusters run alone)."""

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
    resumed_from_checkpoint,
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


def test_driver_killed_mid_sweep_resume_finishes_without_rerunning(sweep_env, tmp_path):
    """Storage given as a URI (file://, the code path of s3://): the experiment and the
    checkpoints live there, the results table in ./runs of the driver.

    Two trials run side by side, one of 10 epochs and one of 200 (~30 s here), so that one
    has finished while the other is still running whatever the machine's speed: the driver
    is killed once that holds (four equal trials could all finish together)."""
    def one_done_one_running(trials):
        done = [t for t, rows in trials.items() if rows[-1].get("status") == "completed"]
        return done and any(snapshotted(rows[-1]) for rows in trials.values())

    storage = f"file://{tmp_path / 'store'}"
    grid = ["--set", "model=gffn", "--set", "batch_size=16", "--set", "epochs_b=10,200"]
    sweep_dir = start_and_kill_driver(storage, sweep_env, *grid,
                                      wait_for=one_done_one_running, cwd=tmp_path)
    before = reports(sweep_dir)
    finished = {t: rows for t, rows in before.items() if rows[-1]["status"] == "completed"}

    proc = subprocess.run(sweep_command(storage, *grid, "--resume"),
                          env=sweep_env, capture_output=True, text=True, timeout=400,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = final_table(tmp_path / "runs" / sweep_dir.name)
    # every trial exactly once, each to its own last epoch
    assert len(table) == 2 and (table.status == "completed").all()
    assert sorted(zip(table.epochs_b, table.epochs)) == [(10, 10), (200, 200)]
    after = reports(sweep_dir)
    for trial_id, rows in finished.items():
        assert after[trial_id] == rows  # a finished trial was not run again
    interrupted = [t for t in before if t not in finished]
    for trial_id in interrupted:
        # from the checkpoint the last experiment snapshot recorded: ~1 s of epochs lost
        resumed_from_checkpoint(after[trial_id], before[trial_id][-1]["epoch"], redo=None)


def test_corrupt_checkpoints_are_named_refused_and_the_sweep_goes_on(sweep_env, tmp_path):
    """After a driver crash, one trial's checkpoints are truncated and another's hold a
    pickle that would run code: on --resume both trials end as errors naming the file, no
    code runs, and the third trial (pending at the crash: 2 run at once) completes."""
    def two_running(trials):
        return sum(snapshotted(rows[-1]) for rows in trials.values()) >= 2

    storage = tmp_path / "runs"
    grid = ("--set", "model=gffn", "--set", "batch_size=128,256,512", "--set", "epochs_b=400")
    sweep_dir = start_and_kill_driver(storage, sweep_env, *grid, wait_for=two_running)
    running = [t for t, rows in reports(sweep_dir).items() if rows[-1]["status"] == "running"]
    truncated, poisoned = running[:2]
    marker = tmp_path / "code-from-a-checkpoint-ran"
    for state in sweep_dir.glob(f"*_{truncated}_*/checkpoint_*/state.pt"):
        state.write_bytes(state.read_bytes()[:200])
    poison = [str(p) for p in sweep_dir.glob(f"*_{poisoned}_*/checkpoint_*/state.pt")]
    subprocess.run([sys.executable, "-c", POISON, str(marker), *poison], check=True,
                   env=sweep_env)
    proc = subprocess.run(sweep_command(storage, *grid, "--resume"),
                          env=sweep_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # not a crash
    assert "some trials did not finish" in proc.stderr
    assert not marker.exists()
    table = final_table(sweep_dir).set_index("trial_id")
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
