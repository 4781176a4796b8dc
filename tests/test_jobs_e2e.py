"""The job commands end to end on a real smoke `alpha_diglm` sweep: `orchestrator.attack`,
`orchestrator.langevin` (its driver killed mid-run, then --resume) and `orchestrator.defend`,
through real Ray actor pools and W&B offline runs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import command, command_in_process

from orchestrator.tracking.offline import find_offline_runs, read_offline_run
from workloads.evaluation.examples import EXAMPLE_COLUMNS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, env):
    """A finished smoke alpha_diglm sweep (alpha 0 and 2, 2 epochs), W&B disabled."""
    storage = tmp_path_factory.mktemp("runs")
    command("sweep", "alpha_diglm", "--profile", "smoke", "--storage", storage,
            "--wandb", "disabled", env=env)
    (sweep_dir,) = storage.glob("alpha_diglm-smoke-*")
    table = pd.read_csv(sweep_dir / "results" / "trials.csv")
    return sweep_dir, table.sort_values("alpha").trial_id.tolist()


@pytest.fixture(scope="module")
def attack_dir(sweep, env):
    sweep_dir, (trial, _) = sweep
    proc = command("attack", sweep_dir, "--trial", trial, "--version", "custom", "--attacks",
                   "apgd-ce", "--eps", "1/16", "--n", 40, "--batch-size", 20, env=env)
    (out,) = (sweep_dir / "attacks").glob(f"{trial}-autoattack-*")
    assert "samples/s" in proc.stderr
    return out


def recomputed_auroc(examples: pd.DataFrame, ood_set: str, id_column: str,
                     ood_column: str) -> float:
    """A detector's AUROC on `ood_set` recomputed from a job's examples.parquet: its OOD
    rows against the test inputs it was compared with (the first `compared_with`)."""
    from sklearn.metrics import roc_auc_score

    ood = examples[examples.split == ood_set]
    n = int(ood.compared_with.iloc[0])
    id_rows = examples[examples.split == "test"].iloc[:n]
    labels = np.r_[np.ones(n), np.zeros(len(ood))]
    return roc_auc_score(labels, np.r_[id_rows[id_column], ood[ood_column]])


def job_auroc(frame: pd.DataFrame, score: str, ood_set: str, setting: str,
              eps: float | None = None) -> float:
    """The job's reported AUROC (evaluation.csv) of one score, OOD set and setting."""
    rows = frame[(frame.score == score) & (frame.ood_set == ood_set)
                 & (frame.setting == setting)]
    return rows.auroc.item() if eps is None else rows[rows.eps == eps].auroc.item()


def test_attack_writes_results_and_a_wandb_run_and_resumes(sweep, attack_dir, env):
    sweep_dir, (trial, _) = sweep
    summary = json.loads((attack_dir / "summary.json").read_text())
    assert summary["n"] == 40 and summary["eps"] == 1 / 16
    accuracy = summary["robust_accuracy"]
    assert set(accuracy) == {"clean", "apgd-ce"} and accuracy["apgd-ce"] < accuracy["clean"]
    samples = pd.read_csv(attack_dir / "samples.csv")
    assert len(samples) == 40 and (samples.linf <= 1 / 16 + 1e-6).all()
    assert samples.robust.mean() == pytest.approx(accuracy["apgd-ce"])
    x_adv = torch.load(attack_dir / "x_adv.pt", weights_only=True)
    assert x_adv.shape == (40, 1, 8, 8) and (attack_dir / "attack.png").exists()
    (run_dir,) = find_offline_runs(attack_dir)
    run = read_offline_run(run_dir)
    assert run.group == sweep_dir.name and run.config["trial"] == trial
    assert run.summary["robust_accuracy/apgd-ce"] == pytest.approx(accuracy["apgd-ce"])
    assert any("samples_per_s" in row for row in run.history)

    again = command("attack", sweep_dir, "--trial", trial, "--version", "custom", "--attacks",
                    "apgd-ce", "--eps", "1/16", "--n", 40, "--batch-size", 20, "--resume",
                    env=env)
    assert str(attack_dir) in again.stdout  # the same run directory, continued
    resumed = json.loads((attack_dir / "summary.json").read_text())
    assert resumed["units_computed"] == 0 and resumed["units_loaded"] == 2
    assert resumed["robust_accuracy"] == accuracy


def test_attack_on_every_detector_writes_tables_and_resumes(sweep, env):
    """--target ood on a DIGLM: each differentiable score attacked at two radii. Attacked OOD
    scores only rise and attacked ID scores only fall, so no AUROC may rise."""
    sweep_dir, (trial, _) = sweep
    args = ["--trial", trial, "--target", "ood", "--eps", "1/16,1/8", "--steps", "5",
            "--n", "20", "--batch-size", "10"]
    proc = command("attack", sweep_dir, *args, env=env)
    (out,) = (sweep_dir / "attacks").glob(f"{trial}-ood-*")
    frame = pd.read_csv(out / "evaluation.csv")
    scores = {"msp", "max_logit", "energy", "lnz", "odin", "mahalanobis", "gmm", "log_px",
              "neg_am"}
    sets = {"gaussian_noise", "uniform_noise", "natural_patches"}
    assert set(frame.score) == scores and not frame.note.notna().any()
    assert set(frame.ood_set) == sets | {"group:other", "group:all"}
    assert set(frame.setting) == {"clean", "ood_attacked", "id_attacked", "both_attacked"}
    assert sorted(frame.eps.dropna().unique()) == [1 / 16, 1 / 8]
    assert (frame.auroc_lo <= frame.auroc + 1e-12).all()
    assert (frame.auroc <= frame.auroc_hi + 1e-12).all()
    wide = frame.pivot_table(index=["score", "ood_set"], columns=["setting", "eps"],
                             values="auroc", dropna=False)
    clean = frame[frame.setting == "clean"].set_index(["score", "ood_set"]).auroc
    clean = clean.reindex(wide.index)
    for eps in (1 / 16, 1 / 8):
        ood_hit, both = wide[("ood_attacked", eps)], wide[("both_attacked", eps)]
        id_hit = wide[("id_attacked", eps)]
        assert (ood_hit <= clean + 1e-9).all() and (both <= ood_hit + 1e-9).all(), eps
        assert (id_hit <= clean + 1e-9).all() and (both <= id_hit + 1e-9).all(), eps
        assert (both < clean).mean() > 0.5
    markdown = (out / "evaluation.md").read_text()
    assert "## ID -> gaussian_noise" in markdown and "eps 0.125: both" in markdown
    assert "attacked all (eps 0.125)" in markdown  # no near / far split
    assert (out / "evaluation.png").exists()
    assert "Detectors clean and under attack" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units_computed"] == 9 * 2 * 4 * 2  # scores x eps x sets x units
    (run_dir,) = find_offline_runs(out)
    assert "worst_auroc/neg_am" in read_offline_run(run_dir).summary
    examples = pd.read_parquet(out / "examples.parquet")  # per input, clean and attacked
    attacked = [f"score_{s}_attacked_eps{e}" for s in scores for e in ("0.0625", "0.125")]
    assert set(examples.columns) == {*EXAMPLE_COLUMNS, *(f"score_{s}" for s in scores),
                                     *attacked}
    assert set(examples.split) == {"test"} | sets
    test = examples[examples.split == "test"]
    assert len(test) == 360 and (test.prediction >= 0).all()  # every digits test input
    assert test[:20][attacked].notna().all().all() and test[20:][attacked].isna().all().all()
    assert (examples[examples.split != "test"].compared_with == 20).all()
    assert examples.groupby("split").size()["gaussian_noise"] == 20
    assert test.correct.mean() == summary["id_accuracy"]
    for score, ood_set in (("msp", "gaussian_noise"), ("log_px", "natural_patches")):
        assert recomputed_auroc(examples, ood_set, f"score_{score}", f"score_{score}") == \
            job_auroc(frame, score, ood_set, "clean")
    hit = "score_energy_attacked_eps0.125"
    assert recomputed_auroc(examples, "uniform_noise", "score_energy", hit) == \
        job_auroc(frame, "energy", "uniform_noise", "ood_attacked", 1 / 8)
    (out / "examples.parquet").unlink()
    again = command("attack", sweep_dir, *args, "--resume", env=env)
    assert str(out) in again.stdout
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["units_computed"] == 0 and resumed["units_loaded"] == 144
    assert pd.read_csv(out / "evaluation.csv").equals(frame)
    # the loaded units' attacked scores in the file again, as computed the first time
    pd.testing.assert_frame_equal(pd.read_parquet(out / "examples.parquet"), examples)


def test_langevin_interrupted_by_ctrl_c_then_resumed_ends_like_an_uninterrupted_run(
        sweep, attack_dir, env):
    sweep_dir, (trial, _) = sweep
    args = ["--trial", trial, "--from", attack_dir, "--only-fooled", "--steps", 3000,
            "--checkpoint-every", 100, "--record-every", 100, "--chains-per-unit", 8,
            "--wandb", "disabled"]
    whole = command("langevin", sweep_dir, *args, env=env)
    (first,) = (sweep_dir / "langevin").glob(f"{trial}-autoattack-*")
    expected = torch.load(first / "restored.pt", weights_only=True)
    shutil.rmtree(first)

    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.langevin", str(sweep_dir),
                               *map(str, args)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, start_new_session=True)
    deadline, steps = time.time() + 120, []
    while time.time() < deadline and driver.poll() is None:
        steps = [torch.load(p, weights_only=True)["state"]["step"]
                 for p in (sweep_dir / "langevin").glob("*/chains/*.pt")]
        if steps and min(steps) >= 200:
            break
        time.sleep(0.1)
    assert driver.poll() is None, "the chains finished before the driver could be killed"
    os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C: the driver and its local Ray, for real
    _, err = driver.communicate(timeout=120)
    assert 0 < min(steps) < 3000
    # it stops at once (a job has nothing to wind down), says how to resume, exits 130
    assert driver.returncode == 130, err[-3000:]
    assert "Traceback" not in err.decode()
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("python -m orchestrator.langevin: stopped by SIGINT; what "
                           "finished is kept; resume with: python -m orchestrator.langevin")
    assert last.endswith(" --resume")

    resumed = command("langevin", sweep_dir, *args, "--resume", env=env)
    assert "resumed" in resumed.stdout
    (out,) = (sweep_dir / "langevin").glob(f"{trial}-autoattack-*")
    assert torch.equal(torch.load(out / "restored.pt", weights_only=True), expected)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units_resumed"] > 0
    assert summary["chain_steps_computed"] < summary["chains"] * 3000  # no start-over
    chains = pd.read_csv(out / "chains.csv")
    assert len(chains) == summary["chains"] and (out / "am.png").exists()
    assert "accuracy_restored" in json.loads(whole.stdout.splitlines()[-2])


def test_defend_smoke_writes_tables_4_1_to_4_4_and_resumes(sweep, env):
    sweep_dir, trials = sweep
    proc = command("defend", sweep_dir, "--profile", "smoke", "--eps", "1/16", env=env)
    (out,) = (sweep_dir / "defense").glob("smoke-*")
    tables = (out / "tables.md").read_text()
    for name in ("Table 4.1", "Table 4.2", "Table 4.3", "Table 4.4"):
        assert name in tables
    assert "1.000 / 1.000 / 1.000 / 0.922" in tables and "0.608" in tables  # thesis, alpha 2
    frame = pd.read_csv(out / "defense.csv")
    assert sorted(frame.trial_id) == sorted(trials)
    done = frame[frame.status == "completed"]
    assert len(done) >= 1
    for column in ("det_auroc", "restored_accuracy", "defense_accuracy",
                   "adaptive_defense_accuracy"):
        assert done[column].between(0, 1).all(), column
    assert (out / "defense.png").exists()
    for trial in done.trial_id:
        assert (out / trial / "defense.png").exists()
        result = json.loads((out / trial / "result.json").read_text())
        assert result["pairs"] > 0 and result["det_tau"] > 0
    runs = [read_offline_run(p) for p in find_offline_runs(out)]
    assert len(runs) == len(frame) and all(r.group == sweep_dir.name for r in runs)
    assert "Table 4.1" in proc.stdout

    again = command("defend", sweep_dir, "--profile", "smoke", "--eps", "1/16", "--resume",
                    env=env)
    assert again.stdout.count("done earlier") == len(frame)
    assert (out / "tables.md").read_text() == tables
    other = command_in_process("defend", sweep_dir, "--profile", "smoke", "--eps", "0.1",
                               "--resume", env=env)
    assert other.returncode == 2 and "settings differ in eps" in other.stderr


def fake_sweep(tmp_path, model="flow"):
    (tmp_path / "results").mkdir(parents=True)
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "alpha_flow"}))
    (tmp_path / "results" / "trials.csv").write_text(
        f"trial_id,model,alpha,status\nabc,{model},0.0,completed\n")
    return tmp_path


@pytest.mark.parametrize("module, args, words", [
    ("attack", ["--trial", "x"], ["not a finished sweep"]),
    ("attack", ["FAKE", "--trial", "zzz"], ["no trial 'zzz'", "abc"]),
    ("attack", ["FAKE", "--trial", "abc", "--version", "custom", "--attacks", "apgd-ce,bogus"],
     ["bogus"]),
    ("attack", ["FAKE", "--trial", "abc", "--eps", "8/0"], ["--eps"]),
    ("attack", ["FAKE", "--trial", "abc", "--num-actors", "0"], ["--num-actors"]),
    ("attack", ["FAKE", "--trial", "abc", "--attacks", "apgd-ce"], ["--attacks",
                                                                  "--version custom"]),
    ("attack", ["FAKE", "--trial", "abc", "--attack", "pgd", "--lam", "2"], ["--lam"]),
    ("attack", ["FAKE", "--trial", "abc", "--target", "ood", "--attack", "pgd"], ["--attack"]),
    ("langevin", ["FAKE", "--trial", "abc", "--from", "nowhere"], ["not a finished attack"]),
    ("langevin", ["FAKE", "--trial", "abc", "--from", "test", "--resume"], ["checkpoint"]),
    ("defend", ["FAKE"], ["no DIGLM trials"]),
    ("defend", ["FAKE", "--profile", "huge"], ["--profile"]),
])
def test_job_commands_exit_2_on_bad_input(tmp_path, env, module, args, words):
    sweep_dir = fake_sweep(tmp_path / "sweep")
    args = [str(sweep_dir) if a == "FAKE" else a for a in args]
    if args[0].startswith("--"):
        args = [str(tmp_path / "nothing"), *args]
    proc = command_in_process(module, *args, env=env)  # as processes: the tests below
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in proc.stderr


def test_job_commands_help(env):
    for module in ("attack", "langevin", "defend"):  # one as a process, as a user runs it
        proc = command(module, "--help", env=env, timeout=60) if module == "attack" else \
            command_in_process(module, "--help", env=env)
        assert proc.returncode == 0, proc.stderr
        for flag in ("--resume", "--num-actors", "--gpus-per-actor", "--wandb"):
            assert flag in proc.stdout, (module, flag)


def test_resume_without_an_earlier_run_and_gpus_on_a_cpu_machine_exit_2(sweep, env):
    sweep_dir, (trial, _) = sweep
    proc = command("langevin", sweep_dir, "--trial", trial, "--from", "test", "--n", 4,
                   "--resume", env=env, check=False)
    assert proc.returncode == 2 and "no earlier run" in proc.stderr
    proc = command("attack", sweep_dir, "--trial", trial, "--n", 4, "--gpus-per-actor", 1,
                   "--wandb", "disabled", env=env, check=False)
    assert proc.returncode == 2 and "GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_defend_paper_profile_runs_on_mnist_files(tmp_path, env):
    """The paper profile's path on MNIST-format files (IDX, written here): a 28x28 DIGLM,
    pyautoattack on (N, 1, 28, 28) images, chains on 784 dimensions."""
    from test_datasets import write_idx

    write_idx(tmp_path / "data", "MNIST", 200, seed=0)
    command("sweep", "alpha_diglm", "--profile", "smoke", "--set", "dataset=mnist",
            "--set", "alpha=2", "--data-dir", tmp_path / "data", "--storage", tmp_path / "runs",
            "--wandb", "disabled", env=env)
    (sweep_dir,) = (tmp_path / "runs").glob("alpha_diglm-smoke-*")
    proc = command("defend", sweep_dir, "--profile", "paper", "--steps", 4, "--n-test", 20,
                   "--eps", "0.1", "--wandb", "disabled", env=env)
    assert "MNIST" in proc.stdout and "chains of up to 1e6 steps" in proc.stdout
    (out,) = (sweep_dir / "defense").glob("paper-*")
    settings = json.loads((out / "defense.json").read_text())
    assert settings["steps"] == 4 and settings["val_fraction"] == 0.2
    frame = pd.read_csv(out / "defense.csv")
    assert len(frame) == 1 and frame.n_val[0] == 10 and frame.n_test[0] == 20
    assert "mnist" in (out / "tables.md").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_a_full_disk_stops_an_attack_in_one_line_and_resume_completes_it(sweep, attack_dir,
                                                                          env):
    """The job's directory on a 12 KiB tmpfs that fills during the attack: one line naming
    the file and the resume command, exit 1, no partial file; with the space grown, --resume
    ends with the results of the uninterrupted attack (`attack_dir`)."""
    sweep_dir, (trial, _) = sweep
    expected = json.loads((attack_dir / "summary.json").read_text())["robust_accuracy"]
    target = sweep_dir / "attacks"  # the attack_dir fixture's, hidden while mounted over
    args = ["attack", sweep_dir, "--trial", trial, "--version", "custom", "--attacks",
            "apgd-ce", "--eps", "1/16", "--n", 40, "--batch-size", 20]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(target)],
                   check=True)
    try:
        full = command(*args, env=env, check=False)
        assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
        last = full.stderr.strip().splitlines()[-1]
        assert f"no space left on the device writing {target}/" in last
        assert last.endswith(" --resume")
        for path in target.rglob("*"):  # whatever was written is whole
            assert not path.name.startswith("."), path
            if path.suffix == ".pt":
                torch.load(path, weights_only=True)
        subprocess.run(["mount", "-o", "remount,size=64m", str(target)], check=True)
        command(*args, "--resume", env=env)
        (out,) = target.glob(f"{trial}-autoattack-*")
        assert json.loads((out / "summary.json").read_text())["robust_accuracy"] == expected
    finally:
        subprocess.run(["umount", str(target)], check=True)
