"""Actor resources and devices, checked on the CPU: fractional GPUs, how many actors fit,
the device an actor picks, unit files read safely, and job fingerprints. What only a GPU
can confirm (CUDA placement, NCCL) is noted in the README."""

import pytest
import torch
from torch import nn

from orchestrator.pools.base import PoolError, actor_options, check_capacity, worker_device
from orchestrator.pools.units import fingerprint, load_unit, open_job, save_unit


def test_actor_options_allow_fractional_gpus_and_restart_actors():
    options = actor_options(1, 0.25)
    assert options["num_gpus"] == 0.25 and options["num_cpus"] == 1
    assert options["max_restarts"] >= 1 and options["max_task_retries"] >= 1  # but bounded
    assert actor_options(0, 2)["num_gpus"] == 2
    for cpus, gpus in [(0, 0), (-1, 0), (1, 1.5)]:
        with pytest.raises(PoolError):
            actor_options(cpus, gpus)


def test_capacity_counts_actors_that_fit_and_refuses_impossible_ones_locally():
    cpu_box = {"CPU": 2.0}
    gpu_box = {"CPU": 8.0, "GPU": 2.0}
    assert check_capacity(4, 0.5, 0, cpu_box, can_grow=False) == 4
    assert check_capacity(4, 1, 0, cpu_box, can_grow=False) == 2
    assert check_capacity(8, 1, 0.25, gpu_box, can_grow=False) == 8  # 4 per GPU
    assert check_capacity(8, 1, 0.5, gpu_box, can_grow=False) == 4
    with pytest.raises(PoolError, match="GPU"):
        check_capacity(2, 1, 1, cpu_box, can_grow=False)
    assert check_capacity(2, 1, 1, cpu_box, can_grow=True) == 1  # an autoscaler may add GPUs


def test_worker_device_is_the_cpu_without_a_gpu():
    assert worker_device(0) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert worker_device(0.5) == torch.device("cpu")


def test_unit_files_are_atomic_safe_and_named_when_corrupt(tmp_path, capsys):
    path = tmp_path / "units" / "u.pt"
    save_unit({"x": torch.ones(3), "stage": "apgd-ce", "start": 0}, path)
    assert load_unit(path)["stage"] == "apgd-ce"
    assert not list(path.parent.glob("*.tmp"))

    class Payload:
        def __reduce__(self):
            return (print, ("code from a unit file ran",))

    torch.save({"evil": Payload()}, path)
    with pytest.raises(PoolError, match="u.pt"):
        load_unit(path)  # weights_only: the pickle's code is refused, not run
    assert "code from a unit file ran" not in capsys.readouterr().out
    path.write_bytes(b"not a torch file")
    with pytest.raises(PoolError, match="corrupt"):
        load_unit(path)


def test_fingerprints_and_job_directories(tmp_path):
    model = nn.Linear(3, 2)
    x = torch.zeros(4, 3)
    a = fingerprint({"eps": 0.1}, model, x)
    assert a == fingerprint({"eps": 0.1}, model, x)
    assert a != fingerprint({"eps": 0.2}, model, x)
    assert a != fingerprint({"eps": 0.1}, model, x + 1)
    with torch.no_grad():
        model.weight.add_(1)
    assert a != fingerprint({"eps": 0.1}, model, x)
    # batch norm's state holds a 0-d tensor (num_batches_tracked): it counts too
    norm = nn.BatchNorm1d(3)
    b = fingerprint(norm)
    norm.num_batches_tracked += 1
    assert fingerprint(norm) != b
    out = open_job(tmp_path / "job", "attack", {"eps": 0.1}, "f1", resume=False)
    save_unit({"x": 1}, out / "units" / "a.pt")
    assert open_job(out, "attack", {"eps": 0.1}, "f1", resume=True) == out
    assert (out / "units" / "a.pt").exists()
    with pytest.raises(PoolError, match="eps"):
        open_job(out, "attack", {"eps": 0.2}, "f2", resume=True)
    open_job(out, "attack", {"eps": 0.2}, "f2", resume=False)  # a fresh job: stale units go
    assert not (out / "units" / "a.pt").exists()


def serial_batches(first, fooled, batch_size, num_stages):
    """The batches one serial pyautoattack call forms, stage after stage."""
    batches, survivors = [], list(first)
    for s in range(num_stages):
        stage = [survivors[i:i + batch_size] for i in range(0, len(survivors), batch_size)]
        batches.append(stage)
        survivors = [i for i in survivors if not fooled(s, i)]
    return batches


def test_stage_plan_overlaps_stages_yet_forms_the_serial_batches():
    import random

    from orchestrator.pools.stage_plan import StagePlan

    overlapped = False
    for trial in range(30):
        rng = random.Random(trial)
        first = sorted(rng.sample(range(200), rng.randint(0, 120)))
        outcome = {(s, i): rng.random() < 0.3 for s in range(4) for i in range(200)}

        def fooled(s, i, outcome=outcome):
            return outcome[(s, i)]

        plan, running = StagePlan(4, first, 7), []
        running += plan.new_units()
        while running:
            s, start, index = running.pop(rng.randrange(len(running)))  # any order
            overlapped |= any(t < s for t, _, _ in running)
            plan.complete(s, start // 7, [fooled(s, i) for i in index])
            running += plan.new_units()
        assert plan.finished()
        assert plan.units == serial_batches(first, fooled, 7, 4)
        assert plan.fraction() == 1.0
    assert overlapped  # a later stage ran while an earlier one was still running
