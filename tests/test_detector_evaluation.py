"""Every detector of any classifier, clean and attacked, near and far, with intervals
(workloads.evaluation.detector_evaluation), checked against pytorch-ood and our bootstrap."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from workloads.data import load_dataset
from workloads.evaluation.detector_evaluation import (
    evaluate_detectors,
    ood_group,
    servable_scores,
)
from workloads.evaluation.uncertainty import bootstrap_ood_intervals
from workloads.models.foreign import ForeignClassifier
from workloads.models.modes import module_modes
from workloads.scores import fit_score


@pytest.fixture(scope="module")
def foreign():
    """A classifier trained outside the project (batch norm and dropout), on digits."""
    torch.manual_seed(0)
    data = load_dataset("digits")
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(),
                        nn.Dropout(0.2), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(100):
        loss = nn.functional.cross_entropy(net(data.x_train), data.y_train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    return ForeignClassifier(net, data.x_train[:32]), data


def test_openood_groups():
    assert ood_group("cifar10", "cifar100") == "near" and ood_group("cifar10", "svhn") == "far"
    assert ood_group("cifar100", "cifar10") == "near" and ood_group("cifar100", "dtd") == "far"
    assert ood_group("cifar10", "gaussian_noise") == "other"
    assert ood_group("digits", "uniform_noise") == "other"


def test_clean_aurocs_equal_pytorch_oods_and_attacks_never_help_the_detector(foreign):
    from pytorch_ood.metrics import OODMetrics

    model, data = foreign
    before = [(type(m).__name__, flag) for m, flag in module_modes(model)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    evaluation = evaluate_detectors(model, data, ["msp", "energy", "mahalanobis", "vim"],
                                    eps_values=[0.05], n=120,
                                    attack_config={"steps": 10, "batch_size": 50})
    frame = evaluation.frame
    assert [(type(m).__name__, flag) for m, flag in module_modes(model)] == before
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert evaluation.not_attacked == {"vim": "pytorch-ood scores without a graph "
                                              "(torch.no_grad)"}
    assert 0.9 < evaluation.id_accuracy <= 1.0
    sets = list(data.ood)
    for name in ("msp", "energy", "mahalanobis", "vim"):
        score = fit_score(name, {}, model, data)
        id_values = score(model, data.x_test[:120])
        for ood_set in sets:
            ood_values = score(model, data.ood[ood_set][:120])
            metrics = OODMetrics()  # OOD positive, higher = more OOD: our scores negated
            metrics.update(-torch.cat([id_values, ood_values]),
                           torch.cat([torch.zeros(len(id_values)),
                                      -torch.ones(len(ood_values))]).long())
            row = frame[(frame.score == name) & (frame.ood_set == ood_set)
                        & (frame.setting == "clean")].iloc[0]
            assert row.auroc == pytest.approx(metrics.compute()["AUROC"], abs=1e-6)
            # one set's interval is our bootstrap's, draw for draw
            lo, hi = bootstrap_ood_intervals(id_values.double().numpy(),
                                             ood_values.double().numpy())["auroc"]
            assert (row.auroc_lo, row.auroc_hi) == pytest.approx((lo, hi), abs=1e-12)
            assert row.auroc_lo <= row.auroc <= row.auroc_hi
    attacked = frame.pivot_table(index=["score", "ood_set"], columns="setting",
                                 values="auroc").dropna()  # vim: clean only
    # APGD on the score moves every input the detector's wrong way: never better than clean
    assert (attacked.ood_attacked <= attacked.clean + 1e-9).all()
    assert (attacked.id_attacked <= attacked.clean + 1e-9).all()
    assert (attacked.both_attacked <= attacked.ood_attacked + 1e-9).all()
    assert (attacked.both_attacked <= attacked.id_attacked + 1e-9).all()
    assert (attacked.both_attacked < attacked.clean).any()
    # a group is the mean of its sets
    for _, part in frame.groupby(["score", "setting"]):
        singles = part[~part.ood_set.str.startswith("group:")]
        whole = part[part.ood_set == "group:all"].iloc[0]
        assert whole.auroc == pytest.approx(singles.auroc.mean())
        assert whole.auroc_lo <= whole.auroc <= whole.auroc_hi
    assert set(frame[frame.setting == "clean"].eps.isna()) == {True}
    assert set(frame[frame.score == "vim"].setting) == {"clean"}


def test_a_model_in_train_mode_is_evaluated_in_eval_mode_and_left_as_found(foreign):
    """The in-process attacks (a notebook's path) run the model in eval mode: batch norm's
    running statistics are not updated by APGD's forward passes, dropout is off; an eps given
    twice is one attack."""
    model, data = foreign
    model.train()
    try:
        before = [(type(m).__name__, flag) for m, flag in module_modes(model)]
        state = {k: v.clone() for k, v in model.state_dict().items()}
        evaluation = evaluate_detectors(model, data, ["msp", "energy"], eps_values=[0.05, 0.05],
                                        n=40, attack_config={"steps": 3}, resamples=50)
        assert [(type(m).__name__, flag) for m, flag in module_modes(model)] == before
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    finally:
        model.eval()
    assert list(evaluation.frame.eps.dropna().unique()) == [0.05]
    assert len(evaluation.frame[(evaluation.frame.setting == "both_attacked")
                                & (evaluation.frame.ood_set == "group:all")]) == 2


def test_a_score_that_fails_on_the_model_is_named_and_the_rest_run(foreign):
    model, data = foreign
    evaluation = evaluate_detectors(model, data, ["msp", "knn"], n=60,
                                    params={"knn": {"k": 10**6}})
    assert list(evaluation.failed) == ["knn"] and "exceeds" in evaluation.failed["knn"]
    logits_only = ForeignClassifier(model.model, data.x_train[:32], head=None)
    logits_only.provides = ("logits",)  # as a model whose features do not reproduce its logits
    partial = evaluate_detectors(logits_only, data, ["msp", "mahalanobis"], n=60)
    assert partial.failed == {"mahalanobis": "needs features, which this model does not serve"}
    assert set(partial.frame.score) == {"msp"}
    assert set(evaluation.frame.score) == {"msp"}
    assert "msp" in servable_scores(model) and "log_px" not in servable_scores(model)
    assert isinstance(evaluation.frame, pd.DataFrame) and np.isfinite(evaluation.frame.auroc).all()


def test_one_of_our_classifiers_served_by_hooks_scores_as_it_does_natively():
    """Our CNN (its own features / feature maps) and the same weights as a ForeignClassifier
    (found by hooks) give the same table, clean and attacked: what `orchestrator.evaluate`
    reports for a model of ours equals the sweep path's `attack --target ood`. Except
    mahalanobis_lee: ours reads Lee et al.'s intermediate layers (`feature_layers`), which
    hooks cannot name; a foreign model gives it its penultimate features only."""
    from workloads.models.classifiers import build_classifier

    torch.manual_seed(0)
    data = load_dataset("digits")
    ours = build_classifier("cnn", data.input_shape, data.num_classes)
    optimizer = torch.optim.Adam(ours.parameters(), 1e-2)
    for _ in range(30):  # trained a little, so that every class has correct predictions
        loss = nn.functional.cross_entropy(ours(data.x_train), data.y_train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ours.eval()
    foreign = build_classifier("cnn", data.input_shape, data.num_classes)
    foreign.load_state_dict(ours.state_dict())
    served = ForeignClassifier(foreign.eval(), data.x_train[:32])
    common = [s for s in servable_scores(ours) if s in servable_scores(served)]
    assert {"msp", "energy", "mahalanobis", "knn"} <= set(common)
    kwargs = {"eps_values": [8 / 255], "n": 40, "attack_config": {"steps": 3},
              "resamples": 100}
    native = evaluate_detectors(ours, data, common, **kwargs)
    hooked = evaluate_detectors(served, data, common, **kwargs)
    assert not native.failed and native.id_accuracy == hooked.id_accuracy
    same = native.frame.score != "mahalanobis_lee"
    pd.testing.assert_frame_equal(native.frame[same], hooked.frame[same], rtol=1e-6)
    assert not native.frame[~same].auroc.equals(hooked.frame[~same].auroc)


def test_a_detector_failing_without_a_message_is_named_too(foreign, monkeypatch):
    """An error with an empty message (e.g. a bare `RuntimeError()`) is reported by its
    type, and the rest run (it used to escape as an IndexError)."""
    import workloads.evaluation.detector_evaluation as evaluation

    fit = evaluation.fit_score

    def fit_or_fail(name, *args):
        if name == "energy":
            raise RuntimeError()
        return fit(name, *args)

    monkeypatch.setattr(evaluation, "fit_score", fit_or_fail)
    model, data = foreign
    result = evaluate_detectors(model, data, ["msp", "energy"], n=40, resamples=50)
    assert result.failed == {"energy": "RuntimeError: "} and set(result.frame.score) == {"msp"}
