"""Benchmark: the attack pool on 2 actors against one serial pyautoattack call.

Same model (an MLP 256-256 trained 10 epochs on digits), same samples (the 360 test digits),
same batch size and seed. The serial call runs in this process with torch's default thread
count (2 here), with Ray stopped; the pool runs 2 actors with 1 CPU each. Measured for
AutoAttack `custom` (APGD-CE alone) and `standard` (APGD-CE, APGD-T, FAB-T, Square):

- the pool's run on actors that hold the model already (a pool serves many attacks: the
  defense runs three on one pool), and
- the pool including its start-up (actors started, model shipped) for this one attack.

Checks that robust flags and adversarial examples are identical. Target: >= 1.6x.

Usage:  python benchmarks/bench_attack_pool.py [--versions custom,standard] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.pools.attack import AttackPool  # noqa: E402
from workloads.adversarial.attacks import autoattack  # noqa: E402
from workloads.data import load_digits  # noqa: E402
from workloads.models import MLPClassifier  # noqa: E402
from workloads.training.epochs import fit_classifier  # noqa: E402

EPS, SEED = 0.1, 0


def config_for(version: str, batch_size: int) -> dict:
    config = {"attack": "autoattack", "version": version, "eps": EPS, "seed": SEED,
              "batch_size": batch_size}
    return {**config, "attacks": ["apgd-ce"]} if version == "custom" else config


def pool_runs(model, x, y, versions, batch_size) -> dict:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    runs = {}
    with tempfile.TemporaryDirectory() as out:
        for version in versions:
            config = config_for(version, batch_size)
            started = time.perf_counter()
            with AttackPool(model, num_actors=2) as pool:
                ray.get([a.pid.remote() for a in pool.actors])  # actors up, model loaded
                startup = time.perf_counter() - started
                result = pool.run(x, y, config, Path(out) / f"{version}-cold")
                cold = time.perf_counter() - started
                # The same attack again on the warm pool (a fresh job directory).
                started = time.perf_counter()
                warm_result = pool.run(x, y, config, Path(out) / f"{version}-warm")
                warm = time.perf_counter() - started
            assert torch.equal(result.x_adv, warm_result.x_adv)
            runs[version] = {"result": warm_result, "cold_s": cold, "warm_s": warm,
                             "startup_s": startup}
    ray.shutdown()
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", default="custom,standard")
    parser.add_argument("--batch-size", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = parser.parse_args()
    versions = args.versions.split(",")
    torch.manual_seed(0)
    data = load_digits()
    model = MLPClassifier(data.input_shape, 10, width=256)
    fit_classifier(model, data.x_train, data.y_train, epochs=10)
    x, y = data.x_test, data.y_test
    pools = pool_runs(model, x, y, versions, args.batch_size)
    results = {"n": len(x), "batch_size": args.batch_size,
               "torch_threads_serial": torch.get_num_threads()}
    for version in versions:
        config = config_for(version, args.batch_size)
        started = time.perf_counter()
        serial = autoattack(model, x, y, EPS, version=version, attacks=config.get("attacks"),
                            seed=SEED, batch_size=args.batch_size)
        serial_s = time.perf_counter() - started
        pool = pools[version]
        with torch.no_grad():
            flags = model(serial).argmax(1) == y
        results[version] = {
            "serial_s": serial_s, "pool_warm_s": pool["warm_s"], "pool_cold_s": pool["cold_s"],
            "pool_startup_s": pool["startup_s"],
            "speedup_warm": serial_s / pool["warm_s"], "speedup_cold": serial_s / pool["cold_s"],
            "robust_accuracy": pool["result"].robust_accuracy,
            "flags_identical": torch.equal(pool["result"].robust, flags),
            "x_adv_identical": torch.equal(pool["result"].x_adv, serial)}
        print(json.dumps({version: results[version]}, indent=2), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench_attack_pool.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
