"""The defense's decision pieces (workloads.adversarial.defense): the split, pairs, the detection
threshold of best accuracy, Table 4.1's metrics, the early-stop choice, the defended labels."""

import itertools

import torch

from orchestrator.reports import published
from workloads.adversarial import defense as D


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
    assert published.TABLES_4[2.0]["defense_accuracy"] == 0.608


def test_tables_of_a_hand_built_case_have_the_numbers_worked_out_by_hand():
    """Eight test inputs, APGD-CE and two adaptive attacks, AM values and restored labels
    chosen by hand; every figure of Tables 4.1-4.4 is worked out below, then compared with
    `defense_row` and with the markdown of the table builder."""
    import pandas as pd

    from orchestrator.jobs.profiles import PROFILES
    from orchestrator.reports.tables import defense_tables

    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    clean_pred = torch.tensor([0, 1, 2, 3, 4, 5, 9, 9])  # 6/8 right
    am_clean = torch.tensor([1.0, 2, 3, 4, 18, 6, 7, 25])
    # APGD-CE turns inputs 0, 1, 3, 4, 5 from right to wrong (5 pairs, success 5/8);
    # input 2 resists, 6 and 7 were wrong already.
    apgd_pred = torch.tensor([1, 2, 2, 0, 5, 6, 9, 9])
    apgd = D.AttackedTestSet(apgd_pred, am=torch.tensor([20.0, 30, 5, 40, 50]),
                             restored=torch.tensor([0, 9, 9, 4, 9]))
    # Detection on the pairs, clean AM [1, 2, 4, 18, 6] against attacked [20, 30, 5, 40, 50]:
    # AUROC (clean ranked above attacked by -AM) = (5 + 5 + 5 + 4 + 4) / 25 = 0.92; the cut
    # of best accuracy lies between 18 and 20: tau = 19, accuracy (5 + 4) / 10 = 0.9, four
    # of five attacked inputs flagged.
    tau = D.best_threshold(am_clean[[0, 1, 3, 4, 5]], apgd.am)
    assert tau == 19.0
    # Input 7 (clean AM 25 > 19) is flagged and restored to its label 7: defended clean
    # accuracy 7/8. Restoration of the 5 pairs: [0, 9, 9, 4, 9] against [0, 1, 3, 4, 5]
    # = 2/5. Full defense: the pairs' clean inputs all right (5), attacked ones restored
    # where flagged -> [0, 9, 0 (not flagged: its APGD label), 4, 9], 2 right: 7/10.
    # lambda 0.1: pairs 0, 2, 4 (success 3/8), AM [3, 25, 10], only the second flagged and
    # restored to 2 (right): attacked labels [1, 2, 9] -> 1 right, clean 3 right: 4/6;
    # AUROC of clean [1, 3, 18] against [3, 25, 10] = (3 + 2.5 + 1) / 9.
    # lambda 0.01: pair 5 only, AM 40 flagged, restored to 5: 2/2. lambda 1: no pair.
    adaptive = {
        0.1: D.AttackedTestSet(torch.tensor([1, 1, 0, 3, 9, 5, 9, 9]),
                               am=torch.tensor([3.0, 25, 10]),
                               restored=torch.tensor([-1, 2, -1])),
        0.01: D.AttackedTestSet(torch.tensor([0, 1, 2, 3, 4, 0, 9, 9]),
                                am=torch.tensor([40.0]), restored=torch.tensor([5])),
        1.0: D.AttackedTestSet(clean_pred, am=torch.empty(0), restored=torch.empty(0)),
    }
    row = D.defense_row(y, clean_pred, am_clean, tau, torch.tensor([7]), apgd, adaptive)
    expected = {"clean_accuracy": 0.75, "attack_success": 0.625, "pairs": 5,
                "det_auroc": 0.92, "det_accuracy": 0.9, "det_detection_rate": 0.8,
                "det_false_alarm_rate": 0.0, "det_tau": 19.0, "restored_accuracy": 0.4,
                "defense_accuracy": 0.7, "clean_accuracy_defended": 0.875,
                "adaptive0.1_success": 0.375, "adaptive0.1_pairs": 3,
                "adaptive0.1_detection_rate": 1 / 3, "adaptive0.1_det_auroc": 6.5 / 9,
                "adaptive0.1_defense_accuracy": 4 / 6, "adaptive0.01_defense_accuracy": 1.0,
                "adaptive1_pairs": 0, "adaptive_defense_accuracy": 4 / 6}
    for key, value in expected.items():
        assert abs(row[key] - value) < 1e-12, (key, row[key], value)
    assert "adaptive1_defense_accuracy" not in row

    frame = pd.DataFrame([{"trial_id": "t0", "alpha": 2.0, "dequantization": "centred",
                           "status": "completed", "am_stop": None, "chain_mean_steps": 100.0,
                           **row}])
    markdown = defense_tables(frame, PROFILES["local"], "digits")
    table_41 = markdown.split("## Table 4.1")[1].split("## Table 4.2")[0]
    assert "| 0.920 " in table_41 and "| 0.900 " in table_41 and "| 0.800 " in table_41
    assert "1.000 / 1.000 / 1.000 / 0.922" in table_41  # the thesis' alpha = 2 row
    assert "| 0.400 " in markdown.split("## Table 4.2")[1].split("## Table 4.3")[0]
    table_43 = markdown.split("## Table 4.3")[1].split("## Table 4.4")[0]
    assert "| 0.700 " in table_43 and "| 0.875 " in table_43
    table_44 = markdown.split("## Table 4.4")[1]
    assert "λ=0.1: 0.375 / 0.333 / 0.667" in table_44 and "λ=0.01: 0.125 / 1.000 / 1.000" \
        in table_44 and "| 0.667 " in table_44
