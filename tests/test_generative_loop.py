"""The generative train loop without Ray (LocalSession): the multi-scale image flow path,
restart after the final checkpoint, score resolution, and the OOD report's format."""

import math

import pandas as pd
import pytest

from orchestrator.reports.tables import ood_markdown
from orchestrator.tune.epochs import run_epochs
from orchestrator.tune.session import LocalSession
from search_spaces import get_search_space
from workloads.evaluation.ood_evaluation import resolve_scores
from workloads.models import DIGLM
from workloads.models.flows import build_flow
from workloads.studies.generative import GenerativeLoop


def smoke_config(name, **changes):
    return {**get_search_space(name).profile("smoke").config, "alpha": 2.0, **changes}


def test_image_flow_diglm_trains_and_evaluates_every_score():
    config = smoke_config("alpha_diglm", flow="image", num_scales=2, num_blocks=1, hidden=8,
                          epochs=1, dequantization="start")
    session = LocalSession(num_threads=1)
    run_epochs(GenerativeLoop, config, session)
    final = session.reports[-1]
    assert final["status"] == "completed"
    for key in ("test_bpd", "test_am", "test_acc", "val_bpd", "train_am", "auroc_neg_am"):
        assert math.isfinite(final[key]), key
    assert 0 < final["test_bpd"] < 8  # 17 levels: a uniform model has log2(17) = 4.1 bits
    rows = session.final["ood"]
    assert {r["score"] for r in rows} >= {"msp", "odin", "mahalanobis", "log_px", "neg_am"}
    assert set(session.final["samples"]) == {"log_px", "am"}
    assert min(session.final["samples"]["am"]["id"]) >= 0

    # Restarted after its final checkpoint, the loop re-reports instead of training again.
    again = LocalSession(num_threads=1)
    again._state, again.final = session._state, session.final
    run_epochs(GenerativeLoop, config, again)
    assert len(again.reports) == 1 and again.reports[0] == final


def test_score_resolution_checks_what_the_model_provides():
    flow = build_flow("vector", (1, 8, 8), levels=17)
    assert list(resolve_scores(flow, "all")) == ["log_px", "neg_am"]
    assert resolve_scores(DIGLM(flow, 10), "msp+neg_am", {"msp": {"x": 1}}) == {
        "msp": {"x": 1}, "neg_am": {}}
    with pytest.raises(ValueError, match="needs logits"):
        resolve_scores(flow, "msp")
    with pytest.raises(ValueError, match="unknown OOD score"):
        resolve_scores(flow, "nope")


def test_ood_markdown_prints_the_thesis_table_format():
    space = get_search_space("alpha_flow")
    table = pd.DataFrame([{"trial_id": "t1", "dataset": "digits", "normal_class": -1,
                           "dequantization": "centred", "alpha": 2.0}])
    ood = pd.DataFrame([
        {"trial_id": "t1", "dataset": "digits", "normal_class": -1, "dequantization": "centred",
         "alpha": 2.0, "score": score, "ood_set": "uniform_noise", "n": 10, "auroc": auroc,
         "aupr_in": 0.969, "aupr_out": 0.9, "fpr95": 0.0, "tnr95": 1.0}
        for score, auroc in (("log_px", 0.96949), ("neg_am", 1.0))])
    text = ood_markdown(table, ood, space)
    assert "| digits -> uniform_noise | .969/.969/1.0 | 1.0/.969/1.0 |" in text
    assert "alpha=2.0" in text and text.count("### ") == 1


def test_training_time_diagnostic_every_k_epochs_equals_the_ood_metrics():
    """`diagnostic_every` = 2 over 4 epochs: snapshots after epochs 2 and 4, each the AUROC
    of log p(x) and -AM on the first `diagnostic_samples` inputs; the last one is the final
    model's, so it equals `ood_metrics` on those inputs."""
    from workloads.data import load_trial_data
    from workloads.evaluation.metrics import ood_metrics
    from workloads.models import build_generative_model
    from workloads.scores import build_score

    config = smoke_config("alpha_flow", epochs=4, diagnostic_every=2, diagnostic_samples=50)
    session = LocalSession(num_threads=1)
    run_epochs(GenerativeLoop, config, session)
    rows = pd.DataFrame(session.final["diagnostic"])
    data = load_trial_data(config)
    assert sorted(rows.epoch.unique()) == [2, 4]
    assert len(rows) == 2 * 2 * len(data.ood)
    per_epoch = {r["epoch"]: r for r in session.reports if "diag_auroc_log_px_uniform_noise" in r}
    assert sorted(per_epoch) == [2, 4]
    model = build_generative_model(config, data.input_shape, data.levels, data.num_classes)
    model.load_state_dict(session._state["model"])
    model.eval()
    for score in ("log_px", "neg_am"):
        values = build_score(score)
        expected = ood_metrics(values(model, data.x_test[:50]).double().numpy(),
                               values(model, data.ood["uniform_noise"][:50]).double().numpy())
        got = rows[(rows.epoch == 4) & (rows.score == score)
                   & (rows.ood_set == "uniform_noise")].auroc.item()
        assert got == pytest.approx(expected["auroc"], abs=1e-12), score
        assert per_epoch[4][f"diag_auroc_{score}_uniform_noise"] == pytest.approx(got)
    # the Fig. 3.17 claim's quantities: the mean over OOD sets at the first and last snapshot
    final = session.reports[-1]
    for score in ("log_px", "neg_am"):
        for end, epoch in (("first", 2), ("last", 4)):
            expected = rows[(rows.epoch == epoch) & (rows.score == score)].auroc.mean()
            assert final[f"diag_auroc_{score}_{end}"] == pytest.approx(expected), (score, end)
