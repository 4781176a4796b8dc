"""The Langevin pool: long restoration chains spread over Ray actors (NOTES.md C).

The chains are cut into units of `chains_per_unit` chains, named by their index range and
seeded from it; an actor advances one unit's chains as one batch, `checkpoint_every` (K)
steps at a time, and hands the chain state (x, step, stop flags, RNG state) back to the
driver, which writes it to `<out>/chains/` before the unit's next K steps are scheduled. So:

- 1 actor or 8 give the same chains (a unit's result depends only on its chains and seed);
- an actor killed mid-segment is restarted by Ray and the segment is retried from the last
  checkpoint: the chains lose at most K steps of work and end exactly where they would have;
- a rerun with `resume=True` (after the driver itself died) reloads every unit's last
  checkpoint and continues from there, again ending exactly where an uninterrupted run ends.

Along the way each unit records the approximate mass of its chains every `record_every`
steps (`trace_am`), and progress (chains done, chain-steps/s, AM) goes to `on_progress`.

    with LangevinPool(diglm, num_actors=4, gpus_per_actor=0.5) as pool:
        result = pool.run(x_adv, {"steps": 10**6, "eta": 1e-3, "eps": 8 / 255}, out="runs/lg")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator.pools.base import ModelActors, PoolError, node_id, worker_device
from orchestrator.pools.progress import Progress, ProgressFn, eta_text
from orchestrator.pools.units import fingerprint, load_unit, open_job, save_unit
from workloads.adversarial import unit_seed
from workloads.adversarial.langevin import ChainState, restore, run_chains, start_chains

DEFAULTS: dict[str, Any] = {"steps": 1000, "eta": 1e-3, "am_stop": None, "eps": None,
                            "clip": True, "seed": 0, "chains_per_unit": 256,
                            "checkpoint_every": 1000, "record_every": 100, "probe_am": None}
# The config keys that decide the chains' end states (the job's identity on resume).
RESULT_KEYS = ("steps", "eta", "am_stop", "eps", "clip", "seed", "chains_per_unit",
               "record_every", "probe_am")


def langevin_config(config: dict[str, Any]) -> dict[str, Any]:
    """`config` over the defaults, checked. Raises PoolError naming a bad value."""
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise PoolError(f"unknown Langevin settings: {', '.join(sorted(unknown))}")
    c = {**DEFAULTS, **config}
    for key in ("steps", "chains_per_unit", "checkpoint_every", "record_every"):
        if not (isinstance(c[key], int) and c[key] >= 1):
            raise PoolError(f"Langevin {key} must be a positive integer, got {c[key]!r}")
    if not c["eta"] > 0:
        raise PoolError(f"Langevin eta must be positive, got {c['eta']}")
    if c["eps"] is not None and not c["eps"] > 0:
        raise PoolError(f"the projection radius eps must be positive, got {c['eps']}")
    if c["probe_am"] is not None and c["eps"] is None:
        raise PoolError("probing am_stop values needs the projection radius eps")
    return c


class LangevinWorker:
    """A Ray actor: holds a density model (on its GPU if it has one) and advances units."""

    def __init__(self, model: nn.Module, threads: int = 1, gpus: float = 0):
        torch.set_num_threads(threads)
        self.device = worker_device(gpus)
        self.model = model.to(self.device).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)  # chains need grad_x only

    def pid(self) -> int:
        import os

        return os.getpid()

    def advance(self, start: int, state: dict[str, Any], steps: int,
                config: dict[str, Any]) -> dict[str, Any]:
        """`steps` more steps of one unit; the AM of its chains at every record point."""
        chains = ChainState.from_dict(state).to(self.device)
        trace_steps, trace_am = [], []
        every, target = config["record_every"], chains.step + steps
        classify = self.model.predict if chains.probe_am is not None else None
        while chains.step < target:
            # Pieces end where AM(x_t), t a multiple of `every`, has just been computed.
            k = 0 if chains.step == 0 else (chains.step - 1) // every + 1
            piece = min(target, k * every + 1) - chains.step
            chains = run_chains(self.model.log_prob, chains, piece, config["eta"],
                                config["am_stop"], (0.0, 1.0) if config["clip"] else None,
                                classify, config["eps"])
            if (chains.step - 1) % every == 0:
                trace_steps.append(chains.step - 1)
                trace_am.append(chains.am.cpu())
        return {"start": start, "state": chains.to("cpu").to_dict(), "node_id": node_id(),
                "trace_steps": torch.tensor(trace_steps, dtype=torch.long),
                "trace_am": (torch.stack(trace_am) if trace_am
                             else torch.empty(0, chains.num_chains))}


def unit_done(state: ChainState, config: dict[str, Any]) -> bool:
    return state.step >= config["steps"] or (
        config["am_stop"] is not None and bool(state.stopped.all()))


@dataclass
class LangevinResult:
    x_end: torch.Tensor          # the chains' end points
    restored: torch.Tensor | None  # projected onto the eps-ball around the start, in [0, 1]
    steps_run: torch.Tensor      # (N,) steps each chain moved (its stop step if it stopped)
    stopped: torch.Tensor        # (N,) bool: stopped early at am_stop
    am_end: torch.Tensor         # (N,) AM where each chain ended
    probe_pred: torch.Tensor | None  # (N, m) see workloads.adversarial.langevin.probe_accuracy
    trace_steps: torch.Tensor    # (R,) steps t of the AM records
    trace_am: torch.Tensor       # (R, N) AM(x_t) of every chain
    seconds: float = 0.0
    chain_steps_computed: int = 0
    units_resumed: int = 0
    segments_by_node: dict[str, int] = field(default_factory=dict)  # per Ray node



class LangevinPool(ModelActors):
    """`num_actors` Ray actors holding one density model (with `log_prob`; a DIGLM also
    classifies for probes); `run` advances chains with them. Close with `close()`."""

    worker_class = LangevinWorker

    def __init__(self, model: nn.Module, num_actors: int = 2, cpus_per_actor: float = 1,
                 gpus_per_actor: float = 0):
        if not hasattr(model, "log_prob"):
            raise PoolError("Langevin chains need a density model with log_prob "
                            "(a flow or a DIGLM)")
        super().__init__(model, num_actors, cpus_per_actor, gpus_per_actor)

    def run(self, x: torch.Tensor, config: dict[str, Any], out: str | Path,
            resume: bool = False, label: str = "langevin",
            on_progress: ProgressFn | None = None) -> LangevinResult:
        """Run one chain from each row of `x`; checkpoints go to `out/chains/`."""
        from ray.util import ActorPool

        config = langevin_config(config)
        if config["probe_am"] is not None and not hasattr(self.model, "predict"):
            raise PoolError("probing am_stop values needs a classifier with predict (DIGLM)")
        job_config = {k: config[k] for k in RESULT_KEYS}
        out = open_job(out, "langevin", job_config,
                       fingerprint(job_config, self.model, x), resume)
        size, total_steps = config["chains_per_unit"], config["steps"]
        probe_am = torch.tensor(config["probe_am"]) if config["probe_am"] is not None else None
        units: dict[int, dict[str, Any]] = {}
        resumed = 0
        for start in range(0, len(x), size):
            path = out / "chains" / f"{start:07d}_{min(start + size, len(x)):07d}.pt"
            if resume and path.exists():
                units[start] = load_unit(path)
                resumed += 1
            else:
                units[start] = {"start": start, "trace_steps": torch.empty(0, dtype=torch.long),
                                "trace_am": torch.empty(0, min(size, len(x) - start)),
                                "state": start_chains(x[start:start + size],
                                                      unit_seed(config["seed"], start),
                                                      probe_am).to_dict()}
            units[start]["path"] = str(path)

        if resumed:
            done = sum(self._chain_steps(u) for u in units.values())
            print(f"[{label}] resumed {resumed} of {len(units)} units from their checkpoints "
                  f"({done:,} chain-steps already done)", flush=True)
        # A fresh ActorPool per run: segments still in flight from a run that failed must
        # not be taken for this run's (the actors themselves are reused).
        pool = ActorPool(self.actors)
        progress = Progress(label)
        computed, by_node = 0, {}

        def submit(start: int) -> None:
            """The unit's next segment: up to K steps from its last checkpoint."""
            state = units[start]["state"]
            steps = min(config["checkpoint_every"], total_steps - state["step"])
            pool.submit(lambda actor, v: actor.advance.remote(*v), (start, state, steps, config))

        def report(force: bool = False) -> None:
            metrics = self._progress(units, config, computed, progress.elapsed())
            progress.update(
                f"{metrics['chains_done']}/{len(x)} chains done, "
                f"{metrics['chain_steps']:,}/{len(x) * total_steps:,} chain-steps, "
                f"{metrics['chain_steps_per_s']:,.0f} chain-steps/s, median AM "
                f"{metrics['am_median']:.3g}{eta_text(metrics['seconds_left'])}",
                fraction=metrics["chain_steps"] / (len(x) * total_steps), force=force)
            if on_progress is not None:
                on_progress(metrics)

        for start, unit in units.items():
            if not unit_done(ChainState.from_dict(unit["state"]), config):
                submit(start)
        while pool.has_next():
            segment = pool.get_next_unordered()
            node = segment.pop("node_id", "?")
            by_node[node] = by_node.get(node, 0) + 1
            unit = units[segment["start"]]
            before = self._chain_steps(unit)
            unit["state"] = segment["state"]
            unit["trace_steps"] = torch.cat([unit["trace_steps"], segment["trace_steps"]])
            unit["trace_am"] = torch.cat([unit["trace_am"], segment["trace_am"]])
            save_unit({k: v for k, v in unit.items() if k != "path"}, Path(unit["path"]))
            computed += self._chain_steps(unit) - before
            if not unit_done(ChainState.from_dict(unit["state"]), config):
                submit(segment["start"])
            report(force=not pool.has_next())
        progress.close()
        result = self._collect(units, x, config, probe_am is not None)
        result.seconds, result.chain_steps_computed = progress.elapsed(), computed
        result.units_resumed, result.segments_by_node = resumed, by_node
        return result

    @staticmethod
    def _chain_steps(unit: dict[str, Any]) -> int:
        """Chain-steps a unit has computed (its batch steps x its chains)."""
        return int(unit["state"]["computed"]) * len(unit["state"]["x"])

    @staticmethod
    def _progress(units: dict[int, dict[str, Any]], config: dict[str, Any], computed: int,
                  elapsed: float) -> dict[str, Any]:
        """Chains done, the job's progress in chain-steps (a finished unit counts in full:
        it needs no more work), the rate of computed chain-steps, and AM quantiles."""
        states = [ChainState.from_dict(u["state"]) for u in units.values()]
        n = sum(s.num_chains for s in states)
        finished = [unit_done(s, config) for s in states]
        done = sum(s.num_chains if f else int(s.stopped.sum()) for s, f in zip(states, finished))
        progress = sum(s.num_chains * (config["steps"] if f else s.step)
                       for s, f in zip(states, finished))
        rate = computed / elapsed if elapsed > 0 else 0.0
        am = torch.cat([s.am for s in states]).float()
        am = am[torch.isfinite(am)]
        quantiles = (am.quantile(torch.tensor([0.1, 0.5, 0.9])).tolist() if len(am)
                     else [float("nan")] * 3)
        return {"chains_done": done, "chains": n, "chain_steps": progress,
                "chain_steps_per_s": rate,
                "seconds_left": (n * config["steps"] - progress) / rate if rate else float("nan"),
                "am_p10": quantiles[0], "am_median": quantiles[1], "am_p90": quantiles[2],
                "step_min": min(s.step for s in states)}

    @staticmethod
    def _collect(units: dict[int, dict[str, Any]], x: torch.Tensor, config: dict[str, Any],
                 probing: bool) -> LangevinResult:
        states = [ChainState.from_dict(units[s]["state"]) for s in sorted(units)]
        whole = ChainState(
            x=torch.cat([s.x for s in states]), start=torch.cat([s.start for s in states]),
            step=config["steps"], stopped=torch.cat([s.stopped for s in states]),
            stop_step=torch.cat([s.stop_step for s in states]),
            am=torch.cat([s.am for s in states]), rng_state=torch.empty(0))
        # Units that stopped early record fewer AM points: pad with their last value.
        traces = [units[s] for s in sorted(units)]
        longest = max(traces, key=lambda u: len(u["trace_steps"]))["trace_steps"]
        trace_am = torch.cat([_pad_rows(u["trace_am"], len(longest)) for u in traces], dim=1)
        steps_run = torch.where(whole.stopped, whole.stop_step,
                                torch.full_like(whole.stop_step, config["steps"]))
        return LangevinResult(
            x_end=whole.x, restored=restore(whole, config["eps"]) if config["eps"] else None,
            steps_run=steps_run, stopped=whole.stopped, am_end=whole.am,
            probe_pred=torch.cat([s.probe_pred for s in states]) if probing else None,
            trace_steps=longest, trace_am=trace_am)


def _pad_rows(rows: torch.Tensor, length: int) -> torch.Tensor:
    if len(rows) >= length or len(rows) == 0:
        return rows[:length] if len(rows) else torch.full((length, rows.shape[1]), float("nan"))
    return torch.cat([rows, rows[-1:].expand(length - len(rows), -1)])


def run_langevin_pool(model: nn.Module, x: torch.Tensor, config: dict[str, Any],
                      out: str | Path, num_actors: int = 2, cpus_per_actor: float = 1,
                      gpus_per_actor: float = 0, resume: bool = False,
                      on_progress: ProgressFn | None = None) -> LangevinResult:
    """One Langevin job on a pool started for it and closed after it."""
    with LangevinPool(model, num_actors, cpus_per_actor, gpus_per_actor) as pool:
        return pool.run(x, config, out, resume=resume, on_progress=on_progress)
