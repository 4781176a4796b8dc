"""The defense's decision pieces (workloads.defense): the split, pairs, the detection
threshold of best accuracy, Table 4.1's metrics, the early-stop choice, the defended labels."""

import itertools

import torch

from workloads import defense as D


def test_split_takes_a_fifth_for_validation_and_cuts_the_rest():
    val, test = D.split_test_set(360, 0.2, n_test=1000, seed=0)
    assert len(val) == 72 and len(test) == 288
    assert set(val.tolist()).isdisjoint(test.tolist())
    val, test = D.split_test_set(10_000, 0.2, n_test=1000, seed=0)
    assert len(val) == 2000 and len(test) == 1000  # the thesis' MNIST protocol
    again = D.split_test_set(10_000, 0.2, n_test=1000, seed=0)
    assert torch.equal(val, again[0]) and torch.equal(test, again[1])


def test_pairs_are_right_to_wrong():
    y = torch.tensor([0, 1, 2, 3])
    clean = torch.tensor([0, 1, 0, 3])
    adv = torch.tensor([1, 1, 1, 0])
    assert D.successful_pairs(clean, adv, y).tolist() == [True, False, False, True]


def brute_force_accuracy(am_clean, am_adv, tau):
    return (((am_clean <= tau).sum() + (am_adv > tau).sum()) / (len(am_clean) + len(am_adv))
            ).item()


def test_threshold_is_the_best_of_every_cut():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        am_clean = torch.randn(15, generator=g).exp()
        am_adv = (torch.randn(12, generator=g) + 0.7).exp()
        am_adv[:3] = am_clean[:3]  # ties across the classes
        tau = D.best_threshold(am_clean, am_adv)
        values = torch.cat([am_clean, am_adv]).sort().values
        cuts = [values[0] - 1, *[(a + b) / 2 for a, b in itertools.pairwise(values)], values[-1]]
        best = max(brute_force_accuracy(am_clean, am_adv, c) for c in cuts)
        assert brute_force_accuracy(am_clean, am_adv, tau) == best


def test_detection_metrics_of_a_separable_and_an_inverted_detector():
    clean, adv = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])
    good = D.detection_metrics(clean, adv, D.best_threshold(clean, adv))
    assert good["auroc"] == 1.0 and good["accuracy"] == 1.0 and good["tnr95"] == 1.0
    assert good["detection_rate"] == 1.0 and good["false_alarm_rate"] == 0.0
    inverted = D.detection_metrics(adv, clean, D.best_threshold(adv, clean))
    assert inverted["auroc"] == 0.0 and inverted["accuracy"] == 0.5  # thesis, alpha = 0


def test_early_stop_choice_prefers_the_earliest_stop_among_ties_and_none_if_better():
    candidates = torch.tensor([100.0, 50.0, 10.0])
    accuracies = torch.tensor([0.4, 0.6, 0.6], dtype=torch.float64)
    assert D.choose_am_stop(candidates, accuracies, 0.5) == (50.0, 0.6)
    assert D.choose_am_stop(candidates, accuracies, 0.6) == (None, 0.6)
    grid = D.am_stop_candidates(torch.tensor([2.0, 20.0, 200.0, float("nan")]), num=3)
    assert torch.allclose(grid, torch.tensor([200.0, 20.0, 2.0]))


def test_defended_labels_are_restored_only_where_flagged():
    plain, restored = torch.tensor([1, 2, 3]), torch.tensor([7, 8, 9])
    flagged = torch.tensor([True, False, True])
    assert D.defended_predictions(plain, flagged, restored).tolist() == [7, 2, 9]
    assert D.THESIS_TABLES[2.0]["defense_accuracy"] == 0.608
