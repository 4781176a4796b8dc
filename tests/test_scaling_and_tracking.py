"""Resource and device logic of the training paths (CPU-checkable parts of the GPU path),
W&B mode selection, and the loop's own resume from a checkpoint."""

import math

import pytest
import torch

from orchestrator.tracking.runs import has_api_key, resolve_mode
from orchestrator.tune.epochs import run_epochs
from orchestrator.tune.scaling import Scaling
from orchestrator.tune.session import LocalSession, select_device
from search_spaces import get_search_space
from workloads.studies.classifier import ClassifierLoop


def test_single_cpu_worker_runs_in_process():
    scaling = Scaling(num_workers=1, gpus_per_worker=0, cpus_per_worker=2)
    assert scaling.in_process
    assert scaling.trial_resources() == {"CPU": 2, "GPU": 0}
    assert scaling.total_resources() == {"CPU": 2, "GPU": 0}


@pytest.mark.parametrize("workers, gpus", [(2, 0.0), (1, 1.0), (4, 0.5)])
def test_multi_worker_and_gpu_trials_use_a_torch_trainer(workers, gpus):
    scaling = Scaling(num_workers=workers, gpus_per_worker=gpus, cpus_per_worker=3)
    assert not scaling.in_process
    assert scaling.trial_resources()["CPU"] == 0  # the trial only drives the trainer
    config = scaling.scaling_config()
    assert config.num_workers == workers
    assert config.use_gpu == (gpus > 0)
    expected = {"CPU": 3, **({"GPU": gpus} if gpus else {})}
    assert config.resources_per_worker == expected
    assert scaling.total_resources() == {"CPU": 3 * workers, "GPU": gpus * workers}


def test_device_falls_back_to_cpu_without_cuda():
    assert select_device(use_gpu=False).type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device(use_gpu=True).type == expected


def test_wandb_mode_follows_the_api_key(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert not has_api_key()
    assert resolve_mode(None) == "offline"
    with pytest.raises(ValueError, match="API key"):
        resolve_mode("online")
    assert resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode(None) == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " +
                                     "y" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert resolve_mode(None) == "online"


def _config(**overrides):
    profile = get_search_space("batch_size_gffn").profile("smoke")
    return {**profile.config, "batch_size": 64, "model": "gffn", **overrides}


def test_loop_resumes_from_its_checkpoint_exactly():
    straight = LocalSession(num_threads=1)
    run_epochs(ClassifierLoop, _config(epochs_b=4), straight)

    first = LocalSession(num_threads=1)
    run_epochs(ClassifierLoop, _config(epochs_b=2), first)  # stops after epoch 2, checkpointed
    resumed = LocalSession(num_threads=1)
    resumed._state, resumed.final = first._state, None
    run_epochs(ClassifierLoop, _config(epochs_b=4), resumed)
    assert [r["epoch"] for r in resumed.reports] == [3, 4]
    assert resumed.reports[-1]["steps"] == straight.reports[-1]["steps"]
    assert resumed.reports[-1]["test_acc"] == straight.reports[-1]["test_acc"]
    assert resumed.reports[-1]["train_loss"] == pytest.approx(
        straight.reports[-1]["train_loss"], rel=1e-5)


def test_budget_a_stops_on_patience_and_evaluates_the_best_epoch():
    session = LocalSession(num_threads=1)
    run_epochs(ClassifierLoop,
               _config(budget="A", patience=2, max_epochs_a=60, batch_size=512), session)
    final = session.reports[-1]
    assert final["status"] == "completed"
    assert final["epochs"] - final["best_epoch"] == 2 or final["epochs"] == 60
    best_val = max(r["val_acc"] for r in session.reports)
    assert session.reports[final["best_epoch"] - 1]["val_acc"] == best_val
    assert all(math.isfinite(final[k]) for k in ("test_acc", "test_ece", "auroc_lnz"))


def test_non_finite_loss_ends_the_trial_as_diverged():
    session = LocalSession(num_threads=1)
    run_epochs(ClassifierLoop, _config(lr=1e12, epochs_b=5, batch_size=16), session)
    assert len(session.reports) == 1
    assert session.reports[0]["status"] == "diverged"
    assert session.reports[0]["diverged_epoch"] == 1


def test_a_finished_run_restarted_from_its_last_checkpoint_reports_again():
    done = LocalSession(num_threads=1)
    run_epochs(ClassifierLoop, _config(epochs_b=2), done)
    restarted = LocalSession(num_threads=1)
    restarted._state, restarted.final = done._state, done.final
    run_epochs(ClassifierLoop, _config(epochs_b=2), restarted)
    assert restarted.reports == [done.reports[-1]]
    assert restarted.final == done.final


@pytest.mark.parametrize("loop", ["classifier", "generative"])
def test_only_rank_zero_runs_the_final_evaluation(loop, monkeypatch):
    """On Ray Train every rank runs the loop; the final test and OOD stage runs on rank 0
    alone, while the other ranks wait at the (collective) report. Rank 1 of 2 here, on a
    real single-process gloo group so that the loop's collectives run."""
    import torch.distributed as dist
    from conftest import free_port

    from workloads.studies import LOOPS, classifier, generative

    def must_not_run(*args, **kwargs):
        raise AssertionError("a rank other than 0 ran the final evaluation")

    for module, name in ((classifier, "final_evaluation"), (generative, "evaluate_ood"),
                         (generative, "classifier_test_metrics")):
        monkeypatch.setattr(module, name, must_not_run)
    session = LocalSession(num_threads=1)
    session.rank, session.world_size = 1, 2
    if loop == "classifier":
        config = _config(epochs_b=2)
    else:
        space = get_search_space("alpha_diglm").profile("smoke")
        config = {**space.config, "alpha": 0.0}
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)
    try:
        run_epochs(LOOPS[loop], config, session)
    finally:
        dist.destroy_process_group()
    last = session.reports[-1]
    assert last["status"] == "completed" and session.final is None
    assert not any(key.startswith(("test_", "auroc_", "ood_")) for key in last)


def test_concurrency_follows_what_the_cluster_can_grow_to():
    """The launcher's cluster: a head with no CPUs for trials and workers that start at 0
    nodes. Sizing from its first minute gave max(1, 0) = 1 trial at a time; on a cluster
    there is no cap (pending trials are the autoscaler's demand), locally what fits."""
    from orchestrator.errors import UsageError
    from orchestrator.tune.experiment import concurrent_trials

    need = Scaling().total_resources()
    assert concurrent_trials({"CPU": 0.0}, need, on_cluster=True) is None
    assert concurrent_trials({"CPU": 0.0}, need, on_cluster=True, requested=6) == 6
    assert concurrent_trials({"CPU": 2.0}, need, on_cluster=False) == 2
    assert concurrent_trials({"CPU": 8.0}, need, on_cluster=False, requested=3) == 3
    with pytest.raises(UsageError, match="this machine has 2 CPU, 0 GPU"):
        concurrent_trials({"CPU": 2.0}, Scaling(gpus_per_worker=1).total_resources(),
                          on_cluster=False)
