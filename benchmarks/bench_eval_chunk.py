"""Benchmark: the chunk size of a no-grad evaluation on the CPU (`workloads.scores.base`).

Every score, `batched_logits` and `penultimate_features` run a trained model over a split in
chunks. On an accelerator large chunks keep it busy (1,024 inputs); on the CPU a deep
network's activations of 1,024 inputs fall out of the caches (DenseNet concatenates every
layer's maps), so the default there is `CPU_CHUNK`. For each paper classifier, untrained, in
eval mode, on random CIFAR-shaped inputs: the seconds of `penultimate_features` in chunks of
1,024 and in the CPU default, their ratio, and the largest difference between the two
features (float rounding: other kernel blocks).

Usage:  python benchmarks/bench_eval_chunk.py [--inputs 1024] [--threads 1]
        [--archs densenet100 wrn28_10] [--out benchmarks/out]
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

from workloads.models import build_classifier  # noqa: E402
from workloads.scores.base import ACCELERATOR_CHUNK, CPU_CHUNK, penultimate_features  # noqa: E402


def measure(arch: str, inputs: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = build_classifier(arch, (3, 32, 32), 10).eval()
    x = torch.randn(inputs, 3, 32, 32)
    penultimate_features(model, x[:4])  # warm-up: one-time allocations
    seconds, features = {}, {}
    for chunk in (ACCELERATOR_CHUNK, CPU_CHUNK):
        started = time.perf_counter()
        features[chunk] = penultimate_features(model, x, batch_size=chunk)
        seconds[chunk] = time.perf_counter() - started
    return {"arch": arch, "inputs": inputs, "threads": torch.get_num_threads(),
            f"chunk_{ACCELERATOR_CHUNK}_s": round(seconds[ACCELERATOR_CHUNK], 2),
            f"chunk_{CPU_CHUNK}_s": round(seconds[CPU_CHUNK], 2),
            "speedup": round(seconds[ACCELERATOR_CHUNK] / seconds[CPU_CHUNK], 2),
            "max_abs_difference": float((features[ACCELERATOR_CHUNK]
                                         - features[CPU_CHUNK]).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--archs", nargs="+", default=["densenet100", "wrn28_10"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for arch in args.archs:
        rows.append(measure(arch, args.inputs))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_eval_chunk.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
