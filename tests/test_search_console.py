"""What a person reads of a search: a misspelt distribution in --set names the known forms;
searched values on the console and in the trials table to 4 significant digits; a trial
the scheduler stopped shows its epoch and validation metric; numbering that continues
over a resume; and the metric plots, which never average two draws of a searched key.
(The console's hooks run only in a real sweep: tests/test_search.py asserts on its lines;
here the helpers they print through.)"""

import math

import pandas as pd
import pytest

from orchestrator.errors import UsageError
from orchestrator.reports.plots import plot_metrics
from orchestrator.reports.search import with_searched_keys
from orchestrator.reports.tables import markdown_table
from orchestrator.tune.console import ConsoleReporter
from orchestrator.tune.overrides import apply_overrides
from search_spaces import get_search_space

SPACE = get_search_space("batch_size_gffn")
FORMS = "loguniform(low,high), uniform(low,high), randint(low,high), choice(a,b,...)"


# --- a misspelt distribution --------------------------------------------------------------

@pytest.mark.parametrize("override, named", [
    ("lr=logunifrom(1e-4,1e-2)", "unknown distribution 'logunifrom' (did you mean "
                                 "loguniform?)"),
    ("batch_size=randit(8,64)", "unknown distribution 'randit' (did you mean randint?)"),
    ("model=choise(ffn,gffn)", "unknown distribution 'choise' (did you mean choice?)"),
    ("lr=normal(0,1)", "unknown distribution 'normal'; known forms"),  # nothing near
])
def test_a_misspelt_distribution_names_the_key_the_known_forms_and_the_nearest(override,
                                                                               named):
    with pytest.raises(UsageError) as error:
        apply_overrides(SPACE, SPACE.profile("smoke"), [override])
    message = str(error.value)
    assert message.startswith(f"--set {override}: "), message  # the whole value, not a part
    assert named in message and message.endswith(f"known forms: {FORMS}"), message


def test_values_that_are_no_call_are_still_values():
    profile = apply_overrides(SPACE, SPACE.profile("smoke"),
                              ["lr=1e-3", "model=gffn", "lr_scaling=choice(none, sqrt)"])
    assert profile.config["lr"] == 1e-3 and profile.config["model"] == "gffn"
    assert profile.search["lr_scaling"].args == ("none", "sqrt")


# --- searched values to 4 significant digits ------------------------------------------------

def test_the_console_names_a_trial_by_its_values_to_4_significant_digits():
    reporter = ConsoleReporter(("model", "beta", "lr"), ("test_acc",), 6)
    line = reporter.trial_line({"model": "gffn", "beta": 1.0, "lr": 1.1667668532767103e-05},
                               {"test_acc": 0.97531, "time_total_s": 3.14}, "completed")
    assert line == "model=gffn beta=1.0 lr=1.167e-05: completed, test_acc 0.9753 (3.1 s)"
    from orchestrator.tune.console import value_text

    assert [value_text(v) for v in (0.00011999049779393493, 0.0035305856304085927, 64,
                                    True, "sqrt", math.nan)] == \
        ["0.00012", "0.003531", "64", "True", "sqrt", "nan"]


def test_the_trials_table_tells_close_draws_apart_and_keeps_metrics_to_4_decimals():
    space = with_searched_keys(SPACE, {"search": {"searched": {"lr": "loguniform(1e-05, 0.1)"}}})
    table = pd.DataFrame({"dataset": "digits", "budget": "B", "model": "gffn",
                          "lr_scaling": "none", "batch_size": 64,
                          "lr": [1.1e-4, 1.3e-4, 1.2e-05],
                          "test_acc": [0.912345, 0.5, math.nan],
                          "status": ["completed", "completed", "stopped"]})
    rows = markdown_table(table, space).splitlines()[2:]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert [(c[5], c[6]) for c in cells] == [("1.2e-05", "nan"), ("0.00011", "0.9123"),
                                             ("0.00013", "0.5000")]


# --- a stopped trial, and numbering over a resume ----------------------------------------

STOPPED = {"epoch": 2, "status": "running", "train_loss": 0.3, "steps": 32,
           "val_acc": 0.883333, "val_nll": 0.41234, "time_total_s": 3.14}  # as reported


def test_a_stopped_trial_shows_its_epoch_and_the_sweeps_validation_metric_first():
    reporter = ConsoleReporter(("lr",), SPACE.table_metrics, 6, metric="val_nll")
    assert reporter.finished_line({"lr": 0.001}, STOPPED) == \
        "lr=0.001: stopped at epoch 2, val_nll 0.4123, val_acc 0.8833 (3.1 s)"
    # a reporter pickled before it knew the metric (a resumed sweep): the validation ones
    reporter = ConsoleReporter(("lr",), SPACE.table_metrics, 6)
    assert reporter.finished_line({"lr": 0.001}, {**STOPPED, "test_acc": math.nan}) == \
        "lr=0.001: stopped at epoch 2, val_acc 0.8833, val_nll 0.4123 (3.1 s)"
    # a completed trial: its test metrics, as before
    done = {**STOPPED, "status": "completed", "test_acc": 0.9, "test_ece": 0.05}
    assert reporter.finished_line({"lr": 0.001}, done) == \
        "lr=0.001: completed, test_acc 0.9, test_ece 0.05, steps 32 (3.1 s)"


def test_the_metric_travels_with_the_pickled_reporter():
    import pickle

    reporter = pickle.loads(pickle.dumps(ConsoleReporter(("lr",), (), 6, metric="val_acc")))
    assert reporter.metric == "val_acc"


def test_a_resumed_sweep_counts_the_trials_it_had_finished():
    from orchestrator.tune.console import already_finished

    # what Tune's trial list holds at a restored experiment's first step
    assert already_finished(["TERMINATED", "TERMINATED", "PENDING", "RUNNING",
                             "TERMINATED", "PENDING"]) == 3
    assert already_finished(["PENDING"] * 4) == 0


# --- plots: draws of a searched key are never averaged -------------------------------------

def searched_table() -> pd.DataFrame:
    """Two draws of lr at one batch size, each on two seeds, on one model; a grid cell."""
    return pd.DataFrame({"dataset": "digits", "budget": "B", "model": "gffn",
                         "lr_scaling": "none", "batch_size": 64,
                         "lr": [1e-4, 1e-4, 1e-2, 1e-2], "seed": [0, 1, 0, 1],
                         "test_acc": [0.2, 0.4, 0.9, 0.95], "status": "completed"})


def test_the_metric_plots_keep_each_draw_of_a_searched_key_apart(tmp_path):
    from orchestrator.reports.plots import points_over_seeds, unplotted_keys

    settings = {"search": {"searched": {"lr": "loguniform(1e-05, 0.1)"}}}
    space = with_searched_keys(SPACE, settings)
    table = searched_table()
    assert unplotted_keys(table, space) == ("lr",)
    points = points_over_seeds(table, "batch_size", "test_acc", unplotted_keys(table, space))
    assert list(zip(points.x, points.lr, points.n)) == [(64, 1e-4, 2), (64, 1e-2, 2)]
    assert points["mean"].tolist() == pytest.approx([0.3, 0.925])  # not 0.6125, pooled
    assert [p.name for p in plot_metrics(table, space, tmp_path)] == \
        ["test_acc_vs_batch_size.png"]
    # a grid (nothing searched): the seeds of each x are one point, as before
    grid = searched_table().assign(lr=1e-3)
    assert unplotted_keys(grid, space) == ()
    assert points_over_seeds(grid, "batch_size", "test_acc").n.tolist() == [4]
