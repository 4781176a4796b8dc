"""Benchmark: each study's final stage against its training time and its forward-pass floor.

For the first trial of each named sweep's profile (default `smoke`: tiny data, digits), the
trial's own loop runs with no Ray on one thread, as a trial does, through a session that
notes the time of every report and every step its final stage announces
(`Session.progress`). Per sweep:
- training: from the start of the loop to its "final stage" (data loading included);
- final stage: from there to the last report, and the time of each of its steps;
- floor: one no-grad forward pass of the trained model, in eval mode, over the test set and
  every OOD set: what any evaluation of those inputs must pay at least once. The ratio
  final stage / floor says how many such passes the stage spends (IWAE-K, bootstrap
  intervals, fitted scores, attacks all cost more than one by design; the ratio is the
  number to watch when a stage changes).

Usage:  python benchmarks/bench_final_stages.py [--profile smoke] [--sweeps vae_ood ...]
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

from orchestrator.tune.epochs import run_epochs  # noqa: E402
from orchestrator.tune.session import LocalSession  # noqa: E402
from search_spaces import get_search_space, sweep_names  # noqa: E402
from workloads.data import load_trial_data  # noqa: E402
from workloads.models.modes import evaluating  # noqa: E402
from workloads.studies import LOOPS  # noqa: E402


class TimedSession(LocalSession):
    """A `LocalSession` that keeps the model it prepared and the time of each step."""

    def __init__(self):
        super().__init__(num_threads=1)
        self.started = time.perf_counter()
        self.model: torch.nn.Module | None = None
        self.steps: list[tuple[float, str]] = []
        self.reported: list[float] = []

    def prepare_model(self, model):
        self.model = super().prepare_model(model)
        return self.model

    def progress(self, text: str) -> None:
        super().progress(text)
        self.steps.append((time.perf_counter() - self.started, text))

    def report(self, metrics, state=None, final=None):
        super().report(metrics, state, final)
        self.reported.append(time.perf_counter() - self.started)


def forward_floor(model: torch.nn.Module, inputs: list[torch.Tensor],
                  batch: int = 512) -> float:
    """Seconds of one no-grad eval-mode forward pass of `model` over every input."""
    started = time.perf_counter()
    with torch.no_grad(), evaluating(model):
        for x in inputs:
            for i in range(0, len(x), batch):
                model(x[i:i + batch])
    return time.perf_counter() - started


def measure(name: str, profile_name: str) -> dict:
    space = get_search_space(name)
    config = space.profile(profile_name).trial_configs()[0]  # setup already merged in
    session = TimedSession()
    run_epochs(LOOPS[space.loop], config, session)
    final_at = next(t for t, text in session.steps if text == "final stage")
    ended = session.reported[-1]
    ends = [t for t, _ in session.steps[1:]] + [ended]  # a step lasts until the next one
    step_seconds = {}
    for (started, text), stopped in zip(session.steps, ends):
        if started >= final_at and text != "final stage":
            step_seconds[text] = step_seconds.get(text, 0.0) + stopped - started
    data = load_trial_data(config)
    floor = forward_floor(session.model, [data.x_test, *data.ood.values()])
    final = ended - final_at
    top = sorted(step_seconds.items(), key=lambda kv: -kv[1])[:3]
    return {"sweep": name, "profile": profile_name, "training_s": round(final_at, 2),
            "final_stage_s": round(final, 2), "final_to_training": round(final / final_at, 2),
            "floor_s": round(floor, 3), "final_to_floor": round(final / floor, 1),
            "inputs_scored": len(data.x_test) + sum(len(x) for x in data.ood.values()),
            "slowest_steps": {k: round(v, 2) for k, v in top}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke", choices=("smoke", "local"))
    parser.add_argument("--sweeps", nargs="+", default=sweep_names())
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.sweeps:
        rows.append(measure(name, args.profile))
        print(json.dumps(rows[-1]), flush=True)
    (out / f"bench_final_stages_{args.profile}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
