"""The seed aggregation against hand computations: one row per configuration, the mean, the
sample standard deviation and the 95% t-interval of each metric, failed trials left out."""

import math

import pandas as pd
import pytest

from orchestrator.reports.aggregate import aggregate_over_seeds, aggregated_markdown


def test_one_row_per_configuration_with_t_intervals():
    table = pd.DataFrame({
        "model": ["ffn"] * 3 + ["gffn"] * 4, "batch_size": [16] * 7,
        "seed": [0, 1, 2, 0, 1, 2, 3],
        "test_ece": [0.10, 0.12, 0.14, 0.05, 0.05, 0.07, 0.09],
        "status": ["completed"] * 6 + ["error"],
        "trial_id": list("abcdefg")})
    settings = {"model": "ffn", "batch_size": 16, "seed": 0}
    out = aggregate_over_seeds(table, settings).set_index("model")
    assert list(out.index) == ["ffn", "gffn"] and out.loc["gffn", "seeds"] == 3  # error out
    ffn = out.loc["ffn"]
    # mean 0.12, s = 0.02, t_{0.975,2} = 4.302653: half-width 4.302653 * 0.02 / sqrt(3)
    assert ffn.test_ece_mean == pytest.approx(0.12)
    assert ffn.test_ece_std == pytest.approx(0.02)
    assert ffn.test_ece_hi - 0.12 == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    assert ffn.test_ece_lo == pytest.approx(0.24 - ffn.test_ece_hi)
    assert "seed_mean" not in out.columns and "trial_id_mean" not in out.columns
    markdown = aggregated_markdown(out.reset_index(), ["model"], ["test_ece"])
    assert "| ffn     | 3       | 0.12 [0.07032, 0.1697]" in markdown


def test_console_names_the_seed_of_a_trial_only_when_a_sweep_runs_several():
    from orchestrator.tune.console import ConsoleReporter, console_keys

    keys = ("model", "batch_size")
    assert console_keys(keys, {"seed": [0, 1, 2]}) == ("model", "batch_size", "seed")
    assert console_keys(keys, {"seed": 0}) == keys
    assert console_keys(keys, {"seed": [0]}) == keys
    line = ConsoleReporter(console_keys(keys, {"seed": [0, 1]}), ("test_acc",), 4).trial_line(
        {"model": "gffn", "batch_size": 16, "seed": 1}, {"test_acc": 0.5}, "completed")
    assert line == "model=gffn batch_size=16 seed=1: completed, test_acc 0.5"
