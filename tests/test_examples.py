"""Per-example outputs (workloads/evaluation/examples.py): their schema on a final stage,
test inputs keyed by their index in the dataset, and `--vary-split`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sklearn_digits

from orchestrator.errors import UsageError
from orchestrator.tune.overrides import apply_overrides
from search_spaces import get_search_space
from workloads.data import load_dataset, load_trial_data, one_class_split, trial_data_seed
from workloads.evaluation.examples import EXAMPLE_COLUMNS, Examples
from workloads.evaluation.resampling import TrialMetrics


def test_test_inputs_are_keyed_by_their_row_in_the_dataset():
    raw = sklearn_digits()
    for seed in (0, 3):
        data = load_dataset("digits", seed=seed, ood=False)
        assert np.array_equal(data.x_test[:, 0].numpy(), raw.images[data.test_index] / 16.0)
        assert np.array_equal(data.y_test.numpy(), raw.target[data.test_index])
    one_class = one_class_split(load_dataset("digits", ood=False), 4)
    assert np.array_equal(one_class.x_test[:, 0].numpy(), raw.images[one_class.test_index] / 16)


def test_vary_split_gives_each_seed_its_own_split():
    space = get_search_space("failure_prediction")
    profile = apply_overrides(space, space.profile("smoke"), ["data_seed=seed", "seed=1,2"])
    assert profile.config["data_seed"] == "seed"
    configs = profile.trial_configs()
    assert [trial_data_seed(c) for c in configs] == [1, 2]
    first, second = (load_trial_data(c) for c in configs)
    assert not np.array_equal(first.test_index, second.test_index)
    assert trial_data_seed({"seed": 5}) == 0 and trial_data_seed({"seed": 5, "data_seed": 2}) == 2
    with pytest.raises(UsageError, match="expected int"):
        apply_overrides(space, space.profile("smoke"), ["data_seed=seeds"])


def test_the_examples_frame_has_the_schema_and_recomputes_the_stage():
    data = load_dataset("digits")
    examples = Examples(data)
    logits = torch.randn(len(data.x_test), 10)
    examples.record_logits(logits)
    id_values = torch.randn(len(data.x_test)).numpy()
    examples.record_score("test", "msp", id_values)
    examples.record_score("uniform_noise", "msp", np.linspace(0, 1, 100).astype(np.float32),
                          compared_with=100)
    examples.record_score("test", "exact", np.linspace(0, 1, len(data.x_test)))
    frame = examples.frame()
    assert tuple(frame.columns[:len(EXAMPLE_COLUMNS)]) == EXAMPLE_COLUMNS[:3] + (
        "compared_with", *EXAMPLE_COLUMNS[3:7])
    ood = frame[frame.split == "uniform_noise"]
    assert (ood.label == -1).all() and (ood.prediction == -1).all() and not ood.correct.any()
    assert frame.score_msp.dtype == np.float32  # float32 values: kept float32, losslessly
    assert frame.score_exact.dtype == np.float64  # others: float64, every digit kept
    assert np.array_equal(frame.score_exact[frame.split == "test"],
                          np.linspace(0, 1, len(data.x_test)))
    test = frame[frame.split == "test"]
    assert test.correct.mean() == pytest.approx(
        (logits.argmax(1) == data.y_test).double().mean().item(), abs=1e-15)
    assert TrialMetrics(frame, 0, None).of("ood_msp_uniform_noise_auroc") is not None
