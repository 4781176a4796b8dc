"""Benchmark: attacks on OOD detectors (APGD on each score) in the attack pool against the
same attacks run serially.

Model: a DIGLM of the local `alpha_diglm` size (vector RealNVP, 8 couplings x 128 units),
trained 10 epochs on digits. Attacks: the scores msp, mahalanobis, log_px and neg_am (the
last by double backprop), at eps 8/255, on the 360 test digits (pushed down) and 360
Gaussian-noise images (pushed up), 50 APGD steps: 8 attacks of 360 inputs.

- serial: the fair baseline, the best a user could do without the pool on this machine:
  one process, torch with all cores' threads (2 here), each attack on all 360 inputs as
  one batch, then the score of the attacked inputs (what a pool unit returns);
- pool: 2 actors of 1 CPU (1 thread each), units of `--batch-size` inputs, on actors that
  already hold the model (warm) and including their start-up (cold).

Usage:  python benchmarks/bench_detector_attack.py [--batch-size 180] [--out DIR]
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

from orchestrator.pools.attack import AttackPool, run_score_attacks  # noqa: E402
from workloads.adversarial.attacks import apgd_on_score  # noqa: E402
from workloads.adversarial.detector_attacks import ScoreAttack  # noqa: E402
from workloads.data import load_dataset  # noqa: E402
from workloads.models import DIGLM, diglm_objective  # noqa: E402
from workloads.models.flows import build_flow  # noqa: E402
from workloads.scores import build_score  # noqa: E402
from workloads.training.epochs import train_epoch  # noqa: E402

EPS, STEPS, SEED = 8 / 255, 50, 0
SCORES = ("msp", "mahalanobis", "log_px", "neg_am")


def trained_diglm(data) -> DIGLM:
    torch.manual_seed(0)
    model = DIGLM(build_flow("vector", data.input_shape, data.levels, "centred", 0.05,
                             num_couplings=8, hidden=128, depth=2), data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for epoch in range(10):
        train_epoch(model, optimizer, lambda m, xb, yb: diglm_objective(m, xb, yb, 0.0),
                    data.x_train, data.y_train, 64, epoch, max_grad_norm=100)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=180)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = parser.parse_args()
    data = load_dataset("digits")
    model = trained_diglm(data)
    scores = {name: build_score(name).fit(model, data.x_train, data.y_train)
              for name in SCORES}
    inputs = {"id": (data.x_test, -1), "gaussian": (data.ood["gaussian_noise"], 1)}
    attacks = [ScoreAttack(f"{s}-{k}", s, x, d, EPS) for s in SCORES
               for k, (x, d) in inputs.items()]

    started = time.perf_counter()
    for attack in attacks:  # the attacked inputs and their scores, as the pool returns
        score = scores[attack.score]
        x_adv = apgd_on_score(lambda z, s=score: s.forward(model, z), attack.x, EPS,
                              attack.direction, STEPS,
                              generator=torch.Generator().manual_seed(SEED))
        score(model, x_adv)
    serial_s = time.perf_counter() - started
    threads = torch.get_num_threads()

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    config = {"steps": STEPS, "norm": "Linf", "seed": SEED, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        with AttackPool(model, num_actors=2) as pool:
            ray.get([a.pid.remote() for a in pool.actors])
            startup = time.perf_counter() - started
            run_score_attacks(pool, attacks, scores, config, Path(out) / "cold")
            cold_s = time.perf_counter() - started
            started = time.perf_counter()
            warm = run_score_attacks(pool, attacks, scores, config, Path(out) / "warm")
            warm_s = time.perf_counter() - started
    ray.shutdown()
    results = {"attacks": len(attacks), "inputs_per_attack": len(data.x_test), "steps": STEPS,
               "batch_size_pool": args.batch_size, "torch_threads_serial": threads,
               "serial_s": serial_s, "pool_warm_s": warm_s, "pool_cold_s": cold_s,
               "pool_startup_s": startup, "speedup_warm": serial_s / warm_s,
               "speedup_cold": serial_s / cold_s, "units": warm.units_computed}
    print(json.dumps(results, indent=2))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench_detector_attack.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
