"""Langevin chains: the update of NOTES.md C, exact resumption from a saved state, early
stopping on AM, and the final projection."""

import math

import torch

from workloads.flows import Flow, VectorRealNVP
from workloads.langevin import ChainState, restore, run_chains, start_chains


def gaussian():
    return Flow(VectorRealNVP(4), (4,), levels=None)  # identity flow: p = N(0, I)


def test_one_step_is_the_documented_update():
    flow = gaussian()
    x = torch.randn(5, 4)
    state = start_chains(x, seed=3)
    after = run_chains(flow.log_prob, state, steps=1, eta=0.01)
    noise = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    expected = x + 0.5 * 0.01 * (-x) + math.sqrt(0.01) * noise  # grad log N = -x
    assert torch.allclose(after.x, expected, atol=1e-6)
    assert torch.allclose(after.am, x.norm(dim=1), atol=1e-5)


def test_resumed_chain_ends_exactly_where_an_uninterrupted_one_ends(tmp_path):
    flow = gaussian()
    x = torch.randn(8, 4)
    whole = run_chains(flow.log_prob, start_chains(x, seed=1), steps=30, eta=0.05)
    part = run_chains(flow.log_prob, start_chains(x, seed=1), steps=12, eta=0.05)
    torch.save(part.to_dict(), tmp_path / "chain.pt")  # a checkpoint every K = 12 steps
    loaded = ChainState.from_dict(torch.load(tmp_path / "chain.pt"))
    resumed = run_chains(flow.log_prob, loaded, steps=18, eta=0.05)
    assert resumed.step == whole.step == 30
    assert torch.equal(resumed.x, whole.x)


def test_early_stop_freezes_chains_with_low_mass_and_restore_projects():
    flow = gaussian()
    x = torch.tensor([[0.01, 0, 0, 0], [0.9, 0.9, 0.9, 0.9]])  # AM = |x|: 0.01 and 1.8
    state = run_chains(flow.log_prob, start_chains(x, seed=0), steps=5, eta=0.1, am_stop=0.5)
    assert state.stopped.tolist() == [True, False]
    assert torch.equal(state.x[0], x[0])
    out = restore(state, eps=0.05)
    assert ((out - x).abs() <= 0.05 + 1e-7).all() and out.min() >= 0 and out.max() <= 1
