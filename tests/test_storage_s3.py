"""Sweeps on S3: a real S3 API on localhost (moto's server mode) as `--storage
s3://bucket/runs?endpoint_override=...`, the way a user points at MinIO. The smoke sweeps
give the same trials.csv, ood.csv and W&B `ood` tables as on local storage (the final
artifacts, checkpoints and the Ray Train path's checkpoint paths all read through the
storage's filesystem), and a driver killed mid-sweep resumes from S3."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow.fs
import pytest
from conftest import free_port
from test_cluster_e2e import resumed_from_checkpoint

from orchestrator.tracking.offline import find_offline_runs

pytestmark = pytest.mark.slow
# Columns that differ between any two runs of the same trials (where and when they ran).
VOLATILE = ("trial_id", "trial_dir", "node_id", "worker_pid", "date", "timestamp", "pid",
            "hostname", "node_ip", "time_total_s", "loop_seconds", "train_seconds",
            "time_this_iter_s", "time_since_restore", "checkpoint_dir_name",
            "checkpoint_path", "experiment_tag", "data_dir", "reported_at")


@pytest.fixture
def s3(sweep_env, request):
    """(storage URI, environment, filesystem, bucket) of a new bucket on a moto S3 server
    (moto keeps buckets in process-wide memory: each test gets its own)."""
    import boto3
    from moto.server import ThreadedMotoServer

    bucket = "sweeps-" + request.node.name.lower().replace("_", "-").replace("[", "-")[:40]
    bucket = "".join(c for c in bucket if c.isalnum() or c == "-").strip("-")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                 aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    uri = (f"s3://{bucket}/runs?endpoint_override={host}:{port}&scheme=http"
           f"&region=us-east-1")
    filesystem = pyarrow.fs.S3FileSystem(access_key="testing", secret_key="testing",
                                         endpoint_override=f"{host}:{port}", scheme="http",
                                         region="us-east-1")
    yield uri, {**sweep_env, **keys}, filesystem, bucket
    server.stop()


def sweep(name, storage, env, cwd, *args, check=True):
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "orchestrator.sweep", name, "--profile",
                           "smoke", "--storage", str(storage), "--wandb", "offline", *args],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def results(run_dir):
    """trials.csv and, where the sweep has one, ood.csv, without the columns that differ
    run to run, in trial order; and the reliability bins by trial config."""
    def stable(frame):
        frame = frame.drop(columns=[c for c in VOLATILE if c in frame.columns])
        return frame.sort_values(list(frame.columns[:4])).reset_index(drop=True)

    trials = pd.read_csv(run_dir / "results" / "trials.csv")
    keys = [c for c in ("model", "batch_size", "alpha", "dequantization") if c in trials]
    path = run_dir / "results" / "ood.csv"
    ood = stable(pd.read_csv(path)) if path.exists() else None
    reliability = json.loads((run_dir / "results" / "reliability.json").read_text())
    by_config = {tuple(row[keys]): reliability.get(row.trial_id)
                 for _, row in trials.iterrows()}
    return stable(trials), ood, by_config


def wandb_ood_tables(run_dir):
    """The rows of every W&B `ood` table of the sweep's offline runs (each trial's, and the
    summary run's), without the columns that differ run to run, as sorted row lists."""
    tables = []
    for run in find_offline_runs(run_dir):
        for table in run.glob("files/media/table/ood_*.table.json"):
            logged = json.loads(table.read_text())
            keep = [i for i, c in enumerate(logged["columns"]) if c not in VOLATILE]
            tables.append(sorted(tuple(round(row[i], 6) if isinstance(row[i], float)
                                       else row[i] for i in keep) for row in logged["data"]))
    return sorted(tables)


@pytest.mark.parametrize("name, args", [("batch_size_gffn", ()),
                                        ("alpha_diglm", ("--num-workers", "2"))])
def test_smoke_sweep_on_s3_matches_local_storage(s3, tmp_path, request, name, args):
    """The in-process path (batch_size_gffn) and the Ray Train path (alpha_diglm, 2 DDP
    workers: its final artifacts are found through a checkpoint path in S3). The local
    sweeps are the ones test_sweep_e2e and test_generative_e2e check (conftest)."""
    uri, env, filesystem, bucket = s3
    if name == "alpha_diglm":
        _, local_run = request.getfixturevalue("alpha_diglm_ddp_sweep")
    else:
        _, local_run, _ = request.getfixturevalue("gffn_smoke_sweep")
    sweep(name, uri, env, tmp_path / "s3", *args)
    (s3_run,) = (tmp_path / "s3" / "runs").glob(f"{name}-smoke-*")  # results, W&B runs
    local_trials, local_ood, local_reliability = results(local_run)
    s3_trials, s3_ood, s3_reliability = results(s3_run)
    assert (s3_trials.status == "completed").all()
    pd.testing.assert_frame_equal(s3_trials, local_trials, check_exact=False, rtol=1e-5)
    assert s3_reliability == local_reliability and all(s3_reliability.values())
    if name == "alpha_diglm":  # the sweeps with an OOD stage table (ood.csv, W&B `ood`)
        assert len(s3_ood) > 0
        pd.testing.assert_frame_equal(s3_ood, local_ood, check_exact=False, rtol=1e-5)
        assert wandb_ood_tables(s3_run) == wandb_ood_tables(local_run) != []
    # checkpoints and the sweep record are in the bucket, not on the local disk
    listing = filesystem.get_file_info(pyarrow.fs.FileSelector(f"{bucket}/runs/{s3_run.name}",
                                                               recursive=True))
    names = {info.base_name for info in listing}
    assert {"sweep.json", "tuner.pkl", "state.pt", "final.json"} <= names
    assert not list(s3_run.rglob("state.pt"))


def test_driver_killed_mid_sweep_resumes_from_s3(s3, tmp_path):
    """The driver killed (with its local Ray) once one trial has finished and the other is
    running: --resume restores the experiment from S3, the finished trial is not run again,
    the interrupted one continues from its checkpoint, and each appears once.

    The two trials run side by side, one of 10 epochs and one of 200 (~30 s here), so that
    one has finished while the other is still running whatever the machine's speed."""
    uri, env, filesystem, bucket = s3
    cwd = tmp_path / "driver"
    cwd.mkdir()
    grid = ["--set", "model=gffn", "--set", "batch_size=16", "--set", "epochs_b=10,200",
            "--set", "checkpoint_every=1", "--set", "report_seconds=0"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.sweep", "batch_size_gffn", "--profile", "smoke",
         "--storage", uri, "--wandb", "disabled", *grid],
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)

    def files(prefix):
        listing = filesystem.get_file_info(pyarrow.fs.FileSelector(
            f"{bucket}/runs", recursive=True, allow_not_found=True))
        return [i.path for i in listing if i.base_name.startswith(prefix)]

    def reports():
        """Every trial's reports in S3 (Tune's result.json), by trial id."""
        out = {}
        for path in files("result.json"):
            with filesystem.open_input_stream(path) as stream:
                rows = [json.loads(x) for x in stream.read().decode().splitlines() if x]
            if rows:
                out[rows[0]["trial_id"]] = rows
        return out

    def finished_in_snapshot():
        """The trials Tune's experiment snapshot in S3 (beside tuner.pkl) records as
        terminated, once it also records one running 3 s into its run, so a resume has a
        checkpoint to start it from; else none. Tune's own status, not the trial's last
        report: a trial's final report comes before Tune marks it terminated, and a trial
        the snapshot records as running is run again from its last checkpoint on resume.
        (A trial's own result.json in S3 is not enough: it is uploaded with the snapshot, so
        it may lag the trial, and a trial the snapshot records without a checkpoint restarts
        from epoch 1 on resume.)
        Tune rewrites the snapshot while we poll: pyarrow sizes the object, then reads it,
        so a read that straddles a rewrite is cut short (or the file is gone): not yet."""
        if not files("tuner.pkl"):
            return set()
        for path in files("experiment_state-"):
            try:
                with filesystem.open_input_stream(path) as stream:
                    snapshot = json.loads(stream.read().decode())
            except (json.JSONDecodeError, FileNotFoundError):
                continue
            trials = []  # (Tune's status, trial id, last report)
            for state, runtime in snapshot["trial_data"]:
                state = json.loads(state) if isinstance(state, str) else state
                runtime = json.loads(runtime) if isinstance(runtime, str) else runtime
                trials.append((state["status"], state["trial_id"],
                               runtime.get("last_result") or {}))
            if any(status == "RUNNING" and last.get("loop_seconds", 0) >= 3
                   for status, _, last in trials):
                return {trial_id for status, trial_id, _ in trials if status == "TERMINATED"}
        return set()

    deadline, finished = time.time() + 240, set()
    while time.time() < deadline and driver.poll() is None and not finished:
        time.sleep(0.5)
        finished = finished_in_snapshot()
    assert driver.poll() is None, "the sweep ended before the driver could be killed"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its local Ray
    driver.wait()
    sweep("batch_size_gffn", uri, env, cwd, *grid, "--resume")
    (run_dir,) = (cwd / "runs").glob("batch_size_gffn-smoke-*")
    table = pd.read_csv(run_dir / "results" / "trials.csv")
    assert len(table) == 2 and table.trial_id.is_unique  # every trial exactly once
    assert (table.status == "completed").all()
    assert sorted(zip(table.epochs_b, table.epochs)) == [(10, 10), (200, 200)]
    runs = filesystem.get_file_info(pyarrow.fs.FileSelector(f"{bucket}/runs"))
    assert [r.base_name for r in runs] == [run_dir.name]  # resumed, no second run
    after = reports()
    (done,) = finished
    # the finished trial was not run again: every report from one process, no epoch twice
    assert len({row["worker_pid"] for row in after[done]}) == 1
    epochs = [row["epoch"] for row in after[done]]
    assert epochs == sorted(set(epochs))
    (interrupted,) = set(after) - finished
    # from the checkpoint the last snapshot recorded, never from epoch 1
    resumed_from_checkpoint(after[interrupted], lost_at=None, redo=None)


def test_a_bucket_that_does_not_exist_is_named_before_ray_starts(s3, tmp_path):
    """The S3 server answers but the bucket is not there: exit 2, one line naming the
    storage, no traceback, nothing started (the old check let it through to a traceback
    once Tune wrote there)."""
    uri, env, _, bucket = s3
    missing = uri.replace(f"s3://{bucket}/", "s3://no-such-bucket-here/")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.sweep", "batch_size_gffn",
                           "--profile", "smoke", "--storage", missing, "--wandb", "disabled"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert "s3://no-such-bucket-here/runs" in line and "cannot write there" in line
    assert "starting Ray" not in proc.stdout and not (tmp_path / "runs").exists()
    assert time.monotonic() - started < 120
