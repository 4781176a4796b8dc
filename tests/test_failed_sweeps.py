"""Sweeps in which no trial completes end cleanly, for real: every trial diverges (a huge
learning rate), or every trial raises (energy fine-tuning with a batch larger than the
data). The sweep writes its tables, says so in one line and exits 3 (EXIT_NO_RESULTS) with
no traceback; the report and every job on such a sweep do the same (the report as its own
process, the jobs, which refuse before their work, in the test's process)."""

import re
import subprocess
import sys

import pandas as pd
import pytest
from conftest import command_in_process

from orchestrator.errors import EXIT_NO_RESULTS

pytestmark = pytest.mark.slow


def command(module, *args, env, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", f"orchestrator.{module}", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


def assert_clean_end(proc, words):
    out = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_NO_RESULTS, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, last


def test_an_all_diverged_sweep_its_report_and_jobs_exit_3_in_one_line(tmp_path, sweep_env):
    proc = command("sweep", "batch_size_gffn", "--profile", "smoke", "--set", "lr=1e30",
                   "--wandb", "offline", "--storage", tmp_path / "runs", env=sweep_env,
                   cwd=tmp_path)
    assert_clean_end(proc, ["no trial completed", "4 diverged"])
    (sweep_dir,) = (tmp_path / "runs").glob("batch_size_gffn-smoke-*")
    results = sweep_dir / "results"
    table = pd.read_csv(results / "trials.csv")
    assert len(table) == 4 and (table.status == "diverged").all()
    aggregated = pd.read_csv(results / "aggregated.csv")  # the header: readable, no rows
    assert aggregated.empty and "seeds" in aggregated
    assert (sweep_dir / "REPRODUCTION.md").exists()

    assert_clean_end(command("report", sweep_dir, env=sweep_env, cwd=tmp_path),
                     ["no trial", "completed", "4 diverged"])
    trial = table.trial_id[0]
    jobs = [("attack", sweep_dir, "--trial", trial, "--attack", "fgsm", "--wandb", "disabled"),
            ("langevin", sweep_dir, "--trial", trial, "--from", "test", "--wandb", "disabled"),
            ("defend", sweep_dir, "--wandb", "disabled"),
            ("ensemble", sweep_dir)]
    for module, *args in jobs:  # refused before their work: run in this process
        assert_clean_end(command_in_process(module, *args, env=sweep_env, cwd=tmp_path),
                         [str(sweep_dir), "no trial completed", "4 diverged"])


def test_an_all_failed_sweep_exits_3_naming_each_trials_error(tmp_path, sweep_env):
    proc = command("sweep", "ood_baselines", "--profile", "smoke", "--set", "energy_epochs=1",
                   "--set", "energy_batch_size=100000", "--wandb", "disabled",
                   "--storage", tmp_path / "runs", env=sweep_env, cwd=tmp_path)
    assert_clean_end(proc, ["no trial completed", "2 error", "ray.log"])
    error = "ValueError: energy fine-tuning: batch size 100000 exceeds the 1077 training inputs"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[trial ")]
    # "(8.2 s)" follows when the trial reported an epoch before its final stage failed
    ended = re.compile(re.escape(f": error ({error})") + r"( \(\d+\.\d s\))?$")
    assert len(lines) == 2 and all(ended.search(line) for line in lines), lines
    (sweep_dir,) = (tmp_path / "runs").glob("ood_baselines-smoke-*")
    table = pd.read_csv(sweep_dir / "results" / "trials.csv")
    assert (table.status == "error").all() and (table.error == error).all()
    assert error in (sweep_dir / "ray.log").read_text()  # the tracebacks are in the log
