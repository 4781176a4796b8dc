"""Claims evaluated on constructed tables: each kind of test gives each of the three
verdicts where it should, with the interval over seeds worked out by hand."""

import math

import pandas as pd
import pytest

from orchestrator.reports.claims import (
    HOLDS,
    INCONCLUSIVE,
    REFUTED,
    evaluate_claim,
    verdict_markdown,
)
from search_spaces import Claim, Compare, CompareMetrics, Threshold, Trend

CONFIG = ["model", "batch_size"]


def table(ece_gffn, ece_ffn, seeds=3, batch_sizes=(16, 128)):
    """Trials of GFFN and FFN at each batch size and seed; ECE = the given value per batch
    size plus (seed - 1) * 0.001 for GFFN and (seed - 1) * 0.002 for FFN, so that the
    difference GFFN - FFN is the given one minus (seed - 1) * 0.001."""
    rows = []
    for b, batch in enumerate(batch_sizes):
        for seed in range(seeds):
            for model, ece in (("gffn", ece_gffn[b]), ("ffn", ece_ffn[b])):
                rows.append({"model": model, "batch_size": batch, "seed": seed,
                             "test_ece": ece + (seed - 1) * 0.001 * (1 if model == "gffn"
                                                                       else 2),
                             "test_acc": 0.9 - 0.01 * b, "status": "completed"})
    return pd.DataFrame(rows)


def ece_claim(every=True):
    return Claim("gffn_ece", "GFFN ECE < FFN ECE", "004 ch. 5",
                 Compare("test_ece", "model", "gffn", "ffn", every=every))


def test_compare_holds_is_refuted_or_is_inconclusive():
    # differences per seed: (gffn - ffn) = base difference - (seed - 1) * 0.001
    holds = evaluate_claim(ece_claim(), table([0.02, 0.03], [0.05, 0.06]), CONFIG)
    assert holds.verdict == HOLDS and holds.seeds == 3 and holds.cells == 2
    # pooled: per seed, mean over the two cells of -0.03 - (seed - 1) * 0.001:
    # mean -0.03, s = 0.001, t_{0.975,2} = 4.3027: [-0.03 - 0.0024841, -0.03 + 0.0024841]
    assert holds.estimate == pytest.approx(-0.03)
    assert holds.hi == pytest.approx(-0.03 + 4.302653 * 0.001 / math.sqrt(3), rel=1e-6)
    refuted = evaluate_claim(ece_claim(), table([0.02, 0.09], [0.05, 0.06]), CONFIG)
    assert refuted.verdict == REFUTED and "refuted in batch_size=128" in refuted.detail
    unsure = evaluate_claim(ece_claim(), table([0.02, 0.0603], [0.05, 0.06]), CONFIG)
    assert unsure.verdict == INCONCLUSIVE  # the second cell's interval straddles 0
    single = evaluate_claim(ece_claim(), table([0.02, 0.03], [0.05, 0.06], seeds=1), CONFIG)
    assert single.verdict == INCONCLUSIVE and single.seeds == 1  # no interval from 1 seed


def test_trend_threshold_and_metric_comparison():
    falls = Claim("acc_falls", "accuracy falls with batch size", "004",
                  Trend("test_acc", "batch_size", direction=-1))
    base = table([0.02, 0.03, 0.04], [0.05, 0.06, 0.07], batch_sizes=(16, 64, 256))
    base["test_acc"] = 0.9 - 0.01 * base["batch_size"].map({16: 0, 64: 1, 256: 2}) \
        + base["seed"] * 0.001
    assert evaluate_claim(falls, base, CONFIG).verdict == HOLDS
    rises = Claim("acc_rises", "accuracy rises with batch size", "-",
                  Trend("test_acc", "batch_size", direction=1))
    assert evaluate_claim(rises, base, CONFIG).verdict == REFUTED

    below = Claim("ece_small", "ECE below 0.04 somewhere", "-",
                  Threshold("test_ece", 0.04, every=False))
    assert evaluate_claim(below, base, CONFIG).verdict == HOLDS  # GFFN at batch 16
    everywhere = Claim("ece_small_all", "ECE below 0.04 everywhere", "-",
                       Threshold("test_ece", 0.04))
    assert evaluate_claim(everywhere, base, CONFIG).verdict == REFUTED

    base["auroc_lnz"], base["auroc_msp"] = 0.5 + base["seed"] * 0.01, 0.9
    lnz = Claim("lnz_below_msp", "ln Z AUROC below MSP's", "004",
                CompareMetrics("auroc_lnz", "auroc_msp"))
    result = evaluate_claim(lnz, base, CONFIG)
    assert result.verdict == HOLDS and result.cells == 6
    missing = evaluate_claim(Claim("x", "y", "z", Threshold("auroc_gone", 0.5)), base, CONFIG)
    assert missing.verdict == INCONCLUSIVE and "auroc_gone" in missing.detail
    markdown = verdict_markdown([result, missing])
    assert "**holds**" in markdown and "ln Z AUROC below MSP's" in markdown


def test_a_config_column_determined_by_the_others_does_not_split_the_cells():
    """The scaled lr is a function of lr_scaling and batch size: a trend over batch size is
    taken per (model, lr_scaling), not per lr (where each cell would hold one batch size)."""
    rows = []
    for scaling in ("none", "sqrt"):
        for b, batch in enumerate((16, 64, 256)):
            lr = 1e-3 * (math.sqrt(batch / 16) if scaling == "sqrt" else 1)
            for seed in range(3):
                rows.append({"model": "ffn", "lr_scaling": scaling, "lr": lr,
                             "batch_size": batch, "seed": seed, "status": "completed",
                             "test_acc": 0.95 - 0.01 * b - 0.001 * seed})
    claim = Claim("falls", "accuracy falls", "004", Trend("test_acc", "batch_size", -1))
    verdict = evaluate_claim(claim, pd.DataFrame(rows), ["lr", "lr_scaling", "batch_size"])
    assert verdict.cells == 2 and verdict.verdict == HOLDS
    assert sorted(c.split(":")[0] for c in verdict.per_cell) == ["lr_scaling=none",
                                                                "lr_scaling=sqrt"]


def test_a_threshold_on_the_mean_over_configurations():
    """A table's "average" row (Tables 3.2/3.3): per seed the mean over the 6 cells of
    test_ece = (0.02+0.03+0.04+0.05+0.06+0.07)/6 + (seed-1)*(3*0.001+3*0.002)/6 =
    0.045 + 0.0015*(seed-1), so mean 0.045, s = 0.0015, half-width 4.302653*0.0015/sqrt(3)."""
    from orchestrator.reports.claims import natural_interval

    base = table([0.02, 0.03, 0.04], [0.05, 0.06, 0.07], batch_sizes=(16, 64, 256))
    half = 4.302653 * 0.0015 / math.sqrt(3)
    verdicts = {}
    for value in (0.05, 0.044, 0.04):
        claim = Claim("mean_ece", "mean ECE below", "-", Threshold("test_ece", value, mean=True))
        verdicts[value] = evaluate_claim(claim, base, CONFIG)
    assert [verdicts[v].verdict for v in (0.05, 0.044, 0.04)] == [HOLDS, INCONCLUSIVE, REFUTED]
    assert natural_interval(verdicts[0.05]) == natural_interval(verdicts[0.04])
    v = verdicts[0.05]
    assert 0.05 + v.estimate == pytest.approx(0.045)
    assert (0.05 + v.lo, 0.05 + v.hi) == pytest.approx((0.045 - half, 0.045 + half))
    assert "mean over 6 cells" in v.detail
