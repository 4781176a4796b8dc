"""Jobs on a finished sweep's trials (attacks, Langevin chains, the defense): finding a
trial and loading its model, the job's directory under the sweep, Ray, and the command-line
options the job commands share.

A job directory is `SWEEP_DIR/<kind>/<name>-<time>/`; `--resume` reopens the latest one of
the same name, whose finished units and chain checkpoints are then reused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from orchestrator.pools import PoolError, fingerprint
from workloads.attacks import AttackError
from workloads.datasets import Dataset, DatasetMissingError

EXIT_USAGE = 2
SWEEP_FILE = "sweep.json"


class JobError(ValueError):
    """Bad input to a job command: one line on stderr, exit code 2, no traceback."""


def read_trials(sweep_dir: Path) -> pd.DataFrame:
    """The sweep's `results/trials.csv`; JobError when `sweep_dir` is not a finished sweep."""
    path = Path(sweep_dir) / "results" / "trials.csv"
    if not path.exists() or not (Path(sweep_dir) / SWEEP_FILE).exists():
        raise JobError(f"{sweep_dir} is not a finished sweep directory (no {SWEEP_FILE} and "
                       f"results/trials.csv)")
    return pd.read_csv(path)


def trial_config(table: pd.DataFrame, trial_id: str, sweep_dir: Path) -> dict[str, Any]:
    rows = table[table.trial_id == trial_id]
    if rows.empty:
        raise JobError(f"no trial '{trial_id}' in {sweep_dir}; trials: "
                       f"{', '.join(map(str, table.trial_id))}")
    return {k: v for k, v in json.loads(rows.iloc[0].to_json()).items() if v is not None}


def trial_checkpoint(sweep_dir: Path, trial_id: str) -> Path:
    """The newest `state.pt` of a trial: Tune's trial directory, or its Ray Train run."""
    states = sorted([*Path(sweep_dir).glob(f"*_{trial_id}_*/checkpoint_*/state.pt"),
                     *Path(sweep_dir).glob(f"train/train-{trial_id}/checkpoint_*/state.pt")],
                    key=lambda p: p.parent.name)
    if not states:
        raise JobError(f"trial '{trial_id}' has no checkpoint under {sweep_dir}")
    return states[-1]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A trial's `state.pt`, read with `weights_only=True` (tensors and plain values only:
    a checkpoint cannot run code). A corrupt or truncated file raises JobError naming it."""
    from orchestrator.session import CheckpointError, load_checkpoint_dir

    try:
        return load_checkpoint_dir(path.parent)[0]
    except CheckpointError as error:
        raise JobError(str(error)) from None


def trial_params(sweep_dir: Path, trial_id: str) -> dict[str, Any]:
    """The config the trial ran with, as Tune recorded it (`params.json`: nested values
    such as `score_params` intact), or {} if there is none."""
    for params in Path(sweep_dir).glob(f"*_{trial_id}_*/params.json"):
        return json.loads(params.read_text())
    return {}


def load_trial_model(sweep_dir: Path, trial_id: str, data_dir: str | None = None,
                     ) -> tuple[nn.Module, Dataset, dict]:
    """(model in eval mode, dataset, config) of a finished trial, from its newest checkpoint.
    Torchvision datasets are read from `data_dir`, else from where the trial read them."""
    from orchestrator.loops import build_generative_model, load_trial_data
    from search_spaces import get_search_space
    from workloads.models import build_classifier

    config = trial_config(read_trials(sweep_dir), trial_id, sweep_dir)
    config["data_dir"] = data_dir or trial_params(sweep_dir, trial_id).get("data_dir")
    state = load_checkpoint(trial_checkpoint(sweep_dir, trial_id))
    try:
        data = load_trial_data(config)
    except DatasetMissingError as error:
        raise JobError(str(error)) from None
    loop = get_search_space(json.loads((sweep_dir / SWEEP_FILE).read_text())["name"]).loop
    if loop == "generative":
        model = build_generative_model(config, data.input_shape, data.levels, data.num_classes)
    else:
        model = build_classifier(config["arch"], data.input_shape, data.num_classes)
    model.load_state_dict(state["model"])
    return model.eval(), data, config


def sweep_group(sweep_dir: Path) -> str:
    """The sweep's W&B group (its run name), so that job runs sit beside its trials."""
    return Path(sweep_dir).resolve().name


def job_directory(sweep_dir: Path, kind: str, name: str, resume: bool) -> Path:
    """`SWEEP_DIR/<kind>/<name>-<time>/`, or with `resume` the latest existing one."""
    base = Path(sweep_dir) / kind
    if resume:
        earlier = sorted(p for p in base.glob(f"{name}-*") if p.is_dir()
                         and p.name[len(name) + 1:].replace("-", "").isdigit())
        if not earlier:
            raise JobError(f"--resume: no earlier run '{name}-*' in {base}")
        return earlier[-1]
    return base / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def parse_eps(text: str) -> float:
    """`0.031` or a fraction such as `8/255`."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction like 8/255, "
                                         f"got '{text}'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """--data-dir, the actor pool's resources, --resume and --wandb."""
    parser.add_argument("--data-dir", default=os.environ.get("ROBUSTNESS_DATA_DIR"),
                        help="where torchvision datasets live (default: $ROBUSTNESS_DATA_DIR, "
                             "else where the trial read them)")
    group = parser.add_argument_group("actor pool")
    group.add_argument("--num-actors", type=int, default=2,
                       help="Ray actors in the pool (default 2)")
    group.add_argument("--cpus-per-actor", type=float, default=1,
                       help="CPUs per actor (default 1; its torch threads)")
    group.add_argument("--gpus-per-actor", type=float, default=0,
                       help="GPUs per actor; fractions (0.25, 0.5) share a GPU (default 0)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the latest run of this job: reuse its finished units "
                             "and chain checkpoints")
    parser.add_argument("--wandb", choices=("offline", "online", "disabled"),
                        help="W&B mode (default: online with an API key, else offline)")


def check_pool_arguments(args: argparse.Namespace) -> None:
    from orchestrator.pools import actor_options

    if args.num_actors < 1:
        raise JobError("--num-actors must be >= 1")
    try:
        actor_options(args.cpus_per_actor, args.gpus_per_actor)
    except PoolError as error:
        raise JobError(str(error)) from None


def open_job_run(requested_mode: str | None, kind: str, name: str, sweep_dir: Path,
                 config: dict[str, Any], directory: Path):
    """The job's W&B run (`tracking.JobRun`), in the sweep's group, written to `directory`.
    Mode as for sweeps: online with an API key, else offline; `disabled` logs nothing."""
    from orchestrator import tracking

    try:
        mode = tracking.resolve_mode(requested_mode)
    except ValueError as error:
        raise JobError(str(error)) from None
    tracking.prepare_environment(mode)
    run_id = f"{kind}-{fingerprint(str(Path(directory).resolve()))[:10]}"  # same on resume
    return tracking.JobRun(mode, kind, name, sweep_group(sweep_dir), config, directory,
                           run_id=run_id)


def start_ray() -> None:
    """Join the cluster at RAY_ADDRESS, or start Ray on this machine."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), logging_level="WARNING")


def run_command(parser: argparse.ArgumentParser, main, argv: list[str] | None) -> int:
    """Parse, run `main(args)`, and turn bad input into one line and exit code 2. A pool
    whose actors kept dying ends with exit code 1 and a hint: its finished work is kept."""
    from ray.exceptions import RayActorError

    args = parser.parse_args(argv)
    try:
        return main(args)
    except (JobError, PoolError, AttackError, DatasetMissingError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except RayActorError as error:
        first = (str(error).strip().splitlines() or [""])[0]
        print(f"{parser.prog}: error: an actor died more often than it is restarted "
              f"({first}); the finished units and chain checkpoints are kept, rerun with "
              f"--resume to continue", file=sys.stderr)
        return 1
