"""Langevin chains: the update of NOTES.md C, exact resumption from a saved state, early
stopping on AM, the domain clip, the probe that tunes am_stop, and the final projection."""

import math

import torch

from workloads.adversarial.langevin import (
    ChainState,
    probe_accuracy,
    restore,
    run_chains,
    start_chains,
)
from workloads.models.flows import Flow, VectorRealNVP


def gaussian():
    return Flow(VectorRealNVP(4), (4,), levels=None)  # identity flow: p = N(0, I)


def test_one_step_is_the_documented_update():
    flow = gaussian()
    x = torch.randn(5, 4)
    state = start_chains(x, seed=3)
    after = run_chains(flow.log_prob, state, steps=1, eta=0.01, clip=None)
    noise = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    expected = x + 0.5 * 0.01 * (-x) + math.sqrt(0.01) * noise  # grad log N = -x
    assert torch.allclose(after.x, expected, atol=1e-6)
    assert torch.allclose(after.am, x.norm(dim=1), atol=1e-5)


def test_chains_are_clipped_to_the_pixel_domain():
    flow = gaussian()
    x = torch.full((3, 4), 0.01)
    state = run_chains(flow.log_prob, start_chains(x, seed=0), steps=50, eta=0.1)
    assert state.x.min() >= 0 and state.x.max() <= 1
    free = run_chains(flow.log_prob, start_chains(x, seed=0), steps=50, eta=0.1, clip=None)
    assert free.x.min() < 0  # without the clip the noise leaves [0, 1]


def test_resumed_chain_ends_exactly_where_an_uninterrupted_one_ends(tmp_path):
    flow = gaussian()
    x = torch.rand(8, 4)
    whole = run_chains(flow.log_prob, start_chains(x, seed=1), steps=30, eta=0.05)
    part = run_chains(flow.log_prob, start_chains(x, seed=1), steps=12, eta=0.05)
    torch.save(part.to_dict(), tmp_path / "chain.pt")  # a checkpoint every K = 12 steps
    loaded = ChainState.from_dict(torch.load(tmp_path / "chain.pt", weights_only=True))
    resumed = run_chains(flow.log_prob, loaded, steps=18, eta=0.05)
    assert resumed.step == whole.step == 30
    assert torch.equal(resumed.x, whole.x)
    assert torch.equal(resumed.am, whole.am)


def test_early_stop_freezes_chains_with_low_mass_and_restore_projects():
    flow = gaussian()
    x = torch.tensor([[0.01, 0, 0, 0], [0.9, 0.9, 0.9, 0.9]])  # AM = |x|: 0.01 and 1.8
    state = run_chains(flow.log_prob, start_chains(x, seed=0), steps=5, eta=0.1, am_stop=0.5)
    assert state.stopped.tolist() == [True, False]
    assert state.stop_step.tolist() == [0, -1]
    assert torch.equal(state.x[0], x[0])
    out = restore(state, eps=0.05)
    assert ((out - x).abs() <= 0.05 + 1e-7).all() and out.min() >= 0 and out.max() <= 1


def test_probe_labels_each_chain_where_a_stopped_chain_would_have_stopped():
    """A probed run without early stop records, for each candidate r, the restored label
    at the first step with AM <= r: the label an early-stopped run with am_stop = r gives."""
    flow = gaussian()

    def classify(x):  # any deterministic labelling of points
        return (x.sum(dim=1) * 10).long() % 3

    x = torch.rand(16, 4) * 0.8 + 0.1
    candidates = [1.2, 0.9, 0.6]
    probed = run_chains(flow.log_prob, start_chains(x, seed=2, probe_am=candidates),
                        steps=40, eta=0.05, classify=classify, eps=0.1)
    final = classify(restore(probed, 0.1))
    y = classify(x)
    accuracy = probe_accuracy(probed.probe_pred, final, y)
    for j, r in enumerate(candidates):
        stopped = run_chains(flow.log_prob, start_chains(x, seed=2), steps=40, eta=0.05,
                             am_stop=r)
        labels = classify(restore(stopped, 0.1))
        assert torch.equal(labels, torch.where(probed.probe_pred[:, j] >= 0,
                                               probed.probe_pred[:, j], final))
        assert accuracy[j].item() == (labels == y).float().mean().item()
