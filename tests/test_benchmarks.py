"""The benchmarks that need no Ray stay runnable: each is run on its smallest input."""

import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_eval_chunk  # noqa: E402
import bench_final_stages  # noqa: E402
import bench_mc_dropout  # noqa: E402
import bench_scale  # noqa: E402


def test_the_final_stage_benchmark_times_the_stage_its_steps_and_the_floor():
    row = bench_final_stages.measure("batch_size_gffn", "smoke")
    assert row["training_s"] > 0 and row["final_stage_s"] > 0 and row["floor_s"] > 0
    assert row["final_to_floor"] > 1  # two scores with intervals cost more than one pass
    assert row["inputs_scored"] == 360 + 3 * 360  # digits' test split and its 3 OOD sets
    assert set(row["slowest_steps"]) == {"OOD score 1/2: msp", "OOD score 2/2: lnz"}


def test_the_scale_benchmark_reads_the_throughput_of_each_tenth_from_the_sweeps_files(tmp_path):
    """20 trials, 2 at a time, each taking 1 s from t = 100: 2 per second, except the
    fourth tenth (trials 7-8), which ends 2 s late."""
    for i in range(20):
        end = 100 + (i // 2 + 1) + (2 if i >= 6 else 0)
        rows = [{"timestamp": end - 0.5, "time_this_iter_s": 0.5},
                {"timestamp": end, "time_this_iter_s": 0.5}]
        trial = tmp_path / f"trial_{i}"
        trial.mkdir()
        (trial / "result.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert bench_scale.first_trial_start(tmp_path) == 100
    rates = bench_scale.finished_per_second(tmp_path)
    assert rates == [2.0, 2.0, 2.0, round(2 / 3, 2), 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]


def test_the_scale_benchmark_draws_the_limit_through_the_two_largest_measured_counts():
    """A limit of 10 s + 0.2 s per trial, measured at 100, 400 and 1,000 trials (the first
    off the line: only the two largest are used)."""
    measured = {100: 99.0, 400: 10 + 0.2 * 400, 1000: 10 + 0.2 * 1000}
    assert abs(bench_scale.extrapolated_limit(measured, 10_000) - (10 + 0.2 * 10_000)) < 1e-9
    try:
        bench_scale.extrapolated_limit({100: 30.0}, 10_000)
    except SystemExit as error:
        assert "two measured counts" in str(error)
    else:
        raise AssertionError("one measured count cannot draw a line")


def test_the_chunk_benchmark_times_both_chunk_sizes_on_the_same_features():
    row = bench_eval_chunk.measure("cnn", inputs=70)
    assert row["chunk_1024_s"] > 0 and row["chunk_32_s"] > 0
    assert row["max_abs_difference"] < 1e-4


def test_the_mc_dropout_benchmark_times_both_ways_on_the_same_values():
    row = bench_mc_dropout.measure(inputs=16, passes=3)
    assert row["before_s"] >= 0 and row["after_s"] >= 0 and row["equal"] is True
