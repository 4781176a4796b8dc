"""Langevin restoration chains for a finished trial's density model on the Langevin pool
(`python -m orchestrator.langevin`; NOTES.md C).

One chain per start point: the adversarial inputs of an attack run (projection radius =
that attack's eps) or clean test inputs. Writes `SWEEP_DIR/langevin/<trial>-<from>-<time>/`:
`summary.json` (accuracy at the start, after the chains and after the projection; stopped
chains; chain-steps/s), `chains.csv` (per chain), `restored.pt`, `am.png` (AM along the
chains) and the chain checkpoints (`chains/`, reused by --resume).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from orchestrator.errors import UsageError
from orchestrator.jobs.trial import job_directory, open_job_run, record_provenance
from orchestrator.pools.base import start_ray
from orchestrator.pools.langevin import LangevinPool, LangevinResult
from orchestrator.reports.job_plots import plot_am_trace
from workloads.data import Dataset


def read_attack_run(source: Path, trial_id: str) -> dict[str, Any]:
    """The summary of the attack run `source` of trial `trial_id`."""
    if not (source / "summary.json").exists() or not (source / "x_adv.pt").exists():
        raise UsageError(f"--from {source}: not a finished attack run (no summary.json and "
                         f"x_adv.pt); use an attacks/<trial>-... directory or 'test'")
    summary = json.loads((source / "summary.json").read_text())
    if summary.get("trial") != trial_id:
        raise UsageError(f"--from {source}: attacks trial {summary.get('trial')}, "
                         f"not {trial_id}")
    return summary


def start_points(source: Path | None, data: Dataset, eps: float | None, only_fooled: bool,
                 n: int | None) -> tuple[torch.Tensor, torch.Tensor, float, str]:
    """(x, labels, projection eps, name of the source) of the chains: the clean test inputs
    (`source` None) or the attack run `source`'s adversarial inputs (with `only_fooled`,
    those it fooled), at most `n`."""
    if source is None:
        x, y = data.x_test, data.y_test
        eps, name = eps or 8 / 255, "test"
    else:
        summary = json.loads((source / "summary.json").read_text())
        x = torch.load(source / "x_adv.pt", map_location="cpu", weights_only=True)
        samples = pd.read_csv(source / "samples.csv")
        y = torch.tensor(samples["label"].to_numpy())
        if only_fooled:
            fooled = ~samples["robust"].astype(bool) & (samples["fooled_by"] != "clean")
            x, y = x[torch.tensor(fooled.to_numpy())], y[torch.tensor(fooled.to_numpy())]
        eps, name = eps or summary["eps"], summary["attack"]
    if n is not None:
        x, y = x[:n], y[:n]
    if len(x) == 0:
        raise UsageError("no start points (did the attack fool nothing?)")
    return x, y, eps, name


def restore_chains(sweep_dir: Path, trial_id: str, model: nn.Module, x: torch.Tensor,
                   y: torch.Tensor, config: dict[str, Any], start_name: str, origin: str,
                   pool_args: dict[str, Any], resume: bool = False,
                   wandb_mode: str | None = None) -> LangevinResult:
    """The job: one chain per start point `x` (labels `y`) with the Langevin `config`
    (`pools.langevin.langevin_config`), on a pool of `pool_args`; writes the files above
    and a W&B run in the sweep's group. `origin` is where the start points came from (an
    attack run's directory, or "test"), `start_name` its short name (the attack's, "test")
    in the job directory's name."""
    name = f"{trial_id}-{start_name}"
    out = job_directory(sweep_dir, "langevin", name, resume)
    record_provenance(out, sweep_dir)
    run = open_job_run(wandb_mode, "langevin", name, sweep_dir,
                       {**config, "trial": trial_id, "from": origin, "chains": len(x),
                        **pool_args}, out)
    start_ray()
    print(f"[langevin] {name}: {len(x)} chains x {config['steps']} steps, eta "
          f"{config['eta']:g}, K = {config['checkpoint_every']}, {pool_args['num_actors']} "
          f"actors -> {out}", flush=True)
    try:
        with LangevinPool(model, **pool_args) as pool:
            result = pool.run(x, config, out, resume=resume,
                              on_progress=lambda m: run.log(m, x_axis="chain_steps"))
    except BaseException:
        run.finish(failed=True)
        raise
    with torch.no_grad():
        predict = model.predict if hasattr(model, "predict") else None
        preds = {k: predict(v) for k, v in (("start", x), ("end", result.x_end),
                                            ("restored", result.restored))} if predict else {}
    chains = pd.DataFrame({"label": y.numpy(), "steps_run": result.steps_run.numpy(),
                           "stopped": result.stopped.numpy(),
                           "am_start": result.trace_am[0].numpy() if len(result.trace_steps)
                           else float("nan"), "am_end": result.am_end.numpy(),
                           **{f"pred_{k}": v.numpy() for k, v in preds.items()}})
    chains.to_csv(out / "chains.csv", index_label="chain")
    torch.save(result.restored, out / "restored.pt")
    accuracy = {f"accuracy_{k}": float((v == y).float().mean()) for k, v in preds.items()}
    summary = {"trial": trial_id, "from": origin, "chains": len(x), **config,
               **accuracy, "stopped": float(result.stopped.float().mean()),
               "mean_steps_run": float(result.steps_run.float().mean()),
               "seconds": result.seconds, "chain_steps_computed": result.chain_steps_computed,
               "chain_steps_per_s": result.chain_steps_computed / max(result.seconds, 1e-9),
               "units_resumed": result.units_resumed,
               "segments_by_node": result.segments_by_node}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for t, row in zip(result.trace_steps.tolist(), result.trace_am):
        finite = row[torch.isfinite(row)]
        if len(finite):
            run.log({"langevin_step": t, "am_along/median": float(finite.median()),
                     "am_along/p10": float(finite.quantile(0.1)),
                     "am_along/p90": float(finite.quantile(0.9))}, x_axis="langevin_step")
    figure = plot_am_trace(result.trace_steps, result.trace_am, out / "am.png",
                           f"{name}: AM along {len(x)} chains (eta {config['eta']:g})",
                           config["am_stop"])
    run.table("chains", chains)
    run.image("am_along_chains", figure)
    run.finish({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    print(json.dumps(accuracy))
    print(f"[langevin] {len(x)} chains in {result.seconds:.1f} s "
          f"({summary['chain_steps_per_s']:,.0f} chain-steps/s); results: {out}/summary.json, "
          f"chains.csv, restored.pt, am.png")
    return result
