"""A finished sweep's trial, as the jobs on it (attacks, Langevin chains, the defense) need
it: its config, checkpoint and model, the job's directory under the sweep, and the job's
W&B run in the sweep's group.

A job directory is `SWEEP_DIR/<kind>/<name>-<time>/`; `--resume` reopens the latest one of
the same name, whose finished units and chain checkpoints are then reused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from orchestrator.errors import NoResultsError, UsageError
from orchestrator.pools.units import fingerprint
from orchestrator.reports.collect import RESULTS_DIR, SWEEP_FILE, status_counts
from orchestrator.reports.provenance import datasets_read, write_provenance
from search_spaces import get_search_space
from workloads.data import Dataset, DatasetMissingError, DatasetUnreadableError, load_trial_data
from workloads.models import build_model


def read_trials(sweep_dir: Path) -> pd.DataFrame:
    """The sweep's `results/trials.csv`; UsageError when `sweep_dir` is not a finished sweep,
    NoResultsError (exit 3) when none of its trials completed: a job needs a trained model."""
    path = Path(sweep_dir) / RESULTS_DIR / "trials.csv"
    if not path.exists() or not (Path(sweep_dir) / SWEEP_FILE).exists():
        raise UsageError(f"{sweep_dir} is not a finished sweep directory (no {SWEEP_FILE} and "
                       f"results/trials.csv)")
    table = pd.read_csv(path)
    if "status" in table and not (table.status == "completed").any():
        raise NoResultsError(f"{sweep_dir}: no trial completed ({status_counts(table)}): "
                             f"no trained model to run a job on")
    return table



def trial_config(table: pd.DataFrame, trial_id: str, sweep_dir: Path) -> dict[str, Any]:
    rows = table[table.trial_id == trial_id]
    if rows.empty:
        raise UsageError(f"no trial '{trial_id}' in {sweep_dir}; trials: "
                       f"{', '.join(map(str, table.trial_id))}")
    if rows.iloc[0].get("status") == "diverged":
        completed = table.trial_id[table.status == "completed"]
        raise UsageError(f"trial '{trial_id}' diverged: no trained model; completed trials: "
                         f"{', '.join(map(str, completed))}")
    return {k: v for k, v in json.loads(rows.iloc[0].to_json()).items() if v is not None}


def trial_checkpoint(sweep_dir: Path, trial_id: str) -> Path:
    """The newest `state.pt` of a trial: Tune's trial directory, or its Ray Train run."""
    states = sorted([*Path(sweep_dir).glob(f"*_{trial_id}_*/checkpoint_*/state.pt"),
                     *Path(sweep_dir).glob(f"train/train-{trial_id}/checkpoint_*/state.pt")],
                    key=lambda p: p.parent.name)
    if not states:
        raise UsageError(f"trial '{trial_id}' has no checkpoint under {sweep_dir}")
    return states[-1]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A trial's `state.pt`, read with `weights_only=True` (tensors and plain values only:
    a checkpoint cannot run code). A corrupt or truncated file raises UsageError naming it."""
    from orchestrator.tune.session import CheckpointError, load_checkpoint_dir

    try:
        return load_checkpoint_dir(path.parent)[0]
    except CheckpointError as error:
        raise UsageError(str(error)) from None


def trial_params(sweep_dir: Path, trial_id: str) -> dict[str, Any]:
    """The config the trial ran with, as Tune recorded it (`params.json`: nested values
    such as `score_params` intact), or {} if there is none."""
    for params in Path(sweep_dir).glob(f"*_{trial_id}_*/params.json"):
        return json.loads(params.read_text())
    return {}


def load_trial_model(sweep_dir: Path, trial_id: str, data_dir: str | None = None,
                     data: Dataset | None = None) -> tuple[nn.Module, Dataset, dict]:
    """(model in eval mode, dataset, config) of a finished trial, from its newest checkpoint.
    Torchvision datasets are read from `data_dir`, else from where the trial read them;
    `data`, when given, is the trial's dataset already loaded (trials that differ only in
    their seed share it) and is not read again."""
    config = trial_config(read_trials(sweep_dir), trial_id, sweep_dir)
    config["data_dir"] = data_dir or trial_params(sweep_dir, trial_id).get("data_dir")
    state = load_checkpoint(trial_checkpoint(sweep_dir, trial_id))
    try:
        data = load_trial_data(config) if data is None else data
    except (DatasetMissingError, DatasetUnreadableError) as error:
        raise UsageError(str(error)) from None
    model = build_model(config, data)
    model.load_state_dict(state["model"])
    return model.eval(), data, config


def sweep_loop(sweep_dir: Path) -> str:
    """The train loop of the sweep's search space (a key of `workloads.studies.LOOPS`)."""
    record = json.loads((Path(sweep_dir) / SWEEP_FILE).read_text())
    return get_search_space(record["name"]).loop


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
            raise UsageError(f"--resume: no earlier run '{name}-*' in {base}")
        return earlier[-1]
    return base / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def record_provenance(out: Path, sweep_dir: Path, data_dir: str | None = None) -> None:
    """`out/provenance.json`: what produced the job's files (`reports.provenance`), with
    the sweep's datasets hashed where this job reads them."""
    trials = read_trials(sweep_dir)
    names = trials["dataset"].dropna().unique().tolist() if "dataset" in trials else []
    if data_dir is None and len(trials):
        data_dir = trial_params(sweep_dir, trials.trial_id.iloc[0]).get("data_dir")
    write_provenance(out, datasets_read(names), data_dir)


def open_job_run(requested_mode: str | None, kind: str, name: str, sweep_dir: Path,
                 config: dict[str, Any], directory: Path):
    """The job's W&B run (`tracking.JobRun`), in the sweep's group, written to `directory`.
    Mode as for sweeps: online with an API key, else offline; `disabled` logs nothing."""
    from orchestrator.tracking import runs

    try:
        mode = runs.resolve_mode(requested_mode)
    except ValueError as error:
        raise UsageError(str(error)) from None
    runs.prepare_environment(mode)
    run_id = f"{kind}-{fingerprint(str(Path(directory).resolve()))[:10]}"  # same on resume
    return runs.JobRun(mode, kind, name, sweep_group(sweep_dir), config, directory,
                       run_id=run_id)
