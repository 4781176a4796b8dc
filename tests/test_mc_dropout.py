"""MC dropout (NOTES.md E; document 001, NOTES.md G): the three uncertainties of one draw of
the passes, a caller's RNG left where it was, and a study's three kinds sharing the passes."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import BNDropoutNet
from torch import nn

from workloads.data import load_digits, noise_ood_sets
from workloads.evaluation.mistake_detection import evaluate_mistakes
from workloads.evaluation.ood_evaluation import evaluate_ood
from workloads.models.modes import dropout_layers, evaluating
from workloads.scores import build_score
from workloads.studies.failure_prediction import failure_scores

KINDS = ("variation_ratio", "predictive_entropy", "mutual_information")


def per_kind_reference(model, x, kind, passes, seed):
    """The computation of one kind on its own passes, as each kind ran it before the passes
    were shared: the global RNG seeded, `passes` passes, that kind's uncertainty negated."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad(), evaluating(model, train=dropout_layers(model)):
            probs = torch.stack([model(x).softmax(dim=1) for _ in range(passes)])
    mean = probs.mean(0)
    if kind == "variation_ratio":
        votes = F.one_hot(probs.argmax(2), probs.shape[2]).sum(0)
        return -(1.0 - votes.max(1).values.float() / passes)
    entropy_of_mean = -(mean * mean.clamp_min(1e-12).log()).sum(1)
    if kind == "predictive_entropy":
        return -entropy_of_mean
    mean_entropy = -(probs * probs.clamp_min(1e-12).log()).sum(2).mean(0)
    return -(entropy_of_mean - mean_entropy)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return BNDropoutNet().eval()


class StochasticPasses:
    """Counts the forward passes of `model` made with its dropout on (MC dropout's)."""

    def __init__(self, model):
        self.count = 0
        self.hooks = [layer.register_forward_hook(self._seen) for layer in dropout_layers(model)]

    def _seen(self, layer, inputs, output):
        self.count += layer.training

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()


def test_the_three_kinds_share_one_draw_of_the_passes_and_give_the_same_numbers(model):
    x = torch.rand(64, 1, 8, 8)
    expected = {kind: per_kind_reference(model, x, kind, 20, 7) for kind in KINDS}
    with StochasticPasses(model) as passes:
        got = {kind: build_score("mc_dropout", kind=kind, passes=20, seed=7)(model, x)
               for kind in KINDS}
    assert passes.count == 20, passes.count  # not 3 x 20
    for kind in KINDS:
        assert torch.equal(got[kind], expected[kind]), kind
    assert not any(m.training for m in model.modules())


def test_the_shared_passes_are_drawn_again_when_anything_they_are_of_changes(model):
    x = torch.rand(32, 1, 8, 8)
    score = build_score("mc_dropout", kind="mutual_information", passes=5, seed=0)
    with StochasticPasses(model) as passes:
        first = score(model, x)
        assert torch.equal(score(model, x), first) and passes.count == 5
        assert torch.equal(score(model, x.clone()), first) and passes.count == 10
        build_score("mc_dropout", passes=5, seed=1)(model, x)  # another seed
        build_score("mc_dropout", passes=6, seed=0)(model, x)  # another number of passes
        assert passes.count == 21
        x[0] = 1.0  # the inputs changed in place
        changed = score(model, x)
        assert passes.count == 26 and not torch.equal(changed[:1], first[:1])
        assert torch.equal(changed[1:], first[1:])
        with torch.no_grad():
            model.head.bias.add_(1.0)  # the model changed
        score(model, x)
        assert passes.count == 31
        score(model, x[:16])  # a view of other inputs
        assert passes.count == 36


def test_mc_dropout_leaves_the_global_rng_where_it_was_and_is_deterministic(model):
    x = torch.rand(16, 1, 8, 8)
    score = build_score("mc_dropout", kind="variation_ratio", passes=10, seed=3)
    torch.manual_seed(1234)
    untouched = torch.rand(5)
    torch.manual_seed(1234)
    first = score(model, x)
    assert torch.equal(torch.rand(5), untouched)  # the next draw is the one it would have been
    torch.manual_seed(99)  # another global state: the same scores on fresh inputs
    assert torch.equal(build_score("mc_dropout", kind="variation_ratio", passes=10,
                                   seed=3)(model, x.clone()), first)


def test_a_failure_stage_draws_the_passes_once_per_input_set_for_all_four_kinds(model):
    """The failure-prediction study asks for "mc_dropout" as its four kinds
    (`failure_scores`), scored on the test set for mistakes and again, with each OOD set, for
    OOD detection (`evaluate_mistakes`, `evaluate_ood`): T passes per input set in all."""
    full = load_digits()
    data = dataclasses.replace(full, x_test=full.x_test[:60], y_test=full.y_test[:60],
                               ood=noise_ood_sets(40, full.input_shape, seed=1))
    config = {"mc_passes": 4, "seed": 0, "confidnet_epochs": 1, "confidnet_lr": 1e-3,
              "odin_temperature": 1000.0, "odin_eps": 0.0}
    scores = failure_scores(model, data, config, "mc_dropout")
    assert set(scores) == {"mc_dropout_vr", "mc_dropout_entropy", "mc_dropout_mi",
                           "mc_dropout_avg"}
    with StochasticPasses(model) as passes:
        evaluate_mistakes(model, data, scores)
        evaluate_ood(model, data, scores, resamples=0)
    assert passes.count == 4 * (1 + len(data.ood)), passes.count


def test_mc_dropout_needs_dropout_layers():
    with pytest.raises(ValueError, match="no dropout"):
        build_score("mc_dropout")(nn.Sequential(nn.Linear(4, 3)), torch.rand(2, 4))
