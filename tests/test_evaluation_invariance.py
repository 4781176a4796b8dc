"""Evaluation leaves the model as it found it, over the whole registry: every registered score
(ours and pytorch-ood's through the adapter) and every final stage, on models with batch norm
AND dropout (the paper profiles' shapes: DenseNet, WRN, LeNet, G-ODIN, the VAE encoder; a
flow with a batch-norm layer and dropout for the density scores), plain and through
`FeatureCache`:

- every module's training flag, every parameter and every buffer unchanged afterwards (batch
  norm left in train mode overwrites its running statistics at the next forward pass;
  dropout left on makes every later score random);
- a second call returns the same values (and the cached model the plain model's values);
- a model (and a likelihood ratio's background) left in train mode is scored, and fitted, in
  eval mode: the eval-mode values, every module's flag still `True` afterwards. Scoring
  models already in eval mode cannot tell a score that forgets `evaluating(model)` from one
  that does not: `typicality` and `input_complexity` ran the flow as found (and
  `likelihood_ratio` its background) and passed, the test flows having neither batch norm
  nor dropout, and being in eval mode anyway;
- `__call__` equals `forward` batch by batch for every score with a differentiable form.

A new score or final stage is covered by registering it: the parametrisations read the
registry, and a test fails while a study module's `*_final_stage` is not in `STAGE_FUNCTIONS`.
"""

import dataclasses
import importlib
import inspect
import math
import pkgutil

import numpy as np
import pytest
import torch
from conftest import assert_model_unchanged, model_state
from torch import nn

import workloads.studies
from search_spaces import get_search_space
from workloads.data import load_dataset
from workloads.evaluation.examples import EXAMPLE_COLUMNS, EXAMPLES
from workloads.evaluation.ood_evaluation import resolve_scores
from workloads.evaluation.resampling import TrialMetrics
from workloads.models import DIGLM, FeatureCache, build_flow
from workloads.models.flows import Flow, VectorRealNVP
from workloads.models.godin import GODIN
from workloads.models.gradcon import GradConAE
from workloads.models.modes import evaluating
from workloads.models.ocgan import OCGAN
from workloads.models.vae import ConvVAE
from workloads.scores import OOD_SCORES, capabilities, fit_score
from workloads.studies.class_anomaly import anomaly_final_stage
from workloads.studies.classifier import classifier_final_stage
from workloads.studies.failure_prediction import failure_prediction_final_stage
from workloads.studies.feature_gmm import feature_gmm_final_stage
from workloads.studies.generative import generative_final_stage
from workloads.studies.ood_baselines import ood_baselines_final_stage
from workloads.studies.vae_ood import vae_final_stage
from workloads.training.epochs import final_evaluation, fit_classifier


class BatchNormDropoutCNN(nn.Module):
    """A small classifier with batch norm in its convolutions and dense layer and dropout
    before the class layer, exposing everything a classifier score can ask for (laid out
    as `workloads.models.classifiers.SmallCNN`: `features` a module, the first `MAPS` of it
    the convolutional part)."""

    provides = ("logits", "features", "feature_maps")
    MAPS = 7

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Dropout(0.3))
        self.head = nn.Linear(32, num_classes)

    def feature_maps(self, x):
        return self.features[:self.MAPS](x)

    def head_from_feature_maps(self, maps):
        return self.head(self.features[self.MAPS:](maps))

    def forward(self, x):
        return self.head(self.features(x))


class BatchNormDropoutGODIN(GODIN):
    """That classifier with G-ODIN's head (whose gate has batch norm of its own)."""

    provides = ("logits", "features", "godin")

    def __init__(self):
        super().__init__(BatchNormDropoutCNN())


class BatchNormDropoutFlow(Flow):
    """A vector RealNVP ending in a batch-norm layer (RealNVP's own, Dinh et al. 2017,
    section 3.7: an elementwise affine map with its log-determinant, by the running
    statistics in eval mode and the batch's in train mode) and dropout on z (the identity in
    eval mode), for the density scores of NOTES.md E (log p(x), typicality, input
    complexity, the likelihood ratio)."""

    def __init__(self, input_shape: tuple[int, ...], levels: int):
        dim = math.prod(input_shape)
        super().__init__(VectorRealNVP(dim, num_couplings=2, hidden=16), input_shape, levels)
        self.norm, self.dropout = nn.BatchNorm1d(dim), nn.Dropout(0.3)

    def transform(self, x):
        z, logabsdet = super().transform(x)
        variance = z.var(0, unbiased=False) if self.norm.training else self.norm.running_var
        scale = self.norm.weight / (variance + self.norm.eps).sqrt()
        return self.dropout(self.norm(z)), logabsdet + scale.abs().log().sum()


def _batch_normed_flow(input_shape, levels, x_train):
    """A `BatchNormDropoutFlow` whose running statistics are those of `x_train`'s z (far
    from their initial values), in eval mode."""
    flow = BatchNormDropoutFlow(input_shape, levels)
    with torch.no_grad():
        flow.norm.momentum = None  # the cumulative average over the pass
        flow.train()
        flow.log_prob(x_train)
    return flow.eval()


@pytest.fixture(scope="module")
def data():
    """Digits, cut small: 400 training, 100 validation, 120 test inputs, 120 per OOD set."""
    full = load_dataset("digits")
    return dataclasses.replace(
        full, x_train=full.x_train[:400], y_train=full.y_train[:400], x_val=full.x_val[:100],
        y_val=full.y_val[:100], x_test=full.x_test[:120], y_test=full.y_test[:120],
        ood={name: x[:120] for name, x in full.ood.items()})


@pytest.fixture(scope="module")
def models(data):
    """One trained model of each kind a score can require (trained so that batch norm's
    running statistics are far from their initial values), in eval mode."""
    torch.manual_seed(0)
    classifier = fit_classifier(BatchNormDropoutCNN(), data.x_train, data.y_train, epochs=3)
    godin = fit_classifier(BatchNormDropoutGODIN(), data.x_train, data.y_train, epochs=2)
    flow = build_flow("vector", data.input_shape, data.levels, num_couplings=2, hidden=16)
    background = _batch_normed_flow(data.input_shape, data.levels, data.x_train)
    density = _batch_normed_flow(data.input_shape, data.levels, data.x_train)
    vae = ConvVAE(data.input_shape, data.levels, latent_dim=4, hidden=8)
    with torch.no_grad():  # a training pass sets the encoder's running statistics
        vae.train()
        vae.encode(data.x_train)
    diglm = DIGLM(build_flow("vector", data.input_shape, data.levels, num_couplings=2,
                             hidden=16), data.num_classes)
    return {"classifier": classifier, "godin": godin, "flow": flow.eval(), "diglm": diglm,
            "density": density, "background": background, "vae": vae.eval(),
            "gradcon": GradConAE(data.input_shape, "small").eval(),
            "ocgan": OCGAN(data.input_shape, "small", latent_dim=4).eval()}


# Parameters that keep each score cheap; the rest take their defaults.
CHEAP = {"gmm": {"components": 3}, "mc_dropout": {"passes": 3}, "confidnet": {"epochs": 2},
         "iwae": {"samples": 2, "bn_batch": 32}, "godin": {"eps_grid": (0.0, 0.01)},
         "typicality": {"resamples": 50}}


def model_for(name, models):
    """The model that serves score `name`, by what the score requires."""
    requires = set(OOD_SCORES[name].requires)
    for kind in ("classifier", "godin", "density", "vae", "gradcon", "ocgan"):
        if requires <= capabilities(models[kind]):
            return kind, models[kind]
    raise AssertionError(f"no test model serves score '{name}' (requires {requires})")


def params_for(name, models):
    params = dict(CHEAP.get(name, {}))
    if name == "likelihood_ratio":
        params["background"] = models["background"]
    return params


def score_twice(name, model, models, data, x):
    """Fit `name` on `data` and score `x` twice; the model's state before and after."""
    before = model_state(model)
    score = fit_score(name, params_for(name, models), model, data)
    first, second = score(model, x), score(model, x)
    return score, before, first, second


SCORES = sorted(OOD_SCORES)


def test_every_registered_score_has_a_test_model():
    assert len(SCORES) > 35
    kinds = _model_kinds()
    for name in SCORES:
        model_for(name, kinds)


def _model_kinds():
    """Untrained models of each kind, to check the coverage without training."""
    shape = (1, 8, 8)
    return {"classifier": BatchNormDropoutCNN(), "godin": BatchNormDropoutGODIN(),
            "density": BatchNormDropoutFlow(shape, 17),
            "vae": ConvVAE(shape, 17, latent_dim=2, hidden=4),
            "gradcon": GradConAE(shape, "small"), "ocgan": OCGAN(shape, "small")}


@pytest.mark.parametrize("name", SCORES)
def test_a_score_leaves_the_model_as_found_and_repeats_itself(name, models, data):
    kind, model = model_for(name, models)
    x = torch.cat([data.x_test[:60], next(iter(data.ood.values()))[:40]])
    score, before, first, second = score_twice(name, model, models, data, x)
    assert_model_unchanged(model, before)
    assert first.shape == (len(x),) and torch.isfinite(first).all(), name
    assert torch.equal(first, second), f"{name}: a second call changed the scores"
    if kind in ("classifier", "godin"):  # the same through the cache of one evaluation
        cached = FeatureCache(model)
        _, cached_before, via_cache, again = score_twice(name, cached, models, data, x)
        assert_model_unchanged(cached, cached_before)
        assert not cached.training
        assert torch.equal(via_cache, again), f"{name}: the cache's second call differs"
        assert torch.allclose(via_cache, first, rtol=1e-5, atol=1e-6), \
            f"{name}: FeatureCache changed the scores"
    if score.not_differentiable is None:  # what attacks follow is what the tables report
        with torch.no_grad(), evaluating(model):
            chunks = [score.forward(model, x[i:i + 32]).float() for i in range(0, len(x), 32)]
        assert torch.allclose(torch.cat(chunks), first, rtol=1e-5, atol=1e-5), name
        assert_model_unchanged(model, before)
    in_train_mode = fitted_and_scored_in_train_mode(name, model, models, data, x)
    assert torch.allclose(in_train_mode, first, rtol=1e-5, atol=1e-6), \
        f"{name}: a model in train mode gave other scores than in eval mode"


def fitted_and_scored_in_train_mode(name, model, models, data, x):
    """Score `name` fitted and called with `model` (and the background of a likelihood
    ratio) in train mode: its values; every module is checked to be in train mode still,
    every parameter and buffer as before."""
    found = [model] + ([models["background"]] if name == "likelihood_ratio" else [])
    for each in found:
        each.train()
    try:
        before = [model_state(each) for each in found]
        values = fit_score(name, params_for(name, models), model, data)(model, x)
        for each, state in zip(found, before):
            assert_model_unchanged(each, state)
        return values
    finally:
        for each in found:
            each.eval()


def test_a_score_does_not_leave_a_wrapped_model_in_train_mode(models, data):
    """The bug this file guards against: `FeatureCache(model)` was a fresh module in train
    mode; the scoring helper restored `model.train(wrapper.training)` over the whole tree,
    so the classifier's batch norm and dropout were left in train mode after one score."""
    model = models["classifier"]
    cached = FeatureCache(model)
    assert not cached.training  # the wrapped model's mode
    fit_score("msp", {}, cached, data)(cached, data.x_test)
    assert not any(m.training for m in model.modules())
    model.train()
    assert cached.training
    fit_score("msp", {}, cached, data)(cached, data.x_test)
    assert all(m.training for m in model.modules())  # left as found, in train mode too
    model.eval()


def test_mc_dropout_samples_the_dropout_layers_only(models, data):
    """MC dropout turns dropout on and nothing else: batch norm stays on the running
    statistics, and the layers are put back in eval mode afterwards."""
    model = models["classifier"]
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((type(m), m.training)))
             for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.Dropout))]
    try:
        fit_score("mc_dropout", {"passes": 2}, model, data)(model, data.x_test[:8])
    finally:
        for hook in hooks:
            hook.remove()
    assert {flag for kind, flag in seen if kind is nn.Dropout} == {True}
    assert {flag for kind, flag in seen if kind is nn.BatchNorm1d} == {False}
    assert not any(m.training for m in model.modules())


def _stage_config(space: str, **overrides):
    return {**get_search_space(space).profile("smoke").config, **overrides}


FINAL_STAGES = {
    "classifier": ("classifier", lambda: _stage_config("batch_size_gffn",
                                                       ood_scores="msp+lnz+energy")),
    "feature_gmm": ("classifier", lambda: _stage_config("feature_gmm")),
    "failure_prediction": ("classifier", lambda: _stage_config("failure_prediction")),
    "ood_baselines": ("classifier", lambda: _stage_config("ood_baselines", energy_epochs=1)),
    "ood_baselines_godin": ("godin", lambda: _stage_config("ood_baselines", energy_epochs=0,
                                                           ood_scores="godin+msp")),
    "vae": ("vae", lambda: _stage_config("vae_ood", iwae_samples="2+3", bn_batch=32,
                                         svm_samples=60)),
    "flow": ("flow", lambda: _stage_config(
        "alpha_flow", ood_scores="log_px+neg_am+typicality+input_complexity",
        background_mu=0.2, background_epochs=1)),
    "diglm": ("diglm", lambda: _stage_config("alpha_diglm")),
    "gradcon": ("gradcon", lambda: _stage_config("class_anomaly", method="gradcon")),
    "ocgan": ("ocgan", lambda: _stage_config("class_anomaly", method="ocgan")),
}
STAGE_FUNCTIONS = {"classifier": classifier_final_stage,
                   "feature_gmm": feature_gmm_final_stage,
                   "failure_prediction": failure_prediction_final_stage,
                   "ood_baselines": ood_baselines_final_stage,
                   "ood_baselines_godin": ood_baselines_final_stage,
                   "vae": vae_final_stage, "flow": generative_final_stage,
                   "diglm": generative_final_stage, "gradcon": anomaly_final_stage,
                   "ocgan": anomaly_final_stage}


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == b


@pytest.mark.parametrize("stage", sorted(FINAL_STAGES))
def test_a_final_stage_leaves_the_model_as_found_and_repeats_itself(stage, models, data):
    kind, config = FINAL_STAGES[stage]
    config = config()
    model = models[kind]
    before = model_state(model)
    first, artifacts = STAGE_FUNCTIONS[stage](model, data, config)
    assert_model_unchanged(model, before)
    # its per-example outputs give back every metric they have a form for, exactly
    examples = artifacts[EXAMPLES]
    assert set(EXAMPLE_COLUMNS) <= set(examples.columns)
    assert set(examples.split) == {"test", *data.ood}
    recomputed = TrialMetrics(examples, 0, None, config.get("num_bins", 15))
    derived = {k: recomputed.of(k) for k in first}
    derived = {k: v[0] for k, v in derived.items() if v is not None}
    assert any(k.startswith("auroc_") for k in derived), stage
    loose = ("test_acc", "test_nll")  # the stage's float32 means
    for key, value in derived.items():
        assert value == pytest.approx(first[key], abs=1e-6 if key in loose else 1e-12,
                                      nan_ok=True), (stage, key)
    second, _ = STAGE_FUNCTIONS[stage](model, data, config)
    assert_model_unchanged(model, before)
    assert set(first) == set(second)
    differ = {k: (first[k], second[k]) for k in first if not _same(first[k], second[k])}
    assert not differ, f"{stage}: a second run gave other metrics: {differ}"
    assert any(k.startswith("auroc_") for k in first)
    assert np.isfinite([v for k, v in first.items() if k.startswith("auroc_")]).all()


def test_every_final_stage_of_the_studies_is_covered():
    """Every `*_final_stage` function of a study module (`workloads/studies/`) is exercised
    above."""
    stages = set()
    for module in pkgutil.iter_modules(workloads.studies.__path__, "workloads.studies."):
        for name, member in inspect.getmembers(importlib.import_module(module.name),
                                               inspect.isfunction):
            if name.endswith("_final_stage"):
                stages.add(member)
    assert len(stages) >= 7 and stages <= set(STAGE_FUNCTIONS.values()), (
        stages - set(STAGE_FUNCTIONS.values()))


def test_the_classifier_stage_runs_each_input_through_the_network_once(models, data):
    """MSP, ln Z and energy all read the logits: through the stage's `FeatureCache` each
    test and OOD input goes through the network's features once for all three (the test
    set once more for accuracy and calibration, which reads it in other chunks), and the
    metrics are those of the uncached evaluation."""
    model = models["classifier"]
    config = FINAL_STAGES["classifier"][1]()
    rows = []
    hook = model.features.register_forward_hook(lambda m, inputs, out: rows.append(
        len(inputs[0])))
    try:
        cached, _ = classifier_final_stage(model, data, config)
    finally:
        hook.remove()
    ood_inputs = sum(len(x) for x in data.ood.values())
    assert sum(rows) <= 2 * len(data.x_test) + ood_inputs, sum(rows)
    scores = resolve_scores(model, config["ood_scores"],
                            {"lnz": {"kind": config["log_partition"]}})
    plain, _ = final_evaluation(model, data, num_bins=config["num_bins"], scores=scores)
    assert set(cached) == set(plain)
    differ = {k: (cached[k], plain[k]) for k in plain if not _same(cached[k], plain[k])}
    assert not differ, differ
