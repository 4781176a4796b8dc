"""Benchmark: MC dropout's three uncertainties on one input set (`workloads.scores.dropout`).

The failure-prediction study scores variation ratio, predictive entropy and mutual
information (NOTES.md E, G) on the same inputs. Before, each kind drew its own T passes
(3T forward passes over the set, the same masks three times); now the passes are drawn once
and every kind is derived from them (`PASSES`). On document 001's LeNet with dropout
(untrained, its eval-mode layers but dropout), over random 28x28 inputs: the seconds of the
three kinds each on its own passes (before) and of the three `mc_dropout` scores sharing
them (after), their ratio, and whether the values are equal bit for bit.

Usage:  python benchmarks/bench_mc_dropout.py [--inputs 2000] [--passes 20] [--threads 1]
        [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workloads.models.dropout_classifiers import LeNet  # noqa: E402
from workloads.scores import build_score  # noqa: E402
from workloads.scores.dropout import KINDS, PASSES, sample_passes, uncertainties  # noqa: E402


def per_kind(model: torch.nn.Module, x: torch.Tensor, passes: int,
             seed: int) -> dict[str, torch.Tensor]:
    """The old way: each kind its own `passes` passes (seeded alike), its score kept."""
    return {kind: -uncertainties(sample_passes(model, x, passes, seed))[kind]
            for kind in KINDS}


def shared(model: torch.nn.Module, x: torch.Tensor, passes: int,
           seed: int) -> dict[str, torch.Tensor]:
    """The three `mc_dropout` scores as a study asks for them, sharing one draw."""
    return {kind: build_score("mc_dropout", kind=kind, passes=passes, seed=seed)(model, x)
            for kind in KINDS}


def measure(inputs: int = 2000, passes: int = 20, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = LeNet((1, 28, 28), 10).eval()
    x = torch.rand(inputs, 1, 28, 28)
    sample_passes(model, x[:8], 1, seed)  # warm-up: one-time allocations
    PASSES.clear()
    seconds, values = {}, {}
    for name, run in (("before", per_kind), ("after", shared)):
        started = time.perf_counter()
        values[name] = run(model, x, passes, seed)
        seconds[name] = time.perf_counter() - started
    PASSES.clear()
    return {"model": "LeNet (dropout 0.5)", "inputs": inputs, "passes": passes,
            "threads": torch.get_num_threads(),
            "before_s": round(seconds["before"], 2), "after_s": round(seconds["after"], 2),
            "speedup": round(seconds["before"] / seconds["after"], 2),
            "equal": all(torch.equal(values["before"][k], values["after"][k]) for k in KINDS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=2000)
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    row = measure(args.inputs, args.passes)
    print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_mc_dropout.json").write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
