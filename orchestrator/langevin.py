"""Run Langevin restoration chains for a finished trial's density model on Ray actors.

    python -m orchestrator.langevin SWEEP_DIR --trial TRIAL_ID --from ATTACK_DIR|test
        [--steps 1000] [--eta 1e-3] [--am-stop A] [--eps 8/255] [--checkpoint-every K]

One chain per start point (NOTES.md C): the adversarial inputs of an attack run
(`--from SWEEP_DIR/attacks/<trial>-...`, projection radius = that attack's eps) or clean test
inputs (`--from test`). The chains' state is checkpointed every K steps; `--resume` continues
the latest run where its checkpoints stopped. Writes `SWEEP_DIR/langevin/<trial>-<from>-<time>/`:
`summary.json` (accuracy at the start, after the chains and after the projection; stopped
chains; chain-steps/s), `chains.csv` (per chain), `restored.pt` and `am.png` (AM along the
chains). Progress (chains done, chain-steps/s, AM) goes to the console and to W&B.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from orchestrator.jobs import (
    JobError,
    add_job_arguments,
    check_pool_arguments,
    job_directory,
    load_trial_model,
    open_job_run,
    parse_eps,
    run_command,
    start_ray,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.langevin", description=__doc__.split("\n\n")[0],
        epilog="examples:\n"
               "  python -m orchestrator.langevin SWEEP --trial ID "
               "--from SWEEP/attacks/ID-autoattack-<time> --only-fooled --steps 2000\n"
               "  python -m orchestrator.langevin SWEEP --trial ID --from test --n 100 "
               "--steps 100000 --checkpoint-every 5000 --gpus-per-actor 0.5\n"
               "  python -m orchestrator.langevin SWEEP --trial ID --from test --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a finished sweep of flows or DIGLMs")
    parser.add_argument("--trial", required=True, help="trial id (see results/trials.csv)")
    parser.add_argument("--from", dest="source", required=True,
                        help="an attack run directory (start at its adversarial inputs) or "
                             "'test' (clean test inputs)")
    parser.add_argument("--n", type=int, help="at most N start points (default: all)")
    parser.add_argument("--only-fooled", action="store_true",
                        help="with an attack run: only the inputs the attack fooled")
    chains = parser.add_argument_group("chains (NOTES.md C)")
    chains.add_argument("--steps", type=int, default=1000, help="steps per chain (default "
                        "1000; the thesis runs up to 1e6)")
    chains.add_argument("--eta", type=float, default=1e-3, help="step size (default 1e-3)")
    chains.add_argument("--am-stop", type=float,
                        help="stop a chain once its approximate mass drops to this value")
    chains.add_argument("--eps", type=parse_eps,
                        help="L-inf radius of the final projection around the start point "
                             "(default: the attack's eps, or 8/255)")
    chains.add_argument("--no-clip", action="store_true",
                        help="do not keep the chains in [0, 1] between steps")
    chains.add_argument("--seed", type=int, default=0)
    chains.add_argument("--chains-per-unit", type=int, default=256,
                        help="chains advanced as one batch by an actor (default 256)")
    chains.add_argument("--checkpoint-every", type=int, default=1000,
                        help="K: steps between chain checkpoints (default 1000)")
    chains.add_argument("--record-every", type=int, default=100,
                        help="steps between AM records along the chains (default 100)")
    add_job_arguments(parser)
    return parser


def attack_summary(args: argparse.Namespace) -> dict[str, Any] | None:
    """The summary of the attack run the chains start from (None for `--from test`)."""
    if args.source == "test":
        return None
    source = Path(args.source)
    if not (source / "summary.json").exists() or not (source / "x_adv.pt").exists():
        raise JobError(f"--from {source}: not a finished attack run (no summary.json and "
                       f"x_adv.pt); use an attacks/<trial>-... directory or 'test'")
    summary = json.loads((source / "summary.json").read_text())
    if summary.get("trial") != args.trial:
        raise JobError(f"--from {source}: attacks trial {summary.get('trial')}, "
                       f"not {args.trial}")
    return summary


def start_points(args: argparse.Namespace, data, summary: dict[str, Any] | None,
                 ) -> tuple[torch.Tensor, torch.Tensor, float, str]:
    """(x, labels, projection eps, name of the source) of the chains."""
    if summary is None:
        x, y = data.x_test, data.y_test
        eps, name = args.eps or 8 / 255, "test"
    else:
        source = Path(args.source)
        x = torch.load(source / "x_adv.pt", map_location="cpu", weights_only=True)
        samples = pd.read_csv(source / "samples.csv")
        y = torch.tensor(samples["label"].to_numpy())
        if args.only_fooled:
            fooled = ~samples["robust"].astype(bool) & (samples["fooled_by"] != "clean")
            x, y = x[torch.tensor(fooled.to_numpy())], y[torch.tensor(fooled.to_numpy())]
        eps, name = args.eps or summary["eps"], summary["attack"]
    if args.n is not None:
        x, y = x[:args.n], y[:args.n]
    if len(x) == 0:
        raise JobError("no start points (did the attack fool nothing?)")
    return x, y, eps, name


def chain_config(args: argparse.Namespace, eps: float) -> dict[str, Any]:
    return {"steps": args.steps, "eta": args.eta, "am_stop": args.am_stop, "eps": eps,
            "clip": not args.no_clip, "seed": args.seed,
            "chains_per_unit": args.chains_per_unit,
            "checkpoint_every": args.checkpoint_every, "record_every": args.record_every}


def draw_am_trace(ax, steps: torch.Tensor, am: torch.Tensor, lines: int = 0) -> None:
    """AM along the chains on `ax`: median and 10-90% band over chains, `lines` single
    chains, log scale."""
    if len(steps):
        t = steps.numpy()
        q = torch.nanquantile(am.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.double),
                              dim=1).numpy()
        ax.fill_between(t, q[0], q[2], alpha=0.25, label="10-90% of chains")
        ax.plot(t, q[1], lw=2, label="median")
        for j in range(min(lines, am.shape[1])):
            ax.plot(t, am[:, j].numpy(), lw=0.6, alpha=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("Langevin step t")
    ax.set_ylabel("AM(x_t) = ||grad log p||")


def plot_am_trace(steps: torch.Tensor, am: torch.Tensor, path: Path, title: str,
                  am_stop: float | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    draw_am_trace(ax, steps, am, lines=8)
    if am_stop is not None:
        ax.axhline(am_stop, color="k", ls="--", lw=1, label=f"am_stop {am_stop:.3g}")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(args: argparse.Namespace) -> int:
    from orchestrator.langevin_pool import LangevinPool, langevin_config

    check_pool_arguments(args)
    if args.n is not None and args.n < 1:
        raise JobError("--n must be >= 1")
    attack = attack_summary(args)
    model, data, _ = load_trial_model(args.sweep_dir, args.trial, args.data_dir)
    if not hasattr(model, "log_prob"):
        raise JobError(f"trial {args.trial} is a classifier: Langevin chains need a flow or "
                       f"a DIGLM (log p(x))")
    x, y, eps, source = start_points(args, data, attack)
    config = langevin_config(chain_config(args, eps))
    name = f"{args.trial}-{source}"
    out = job_directory(args.sweep_dir, "langevin", name, args.resume)
    run = open_job_run(args.wandb, "langevin", name, args.sweep_dir,
                       {**config, "trial": args.trial, "from": str(args.source),
                        "chains": len(x), "num_actors": args.num_actors}, out)
    start_ray()
    print(f"[langevin] {name}: {len(x)} chains x {args.steps} steps, eta {args.eta:g}, "
          f"K = {args.checkpoint_every}, {args.num_actors} actors -> {out}", flush=True)
    try:
        with LangevinPool(model, args.num_actors, args.cpus_per_actor,
                          args.gpus_per_actor) as pool:
            result = pool.run(x, config, out, resume=args.resume,
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
    summary = {"trial": args.trial, "from": str(args.source), "chains": len(x), **config,
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
                           f"{name}: AM along {len(x)} chains (eta {args.eta:g})",
                           args.am_stop)
    run.table("chains", chains)
    run.image("am_along_chains", figure)
    run.finish({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    print(json.dumps(accuracy))
    print(f"[langevin] {len(x)} chains in {result.seconds:.1f} s "
          f"({summary['chain_steps_per_s']:,.0f} chain-steps/s); results: {out}/summary.json, "
          f"chains.csv, restored.pt, am.png")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(build_parser(), main, None))
