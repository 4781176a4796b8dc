"""Bad input exits 2 with a one-line reason and no traceback, before Ray starts.

The command's process contract (its exit code and output as a process) is held by the tests
that run `python -m orchestrator.sweep` (`sweep_process`); the other bad inputs run through
the same `run_command(build_parser(), main)` in this process (`sweep`), ~4 s faster each."""

import subprocess
import sys

import pytest
from conftest import command_in_process

from orchestrator.tune.overrides import apply_overrides
from search_spaces import PROFILES, get_search_space, sweep_names


def sweep_process(*args, env):
    return subprocess.run([sys.executable, "-m", "orchestrator.sweep", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def sweep(*args, env):
    return command_in_process("sweep", *args, env=env)


def test_unknown_sweep_exits_2_and_lists_valid_names(sweep_env):
    proc = sweep_process("no_such_sweep", env=sweep_env)
    assert proc.returncode == 2
    assert "batch_size_gffn" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("setting, words", [
    ("foo=1", ["foo", "unknown key"]),
    ("lr=fast", ["lr", "float"]),
    ("batch_size=8,x", ["batch_size", "int"]),
    ("model=resnet", ["model", "ffn", "gffn"]),
    ("batch_size=0", ["batch_size", "positive"]),
    ("lr=inf", ["lr=inf", "finite"]),  # passed as "positive"; every trial then diverged
    ("lr=-inf", ["lr=-inf", "finite"]),
    ("lr=nan", ["lr=nan", "finite"]),
    ("lr", ["KEY=VALUE"]),
])
def test_bad_set_exits_2_and_names_the_key(sweep_env, setting, words):
    proc = sweep("batch_size_gffn", "--set", setting, env=sweep_env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in proc.stderr


@pytest.mark.parametrize("flags, words", [
    (["--status-interval", "0"], ["--status-interval", "positive"]),
    (["--status-interval", "inf"], ["--status-interval", "finite"]),
    (["--gpus-per-worker", "nan"], ["--gpus-per-worker", "finite"]),
])
def test_non_finite_or_bad_flag_values_exit_2(sweep_env, flags, words):
    proc = sweep("batch_size_gffn", *flags, env=sweep_env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, last


def test_missing_dataset_exits_2_with_directory_files_and_download(sweep_env, tmp_path):
    proc = sweep("batch_size_gffn", "--set", "dataset=svhn", "--data-dir",
                 str(tmp_path / "nowhere"), env=sweep_env)
    assert proc.returncode == 2
    assert str(tmp_path / "nowhere") in proc.stderr
    assert "train_32x32.mat" in proc.stderr and "--download" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_list_and_help(sweep_env):
    listing = sweep_process("--list", env=sweep_env)
    assert listing.returncode == 0 and "batch_size_gffn" in listing.stdout
    assert "smoke" in listing.stdout and "paper" in listing.stdout
    helptext = sweep_process("--help", env=sweep_env)
    assert helptext.returncode == 0
    for flag in ("--profile", "--set", "--num-workers", "--gpus-per-worker", "--storage",
                 "--resume", "--wandb", "--data-dir", "--download", "--list"):
        assert flag in helptext.stdout


def test_overrides_fix_a_value_or_sweep_it():
    space = get_search_space("batch_size_gffn")
    profile = apply_overrides(space, space.profile("local"),
                              ["batch_size=64", "lr=3e-4,1e-3", "budget=B"])
    assert profile.config["batch_size"] == 64 and "batch_size" not in profile.grid
    assert profile.grid["lr"] == [3e-4, 1e-3] and "lr" not in profile.config
    assert profile.config["budget"] == "B"
    assert profile.num_trials() == 2 * 2 * 2  # model x lr_scaling x lr


def test_an_override_that_makes_linked_setups_equal_leaves_one():
    space = get_search_space("vae_ood")  # paper: setups FashionMNIST, CIFAR-10
    paper = space.profile("paper")
    assert paper.num_trials() == 2 * 2  # setups x decoder
    one = apply_overrides(space, paper, ["dataset=celeba"])
    assert one.num_trials() == 2 and "setup" not in one.grid
    assert [c["dataset"] for c in one.trial_configs()] == ["celeba", "celeba"]
    flows = get_search_space("alpha_flow")  # setups differ in lr etc.: all kept
    kept = apply_overrides(flows, flows.profile("paper"), ["dataset=cifar10"])
    assert len(kept.grid["setup"]) == 2


def test_every_sweep_declares_three_profiles_and_smoke_is_small():
    for name in sweep_names():
        space = get_search_space(name)
        assert set(space.profiles) == set(PROFILES)
        smoke = space.profile("smoke")
        assert smoke.num_trials() <= 4
        local = space.profile("local")
        assert local.config.get("dataset", "digits") == "digits" or \
            set(local.grid.get("dataset", [])) == {"digits"}


def test_local_profile_spans_the_study():
    local = get_search_space("batch_size_gffn").profile("local")
    assert min(local.grid["batch_size"]) <= 8 and max(local.grid["batch_size"]) >= 512
    assert set(local.grid["model"]) == {"ffn", "gffn"}
    assert set(local.grid["lr_scaling"]) == {"none", "sqrt"}
    assert set(local.grid["budget"]) == {"A", "B"}
    paper = get_search_space("batch_size_gffn").profile("paper")
    assert set(paper.grid["dataset"]) == {"mnist", "fashionmnist", "svhn", "cifar10"}
    assert min(paper.grid["batch_size"]) == 4 and max(paper.grid["batch_size"]) == 2048
    assert paper.gpus_per_worker > 0


def test_trials_that_cannot_fit_on_a_local_ray_exit_2(sweep_env):
    proc = sweep_process("batch_size_gffn", "--profile", "smoke", "--gpus-per-worker", "1",
                 "--num-workers", "64", "--set", "batch_size=128", "--wandb", "disabled",
                 env=sweep_env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "64 GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_ood_score_exits_2(sweep_env):
    proc = sweep("alpha_flow", "--set", "ood_scores=log_px+typo", env=sweep_env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "typo" in proc.stderr and "neg_am" in proc.stderr and "Traceback" not in proc.stderr


def test_a_score_the_model_cannot_serve_exits_2(sweep_env):
    """ASH reshapes convolutional feature maps: the MLP has none, and a flow has no logits."""
    proc = sweep("batch_size_gffn", "--profile", "smoke", "--set", "ood_scores=msp+ash",
                 env=sweep_env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "'ash' needs feature_maps, which the mlp model" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = sweep("alpha_flow", "--profile", "smoke", "--set", "ood_scores=log_px+vim",
                 env=sweep_env)
    assert proc.returncode == 2 and "'vim' needs features, which the flow model" in proc.stderr
    # the failure-prediction scores are checked the same way: MC dropout needs dropout
    proc = sweep("failure_prediction", "--profile", "smoke", "--set", "arch=mlp",
                 "--set", "ood_scores=msp", env=sweep_env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--set failure_scores=" in proc.stderr and "'mc_dropout' needs dropout" in proc.stderr
    # the likelihood ratio needs its background model
    proc = sweep("alpha_flow", "--profile", "smoke", "--set", "ood_scores=log_px+likelihood_ratio",
                 env=sweep_env)
    assert proc.returncode == 2 and "--set background_mu=0.2" in proc.stderr
    proc = sweep("alpha_flow", "--profile", "smoke", "--set", "background_mu=1.5",
                 env=sweep_env)
    assert proc.returncode == 2 and "must be in [0, 1)" in proc.stderr


def test_linked_setups_are_overridable_and_their_datasets_checked(sweep_env, tmp_path):
    space = get_search_space("alpha_flow")
    paper = space.profile("paper")
    assert paper.num_trials() == 2 * 5
    profile = apply_overrides(space, paper, ["epochs=1", "alpha=0,2"])
    assert profile.config["epochs"] == 1  # the override wins over every setup
    assert all("epochs" not in setup for setup in profile.grid["setup"])
    assert [s["lr"] for s in profile.grid["setup"]] == [5e-5, 1e-4]
    assert profile.num_trials() == 2 * 2
    proc = sweep("alpha_flow", "--profile", "paper", "--data-dir", str(tmp_path / "none"),
                 env=sweep_env)
    assert proc.returncode == 2 and "fashionmnist" in proc.stderr
    assert "Traceback" not in proc.stderr


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_truncated_mnist_files_exit_2_naming_the_file(sweep_env, tmp_path):
    from test_datasets import write_idx

    write_idx(tmp_path, "MNIST", 200, seed=0)
    bad = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:5000])
    line = one_line_error(sweep("batch_size_gffn", "--profile", "smoke", "--set",
                                "dataset=mnist", "--set", "arch=cnn", "--data-dir",
                                str(tmp_path), env=sweep_env))
    assert str(bad) in line and "truncated" in line and "val_fraction" not in line


def test_a_validation_share_outside_0_1_or_smaller_than_the_classes_exits_2(sweep_env,
                                                                         tmp_path):
    from test_datasets import write_cifar

    line = one_line_error(sweep("feature_gmm", "--profile", "smoke", "--set",
                                "val_fraction=1", env=sweep_env))
    assert "val_fraction=1" in line and "(0, 1)" in line
    write_cifar(tmp_path, "cifar100", 400, seed=0, test_n=100)
    line = one_line_error(sweep("feature_gmm", "--profile", "smoke", "--set",
                                "dataset=cifar100", "--set", "val_fraction=0.2", "--data-dir",
                                str(tmp_path), env=sweep_env))  # 80 held out, 100 classes
    assert "val_fraction=0.2" in line and "cifar100" in line and "classes" in line


def test_a_validation_share_on_digits_is_noted_once_its_split_is_fixed(capsys):
    from orchestrator.tune.overrides import check_datasets

    space = get_search_space("feature_gmm")
    profile = apply_overrides(space, space.profile("smoke"), ["val_fraction=0.25"])
    check_datasets(profile, None, download=False)
    out = capsys.readouterr().out
    assert out.count("val_fraction=0.25 applies to the image datasets; digits keeps its "
                     "60/20/20 split") == 1


def test_storage_that_is_a_file_or_cannot_be_written_exits_2(sweep_env, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    line = one_line_error(sweep("batch_size_gffn", "--profile", "smoke", "--storage",
                                str(a_file), env=sweep_env))
    assert str(a_file) in line and "not a directory" in line
    line = one_line_error(sweep("batch_size_gffn", "--profile", "smoke", "--storage",
                                str(a_file / "runs"), env=sweep_env))
    assert str(a_file / "runs") in line and "cannot write" in line


def test_batch_larger_than_the_training_set_and_zero_workers_exit_2(sweep_env, tmp_path):
    line = one_line_error(sweep("batch_size_gffn", "--profile", "smoke", "--set",
                                "batch_size=4096", "--storage", str(tmp_path), env=sweep_env))
    assert "batch_size=4096" in line and "1,077 training examples of digits" in line
    line = one_line_error(sweep("batch_size_gffn", "--profile", "smoke", "--num-workers", "0",
                                "--storage", str(tmp_path), env=sweep_env))
    assert "--num-workers" in line


def test_resume_refuses_a_changed_sweep_naming_each_key(sweep_env, tmp_path):
    """An earlier run recorded its settings; resuming it with other values would mix two
    sweeps in one table: refused before Ray starts, naming what changed."""
    import json

    from orchestrator.tune.plan import sweep_settings
    from orchestrator.tune.scaling import Scaling

    profile = get_search_space("batch_size_gffn").profile("smoke")
    run = tmp_path / "batch_size_gffn-smoke-20260101-000000"
    run.mkdir()
    (run / "tuner.pkl").write_bytes(b"")
    (run / "sweep.json").write_text(json.dumps(
        {"name": "batch_size_gffn", "settings": sweep_settings(profile, Scaling())}))
    line = one_line_error(sweep("batch_size_gffn", "--profile", "smoke", "--resume",
                                "--storage", str(tmp_path), "--set", "lr=0.5", "--set",
                                "batch_size=16", "--wandb", "disabled", env=sweep_env))
    assert run.name in line
    assert "lr (0.001 -> 0.5)" in line and "batch_size ([16, 128] -> 16)" in line


def test_the_batch_check_on_digits_loads_nothing_before_ray_starts(sweep_env):
    """The pre-flight batch check knows digits' training split: the driver neither imports
    scikit-learn nor loads the set for it (~0.9 s of CPU per sweep before Ray started)."""
    script = ("import sys\n"
              "from orchestrator.tune.overrides import check_datasets\n"
              "from search_spaces import get_search_space\n"
              "profile = get_search_space('batch_size_gffn').profile('local')\n"
              "check_datasets(profile, 'unused', download=False)\n"
              "print('sklearn' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=sweep_env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


@pytest.mark.parametrize("args, not_imported", [
    (["no_such_sweep"], {"torch", "ray", "pandas", "wandb"}),
    (["batch_size_gffn", "--set", "foo=1"], {"ray", "pandas", "wandb"}),
    (["batch_size_gffn", "--profile", "smoke", "--num-workers", "0"], {"ray", "pandas", "wandb"}),
    (["batch_size_gffn", "--set", "lr=logunifrom(1e-4,1e-2)"], {"ray", "pandas", "wandb"}),
    (["batch_size_gffn", "--profile", "smoke", "--set", "lr=loguniform(1e-4,1e-2)",
      "--num-samples", "2", "--metric", "val_acc_typo", "--mode", "max"],
     {"ray", "pandas", "wandb"}),
    (["batch_size_gffn", "--profile", "smoke", "--set", "model=gffn", "--set", "batch_size=64",
      "--set", "epochs_b=8", "--set", "lr=loguniform(1e-4,1e-2)", "--num-samples", "2",
      "--scheduler", "pbt", "--num-workers", "2"], {"ray", "pandas", "wandb"}),
])
def test_bad_input_is_refused_before_ray_and_pandas_are_imported(sweep_env, args, not_imported):
    """A typo costs a fraction of a second, not the ~4 s of importing Ray, Tune and pandas
    (the old driver imported them, and torch, before its first check). The search spaces
    name their choices from the workloads' registries, so a sweep's checks import torch."""
    script = ("import sys\n"
              "from orchestrator import sweep\n"
              "code = sweep.run_command(sweep.build_parser(), sweep.main, sys.argv[1:])\n"
              "print(code, sorted({m.split('.')[0] for m in sys.modules}))\n")
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, env=sweep_env, timeout=120)
    code, imported = proc.stdout.split(" ", 1)
    assert code == "2", proc.stderr[-2000:]
    assert not not_imported & set(eval(imported)), not_imported & set(eval(imported))
