"""Benchmark: the attack pool on 2 actors against one serial pyautoattack call.

Same model (an MLP trained 10 epochs on digits), same samples (the first --n test digits),
same batch size and seed. The serial call runs in this process with torch's default thread
count; the pool runs 2 actors with 1 CPU each. Checks that robust flags and adversarial
examples are identical, and reports the speed-up.

Usage:  python benchmarks/bench_attack_pool.py [--n 360] [--out benchmarks/out]
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

from orchestrator.pools import run_attack_pool  # noqa: E402
from workloads.attacks import autoattack  # noqa: E402
from workloads.datasets import load_digits  # noqa: E402
from workloads.models import MLPClassifier  # noqa: E402
from workloads.training import fit_classifier  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=360)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = parser.parse_args()
    import ray

    torch.manual_seed(0)
    data = load_digits()
    model = MLPClassifier(data.input_shape, 10, width=256)
    fit_classifier(model, data.x_train, data.y_train, epochs=10)
    x, y = data.x_test[:args.n], data.y_test[:args.n]
    config = {"attack": "autoattack", "version": "custom", "attacks": ["apgd-ce"],
              "eps": 0.1, "seed": 0, "batch_size": 30}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    with tempfile.TemporaryDirectory() as out:
        run_attack_pool(model, x[:30], y[:30], config, Path(out) / "warm", num_actors=2)
        started = time.perf_counter()
        pool = run_attack_pool(model, x, y, config, Path(out) / "run", num_actors=2)
        pool_s = time.perf_counter() - started
    ray.shutdown()
    started = time.perf_counter()
    serial = autoattack(model, x, y, 0.1, version="custom", attacks=["apgd-ce"], seed=0,
                        batch_size=30)
    serial_s = time.perf_counter() - started
    with torch.no_grad():
        flags_equal = torch.equal(pool["robust"], model(serial).argmax(1) == y)
    result = {"n": args.n, "serial_s": serial_s, "pool_2_actors_s": pool_s,
              "speedup": serial_s / pool_s, "flags_identical": flags_equal,
              "x_adv_identical": torch.equal(pool["x_adv"], serial),
              "torch_threads_serial": torch.get_num_threads()}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench_attack_pool.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
