"""The epoch driver (`orchestrator.tune.epochs.run_epochs`) on a toy loop whose validation
values are scripted: the best epoch and its weights, early stopping, divergence, resume from
a checkpoint, a finished trial restarted, and rank 0's final stage. Every study's loop runs
through this one driver (`workloads.studies.LOOPS`)."""

import math

import pytest
import torch
from torch import nn

from orchestrator.tune.epochs import run_epochs
from orchestrator.tune.session import LocalSession
from workloads.studies import LOOPS
from workloads.training.loop import EpochLoop


class ScriptedLoop(EpochLoop):
    """One SGD step per epoch on a linear model; `val_loss` of epoch k is `script[k]`;
    `train_loss` is inf at epoch `diverge_at`; epoch `crash_at` raises (a killed worker)."""

    best = ("val_loss", "min")
    keep_best_weights = True
    nan_when_diverged = ("val_loss",)

    def __init__(self, config, worker):
        self.config = config
        self.model = worker.prepare_model(nn.Linear(2, 1))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.epochs = config["epochs"]
        self.patience = config.get("patience")
        self.trained = []  # epochs this run trained
        self.weights = {}  # epoch -> weight after it

    def train_epoch(self, epoch):
        if epoch == self.config.get("crash_at"):
            raise RuntimeError("worker killed")
        self.trained.append(epoch)
        x = torch.randn(16, 2)
        loss = ((self.model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.weights[epoch] = self.model.weight.detach().clone()
        train_loss = math.inf if epoch == self.config.get("diverge_at") else loss.item()
        return {"steps": 1, "train_loss": train_loss}

    def validate(self, epoch, state):
        return {"val_loss": self.config["script"][epoch]}

    def state_dict(self):
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def final_stage(self, model, state, progress):
        progress("scoring")
        return ({"weight_sum": model.weight.sum().item(), "eval_mode": not model.training},
                {"rows": [1, 2]})


def _run(config, session=None):
    session = session or LocalSession()
    built = []

    def make(cfg, worker):
        built.append(ScriptedLoop(cfg, worker))
        return built[-1]

    run_epochs(make, {"seed": 0, "checkpoint_every": 1, **config}, session)
    return session, built[-1]


SCRIPT = [3.0, 2.0, 1.0, 1.5, 1.7, 1.8, 1.9, 2.0]


def test_the_best_epoch_is_kept_and_its_weights_are_evaluated_after_patience_runs_out():
    session, loop = _run({"epochs": 8, "patience": 2, "script": SCRIPT})
    last = session.reports[-1]
    assert [r["epoch"] for r in session.reports] == [1, 2, 3, 4, 5]
    assert [r["status"] for r in session.reports] == ["running"] * 4 + ["completed"]
    assert last["best_epoch"] == 3 and last["epochs"] == 5
    assert last["weight_sum"] == pytest.approx(loop.weights[2].sum().item())
    assert last["weight_sum"] != pytest.approx(loop.weights[4].sum().item())
    assert last["eval_mode"] and session.final == {"rows": [1, 2]}
    assert session.stages == ["final stage", "scoring"]
    assert [r["steps"] for r in session.reports] == [1, 2, 3, 4, 5]


def test_without_patience_every_epoch_runs_and_the_last_report_says_so():
    session, _ = _run({"epochs": 8, "script": SCRIPT})
    assert len(session.reports) == 8 and session.reports[-1]["epochs"] == 8
    assert session.reports[-1]["best_epoch"] == 3


def test_a_non_finite_loss_ends_the_trial_as_diverged_without_a_final_stage():
    session, loop = _run({"epochs": 8, "script": SCRIPT, "diverge_at": 2})
    last = session.reports[-1]
    assert last["status"] == "diverged" and last["diverged_epoch"] == 3
    assert math.isnan(last["val_loss"]) and loop.trained == [0, 1, 2]
    assert session.final is None and "final stage" not in session.stages


def test_a_killed_trial_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one():
    straight, _ = _run({"epochs": 6, "script": SCRIPT})
    torch.manual_seed(0)
    session = LocalSession()
    with pytest.raises(RuntimeError, match="worker killed"):
        _run({"epochs": 6, "script": SCRIPT, "crash_at": 4}, session)
    _, resumed = _run({"epochs": 6, "script": SCRIPT}, session)
    assert resumed.trained == [4, 5]  # epochs 1-4 came from the checkpoint
    assert [r["epoch"] for r in session.reports] == [1, 2, 3, 4, 5, 6]
    assert session.reports[-1]["steps"] == 6 and session.reports[-1]["best_epoch"] == 3


def test_a_finished_trial_restarted_reports_its_result_again_without_training():
    session, _ = _run({"epochs": 4, "script": SCRIPT})
    final = session.reports[-1]
    _, again = _run({"epochs": 4, "script": SCRIPT}, session)
    assert again.trained == [] and session.reports[-1] == final


def test_only_rank_zero_runs_the_final_stage():
    session = LocalSession()
    session.rank, session.world_size = 1, 2
    _run({"epochs": 3, "script": SCRIPT}, session)
    last = session.reports[-1]
    assert last["status"] == "completed" and "weight_sum" not in last
    assert session.final is None


def test_every_study_loop_is_an_epoch_loop():
    """A loop is a factory of `EpochLoop`s: a class, or a partial / function returning one."""
    for name, factory in LOOPS.items():
        target = getattr(factory, "func", factory)
        if isinstance(target, type):
            assert issubclass(target, EpochLoop), name
        else:
            assert target.__annotations__.get("return") in (EpochLoop, "EpochLoop"), name
