"""The prepared GPU check (`benchmarks/gpu_check.py`) on the CPU: its dry run passes over
every paper model and the attack pool, and it catches what it is there to catch -- a tensor
on another device than the model's, a final stage that leaves the model changed -- failing
that model alone, with the error, and going on with the next.

On a CPU-only machine the one other device is `meta`; the check's device audit compares each
module's tensors with the model's device, whichever devices those are, so a tensor moved to
`meta` beside a CPU model is the same mistake as a CPU tensor beside a CUDA model."""

import json
import subprocess
import sys
from unittest import mock

import pytest
import torch
from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def gpu_check(*args, env, timeout=900):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_dry_run_passes_on_every_paper_model_and_the_pool(env, tmp_path):
    from benchmarks.gpu_check_specs import paper_models
    from search_spaces import sweep_names

    out = tmp_path / "check.json"
    proc = gpu_check("--dry-run", "--out", out, "--budget-seconds", 900, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["dry_run"] and record["status"] == "passed" and not record["failures"]
    assert not record["skipped"] and record["total_seconds"] > 0
    models = {m["name"]: m for m in record["models"]}
    expected = {spec.name for spec in paper_models()}
    assert set(models) == expected
    assert {sweep for m in models.values() for sweep in m["sweeps"]} == set(sweep_names())
    for piece in ("densenet100", "wrn28_10", "lenet", "godin_cnn", "vae-gaussian",
                  "vae-categorical", "gradcon", "ocgan", "alpha_flow/flow-cifar10",
                  "alpha_flow/flow-fashionmnist", "alpha_diglm/diglm"):
        assert any(piece in name for name in models), piece
    for name, model in models.items():
        assert model["status"] == "ok", (name, model.get("error"), model.get("traceback"))
        assert model["train"] and model["train"][0]["images_per_s"] > 0
        assert all(v > 0 for v in model["train"][0]["projected_epoch_seconds"].values())
        assert model["final_stage_seconds"] > 0 and model["final_metrics"] > 0
    # the CIFAR networks of document 003 at their real size, even in the dry run
    assert models["feature_gmm/wrn28_10-cifar10"]["params"] > 36_000_000
    assert models["feature_gmm/densenet100-cifar10"]["params"] > 700_000
    pool = record["pool"]
    assert pool["status"] == "ok" and len(pool["actors"]) == 4
    assert {a["device"] for a in pool["actors"]} == {"cpu"}
    assert pool["units_computed"] == 4 and pool["x_adv_agreement"] >= 0.9
    assert "feature_gmm/wrn28_10-cifar10" in proc.stdout and "PASSED" in proc.stdout


def run_main(args):
    """`gpu_check.main(args)` in this process (it sets one torch thread; put back)."""
    from benchmarks import gpu_check

    threads = torch.get_num_threads()
    try:
        return gpu_check.main(args)
    finally:
        torch.set_num_threads(threads)


def test_a_tensor_on_another_device_fails_that_model_and_the_check_goes_on(tmp_path, capsys):
    """Plant the bug: during the CNN's final stage, the inputs are moved to another device than
    the model's (`meta`; on a GPU the same bug puts them on the CPU). The check records that
    model as failed, naming the module and both devices, runs the next model (ok), prints one
    FAIL line and exits 1."""
    import workloads.scores.base as scores_base
    from benchmarks import gpu_check_models

    real = gpu_check_models.final_stage

    def planted(loop):
        stage = real(loop)
        if loop != "classifier":
            return stage

        def wrong_device(model, data, config):
            with mock.patch.object(scores_base, "_device", lambda m: torch.device("meta")):
                return stage(model, data, config)
        wrong_device.__name__ = stage.__name__
        return wrong_device

    out = tmp_path / "check.json"
    with mock.patch.object(gpu_check_models, "final_stage", planted):
        code = run_main(["--dry-run", "--only", "batch_size_gffn/cnn-mnist,"
                         "class_anomaly/gradcon-mnist", "--out", str(out)])
    assert code == 1
    record = json.loads(out.read_text())
    cnn, gradcon = record["models"]
    assert cnn["status"] == "failed" and cnn["phase"] == "final stage"
    # the first module handed the stray tensor: the stage scores through FeatureCache, which
    # calls the CNN's `features` module directly
    assert cnn["error"].startswith("DeviceMismatch: module 'features' (Sequential) received a "
                                   "tensor on meta; the model is on cpu"), cnn["error"]
    assert any("DeviceMismatch" in line for line in cnn["traceback"])
    assert gradcon["status"] == "ok"
    assert record["failures"] == [f"batch_size_gffn/cnn-mnist: failed in final stage: "
                                  f"{cnn['error']}"]
    printed = capsys.readouterr().out
    assert "FAIL batch_size_gffn/cnn-mnist: failed in final stage: DeviceMismatch" in printed


def test_the_device_audit_names_the_layer_pytorch_lets_through():
    """A parameter-free layer computes on any device without complaint; the audit names it."""
    from benchmarks.gpu_check_models import DeviceMismatch, device_audit

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU())
    model[1](torch.zeros(2, 3, device="meta"))  # PyTorch alone: no error
    with device_audit(model), pytest.raises(DeviceMismatch, match=r"'1' \(ReLU\) received "
                                            r"a tensor on meta; the model is on cpu"):
        model[1](torch.zeros(2, 3, device="meta"))
    model(torch.zeros(2, 3))  # the hooks are gone after the block
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("change, words", [
    (lambda model: model.features.train(), "training flag of 'features'"),
    (lambda model: model.head.bias.data.add_(1.0), "parameter head.bias values"),
    (lambda model: model.head.weight.requires_grad_(False), "requires_grad of 'head.weight'"),
])
def test_a_final_stage_that_leaves_the_model_changed_fails(change, words):
    from benchmarks import gpu_check_models
    from benchmarks.gpu_check_models import DRY_SIZES, check_model
    from benchmarks.gpu_check_specs import paper_models

    spec = next(s for s in paper_models() if s.name == "batch_size_gffn/cnn-mnist")
    real = gpu_check_models.final_stage

    def careless(loop):
        def stage(model, data, config):
            metrics = real(loop)(model, data, config)
            change(model)
            return metrics
        return stage

    with mock.patch.object(gpu_check_models, "final_stage", careless):
        record = check_model(spec, torch.device("cpu"), DRY_SIZES)
    assert record["status"] == "failed" and record["phase"] == "state after the final stage"
    assert words in record["error"], record["error"]


def test_the_budget_skips_what_would_start_late_and_stops_what_overruns(tmp_path, monkeypatch):
    import time

    from benchmarks import gpu_check, gpu_check_models

    out = tmp_path / "check.json"
    monkeypatch.setattr(gpu_check, "STARTED", time.perf_counter() - 100)  # 100 s used
    assert run_main(["--dry-run", "--budget-seconds", "60", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert not record["models"] and record["pool"] is None and not record["failures"]
    assert len(record["skipped"]) == 23 and record["skipped"][-1].startswith("pool: not started")

    def slow(loop):  # a final stage that would outlast any budget
        def stage(model, data, config):
            time.sleep(3600)
        return stage

    monkeypatch.setattr(gpu_check, "STARTED", time.perf_counter())
    monkeypatch.setattr(gpu_check_models, "final_stage", slow)
    started = time.perf_counter()
    assert run_main(["--dry-run", "--budget-seconds", "30", "--only",
                     "batch_size_gffn/cnn-mnist", "--out", str(out)]) == 1
    assert time.perf_counter() - started < 600  # stopped by the budget, not by the stage
    (model,) = json.loads(out.read_text())["models"]
    assert model["status"] == "interrupted" and model["phase"] == "final stage"
    assert "stopped by the time budget" in model["error"]


def test_bad_arguments_exit_2_with_one_line(env, tmp_path):
    for args, words in [(["--budget-seconds", "0"], "--budget-seconds must be positive"),
                        (["--out", tmp_path / "no" / "such" / "x.json"], "does not exist"),
                        (["--out", tmp_path], "is a directory"),
                        (["--budget-seconds", "soon"], "invalid float value")]:
        proc = gpu_check(*args, env=env, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
