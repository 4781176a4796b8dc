"""The Langevin pool on real Ray actors: any number of actors gives the serial chains; chain
checkpoints every K steps survive a driver failure (resume continues, nothing recomputed
twice) and an actor killed mid-segment (the segment is retried); a different job cannot
resume another's directory; a corrupt checkpoint names its file."""

import pytest
import ray
import torch
from conftest import ActorKiller

from orchestrator.pools.base import PoolError
from orchestrator.pools.langevin import LangevinPool, run_langevin_pool
from workloads.adversarial import unit_seed
from workloads.adversarial.langevin import restore, run_chains, start_chains
from workloads.data import load_digits
from workloads.models import DIGLM
from workloads.models.flows import build_flow

pytestmark = pytest.mark.slow
CONFIG = {"steps": 30, "eta": 1e-3, "eps": 0.05, "seed": 4, "chains_per_unit": 16,
          "checkpoint_every": 10, "record_every": 5}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = DIGLM(build_flow("vector", (1, 8, 8), levels=17, num_couplings=2, hidden=16), 10)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield model.eval(), load_digits().x_test[:40]
    ray.shutdown()


def serial_chains(model, x, config):
    ends = []
    for start in range(0, len(x), config["chains_per_unit"]):
        part = x[start:start + config["chains_per_unit"]]
        state = run_chains(model.log_prob, start_chains(part, unit_seed(config["seed"], start)),
                           config["steps"], config["eta"])
        ends.append(state.x)
    return torch.cat(ends)


def test_one_and_three_actors_give_the_serial_chains(setup, tmp_path):
    model, x = setup
    one = run_langevin_pool(model, x, CONFIG, tmp_path / "one", num_actors=1)
    three = run_langevin_pool(model, x, CONFIG, tmp_path / "three", num_actors=3,
                              cpus_per_actor=0.5)
    serial = serial_chains(model, x, CONFIG)
    assert torch.equal(one.x_end, serial) and torch.equal(three.x_end, serial)
    assert torch.equal(one.trace_am, three.trace_am)
    assert one.trace_steps.tolist() == [0, 5, 10, 15, 20, 25]  # AM(x_t) every 5 steps
    assert one.trace_am.shape == (6, 40)
    assert torch.equal(one.restored, restore_all(one, x, CONFIG["eps"]))
    assert (one.steps_run == 30).all() and not one.stopped.any()


def restore_all(result, x, eps):
    from workloads.adversarial.langevin import ChainState

    state = ChainState(result.x_end, x, 0, result.stopped, result.steps_run, result.am_end,
                       torch.empty(0))
    return restore(state, eps)


def test_driver_failure_then_resume_continues_from_the_checkpoints(setup, tmp_path):
    model, x = setup
    uninterrupted = run_langevin_pool(model, x, CONFIG, tmp_path / "whole", num_actors=2)
    segments = []

    def die_after_three_segments(metrics):
        segments.append(metrics)
        if len(segments) == 3:
            raise KeyboardInterrupt("driver killed")

    with LangevinPool(model, num_actors=2) as pool:
        with pytest.raises(KeyboardInterrupt):
            pool.run(x, CONFIG, tmp_path / "cut", on_progress=die_after_three_segments)
        saved = {p.name: torch.load(p, weights_only=True)["state"]["step"]
                 for p in (tmp_path / "cut" / "chains").glob("*.pt")}
        assert saved and all(step % CONFIG["checkpoint_every"] == 0 for step in saved.values())
        assert sum(step > 0 for step in saved.values()) >= 1
        resumed = pool.run(x, CONFIG, tmp_path / "cut", resume=True)
    assert torch.equal(resumed.x_end, uninterrupted.x_end)
    assert torch.equal(resumed.trace_am, uninterrupted.trace_am)
    done_before = sum(step * 16 for step in saved.values())
    assert resumed.chain_steps_computed < 30 * 40
    assert resumed.units_resumed == len(saved) and done_before > 0


def test_resume_refuses_a_different_job_and_names_a_corrupt_checkpoint(setup, tmp_path):
    model, x = setup
    with LangevinPool(model, num_actors=1) as pool:
        pool.run(x[:16], {**CONFIG, "steps": 10}, tmp_path)
        with pytest.raises(PoolError, match="eta"):
            pool.run(x[:16], {**CONFIG, "steps": 10, "eta": 2e-3}, tmp_path, resume=True)
        unit = next((tmp_path / "chains").glob("*.pt"))
        unit.write_bytes(unit.read_bytes()[:100])
        with pytest.raises(PoolError, match=unit.name):
            pool.run(x[:16], {**CONFIG, "steps": 10}, tmp_path, resume=True)


def test_killed_actor_segment_is_retried_and_chains_are_unchanged(setup, tmp_path):
    """SIGKILL an actor process in the middle of a segment: Ray restarts the actor, the
    segment is retried from its last checkpoint, and the chains end where they would have."""
    model, x = setup
    config = {**CONFIG, "steps": 1200, "checkpoint_every": 400}
    with LangevinPool(model, num_actors=2) as pool:
        for attempt in range(5):  # until a kill lands mid-segment (the first, in practice)
            killer = ActorKiller(pool.actors, "LangevinWorker.advance")
            disturbed = pool.run(x, config, tmp_path / f"killed{attempt}")
            if killer.stop():
                break
        assert killer.killed, "no actor was caught mid-segment in 5 runs"
        restarted = ray.get([actor.pid.remote() for actor in pool.actors])
    assert killer.killed[0] not in restarted  # the killed actor was replaced
    clean = run_langevin_pool(model, x, config, tmp_path / "clean", num_actors=2)
    assert torch.equal(disturbed.x_end, clean.x_end)
    assert torch.equal(disturbed.trace_am, clean.trace_am)
