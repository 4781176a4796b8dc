"""The sweep's console, through real Ray Tune: our callbacks' hooks are Tune's, and a sweep
whose trials outlast the status interval prints status lines naming each running trial's
epoch and final-stage step; Ray's own notices go to the log file the header names."""

import inspect
import re

import pytest
from ray.tune import Callback

from orchestrator.tracking.runs import WandbTrialLogger
from orchestrator.tune.checkpoint_retention import CheckpointRetention
from orchestrator.tune.console import ConsoleReporter, planned_epochs


@pytest.mark.parametrize("callback", [ConsoleReporter, CheckpointRetention, WandbTrialLogger])
def test_every_hook_of_our_callbacks_is_one_tune_calls(callback):
    """Tune calls only the hooks its Callback defines: an `on_*` method it does not define
    (like the old `ConsoleReporter.on_step`) is never called."""
    hooks = {name for name, _ in inspect.getmembers(Callback, inspect.isfunction)}
    ours = {name for name in vars(callback) if name.startswith(("on_", "setup"))}
    assert ours and ours <= hooks, sorted(ours - hooks)
    for name in ours:  # and each takes what Tune passes
        theirs = inspect.signature(getattr(Callback, name)).parameters
        mine = inspect.signature(getattr(callback, name)).parameters
        assert [p for p in mine if p != "info"] == [p for p in theirs if p != "info"], name


def test_planned_epochs():
    assert planned_epochs({"budget": "B", "epochs_b": 5, "max_epochs_a": 50}) == "5"
    assert planned_epochs({"budget": "A", "epochs_b": 5, "max_epochs_a": 50}) == "<=50"
    assert planned_epochs({"epochs": 8, "patience": 10}) == "<=8"
    assert planned_epochs({"epochs": 8}) == "8"
    assert planned_epochs({}) == ""


@pytest.mark.slow
def test_status_lines_show_each_running_trials_epoch_and_final_stage(vae_smoke_sweep):
    """vae_ood smoke with 30 epochs, each reported (conftest): each trial trains for many
    status intervals and its final stage (IWAE passes over every OOD set, the SVMs) takes
    seconds, so the status lines must catch both; the condition is the trials' length, not
    the moment. (With the profile's report_seconds=1 a fast machine sent 8 epochs as one
    report.)"""
    out, _ = vae_smoke_sweep
    status = re.findall(r"^\[sweep\] (\d)/2 done, (\d) running, (\d) pending, \d+ s", out,
                        re.MULTILINE)
    assert len(status) >= 5 and {done for done, _, _ in status} >= {"0"}
    trial = r"^  dataset=digits decoder=(gaussian|categorical) beta=1.0: "
    epochs = re.findall(trial + r"epoch (\d+)/<=30$", out, re.MULTILINE)
    stages = re.findall(trial + r"final stage: (.+)$", out, re.MULTILINE)
    assert {int(e) for _, e in epochs} & set(range(1, 30)), out[-3000:]
    assert any(s.startswith("OOD score ") for _, s in stages), out[-3000:]
    assert {d for d, _ in epochs} | {d for d, _ in stages} == {"gaussian", "categorical"}
    # A quiet start: Ray's notices are in the log the header names, not on the console.
    (log,) = re.findall(r"Ray's log: (\S+)", out)
    assert "Token authentication" in open(log).read()
    assert "Token authentication" not in out and "Configuration for experiment" not in out
    assert "View detailed results" not in out
