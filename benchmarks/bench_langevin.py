"""Benchmark: Langevin chain-steps per second (NOTES.md C).

Three ways to advance 1000 chains of the local-profile DIGLM (vector RealNVP, 8 couplings x
128 hidden, 64-dim digits), in one process with torch's default threads:

- naive: a loop over chains, each advanced alone (batch of 1) with its own generator;
- batched: `workloads.adversarial.langevin.run_chains` on all 1000 chains as one batch;
- bare: only grad_x log p(x) on the same 1000 inputs, the limit of any batched chain.

Targets: batched >= 100x naive; batched >= 0.8x bare. Also measured: the Langevin pool
(2 actors x 500 chains, 1 thread each, a checkpoint every quarter of the run) on the same
chains, against the in-process batched chains; and an image RealNVP (2 scales) at 100 chains.

Usage:  python benchmarks/bench_langevin.py [--chains 1000] [--steps 50] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.pools.langevin import LangevinPool  # noqa: E402
from workloads.adversarial.langevin import grad_log_prob, run_chains, start_chains  # noqa: E402
from workloads.data import load_digits  # noqa: E402
from workloads.models import DIGLM  # noqa: E402
from workloads.models.flows import build_flow  # noqa: E402


def naive(model, x: torch.Tensor, steps: int, eta: float = 1e-3) -> torch.Tensor:
    """One chain at a time: the loop a first script would write."""
    out = []
    for i in range(len(x)):
        generator = torch.Generator().manual_seed(i)
        xi = x[i:i + 1].clone()
        for _ in range(steps):
            xg = xi.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(model.log_prob(xg).sum(), xg)
            noise = torch.randn(xi.shape, generator=generator)
            xi = (xi + 0.5 * eta * grad + math.sqrt(eta) * noise).clamp(0, 1).detach()
        out.append(xi)
    return torch.cat(out)


def timed(fn, repeats: int = 3) -> float:
    """Best wall time of `repeats` runs (after the first call, which warms caches)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure(model, x: torch.Tensor, steps: int, naive_chains: int) -> dict[str, float]:
    n = len(x)
    batched_s = timed(lambda: run_chains(model.log_prob, start_chains(x, 0), steps))
    bare_s = timed(lambda: [grad_log_prob(model.log_prob, x) for _ in range(steps)])
    # The naive loop is timed on a subset of chains and scaled: it is linear in chains.
    naive_s = timed(lambda: naive(model, x[:naive_chains], steps), repeats=1) * n / naive_chains
    rates = {"batched": n * steps / batched_s, "bare_grad": n * steps / bare_s,
             "naive": n * steps / naive_s}
    return {**{f"{k}_chain_steps_per_s": v for k, v in rates.items()},
            "batched_over_naive": rates["batched"] / rates["naive"],
            "batched_over_bare": rates["batched"] / rates["bare_grad"],
            "naive_chains_timed": naive_chains}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--naive-chains", type=int, default=200,
                        help="chains the naive loop is timed on (scaled to --chains)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = parser.parse_args()
    torch.manual_seed(0)
    digits = load_digits()
    x = digits.x_test.repeat(math.ceil(args.chains / len(digits.x_test)), 1, 1, 1)
    x = x[:args.chains]
    vector = DIGLM(build_flow("vector", (1, 8, 8), 17, num_couplings=8, hidden=128), 10).eval()
    results = {"threads": torch.get_num_threads(), "chains": args.chains, "steps": args.steps,
               "vector_diglm": measure(vector, x, args.steps, args.naive_chains)}
    print(json.dumps(results, indent=2), flush=True)

    image = DIGLM(build_flow("image", (1, 8, 8), 17, num_scales=2, num_blocks=2, hidden=32),
                  10).eval()
    results["image_diglm_100_chains"] = measure(image, x[:100], max(args.steps // 5, 5), 20)

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    steps = args.steps * 4
    config = {"steps": steps, "chains_per_unit": math.ceil(args.chains / 2),
              "checkpoint_every": steps // 4, "record_every": steps // 4, "eps": 8 / 255}
    with tempfile.TemporaryDirectory() as out, LangevinPool(vector, num_actors=2) as pool:
        started = time.perf_counter()
        ray.get([actor.pid.remote() for actor in pool.actors])
        startup = time.perf_counter() - started
        pool.run(x, {**config, "steps": 2}, Path(out) / "warm")
        started = time.perf_counter()
        run = pool.run(x, config, Path(out) / "run")
        wall = time.perf_counter() - started
    ray.shutdown()
    in_process = results["vector_diglm"]["batched_chain_steps_per_s"]
    results["pool_2_actors"] = {
        "steps": steps, "checkpoints_per_unit": 4, "actor_startup_s": startup,
        "chain_steps_per_s": run.chain_steps_computed / wall,
        "over_batched_in_process": run.chain_steps_computed / wall / in_process}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench_langevin.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
