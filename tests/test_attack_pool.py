"""The attack pool on real Ray actors: 1 and 4 actors give identical adversarial examples
and robust flags, equal to one serial pyautoattack call; finished units survive a rerun."""

import pytest
import ray
import torch
from conftest import ActorKiller

from orchestrator.pools.attack import AttackPool, run_attack_pool, run_score_attacks
from orchestrator.pools.base import PoolError
from workloads.adversarial.attacks import autoattack
from workloads.adversarial.detector_attacks import ScoreAttack, attack_serially
from workloads.data import load_digits
from workloads.models import MLPClassifier
from workloads.scores import build_score
from workloads.training.epochs import fit_classifier

pytestmark = pytest.mark.slow
AA = {"attack": "autoattack", "version": "custom", "attacks": ["apgd-ce"], "eps": 0.1,
      "seed": 0, "batch_size": 40}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    data = load_digits()
    model = MLPClassifier(data.input_shape, 10, width=64)
    fit_classifier(model, data.x_train, data.y_train, epochs=10)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield model.eval(), data.x_test[:160], data.y_test[:160]
    ray.shutdown()


@pytest.mark.parametrize("config", [AA, {"attack": "pgd", "eps": 0.1, "steps": 10,
                                         "seed": 0, "batch_size": 40}])
def test_one_and_four_actors_agree(setup, config, tmp_path):
    model, x, y = setup
    one = run_attack_pool(model, x, y, config, tmp_path / "one", num_actors=1)
    four = run_attack_pool(model, x, y, config, tmp_path / "four", num_actors=4,
                           cpus_per_actor=0.5)
    assert torch.equal(one.x_adv, four.x_adv)
    assert torch.equal(one.robust, four.robust)
    assert one.robust_accuracy["clean"] > one.robust_accuracy[one.stages[-1]]
    assert one.fooled_by == four.fooled_by
    assert {f for f in one.fooled_by} <= {"", "clean", *one.stages}
    if config is AA:
        torch.set_num_threads(1)
        serial = autoattack(model, x, y, 0.1, version="custom", attacks=["apgd-ce"], seed=0,
                            batch_size=40)
        assert torch.equal(one.robust, model(serial).argmax(1) == y)
        assert torch.equal(one.x_adv, serial)


def test_multi_stage_autoattack_overlaps_stages_and_equals_one_serial_call(setup, tmp_path):
    """Four stages in small batches: later stages start while earlier ones finish, and the
    result is still that of one serial pyautoattack call."""
    model, x, y = setup
    x, y = x[:96], y[:96]
    config = {"attack": "autoattack", "version": "custom", "eps": 0.08, "seed": 1,
              "batch_size": 12, "attacks": ["apgd-ce", "apgd-dlr", "apgd-t", "square"]}
    pooled = run_attack_pool(model, x, y, config, tmp_path, num_actors=3, cpus_per_actor=0.5)
    torch.set_num_threads(1)
    serial = autoattack(model, x, y, 0.08, version="custom", attacks=config["attacks"],
                        seed=1, batch_size=12)
    assert torch.equal(pooled.x_adv, serial)
    assert torch.equal(pooled.robust, model(serial).argmax(1) == y)
    accuracy = list(pooled.robust_accuracy.values())
    assert accuracy == sorted(accuracy, reverse=True) and len(accuracy) == 5


def test_resume_loads_finished_units(setup, tmp_path):
    model, x, y = setup
    first = run_attack_pool(model, x, y, AA, tmp_path, num_actors=2)
    units = sorted((tmp_path / "units").glob("*.pt"))
    assert units
    stamps = [u.stat().st_mtime_ns for u in units]
    again = run_attack_pool(model, x, y, AA, tmp_path, num_actors=2, resume=True)
    assert [u.stat().st_mtime_ns for u in units] == stamps  # nothing recomputed
    assert again.units_computed == 0 and again.units_loaded == len(units)
    assert torch.equal(first.x_adv, again.x_adv)
    with pytest.raises(PoolError, match="eps"):
        run_attack_pool(model, x, y, {**AA, "eps": 0.2}, tmp_path, resume=True)


def test_one_pool_serves_several_attacks(setup, tmp_path):
    model, x, y = setup
    with AttackPool(model, num_actors=2) as pool:
        fgsm = pool.run(x, y, {"attack": "fgsm", "eps": 0.1, "batch_size": 50}, tmp_path / "a")
        pgd = pool.run(x, y, {"attack": "pgd", "eps": 0.1, "steps": 5, "batch_size": 50},
                       tmp_path / "b")
    assert pgd.robust_accuracy["pgd"] <= fgsm.robust_accuracy["fgsm"]
    assert (x - fgsm.x_adv).abs().max() <= 0.1 + 1e-6


def test_killed_actor_unit_is_retried_and_results_are_unchanged(setup, tmp_path):
    """SIGKILL an actor process in the middle of its unit: Ray restarts the actor, the unit
    runs again, and the results equal those of an undisturbed run."""
    model, x, y = setup
    config = {"attack": "apgd", "eps": 0.1, "steps": 300, "seed": 0, "batch_size": 40}
    with AttackPool(model, num_actors=2) as pool:
        for attempt in range(5):  # until a kill lands mid-unit (the first, in practice)
            killer = ActorKiller(pool.actors, "AttackWorker.run")
            disturbed = pool.run(x, y, config, tmp_path / f"killed{attempt}")
            if killer.stop():
                break
        assert killer.killed, "no actor was caught mid-unit in 5 runs"
        restarted = ray.get([actor.pid.remote() for actor in pool.actors])
    assert killer.killed[0] not in restarted  # the killed actor was replaced
    clean = run_attack_pool(model, x, y, config, tmp_path / "clean", num_actors=2)
    assert torch.equal(disturbed.x_adv, clean.x_adv)
    assert torch.equal(disturbed.robust, clean.robust)


def test_driver_failure_then_resume_recomputes_only_the_missing_units(setup, tmp_path):
    model, x, y = setup
    whole = run_attack_pool(model, x, y, AA, tmp_path / "whole", num_actors=2)
    seen = []

    def die_after_two_units(metrics):
        seen.append(metrics)
        if len(seen) == 2:
            raise KeyboardInterrupt("driver killed")

    with AttackPool(model, num_actors=2) as pool:
        with pytest.raises(KeyboardInterrupt):
            pool.run(x, y, AA, tmp_path / "cut", on_progress=die_after_two_units)
        assert len(list((tmp_path / "cut" / "units").glob("*.pt"))) == 2
        resumed = pool.run(x, y, AA, tmp_path / "cut", resume=True)
    assert resumed.units_loaded == 2 and resumed.units_computed == 2
    assert torch.equal(resumed.x_adv, whole.x_adv)
    assert torch.equal(resumed.robust, whole.robust)


def test_score_attacks_do_not_depend_on_the_actors_and_resume(setup, tmp_path):
    """Attacks on detectors (APGD on the score): 1 and 3 actors, and this process without
    Ray, give the same inputs and scores; every input moved its score the asked way; a
    rerun loads every unit."""
    model, x, y = setup
    scores = {name: build_score(name).fit(model, x, y) for name in ("msp", "mahalanobis")}
    noise = torch.rand(x[:50].shape, generator=torch.Generator().manual_seed(0))
    attacks = [ScoreAttack(f"{name}-{kind}", name, inputs, direction, 0.05)
               for name in scores for kind, inputs, direction in (("id", x[:50], -1),
                                                                   ("noise", noise, 1))]
    config = {"steps": 10, "norm": "Linf", "seed": 0, "batch_size": 20}
    with AttackPool(model, num_actors=1) as pool:
        one = run_score_attacks(pool, attacks, scores, config, tmp_path / "one")
    with AttackPool(model, num_actors=3, cpus_per_actor=0.5) as pool:
        three = run_score_attacks(pool, attacks, scores, config, tmp_path / "three")
        again = run_score_attacks(pool, attacks, scores, config, tmp_path / "three",
                                  resume=True)
    assert one.units_computed == 12 and again.units_loaded == 12 and again.units_computed == 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as an actor of 1 CPU: the same float reductions
    try:
        serial = attack_serially(model, attacks, scores, config)  # no Ray: the same units
    finally:
        torch.set_num_threads(threads)
    for attack in attacks:
        assert torch.equal(serial[attack.name], one.score[attack.name])
        assert torch.equal(one.x_adv[attack.name], three.x_adv[attack.name])
        assert torch.equal(one.score[attack.name], again.score[attack.name])
        clean = scores[attack.score](model, attack.x)
        moved = attack.direction * (one.score[attack.name] - clean)
        assert (moved >= -1e-5).all() and moved.mean() > 0, attack.name
        assert (one.x_adv[attack.name] - attack.x).abs().max() <= 0.05 + 1e-6
