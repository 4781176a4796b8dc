"""End to end through real Ray Tune, Ray Train (gloo DDP) and W&B (offline)."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import command_in_process, run_captured

from orchestrator.tracking.offline import find_offline_runs, read_offline_run

pytestmark = pytest.mark.slow


def run_sweep(tmp_path, env, *args, timeout=600):
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = run_captured(
        [sys.executable, "-m", "orchestrator.sweep", "batch_size_gffn", "--profile", "smoke",
         "--storage", str(tmp_path / "runs"), *args],
        env=env, timeout=timeout, cwd=tmp_path)
    sweep_dirs = sorted((tmp_path / "runs").glob("batch_size_gffn-smoke-*"))
    return proc, (sweep_dirs[-1] if sweep_dirs else None)


def trials(sweep_dir: Path) -> pd.DataFrame:
    return pd.read_csv(sweep_dir / "results" / "trials.csv")


def test_smoke_sweep_results_plots_and_wandb_offline_runs(gffn_smoke_sweep, tmp_path,
                                                         sweep_env):
    stdout, sweep_dir, key_found_in = gffn_smoke_sweep  # conftest: `--wandb offline`

    table = trials(sweep_dir)
    assert len(table) == 4
    assert set(zip(table.batch_size, table.model)) == {(16, "ffn"), (16, "gffn"),
                                                      (128, "ffn"), (128, "gffn")}
    assert (table.status == "completed").all()
    for column in ("test_acc", "test_ece", "test_mce", "test_nll", "auroc_msp", "auroc_lnz",
                   "ood_msp_natural_patches_aupr_in", "ood_lnz_uniform_noise_fpr95",
                   "train_acc", "steps"):
        assert table[column].map(math.isfinite).all(), column
    assert (table.steps == (1078 // table.batch_size)).all()  # 1 epoch, last batch dropped
    results = sweep_dir / "results"
    assert (results / "trials.md").read_text().count("| digits") == 4
    plots = {p.name for p in (results / "plots").glob("*.png")}
    assert {"test_acc_vs_batch_size.png", "test_ece_vs_batch_size.png",
            "auroc_msp_vs_batch_size.png", "auroc_lnz_vs_batch_size.png"} <= plots
    assert any(name.startswith("reliability") for name in plots)

    # One W&B run per trial, grouped by sweep, whose summary holds the final metrics.
    by_trial = table.set_index("trial_id")
    runs = {p: read_offline_run(p) for p in find_offline_runs(sweep_dir)}
    trial_runs = [run for run in runs.values() if run.run_id in by_trial.index]
    assert len(trial_runs) == 4
    for run in trial_runs:
        assert run.group == sweep_dir.name
        row = by_trial.loc[run.run_id]
        assert run.config["batch_size"] == row.batch_size and run.config["model"] == row.model
        for metric in ("test_acc", "test_ece", "auroc_msp", "auroc_lnz"):
            assert run.summary[metric] == pytest.approx(row[metric], rel=1e-9)
    assert "wandb sync" in stdout
    # ... and one summary run in the sweep's group: the results table and every plot.
    (summary,) = [p for p, run in runs.items() if run.run_id.startswith("summary-")]
    assert runs[summary].group == sweep_dir.name and runs[summary].summary["trials"] == 4
    assert list(summary.glob("files/media/table/trials_*.table.json"))
    logged = [p.name for p in summary.glob("files/media/images/plots/*.png")]
    for name in plots:  # W&B names an image <key>_<step>_<hash>.png
        assert any(f.startswith(Path(name).stem + "_") for f in logged), name
    # ... with the table over seeds and the claims' verdicts (one seed: inconclusive), which
    # the console and REPRODUCTION.md give too, beside the record of what produced them.
    for key in ("aggregated", "claims"):
        assert list(summary.glob(f"files/media/table/{key}_*.table.json")), key
    assert runs[summary].summary["claims/gffn_ece_below_ffn"] == "inconclusive"
    assert "inconclusive gffn_ece_below_ffn" in stdout
    assert (results / "aggregated.csv").exists()
    reproduction = (sweep_dir / "REPRODUCTION.md").read_text()
    assert "GFFN's test ECE is below FFN's" in reproduction and "**Provenance**" in reproduction
    provenance = json.loads((sweep_dir / "provenance.json").read_text())
    assert "orchestrator.sweep" in " ".join(provenance["command"])
    assert provenance["packages"]["torch"] and provenance["datasets"]["digits"]

    # The console: a line per finished trial, not Tune's tables (2,835 lines before).
    for n in range(1, 5):
        assert f"[trial {n}/4] " in stdout
    assert "Trial status" not in stdout and len(stdout.splitlines()) < 40

    # The API key (in the sweep's environment) is never written to a config, a log or a
    # results file, of the sweep or of its Ray temp dir.
    assert key_found_in == []

    # The report redraws table and plots from the saved results alone (of a copy: the sweep
    # is shared with other tests).
    sweep_dir = shutil.copytree(sweep_dir, tmp_path / sweep_dir.name)
    results = sweep_dir / "results"
    for png in (results / "plots").glob("*.png"):
        png.unlink()
    (results / "trials.md").unlink()
    report = subprocess.run([sys.executable, "-m", "orchestrator.report", str(sweep_dir)],
                            capture_output=True, text=True, env=sweep_env, timeout=120)
    assert report.returncode == 0, report.stderr
    assert (results / "trials.md").exists()
    assert {p.name for p in (results / "plots").glob("*.png")} == plots


def test_ddp_path_with_two_workers_matches_in_process_path(tmp_path, sweep_env):
    """Same training on both paths, and the same checkpoint retention: 6 epochs with a
    checkpoint each leave the newest 3 (Tune's trial directory; Ray Train's run)."""
    common = ["--set", "batch_size=32", "--set", "model=gffn", "--set", "epochs_b=6",
              "--set", "checkpoint_every=1", "--wandb", "disabled"]
    ddp, ddp_dir = run_sweep(tmp_path / "ddp", sweep_env, *common, "--num-workers", "2")
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    assert "TorchTrainer, 2 workers" in ddp.stdout
    local, local_dir = run_sweep(tmp_path / "local", sweep_env, *common, "--verbose")
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    assert "Trial status" in local.stdout  # --verbose: Tune's own progress tables
    a, b = trials(ddp_dir).iloc[0], trials(local_dir).iloc[0]
    assert a.status == b.status == "completed"
    assert a.steps == b.steps == 6 * (1078 // 32)
    # Same global batches, same initial weights, a global-batch GFFN normalizer:
    # the two paths train the same model up to float32 summation order.
    assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
    assert a.test_acc == pytest.approx(b.test_acc, abs=0.01)
    ddp_checkpoints = [p for p in (ddp_dir / "train").glob("train-*/checkpoint_*") if p.is_dir()]
    local_checkpoints = sorted(p for p in local_dir.glob("*/checkpoint_*") if p.is_dir())
    assert len(ddp_checkpoints) == len(local_checkpoints) == 3
    assert [p.name[-2:] for p in local_checkpoints] == ["03", "04", "05"]  # the newest 3


def test_killed_trial_is_retried_from_its_checkpoint(tmp_path, sweep_env):
    """Kill a running trial's process: Tune retries it from its latest checkpoint."""
    import json
    import os
    import signal
    import time

    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.sweep", "batch_size_gffn", "--profile", "smoke",
         "--storage", str(tmp_path / "runs"), "--set", "batch_size=128", "--set", "model=gffn",
         "--set", "epochs_b=120", "--set", "checkpoint_every=1", "--set", "report_seconds=0",
         "--wandb", "disabled"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=sweep_env,
        cwd=tmp_path)
    killed_at = None
    deadline = time.time() + 240
    while killed_at is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        for result_file in (tmp_path / "runs").glob("*/*/result.json"):
            lines = [json.loads(x) for x in result_file.read_text().splitlines() if x.strip()]
            if len(lines) >= 5:
                killed_at = lines[-1]["epoch"]
                os.kill(lines[-1]["pid"], signal.SIGKILL)
                break
    output, _ = proc.communicate(timeout=300)
    assert killed_at is not None, output[-3000:]
    assert proc.returncode == 0, output[-3000:]
    (sweep_dir,) = (tmp_path / "runs").glob("batch_size_gffn-smoke-*")
    row = trials(sweep_dir).iloc[0]
    assert row.status == "completed" and row.epochs == 120
    # A new process took over, and it resumed from a checkpoint, not from epoch 1.
    (result_file,) = sweep_dir.glob("*/result.json")
    reports = [json.loads(x) for x in result_file.read_text().splitlines() if x.strip()]
    restart = next(i for i in range(1, len(reports))
                   if reports[i]["pid"] != reports[i - 1]["pid"])
    assert reports[restart]["epoch"] >= killed_at - 3  # at most a few epochs redone
    assert reports[-1]["epoch"] == 120
    assert (result_file.parent / "error.txt").exists()  # Tune recorded the failure


def test_a_diverged_trial_is_reported_the_sweep_goes_on_and_resume_continues_it(
        tmp_path, sweep_env):
    """A trial whose loss diverges ends as `diverged` beside a completed one; --resume
    continues the latest run of the sweep in its own directory (none: exit 2)."""
    proc = command_in_process("sweep", "batch_size_gffn", "--profile", "smoke", "--storage",
                              tmp_path / "none" / "runs", "--resume", "--wandb", "disabled",
                              env=sweep_env)
    assert proc.returncode == 2 and "no earlier run" in proc.stderr

    grid = ["--set", "lr=1e12,1e-3", "--set", "batch_size=16", "--set", "model=gffn",
            "--wandb", "disabled"]
    first, sweep_dir = run_sweep(tmp_path, sweep_env, *grid)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    table = trials(sweep_dir).set_index("lr")
    assert table.loc[1e12, "status"] == "diverged"
    assert table.loc[1e12, "diverged_epoch"] == 1
    assert table.loc[1e-3, "status"] == "completed"
    assert "diverged" in (sweep_dir / "results" / "trials.md").read_text()

    (sweep_dir / "results" / "trials.csv").unlink()
    resumed, resumed_dir = run_sweep(tmp_path, sweep_env, "--resume", *grid)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert resumed_dir == sweep_dir  # no new run directory
    assert trials(sweep_dir).set_index("lr").status.to_dict() == {1e12: "diverged",
                                                                   1e-3: "completed"}


def test_lr_scaling_smoke_sweep_applies_the_rules(tmp_path, sweep_env):
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "lr_scaling", "--profile", "smoke",
         "--storage", str(tmp_path / "runs"), "--wandb", "disabled"],
        capture_output=True, text=True, env=sweep_env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "runs").glob("lr_scaling-smoke-*")
    table = trials(sweep_dir).set_index(["lr_scaling", "batch_size"])
    assert len(table) == 4 and (table.status == "completed").all()
    base, reference = 1e-3, 64  # BASE lr and reference_batch_size
    for (rule, batch), row in table.iterrows():
        expected = base if rule == "none" else base * batch / reference
        assert row.scaled_lr == pytest.approx(expected)  # what the optimizer used
        assert row.lr == base  # the configured base rate (what --set-from carries)
    assert (sweep_dir / "results" / "plots" / "test_acc_vs_batch_size.png").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_a_full_storage_ends_the_sweep_in_one_line_and_resume_completes_it(
        gffn_smoke_sweep, tmp_path, sweep_env):
    """--storage on a 400 KiB tmpfs that fills mid-sweep: the trials that cannot write end
    as errors, the last line names the storage, "no space left" and the resume command,
    exit 1; with the space grown, --resume ends with the uninterrupted sweep's results."""
    _, reference_dir, _ = gffn_smoke_sweep
    storage = tmp_path / "storage"
    storage.mkdir()
    args = [sys.executable, "-m", "orchestrator.sweep", "batch_size_gffn", "--profile",
            "smoke", "--storage", str(storage), "--wandb", "disabled", "--set", "model=ffn"]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(storage)],
                   check=True)
    try:
        full = run_captured(args, env=sweep_env, timeout=600, cwd=tmp_path)
        assert full.returncode == 1, full.stdout[-2000:] + full.stderr[-2000:]
        last = full.stderr.strip().splitlines()[-1]
        assert last.startswith("[sweep] no space left on the device: ") and str(storage) in last
        assert last.endswith(" --set model=ffn --resume")
        subprocess.run(["mount", "-o", "remount,size=64m", str(storage)], check=True)
        resumed = run_captured([*args, "--resume"], env=sweep_env, timeout=600, cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
        (sweep_dir,) = storage.glob("batch_size_gffn-smoke-*")
        table = trials(sweep_dir).set_index("batch_size")
        reference = trials(reference_dir)
        reference = reference[reference.model == "ffn"].set_index("batch_size")
        assert (table.status == "completed").all() and len(table) == 2
        for column in ("test_acc", "test_nll", "auroc_msp"):
            assert table[column].to_dict() == reference[column].to_dict(), column
    finally:
        subprocess.run(["umount", str(storage)], check=True)
