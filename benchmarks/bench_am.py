"""Benchmark: what the approximate-mass regularizer (double backprop) costs per epoch.

Times epochs of `workloads.training.epochs.train_epoch` on digits for the flow and DIGLM
objectives at alpha = 0 (plain likelihood) and alpha = 2 (AM penalty), for the local
profile's vector RealNVP and a small multi-scale image RealNVP, in one process, one thread.
The ratio alpha=2 / alpha=0 is the regularizer's cost.

Usage:  python benchmarks/bench_am.py [--epochs 5] [--out benchmarks/out]
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

from search_spaces import get_search_space  # noqa: E402
from workloads.data import load_digits  # noqa: E402
from workloads.models import DIGLM, build_generative_model  # noqa: E402
from workloads.studies.generative import generative_objective  # noqa: E402
from workloads.training.epochs import train_epoch  # noqa: E402

BODIES = {
    "vector (local profile: 8 couplings, 128 hidden)": {"flow": "vector"},
    "image (2 scales, 2 blocks, 32 channels)": {"flow": "image", "num_scales": 2,
                                                "num_blocks": 2, "hidden": 32},
}


def seconds_per_epoch(config: dict, epochs: int) -> float:
    data = load_digits()
    torch.manual_seed(0)
    model = build_generative_model(config, data.input_shape, data.levels, data.num_classes)
    flow = model.flow if isinstance(model, DIGLM) else model
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    beta = config["beta"] if config["model"] == "diglm" else None
    times = []
    for epoch in range(epochs + 1):  # the first epoch warms up
        objective = generative_objective(flow, torch.Generator().manual_seed(epoch),
                                           config["alpha"], beta)
        started = time.perf_counter()
        train_epoch(model, optimizer, objective, data.x_train, data.y_train,
                    config["batch_size"], epoch, max_grad_norm=config["max_grad_norm"])
        times.append(time.perf_counter() - started)
    return sum(times[1:]) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = get_search_space("alpha_diglm").profile("local").config
    rows = []
    for body_name, body in BODIES.items():
        for model in ("flow", "diglm"):
            timing = {}
            for alpha in (0.0, 2.0):
                config = {**base, **body, "model": model, "alpha": alpha}
                timing[alpha] = seconds_per_epoch(config, args.epochs)
                print(f"[bench_am] {body_name}, {model}, alpha={alpha}: "
                      f"{timing[alpha]:.3f} s/epoch", flush=True)
            rows.append({"body": body_name, "model": model, "alpha0_s": timing[0.0],
                         "alpha2_s": timing[2.0], "ratio": timing[2.0] / timing[0.0]})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_am.json").write_text(json.dumps(rows, indent=2))
    print("\n| body | model | alpha=0 s/epoch | alpha=2 s/epoch | ratio |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['body']} | {r['model']} | {r['alpha0_s']:.3f} | {r['alpha2_s']:.3f} | "
              f"{r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
