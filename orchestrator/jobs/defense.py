"""The detection + Langevin restoration defense (thesis ch. 4, NOTES.md C) on the DIGLMs of
a finished sweep of DIGLMs, on actor pools; `python -m orchestrator.defend` runs it.

For each DIGLM trial: split its test set into validation (20%) and test (cut to N); attack
both with APGD-CE (pyautoattack, eps 8/255) and the test set with the adaptive APGD on
CE - lambda * AM; flag inputs whose approximate mass exceeds the threshold of best accuracy
on the validation pairs; tune the chains' early-stop AM on the validation pairs; restore
with Langevin chains; classify. The numbers of Tables 4.1-4.4 come from
`workloads.adversarial.defense.defense_row`.

A *pair* is a test sample whose clean input is classified correctly and whose adversarial
input is not; detection and the full defense are measured on the balanced set of pairs
(clean + adversarial), restoration on the adversarial inputs of the pairs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from orchestrator.jobs.profiles import DefenseProfile
from orchestrator.jobs.trial import load_trial_model, open_job_run
from orchestrator.pools.attack import AttackPool
from orchestrator.pools.langevin import LangevinPool
from orchestrator.pools.units import save_json
from orchestrator.reports.job_plots import plot_defense_trial
from workloads.adversarial import defense as D
from workloads.adversarial.langevin import probe_accuracy
from workloads.scores import batched_logits, build_score


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
    plot_defense_trial(row, details, chains, out / "defense.png")
    return {**row, "status": "completed", "details": details}


def defend_trials(sweep_dir: Path, trials: pd.DataFrame, profile: DefenseProfile,
                  profile_name: str, out: Path, pool_args: dict[str, Any],
                  resume: bool = False, data_dir: str | None = None,
                  wandb_mode: str | None = None) -> pd.DataFrame:
    """The job: `defend_trial` for each of `trials` (rows of the sweep's trials.csv), one W&B
    run each; a trial with a `result.json` from an earlier run of `out` is not run again.
    Writes `out/<trial>/result.json` and `defense.png`; returns one row per trial (Tables
    4.1-4.4, `reports.tables.defense_tables`)."""
    rows = []
    print(f"[defend] {len(trials)} DIGLM trials of {Path(sweep_dir).name}, profile "
          f"{profile_name} ({profile.description}) -> {out}", flush=True)
    for number, (_, trial) in enumerate(trials.iterrows(), 1):
        trial_id = trial.trial_id
        label = (f"{trial_id} (alpha={trial.alpha:g}, {trial.get('dequantization', '')}, "
                 f"seed {int(trial.get('seed', 0))})")
        trial_out = out / trial_id
        result_path = trial_out / "result.json"
        keys = {"trial_id": trial_id, "alpha": float(trial.alpha),
                "dequantization": trial.get("dequantization"),
                "seed": int(trial.get("seed", 0))}
        if result_path.exists():
            print(f"[defend] {number}/{len(trials)} {label}: done earlier", flush=True)
            rows.append({**keys, **json.loads(result_path.read_text())})
            continue

        def say(text: str, label=label, number=number) -> None:
            print(f"[defend] {number}/{len(trials)} {label}: {text}", flush=True)

        model, data, _ = load_trial_model(sweep_dir, trial_id, data_dir)
        run = open_job_run(wandb_mode, "defense", f"{trial_id}-defense-{profile_name}",
                           sweep_dir, {**keys, **asdict(profile), "profile": profile_name},
                           trial_out)
        started = time.perf_counter()
        try:
            result = defend_trial(model, data, profile, trial_out, resume, pool_args,
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
    return pd.DataFrame([{k: v for k, v in r.items() if k != "details"} for r in rows])
