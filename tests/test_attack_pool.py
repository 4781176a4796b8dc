"""The attack pool on real Ray actors: 1 and 4 actors give identical adversarial examples
and robust flags, equal to one serial pyautoattack call; finished units survive a rerun."""

import pytest
import ray
import torch

from orchestrator.pools import run_attack_pool
from workloads.attacks import autoattack
from workloads.datasets import load_digits
from workloads.models import MLPClassifier
from workloads.training import fit_classifier

pytestmark = pytest.mark.slow
AA = {"attack": "autoattack", "version": "custom", "attacks": ["apgd-ce"], "eps": 0.1,
      "seed": 0, "batch_size": 40}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    data = load_digits()
    model = MLPClassifier(data.input_shape, 10, width=64)
    fit_classifier(model, data.x_train, data.y_train, epochs=10)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield model.eval(), data.x_test[:160], data.y_test[:160]
    ray.shutdown()


@pytest.mark.parametrize("config", [AA, {"attack": "pgd", "eps": 0.1, "steps": 10,
                                         "seed": 0, "batch_size": 40}])
def test_one_and_four_actors_agree(setup, config, tmp_path):
    model, x, y = setup
    one = run_attack_pool(model, x, y, config, tmp_path / "one", num_actors=1)
    four = run_attack_pool(model, x, y, config, tmp_path / "four", num_actors=4,
                           cpus_per_actor=0.5)
    assert torch.equal(one["x_adv"], four["x_adv"])
    assert torch.equal(one["robust"], four["robust"])
    assert one["robust_accuracy"]["clean"] > one["robust_accuracy"][list(
        one["robust_accuracy"])[-1]]
    if config is AA:
        torch.set_num_threads(1)
        serial = autoattack(model, x, y, 0.1, version="custom", attacks=["apgd-ce"], seed=0,
                            batch_size=40)
        assert torch.equal(one["robust"], model(serial).argmax(1) == y)
        assert torch.equal(one["x_adv"], serial)


def test_resume_loads_finished_units(setup, tmp_path):
    model, x, y = setup
    first = run_attack_pool(model, x, y, AA, tmp_path, num_actors=2)
    units = sorted((tmp_path / "units").glob("*.pt"))
    assert units
    stamps = [u.stat().st_mtime_ns for u in units]
    again = run_attack_pool(model, x, y, AA, tmp_path, num_actors=2, resume=True)
    assert [u.stat().st_mtime_ns for u in units] == stamps  # nothing recomputed
    assert torch.equal(first["x_adv"], again["x_adv"])


def test_killed_actor_unit_is_retried_and_results_are_unchanged(setup, tmp_path):
    """SIGKILL an actor process in the middle of its unit: Ray restarts the actor, the unit
    runs again, and the results equal those of an undisturbed run."""
    import os
    import signal
    import threading
    import time

    import psutil

    model, x, y = setup
    config = {"attack": "apgd", "eps": 0.1, "steps": 300, "seed": 0, "batch_size": 40}
    killed = []

    def kill_one_worker():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if "AttackWorker.run" in " ".join(proc.info["cmdline"] or []) or \
                        (proc.info["cmdline"] or [""])[0].startswith("ray::AttackWorker.run"):
                    time.sleep(0.3)  # mid-unit
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    disturbed = run_attack_pool(model, x, y, config, tmp_path / "killed", num_actors=2)
    killer.join()
    assert killed, "no actor process was found to kill"
    clean = run_attack_pool(model, x, y, config, tmp_path / "clean", num_actors=2)
    assert torch.equal(disturbed["x_adv"], clean["x_adv"])
    assert torch.equal(disturbed["robust"], clean["robust"])
