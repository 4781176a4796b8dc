"""The detection + Langevin restoration defense (thesis ch. 4, NOTES.md C) on the DIGLMs of
an `alpha_diglm` sweep, on actor pools, with Tables 4.1 to 4.4 beside the thesis' numbers.

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
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from orchestrator.jobs import (
    JobError,
    add_job_arguments,
    check_pool_arguments,
    job_directory,
    load_trial_model,
    open_job_run,
    parse_eps,
    read_trials,
    run_command,
    start_ray,
)
from orchestrator.langevin import draw_am_trace
from orchestrator.pools import save_json
from workloads import defense as D
from workloads.langevin import probe_accuracy
from workloads.scores import batched_logits, build_score


@dataclass(frozen=True)
class DefenseProfile:
    description: str
    val_fraction: float = 0.2          # of the test set, for the thresholds
    n_test: int | None = 1000          # the rest of the test set is cut to this
    n_val: int | None = None           # cut the validation set too (smoke only)
    eps: float = 8 / 255               # APGD-CE radius = the projection radius
    attack_batch_size: int = 100
    # CE - lambda * AM; the thesis states no lambda, and AM (hundreds on digits) outweighs
    # CE (a few nats) at lambda 1, so a grid: Table 4.4 reports the worst lambda.
    adaptive_lams: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)
    adaptive_steps: int = 100          # APGD iterations of the adaptive attack
    steps: int = 2000                  # Langevin steps per chain (thesis: 1e6)
    eta: float = 1e-3
    checkpoint_every: int = 500        # K
    record_every: int = 50
    chains_per_unit: int = 256
    am_candidates: int = 24            # early-stop values probed on validation
    seed: int = 0


PROFILES = {
    "smoke": DefenseProfile("seconds: 24 validation / 40 test inputs, 20-step chains",
                            n_test=40, n_val=24, adaptive_steps=10, steps=20,
                            checkpoint_every=10, record_every=5, am_candidates=8),
    "local": DefenseProfile("digits: 72 validation / 288 test inputs, 2,000-step chains"),
    "paper": DefenseProfile("the thesis' protocol (MNIST): 20% validation, 1,000 test, "
                            "chains of up to 1e6 steps, on GPUs", steps=1_000_000,
                            checkpoint_every=10_000, record_every=1000,
                            chains_per_unit=500, attack_batch_size=500),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.defend", description=__doc__.split("\n\n")[0],
        epilog="profiles:\n" + "\n".join(f"  {k:<6} {v.description}"
                                         for k, v in PROFILES.items()) +
               "\n\nexamples:\n"
               "  python -m orchestrator.defend runs/alpha_diglm-local-<time> --alpha 0,2\n"
               "  python -m orchestrator.defend SWEEP --profile paper --gpus-per-actor 0.5 "
               "--num-actors 8\n"
               "  python -m orchestrator.defend SWEEP --resume   # after an interruption",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a finished alpha_diglm sweep")
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
            raise JobError("--steps must be >= 1")
        changes["steps"] = args.steps
        changes["checkpoint_every"] = min(profile.checkpoint_every, args.steps)
    if args.n_test is not None:
        if args.n_test < 1:
            raise JobError("--n-test must be >= 1")
        changes["n_test"] = args.n_test
    if args.lam is not None:
        try:
            lams = tuple(float(v) for v in args.lam.split(","))
        except ValueError:
            raise JobError(f"--lam {args.lam}: expected numbers separated by commas") from None
        if any(lam < 0 for lam in lams):
            raise JobError("--lam values must be >= 0")
        changes["adaptive_lams"] = lams
    return replace(profile, **changes)


def select_trials(table: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    """The DIGLM trials to defend: completed ones, filtered by --trial and --alpha."""
    if "model" not in table or not (table["model"] == "diglm").any():
        raise JobError(f"{args.sweep_dir} has no DIGLM trials: the defense needs an "
                       f"alpha_diglm sweep")
    completed = table["status"] == "completed" if "status" in table else True
    chosen = table[(table["model"] == "diglm") & completed]
    if args.trial:
        unknown = sorted(set(args.trial) - set(table.trial_id))
        if unknown:
            raise JobError(f"no trial {', '.join(unknown)} in {args.sweep_dir}")
        chosen = chosen[chosen.trial_id.isin(args.trial)]
    if args.alpha is not None:
        try:
            alphas = [float(a) for a in args.alpha.split(",")]
        except ValueError:
            raise JobError(f"--alpha {args.alpha}: expected numbers separated by "
                           f"commas") from None
        chosen = chosen[chosen["alpha"].isin(alphas)]
    if chosen.empty:
        raise JobError("no completed DIGLM trial matches --trial / --alpha")
    return chosen.sort_values(["alpha", "dequantization", "trial_id"])


# --- one trial ------------------------------------------------------------------------------

def _am(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """AM(x) in chunks (the `neg_am` score, negated); empty for no inputs."""
    return -build_score("neg_am")(model, x) if len(x) else torch.empty(0)


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return batched_logits(model, x).argmax(1) if len(x) else torch.empty(0, dtype=torch.long)


class StageLogger:
    """Progress of one stage to the W&B run, against the stage's own x axis."""

    def __init__(self, run, stage: str, axis: str):
        self.run, self.stage, self.axis = run, stage, axis

    def __call__(self, metrics: dict[str, Any]) -> None:
        self.run.log({f"{self.stage}/{k}": v for k, v in metrics.items()},
                     x_axis=f"{self.stage}/{self.axis}")


def defend_trial(model: nn.Module, data, profile: DefenseProfile, out: Path, resume: bool,
                 pool_args: dict[str, float], run, say) -> dict[str, Any]:
    """The whole pipeline for one DIGLM; returns its row of Tables 4.1-4.4 (and details)."""
    from orchestrator.attack_pool import AttackPool
    from orchestrator.langevin_pool import LangevinPool

    val_idx, test_idx = D.split_test_set(len(data.x_test), profile.val_fraction,
                                         profile.n_test, profile.seed)
    if profile.n_val is not None:
        val_idx = val_idx[:profile.n_val]
    xv, yv = data.x_test[val_idx], data.y_test[val_idx]
    xt, yt = data.x_test[test_idx], data.y_test[test_idx]
    apgd_ce = {"attack": "autoattack", "version": "custom", "attacks": ["apgd-ce"],
               "eps": profile.eps, "seed": profile.seed,
               "batch_size": profile.attack_batch_size}
    say(f"attacks: APGD-CE on {len(xv)} validation + {len(xt)} test inputs, adaptive "
        f"APGD (lambda {', '.join(f'{v:g}' for v in profile.adaptive_lams)}) on the test set")
    with AttackPool(model, **pool_args) as pool:
        adv_val = pool.run(xv, yv, apgd_ce, out / "attack_val", resume, "attack val",
                           StageLogger(run, "attack_val", "samples_attacked")).x_adv
        adv_test = pool.run(xt, yt, apgd_ce, out / "attack_test", resume, "attack test",
                            StageLogger(run, "attack_test", "samples_attacked")).x_adv
        adaptive = {}
        for lam in profile.adaptive_lams:
            config = {"attack": "apgd_adaptive", "lam": lam, "eps": profile.eps,
                      "steps": profile.adaptive_steps, "seed": profile.seed,
                      "batch_size": profile.attack_batch_size}
            stage = f"adaptive_lam{lam:g}"
            adaptive[lam] = pool.run(xt, yt, config, out / stage, resume, stage,
                                     StageLogger(run, stage, "samples_attacked")).x_adv

    # Pairs, AM, and the detection threshold (tuned on the validation pairs).
    clean_v, clean_t = _predict(model, xv), _predict(model, xt)
    pairs_v = D.successful_pairs(clean_v, _predict(model, adv_val), yv)
    am_clean_v, am_adv_v = _am(model, xv[pairs_v]), _am(model, adv_val[pairs_v])
    attacked = {"adv": adv_test, **{f"adaptive{lam:g}": x for lam, x in adaptive.items()}}
    pred = {k: _predict(model, x) for k, x in attacked.items()}
    pairs = {k: D.successful_pairs(clean_t, p, yt) for k, p in pred.items()}
    row: dict[str, Any] = {"n_val": len(xv), "n_test": len(xt),
                           "pairs_val": int(pairs_v.sum()), "pairs": int(pairs["adv"].sum())}
    if row["pairs_val"] == 0 or row["pairs"] == 0:
        say("the attack fooled no validation or no test input: nothing to detect or restore")
        return {**row, "clean_accuracy": D.accuracy(clean_t, yt),
                "attack_success": float(pairs["adv"].float().mean()),
                "status": "no adversarial pairs"}
    tau = D.best_threshold(am_clean_v, am_adv_v)
    am_clean_t = _am(model, xt)
    am = {k: _am(model, x[pairs[k]]) for k, x in attacked.items()}
    say(f"detection: tau = {tau:.4g}")

    # The early-stop reference, tuned on the validation pairs (probed chains).
    langevin = {"steps": profile.steps, "eta": profile.eta, "eps": profile.eps,
                "seed": profile.seed, "chains_per_unit": profile.chains_per_unit,
                "checkpoint_every": profile.checkpoint_every,
                "record_every": profile.record_every}
    candidates = D.am_stop_candidates(torch.cat([am_clean_v, am_adv_v]),
                                      profile.am_candidates)
    with LangevinPool(model, **pool_args) as pool:
        say(f"Langevin (validation): {len(am_adv_v)} chains x {profile.steps} steps, "
            f"probing {len(candidates)} early-stop values")
        probed = pool.run(adv_val[pairs_v], {**langevin, "probe_am": candidates.tolist()},
                          out / "langevin_val", resume, "langevin val",
                          StageLogger(run, "langevin_val", "chain_steps"))
        final = _predict(model, probed.restored)
        probe = probe_accuracy(probed.probe_pred, final, yv[pairs_v])
        am_stop, val_restored = D.choose_am_stop(candidates, probe,
                                                 D.accuracy(final, yv[pairs_v]))
        row.update(am_stop=am_stop, val_restored_accuracy=val_restored)
        say(f"early stop at AM <= {am_stop:.4g}" if am_stop is not None
            else "early stop: none (full-length chains did best on validation)")

        # Chains for the test set: every APGD-CE input of a pair (Table 4.2), every flagged
        # clean input (4.3, 4.4), every flagged adaptive input (4.4).
        flagged = {"clean": am_clean_t > tau,
                   **{k: am[k] > tau for k in attacked if k != "adv"}}
        starts = {"adv": adv_test[pairs["adv"]], "clean": xt[flagged["clean"]],
                  **{k: attacked[k][pairs[k]][flagged[k]] for k in attacked if k != "adv"}}
        x_chains = torch.cat(list(starts.values()))
        say(f"Langevin (test): {len(x_chains)} chains x {profile.steps} steps")
        chains = pool.run(x_chains, {**langevin, "am_stop": am_stop}, out / "langevin_test",
                          resume, "langevin test", StageLogger(run, "langevin_test",
                                                               "chain_steps"))
    restored = dict(zip(starts, _predict(model, chains.restored).split(
        [len(v) for v in starts.values()])))
    row["chains_stopped"] = float(chains.stopped.float().mean())
    row["chain_mean_steps"] = float(chains.steps_run.float().mean())

    # Tables 4.1-4.4 from the predictions, AM values and restored labels.
    def attacked_set(key: str) -> D.AttackedTestSet:
        if key == "adv":  # every pair was restored
            return D.AttackedTestSet(pred["adv"], am["adv"], restored["adv"])
        labels = torch.full((int(pairs[key].sum()),), -1, dtype=torch.long)
        labels[flagged[key]] = restored[key]  # only the flagged ones were
        return D.AttackedTestSet(pred[key], am[key], labels)

    row.update(D.defense_row(yt, clean_t, am_clean_t, tau, restored["clean"],
                             attacked_set("adv"),
                             {lam: attacked_set(f"adaptive{lam:g}") for lam in adaptive}))
    say(f"detection: test AUROC {row['det_auroc']:.3f}, accuracy {row['det_accuracy']:.3f}")
    details = {"candidates": candidates.tolist(), "candidate_accuracy": probe.tolist(),
               "am_clean_test": am_clean_t[pairs["adv"]].tolist(),
               "am_adv_test": am["adv"].tolist(),
               "trace_steps": chains.trace_steps.tolist()}
    plot_trial(row, details, chains, out / "defense.png")
    return {**row, "status": "completed", "details": details}


# --- tables and plots ------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _thesis(alpha: float, *keys: str) -> str:
    numbers = D.THESIS_TABLES.get(float(alpha))
    if numbers is None:
        return "–"
    values = []
    for key in keys:
        value = numbers
        for part in key.split("."):
            value = value[part]
        values.append(_fmt(float(value)))
    return " / ".join(values)


def defense_tables(table: pd.DataFrame, profile: DefenseProfile, dataset: str) -> str:
    """Tables 4.1-4.4 in markdown, each row beside the thesis' figures for its alpha."""
    eps = f"{profile.eps:.4g}" + (" (8/255)" if abs(profile.eps - 8 / 255) < 1e-9 else "")
    head = (f"# Defense: detection by approximate mass + Langevin restoration\n\n"
            f"{dataset}, APGD-CE eps {eps}, chains of {profile.steps:,} steps (eta "
            f"{profile.eta:g}), {profile.val_fraction:.0%} of the test set for validation. "
            f"Thesis columns: MNIST, eps 8/255, chains of up to 1e6 steps (Tables 4.1-4.4). "
            f"A pair is a test input classified correctly whose APGD-CE input is not.\n")
    keys = ["alpha", "dequantization", "trial_id"]
    rows = {"4.1": [], "4.2": [], "4.3": [], "4.4": []}
    for _, r in table.iterrows():
        key = [f"{r.alpha:g}", _fmt(r.get("dequantization")), _fmt(r.get("trial_id"))]
        if r.get("status") != "completed":
            for name in rows:
                rows[name].append([*key, r.get("status", "?")])
            continue
        rows["4.1"].append([*key, _fmt(r.pairs), _fmt(r.attack_success), _fmt(r.det_auroc),
                            _fmt(r.det_aupr_in), _fmt(r.det_aupr_out), _fmt(r.det_tnr95),
                            _fmt(r.det_accuracy), _fmt(r.det_detection_rate),
                            _thesis(r.alpha, "detection.auroc", "detection.aupr",
                                    "detection.tnr95", "detection.accuracy")])
        am_stop = "none" if pd.isna(r.am_stop) else _fmt(r.am_stop)
        rows["4.2"].append([*key, _fmt(r.pairs), "0", _fmt(r.restored_accuracy),
                            am_stop, _fmt(r.chain_mean_steps),
                            _thesis(r.alpha, "restored_accuracy")])
        rows["4.3"].append([*key, _fmt(2 * r.pairs), _fmt(r.defense_accuracy),
                            _fmt(r.clean_accuracy), _fmt(r.clean_accuracy_defended),
                            _thesis(r.alpha, "defense_accuracy")])
        lams = [c[len("adaptive"):-len("_defense_accuracy")] for c in table.columns
                if c.startswith("adaptive") and c.endswith("_defense_accuracy")
                and c != "adaptive_defense_accuracy"]
        per_lam = "; ".join(
            f"λ={lam}: {_fmt(r.get(f'adaptive{lam}_success'))} / "
            f"{_fmt(r.get(f'adaptive{lam}_detection_rate'))} / "
            f"{_fmt(r.get(f'adaptive{lam}_defense_accuracy'))}" for lam in lams)
        rows["4.4"].append([*key, per_lam, _fmt(r.adaptive_defense_accuracy),
                            _thesis(r.alpha, "adaptive_defense_accuracy")])
    headers = {
        "4.1": ("Table 4.1 - detection (flag AM > tau; tau of best accuracy on validation)",
                ["pairs", "attack success", "AUROC", "AUPR-in", "AUPR-out", "TNR95",
                 "accuracy", "detection rate", "thesis AUROC / AUPR / TNR95 / acc"]),
        "4.2": ("Table 4.2 - accuracy on the adversarial inputs after Langevin + projection",
                ["n", "before", "after", "early-stop AM", "mean steps", "thesis"]),
        "4.3": ("Table 4.3 - full defense on 50% clean + 50% adversarial inputs",
                ["n", "accuracy", "clean acc. (all test)", "clean acc. defended", "thesis"]),
        "4.4": ("Table 4.4 - full defense against the adaptive APGD (CE - lambda AM)",
                ["per lambda: success / detected / defended", "accuracy (worst lambda)",
                 "thesis"]),
    }
    parts = [head]
    for name, (title, columns) in headers.items():
        frame = pd.DataFrame(rows[name])
        if frame.shape[1] == len(keys) + len(columns):
            frame.columns = [*keys, *columns]
        parts += [f"## {title}\n", frame.to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(parts)


def plot_trial(row: dict[str, Any], details: dict[str, Any], chains, path: Path) -> Path:
    """AM of clean vs adversarial test inputs with tau; validation accuracy against the
    early-stop value; AM along the test chains."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    clean, adv = np.log10(details["am_clean_test"]), np.log10(details["am_adv_test"])
    bins = np.linspace(min(clean.min(), adv.min()), max(clean.max(), adv.max()), 30)
    axes[0].hist(clean, bins, alpha=0.6, label="clean")
    axes[0].hist(adv, bins, alpha=0.6, label="APGD-CE")
    axes[0].axvline(np.log10(row["det_tau"]), color="k", ls="--", label="tau")
    axes[0].set_xlabel("log10 AM")
    axes[0].set_title(f"detection: AUROC {row['det_auroc']:.3f}", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].semilogx(details["candidates"], details["candidate_accuracy"], "o-", ms=3)
    if row["am_stop"] is not None:
        axes[1].axvline(row["am_stop"], color="k", ls="--", label="chosen")
        axes[1].legend(fontsize=7)
    axes[1].set_xlabel("early-stop AM")
    axes[1].set_ylabel("validation accuracy after restoration")
    axes[1].set_title("tuning the early stop", fontsize=9)
    draw_am_trace(axes[2], chains.trace_steps, chains.trace_am)
    axes[2].set_title(f"restored accuracy {row['restored_accuracy']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_summary(table: pd.DataFrame, path: Path) -> Path | None:
    """The four tables' headline numbers against alpha, with the thesis' as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = table[table.status == "completed"]
    if done.empty:
        return None
    metrics = [("det_auroc", "detection AUROC (4.1)", "detection.auroc"),
               ("restored_accuracy", "restored accuracy (4.2)", "restored_accuracy"),
               ("defense_accuracy", "full defense (4.3)", "defense_accuracy"),
               ("adaptive_defense_accuracy", "vs adaptive (4.4)",
                "adaptive_defense_accuracy")]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, (key, title, thesis_key) in zip(axes, metrics):
        for convention, group in done.groupby("dequantization"):
            group = group.sort_values("alpha")
            ax.plot(group.alpha, group[key], "o-", label=f"{convention}")
        for alpha, numbers in D.THESIS_TABLES.items():
            value = numbers
            for part in thesis_key.split("."):
                value = value[part]
            ax.plot([alpha], [value], "k*", ms=10, label="thesis (MNIST)" if alpha == 0 else None)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("alpha")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- the command -----------------------------------------------------------------------------

def main(args: argparse.Namespace) -> int:
    check_pool_arguments(args)
    profile = resolve_profile(args)
    table = read_trials(args.sweep_dir)
    trials = select_trials(table, args)
    out = job_directory(args.sweep_dir, "defense", args.profile, args.resume)
    settings = json.loads(json.dumps(asdict(profile)))  # tuples as lists, as stored
    if args.resume and (out / "defense.json").exists():
        earlier = json.loads((out / "defense.json").read_text())
        changed = sorted(k for k in settings if earlier.get(k) != settings[k])
        if changed:
            raise JobError(f"cannot resume {out}: its settings differ in "
                           f"{', '.join(changed)}; run without --resume")
    out.mkdir(parents=True, exist_ok=True)
    save_json({"profile": args.profile, **settings, "trials": list(trials.trial_id),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, out / "defense.json")
    start_ray()
    pool_args = {"num_actors": args.num_actors, "cpus_per_actor": args.cpus_per_actor,
                 "gpus_per_actor": args.gpus_per_actor}
    rows, dataset = [], str(trials.iloc[0].get("dataset", "?"))
    print(f"[defend] {len(trials)} DIGLM trials of {args.sweep_dir.name}, profile "
          f"{args.profile} ({profile.description}) -> {out}", flush=True)
    for number, (_, trial) in enumerate(trials.iterrows(), 1):
        trial_id = trial.trial_id
        label = f"{trial_id} (alpha={trial.alpha:g}, {trial.get('dequantization', '')})"
        trial_out = out / trial_id
        result_path = trial_out / "result.json"
        keys = {"trial_id": trial_id, "alpha": float(trial.alpha),
                "dequantization": trial.get("dequantization")}
        if result_path.exists():
            print(f"[defend] {number}/{len(trials)} {label}: done earlier", flush=True)
            rows.append({**keys, **json.loads(result_path.read_text())})
            continue

        def say(text: str, label=label, number=number) -> None:
            print(f"[defend] {number}/{len(trials)} {label}: {text}", flush=True)

        model, data, _ = load_trial_model(args.sweep_dir, trial_id, args.data_dir)
        run = open_job_run(args.wandb, "defense", f"{trial_id}-defense-{args.profile}",
                           args.sweep_dir, {**keys, **asdict(profile),
                                            "profile": args.profile}, trial_out)
        started = time.perf_counter()
        try:
            result = defend_trial(model, data, profile, trial_out, args.resume, pool_args,
                                  run, say)
        except BaseException:
            run.finish(failed=True)
            raise
        result["seconds"] = time.perf_counter() - started
        save_json(result, result_path)
        summary = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
        run.table("defense", pd.DataFrame([summary]))
        run.image("defense", trial_out / "defense.png")
        run.finish(summary)
        say(f"done in {result['seconds']:.0f} s: " + (
            f"restored {result['restored_accuracy']:.3f}, full defense "
            f"{result['defense_accuracy']:.3f}" if result["status"] == "completed"
            else result["status"]))
        rows.append({**keys, **result})
    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "details"} for r in rows])
    frame.to_csv(out / "defense.csv", index=False)
    markdown = defense_tables(frame, profile, dataset)
    (out / "tables.md").write_text(markdown)
    plot_summary(frame, out / "defense.png")
    print("\n" + markdown)
    print(f"[defend] results: {out}/tables.md, defense.csv, defense.png, <trial>/")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(build_parser(), main, None))
