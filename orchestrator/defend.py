"""The detection + Langevin restoration defense (thesis ch. 4, NOTES.md C) on the DIGLMs of
an `alpha_diglm` sweep, on actor pools, with Tables 4.1 to 4.4 beside the thesis' numbers
(the pipeline: orchestrator.jobs.defense).

    python -m orchestrator.defend SWEEP_DIR [--profile smoke|local|paper] [--alpha 0,2]

For each DIGLM trial: split its test set into validation (20%) and test (cut to N); attack
both with APGD-CE (pyautoattack, eps 8/255) and the test set with the adaptive APGD on
CE - lambda * AM; flag inputs whose approximate mass exceeds the threshold of best accuracy
on the validation pairs; tune the chains' early-stop AM on the validation pairs; restore
with Langevin chains; classify. Writes `SWEEP_DIR/defense/<profile>-<time>/`: `tables.md`
(Tables 4.1-4.4 with the thesis' columns), `defense.csv` (one row per trial),
`defense.png`, and per trial `<trial>/result.json`, `<trial>/defense.png` and the pools'
units and chain checkpoints (reused by --resume). One W&B run per trial.

A *pair* is a test sample whose clean input is classified correctly and whose adversarial
input is not; detection and the full defense are measured on the balanced set of pairs
(clean + adversarial), restoration on the adversarial inputs of the pairs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.cli import (
    add_job_arguments,
    job_parser,
    parse_eps,
    pool_arguments,
    run_command,
)
from orchestrator.errors import UsageError
from orchestrator.jobs.defense import defend_trials
from orchestrator.jobs.profiles import PROFILES, DefenseProfile
from orchestrator.jobs.trial import job_directory, read_trials, record_provenance
from orchestrator.pools.base import start_ray
from orchestrator.pools.units import save_json
from orchestrator.reports.job_plots import plot_defense_summary
from orchestrator.reports.reproduction import FILE as REPRODUCTION_FILE
from orchestrator.reports.reproduction import rewrite_reproduction, verdict_lines
from orchestrator.reports.tables import defense_tables


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser("defend", __doc__, [
        "runs/alpha_diglm-local-<time> --alpha 0,2",
        "SWEEP --profile paper --gpus-per-actor 0.5 --num-actors 8",
        "SWEEP --resume   # after an interruption"],
        sweep_help="a finished alpha_diglm sweep",
        preamble="profiles:\n" + "\n".join(f"  {k:<6} {v.description}"
                                          for k, v in PROFILES.items()) + "\n\n")
    parser.add_argument("--profile", default="local", choices=PROFILES,
                        help="protocol size (default local)")
    parser.add_argument("--trial", action="append", default=[],
                        help="defend only this trial (repeatable; default: every DIGLM)")
    parser.add_argument("--alpha", help="defend only trials with these alphas, e.g. 0,2")
    parser.add_argument("--eps", type=parse_eps, help="attack and projection radius "
                        "(default 8/255)")
    parser.add_argument("--steps", type=int, help="Langevin steps per chain")
    parser.add_argument("--n-test", type=int, help="cut the test part to N inputs")
    parser.add_argument("--lam", help="adaptive attack weights, comma-separated; Table 4.4 "
                        "reports the worst (default 0.001,0.01,0.1,1)")
    add_job_arguments(parser)
    return parser


def resolve_profile(args: argparse.Namespace) -> DefenseProfile:
    profile = PROFILES[args.profile]
    changes: dict[str, Any] = {}
    if args.eps is not None:
        changes["eps"] = args.eps
    if args.steps is not None:
        if args.steps < 1:
            raise UsageError("--steps must be >= 1")
        changes["steps"] = args.steps
        changes["checkpoint_every"] = min(profile.checkpoint_every, args.steps)
    if args.n_test is not None:
        if args.n_test < 1:
            raise UsageError("--n-test must be >= 1")
        changes["n_test"] = args.n_test
    if args.lam is not None:
        try:
            lams = tuple(float(v) for v in args.lam.split(","))
        except ValueError:
            raise UsageError(f"--lam {args.lam}: expected numbers separated by commas") from None
        if any(lam < 0 for lam in lams):
            raise UsageError("--lam values must be >= 0")
        changes["adaptive_lams"] = lams
    return replace(profile, **changes)


def select_trials(table: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    """The DIGLM trials to defend: completed ones, filtered by --trial and --alpha."""
    if "model" not in table or not (table["model"] == "diglm").any():
        raise UsageError(f"{args.sweep_dir} has no DIGLM trials: the defense needs an "
                       f"alpha_diglm sweep")
    completed = table["status"] == "completed" if "status" in table else True
    chosen = table[(table["model"] == "diglm") & completed]
    if args.trial:
        unknown = sorted(set(args.trial) - set(table.trial_id))
        if unknown:
            raise UsageError(f"no trial {', '.join(unknown)} in {args.sweep_dir}")
        chosen = chosen[chosen.trial_id.isin(args.trial)]
    if args.alpha is not None:
        try:
            alphas = [float(a) for a in args.alpha.split(",")]
        except ValueError:
            raise UsageError(f"--alpha {args.alpha}: expected numbers separated by "
                           f"commas") from None
        chosen = chosen[chosen["alpha"].isin(alphas)]
    if chosen.empty:
        raise UsageError("no completed DIGLM trial matches --trial / --alpha")
    order = [k for k in ("alpha", "dequantization", "seed", "trial_id") if k in chosen]
    return chosen.sort_values(order)


def main(args: argparse.Namespace) -> int:
    pool_args = pool_arguments(args)
    profile = resolve_profile(args)
    trials = select_trials(read_trials(args.sweep_dir), args)
    out = job_directory(args.sweep_dir, "defense", args.profile, args.resume)
    settings = json.loads(json.dumps(asdict(profile)))  # tuples as lists, as stored
    if args.resume and (out / "defense.json").exists():
        earlier = json.loads((out / "defense.json").read_text())
        changed = sorted(k for k in settings if earlier.get(k) != settings[k])
        if changed:
            raise UsageError(f"cannot resume {out}: its settings differ in "
                             f"{', '.join(changed)}; run without --resume")
    out.mkdir(parents=True, exist_ok=True)
    record_provenance(out, args.sweep_dir, args.data_dir)
    save_json({"profile": args.profile, **settings, "trials": list(trials.trial_id),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, out / "defense.json")
    start_ray()
    frame = defend_trials(args.sweep_dir, trials, profile, args.profile, out, pool_args,
                          args.resume, args.data_dir, args.wandb)
    frame.to_csv(out / "defense.csv", index=False)
    markdown = defense_tables(frame, profile, str(trials.iloc[0].get("dataset", "?")))
    (out / "tables.md").write_text(markdown)
    plot_defense_summary(frame, out / "defense.png")
    print("\n" + markdown)
    print(f"[defend] results: {out}/tables.md, defense.csv, defense.png, <trial>/")
    verdicts = [v for v in rewrite_reproduction(args.sweep_dir) if v.claim.data == "defense"]
    if verdicts:
        where = Path(args.sweep_dir) / REPRODUCTION_FILE
        print(f"[defend] the thesis' defense claims ({where}):")
        for line in verdict_lines(verdicts):
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(build_parser(), main))
