"""`python -m orchestrator.evaluate`: a model from elsewhere (torchvision's ResNet-18, random
weights) through the real CLI on CIFAR-10 files, near and far OOD sets, attacks on the pool,
W&B offline, --resume; bad input exits 2 in one line."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import command_in_process
from test_jobs_e2e import job_auroc, recomputed_auroc

from orchestrator.tracking.offline import find_offline_runs, read_offline_run
from workloads.evaluation.examples import EXAMPLE_COLUMNS

pytestmark = pytest.mark.slow


def evaluate(env, cwd, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "orchestrator.evaluate", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def cifar_files(tmp_path_factory):
    from test_datasets import write_cifar, write_idx

    data = tmp_path_factory.mktemp("data")
    write_cifar(data, "cifar10", 200, seed=0, test_n=60)
    write_cifar(data, "cifar100", 1000, seed=1, test_n=60)  # near OOD of CIFAR-10
    write_idx(data, "MNIST", 200, seed=2)                   # far OOD
    return data


def test_a_torchvision_resnet_is_evaluated_near_and_far_clean_and_attacked(
        cifar_files, env, tmp_path):
    import hashlib

    import torchvision
    from PIL import Image

    torch.manual_seed(0)  # "trained elsewhere": random weights, saved as a state dict
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pt")
    own = tmp_path / "my_scans"  # the researcher's own OOD images: nested, mixed formats
    (own / "batch2").mkdir(parents=True)
    rng = torch.Generator().manual_seed(3)
    for i in range(30):
        pixels = (torch.rand(20, 24, 3, generator=rng) * 255).byte().numpy()
        name = f"{i}.{'png' if i % 3 else 'jpg'}"
        Image.fromarray(pixels).save(own / ("batch2" if i % 2 else "") / name)
    (own / "notes.txt").write_text("not an image")
    out = tmp_path / "eval"
    ood = ["--ood", "gaussian_noise", "uniform_noise", "natural_patches", "cifar100", "mnist",
           "svhn", own]
    args = ["--model", "torchvision.models:resnet18", "--model-arg", "num_classes=10",
            "--checkpoint", tmp_path / "r18.pt", "--dataset", "cifar10", "--data-dir",
            cifar_files, *ood, "--scores", "msp+energy+mahalanobis+vim", "--eps", "2/255",
            "--steps", 3, "--n", 40, "--batch-size", 20, "--num-actors", 2,
            "--cpus-per-actor", 0.5, "--out", out]
    proc = evaluate(env, tmp_path, *args, "--wandb", "offline")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OOD set svhn is skipped" in proc.stdout  # absent files: a note, not an error
    assert "fitting detector 4/4: vim" in proc.stdout  # progress while the detectors fit
    frame = pd.read_csv(out / "evaluation.csv")
    assert {"cifar100", "mnist", "my_scans", "group:near", "group:far", "group:other",
            "group:all"} <= set(frame.ood_set)
    assert set(frame[frame.ood_set == "my_scans"].group) == {"other"}
    assert set(frame[frame.ood_set == "cifar100"].group) == {"near"}
    assert set(frame[frame.ood_set == "mnist"].group) == {"far"}
    markdown = (out / "evaluation.md").read_text()
    for column in ("clean near", "clean far", "attacked near (eps 2/255)",
                   "attacked far (eps 2/255)"):
        assert column in markdown, column
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "torchvision.models:resnet18"
    assert summary["checkpoint_sha256"] == hashlib.sha256(
        (tmp_path / "r18.pt").read_bytes()).hexdigest()
    assert summary["not_attacked"] == {"vim": "pytorch-ood scores without a graph "
                                              "(torch.no_grad)"}
    assert summary["ood_sets"] == ["gaussian_noise", "uniform_noise", "natural_patches",
                                   "cifar100", "mnist", "my_scans"]
    # 3 attacked scores x (ID + 3 generated + 2 dataset sets + 1 folder) x 2 units of 20
    assert (out / "evaluation.png").exists() and len(list((out / "units").glob("*.pt"))) == 42
    (run_dir,) = find_offline_runs(out)
    assert read_offline_run(run_dir).summary["id_accuracy"] == summary["id_accuracy"]
    assert list(run_dir.glob("files/media/table/evaluation_*.table.json"))
    examples = pd.read_parquet(out / "examples.parquet")  # per input, clean and attacked
    scores = ("msp", "energy", "mahalanobis", "vim")
    assert set(examples.columns) == {*EXAMPLE_COLUMNS, *(f"score_{s}" for s in scores),
                                     *(f"score_{s}_attacked_eps0.00784314" for s in scores[:3])}
    assert examples.groupby("split").size().to_dict() == {
        "test": 60, **{s: 40 for s in summary["ood_sets"] if s != "my_scans"}, "my_scans": 30}
    assert (examples[examples.split != "test"].compared_with == 40).all()  # n ID inputs
    assert examples[examples.split == "test"].score_msp.notna().sum() == 40
    # the 30 scans against the first 40 test inputs, and cifar100 both attacked
    assert recomputed_auroc(examples, "my_scans", "score_mahalanobis", "score_mahalanobis") \
        == job_auroc(frame, "mahalanobis", "my_scans", "clean")
    hit = "score_msp_attacked_eps0.00784314"
    assert recomputed_auroc(examples, "cifar100", hit, hit) == \
        job_auroc(frame, "msp", "cifar100", "both_attacked", 2 / 255)

    (out / "examples.parquet").unlink()
    resumed = evaluate(env, tmp_path, *args, "--wandb", "disabled", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    again = pd.read_csv(out / "evaluation.csv")
    pd.testing.assert_frame_equal(again, frame)  # every unit reused: the same table
    pd.testing.assert_frame_equal(pd.read_parquet(out / "examples.parquet"), examples)


def test_bad_input_exits_2_in_one_line(cifar_files, env, tmp_path):
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pt")
    (tmp_path / "empty").mkdir()
    (tmp_path / "a" / "scans").mkdir(parents=True)
    (tmp_path / "b" / "scans").mkdir(parents=True)
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    base = ["--dataset", "cifar10", "--data-dir", cifar_files, "--wandb", "disabled"]
    resnet = ["--model", "torchvision.models:resnet18", "--model-arg", "num_classes=10"]
    for args, words in [
        (["--model", "torchvision.models:no_such_net", *base], "no_such_net"),
        (["--model", "resnet18", *base], "expected MODULE:FACTORY"),
        ([*resnet, "--checkpoint", tmp_path / "corrupt.pt", *base], "cannot be read safely"),
        ([*resnet, "--checkpoint", tmp_path / "wrong.pt", *base], "does not fit the model"),
        ([*resnet, "--head", "layer1", *base], "not nn.Linear"),
        ([*resnet, *base, "--ood", "no_such_set"], "no_such_set"),
        ([*resnet, *base, "--scores", "msp+no_such_score"], "unknown no_such_score"),
        ([*resnet, *base, "--ood", tmp_path / "no" / "such_folder"], "not a directory"),
        (["--model", "torchvision.models:resnet18", *base], "returns 1000 logits, cifar10 "
                                                            "has 10 classes"),
        ([*resnet, "--dataset", "digits", "--wandb", "disabled"], "fails on the inputs of digits"),
        ([*resnet, *base, "--ood", tmp_path / "empty"], "holds no image files"),
        ([*resnet, *base, "--ood", tmp_path / "a" / "scans", tmp_path / "b" / "scans"],
         "folder name scans is given twice"),
    ]:
        # the first as its own process (the command's contract as a process), the others
        # through the same run_command in this process (~4 s less each)
        proc = evaluate(env, tmp_path, *args) if words == "no_such_net" else \
            command_in_process("evaluate", *args, env=env, cwd=tmp_path)
        assert proc.returncode == 2, (words, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (words, proc.stderr[-2000:])
