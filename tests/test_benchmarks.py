"""The benchmarks that need no Ray stay runnable: each is run on its smallest input."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_final_stages  # noqa: E402


def test_the_final_stage_benchmark_times_the_stage_its_steps_and_the_floor():
    row = bench_final_stages.measure("batch_size_gffn", "smoke")
    assert row["training_s"] > 0 and row["final_stage_s"] > 0 and row["floor_s"] > 0
    assert row["final_to_floor"] > 1  # two scores with intervals cost more than one pass
    assert row["inputs_scored"] == 360 + 3 * 360  # digits' test split and its 3 OOD sets
    assert set(row["slowest_steps"]) == {"OOD score 1/2: msp", "OOD score 2/2: lnz"}
