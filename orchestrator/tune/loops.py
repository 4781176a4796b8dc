"""Train loops: a config dict in, per-epoch metrics and checkpoints out through a `Session`.

Each loop serves both training paths (Tune in-process and Ray Train DDP); see
`orchestrator.tune.session`.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from orchestrator.tune.anomaly_loop import train_class_anomaly
from orchestrator.tune.session import Session
from workloads.background import train_background
from workloads.data import load_trial_data
from workloads.data.outliers import load_outliers
from workloads.energy_finetuning import finetune_with_outliers, mean_energy
from workloads.latent_separability import linear_separability, random_projection
from workloads.losses import classifier_loss
from workloads.lr_scaling import scaled_lr
from workloads.metrics import FAILURE_METRICS, classifier_calibration
from workloads.mistake_detection import evaluate_mistakes
from workloads.models import (
    DIGLM,
    FeatureCache,
    Flow,
    build_classifier,
    build_generative_model,
    build_vae,
)
from workloads.models.diglm import diglm_objective
from workloads.models.factory import classifier_options
from workloads.models.flows import flow_objective
from workloads.models.modes import evaluating
from workloads.models.vae import beta_vae_loss, latent_means
from workloads.ood_evaluation import (
    evaluate_ood,
    no_progress,
    ood_auroc_snapshot,
    resolve_scores,
)
from workloads.purification import purification_table
from workloads.scores import OODScore, batched_logits, build_score, fit_score
from workloads.training import (
    classifier_optimizer,
    classifier_test_metrics,
    evaluate_split,
    final_evaluation,
    train_epoch,
    train_one_epoch,
    translate_and_flip,
)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # DDP keeps the model in .module


class CheckpointClock:
    """When a running trial saves a checkpoint: every `checkpoint_every` epochs, or (with
    `checkpoint_every` 0, the default) once `checkpoint_seconds` (default 30) of the trial
    have passed since the last one; the end of a trial always saves. A failure loses at
    most that much work; tiny epochs no longer pay for a checkpoint each."""

    def __init__(self, config: dict[str, Any]):
        self.every = int(config.get("checkpoint_every", 0) or 0)
        self.seconds = float(config.get("checkpoint_seconds", 30.0))
        self.last = time.monotonic()

    def due(self, epoch: int) -> bool:
        if self.every > 0:
            return (epoch + 1) % self.every == 0
        if time.monotonic() - self.last < self.seconds:
            return False
        self.last = time.monotonic()
        return True


def train_classifier(config: dict[str, Any], session: Session,
                     final_stage: FinalStage | None = None) -> None:
    """FFN or GFFN classifier training under budget A (early stopping) or B (fixed epochs).

    Reports every epoch: `epoch`, `train_loss`, `train_acc_running`, `val_acc`, `val_nll`,
    `steps`, `lr`, `status`, `train_seconds` (optimizer steps only) and `loop_seconds`
    (wall time of this run of the loop, data loading included). The last report adds the
    final test metrics (see `workloads.training.final_evaluation`), `train_acc` on the full
    training set and `best_epoch`. A non-finite loss ends the trial with `status="diverged"`.

    The optimizer and schedule are `workloads.training.classifier_optimizer`'s (Adam by
    default); `augment="translate_flip"` augments training batches; models with a
    `standardize` layer get the training inputs' channel statistics. `final_stage` (default
    `classifier_final_stage`) evaluates the trained model.
    """
    loop_started = time.perf_counter()
    clock = CheckpointClock(config)
    torch.manual_seed(config["seed"])
    data = load_trial_data(config)
    model = build_classifier(config["arch"], data.input_shape, data.num_classes,
                             **classifier_options(config))
    if hasattr(model, "standardize"):
        model.standardize.fit(data.x_train)
    model = session.prepare_model(model)
    augment = AUGMENTATIONS[config.get("augment", "none")]
    kind = config["log_partition"]
    loss = classifier_loss(config["model"])

    def loss_fn(logits, targets):
        return loss(logits, targets, kind)

    lr = scaled_lr(config["lr"], config["batch_size"], config["reference_batch_size"],
                   config["lr_scaling"])
    optimizer, scheduler = classifier_optimizer(model, config, lr)
    budget = config["budget"]
    if budget not in ("A", "B"):
        raise ValueError(f"budget must be 'A' or 'B', got {budget!r}")
    max_epochs = config["max_epochs_a"] if budget == "A" else config["epochs_b"]

    state, final_artifacts = session.restore()
    finished = state is not None and "final_metrics" in state and (
        budget == "A" or state["epoch"] + 1 >= max_epochs)
    if finished:
        # Restarted after its final checkpoint was written: report the result again.
        session.report(state["final_metrics"], state=state, final=final_artifacts)
        return
    if state is None:
        state = {"epoch": -1, "steps": 0, "best_val_acc": -1.0, "best_epoch": -1,
                 "best_model": None, "train_seconds": 0.0}
    else:
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])

    for epoch in range(state["epoch"] + 1, max_epochs):
        started = time.perf_counter()
        stats = train_one_epoch(model, optimizer, loss_fn, data.x_train, data.y_train,
                                config["batch_size"], epoch, seed=config["seed"],
                                rank=session.rank, world_size=session.world_size,
                                device=session.device, augment=augment)
        if scheduler is not None:
            scheduler.step()
        state["train_seconds"] += time.perf_counter() - started
        state["steps"] += stats.steps
        state["epoch"] = epoch
        metrics = {"epoch": epoch + 1, "train_loss": stats.loss,
                   "train_acc_running": stats.accuracy, "steps": state["steps"], "lr": lr,
                   "train_seconds": state["train_seconds"],
                   "loop_seconds": time.perf_counter() - loop_started}
        if not math.isfinite(stats.loss):
            session.report({**metrics, "val_acc": math.nan, "val_nll": math.nan,
                            "status": "diverged", "diverged_epoch": epoch + 1})
            return
        val = evaluate_split(_unwrap(model), data.x_val, data.y_val)
        metrics.update(val_acc=val["acc"], val_nll=val["nll"])
        if val["acc"] > state["best_val_acc"]:
            state.update(best_val_acc=val["acc"], best_epoch=epoch)
            if budget == "A":
                state["best_model"] = copy.deepcopy(_unwrap(model).state_dict())
        patience_over = budget == "A" and epoch - state["best_epoch"] >= config["patience"]
        state["model"] = _unwrap(model).state_dict()
        state["optimizer"] = optimizer.state_dict()
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
        if not (patience_over or epoch + 1 == max_epochs):
            session.report({**metrics, "status": "running"},
                           state=state if clock.due(epoch) else None)
            continue
        metrics.update(best_epoch=state["best_epoch"] + 1, epochs=epoch + 1,
                       status="completed")
        if session.rank != 0:  # rank 0 evaluates; the others wait at the collective report
            session.report(metrics)
            return
        # Budget A evaluates the weights of the best validation epoch; B the last weights.
        evaluated = _unwrap(model)
        if budget == "A":
            evaluated = copy.deepcopy(evaluated)
            evaluated.load_state_dict(state["best_model"])
        session.progress("final stage")
        final, artifacts = (final_stage or classifier_final_stage)(
            evaluated.eval(), data, config, progress=session.progress)
        train = evaluate_split(evaluated, data.x_train, data.y_train)
        metrics.update(final, train_acc=train["acc"],
                       loop_seconds=time.perf_counter() - loop_started)
        state["final_metrics"] = metrics
        session.report(metrics, state=state, final=artifacts)
        return


# final_stage(model, data, config, progress=...) -> (final metrics, final artifacts for
# final.json); `progress(text)` is told each step, shown beside the trial on the console.
FinalStage = Callable[..., tuple[dict[str, Any], dict[str, Any]]]
Progress = Callable[[str], None]
AUGMENTATIONS = {"none": None, "translate_flip": translate_and_flip}


def classifier_final_stage(model: nn.Module, data, config: dict[str, Any],
                           progress: Progress = no_progress):
    """Test accuracy, calibration and the OOD scores of `ood_scores` (MSP and ln Z by
    default); the reliability bins as the artifact."""
    model = FeatureCache(model)  # the scores share one forward pass per input chunk
    scores = resolve_scores(model, config.get("ood_scores", "msp+lnz"),
                            {"lnz": {"kind": config["log_partition"]}})
    final, reliability = final_evaluation(model, data, num_bins=config["num_bins"],
                                          scores=scores, progress=progress)
    return final, {"reliability": reliability}


def _numbers(text: Any) -> list[float]:
    """"0.1+0.01" -> [0.1, 0.01] (lists in a config are joined by "+", as score names)."""
    return [float(v) for v in str(text).split("+") if v.strip()]


def gmm_name(components: int, config: dict[str, Any]) -> str:
    """The score name of the GMM with `components` in a trial: `gmm` for the largest K of
    `gmm_components` (the document's OOD and purification GMM), `gmm_<K>` for the others."""
    largest = max(int(k) for k in _numbers(config["gmm_components"]))
    return "gmm" if components == largest else f"gmm_{components}"


def feature_gmm_scores(model: nn.Module, data, config: dict[str, Any],
                       requested: str | None = None,
                       progress: Progress = no_progress) -> dict[str, OODScore]:
    """The scores of `requested` (default the trial's `ood_scores`), fitted on their splits;
    "gmm" stands for one GMM per K of `gmm_components`, named by `gmm_name`. `progress` is
    told each score as its fit starts."""
    scores = {}
    for name, params in resolve_scores(model, requested or config["ood_scores"]).items():
        progress(f"fitting {name}")
        if name != "gmm":
            scores[name] = fit_score(name, params, model, data)
            continue
        for k in sorted(int(k) for k in _numbers(config["gmm_components"])):
            scores[gmm_name(k, config)] = fit_score(
                "gmm", {"components": k, "seed": config["seed"]}, model, data)
    return scores


def feature_gmm_final_stage(model: nn.Module, data, config: dict[str, Any],
                            progress: Progress = no_progress):
    """Document 003 on a trained classifier (NOTES.md D): diagonal GMMs on the penultimate
    training features, one per K of `gmm_components` ("100+1000": scores `gmm_100` and
    `gmm`, the largest K, which also purifies), beside MSP, temperature-scaled MSP, max
    logit and Mahalanobis (`ood_scores`), each fitted once and compared on mistake
    detection (`workloads.mistake_detection`, Mann-Whitney test) and OOD detection; ECE
    before and after temperature scaling; feature purification (eq. 9) over the
    `purify_eps` x `purify_nu` grid on the validation and test splits (Table 4)."""
    model = FeatureCache(model)  # the scores share one forward pass per input chunk
    scores = feature_gmm_scores(model, data, config, progress=progress)
    metrics, reliability = classifier_test_metrics(model, data, config["num_bins"])
    if "msp_calibrated" in scores:
        temperature = scores["msp_calibrated"].temperature
        logits = batched_logits(model, data.x_test) / temperature
        metrics.update(temperature=temperature, test_ece_calibrated=classifier_calibration(
            logits, data.y_test, config["num_bins"]).ece)
    ood = evaluate_ood(model, data, scores, progress=progress)
    metrics.update(ood.flat_metrics())
    progress("mistake detection")
    mistakes = evaluate_mistakes(model, data, scores)
    for row in mistakes:
        metrics.update({f"mistake_auroc_{row['score']}": row["auroc"],
                        f"mistake_aupr_error_{row['score']}": row["aupr_error"],
                        f"mistake_mw_p_{row['score']}": row["mw_p"]})
    artifacts = {"reliability": reliability, "ood": ood.rows, "samples": ood.samples,
                 "mistakes": mistakes}
    if "gmm" in scores and config.get("purify_steps", 0) > 0:
        progress("feature purification")
        purification = purification_table(
            model, scores["gmm"].log_density,
            {"validation": (data.x_val, data.y_val), "test": (data.x_test, data.y_test)},
            _numbers(config["purify_eps"]), _numbers(config["purify_nu"]),
            config["purify_steps"])
        gains = [r["accuracy_after"] - r["accuracy_before"] for r in purification
                 if r["split"] == "test"]
        metrics["purify_best_test_gain"] = max(gains)
        artifacts["purification"] = purification
    return metrics, artifacts


MC_DROPOUT_KINDS = {"variation_ratio": "vr", "predictive_entropy": "entropy",
                    "mutual_information": "mi"}


def failure_scores(model: nn.Module, data, config: dict[str, Any],
                   requested: str, progress: Progress = no_progress) -> dict[str, OODScore]:
    """The scores of `requested` (names joined by "+"), fitted, with the study's parameters
    (`mc_passes`; ConfidNet's `confidnet_epochs`, `confidnet_lr`, `confidnet_dropout`,
    `confidnet_weighting`, `confidnet_finetune_epochs`, `confidnet_finetune_lr`;
    `odin_temperature`, `odin_eps`);
    "mc_dropout" stands for its three uncertainties, `mc_dropout_vr` (variation ratio),
    `mc_dropout_entropy` and `mc_dropout_mi`. `progress` is told each score as its fit
    starts."""
    params = {"mc_dropout": {"passes": config["mc_passes"], "seed": config["seed"]},
              "confidnet": {"epochs": config["confidnet_epochs"], "lr": config["confidnet_lr"],
                            "dropout": config.get("confidnet_dropout", True),
                            "weighting": config.get("confidnet_weighting", 1.0),
                            "finetune_epochs": config.get("confidnet_finetune_epochs", 0),
                            "finetune_lr": config.get("confidnet_finetune_lr"),
                            "seed": config["seed"]},
              "odin": {"temperature": config["odin_temperature"],
                       "epsilon": config["odin_eps"]}}
    scores = {}
    for name, score_params in resolve_scores(model, requested, params).items():
        progress(f"fitting {name}")
        if name != "mc_dropout":
            scores[name] = fit_score(name, score_params, model, data)
            continue
        for kind, short in MC_DROPOUT_KINDS.items():
            scores[f"mc_dropout_{short}"] = fit_score(name, {**score_params, "kind": kind},
                                                      model, data)
    return scores


def failure_prediction_final_stage(model: nn.Module, data, config: dict[str, Any],
                                   progress: Progress = no_progress):
    """Document 001 on a trained classifier with dropout (NOTES.md G): failure prediction
    (errors the positive class: AUPR-error, AUPR-success, AUROC, FPR95, and the
    precision-recall curves) for the scores of `failure_scores` (MCP, temperature-scaled
    MCP, MC dropout, ConfidNet, last-layer Laplace), and OOD detection for those of
    `ood_scores` (MCP, MC dropout, ODIN). Each score is fitted once."""
    failure_names = config["failure_scores"]
    all_names = "+".join(dict.fromkeys([*failure_names.split("+"),
                                        *config["ood_scores"].split("+")]))
    model = FeatureCache(model)  # the scores share one forward pass per input chunk
    scores = failure_scores(model, data, config, all_names, progress)

    def chosen(names: str) -> dict[str, OODScore]:
        wanted = set(names.split("+"))
        return {k: v for k, v in scores.items()
                if k in wanted or (k.startswith("mc_dropout_") and "mc_dropout" in wanted)}

    metrics, reliability = classifier_test_metrics(model, data, config["num_bins"])
    curves: list[dict] = []
    progress("failure prediction")
    mistakes = evaluate_mistakes(model, data, chosen(failure_names), curves)
    for row in mistakes:
        for key in FAILURE_METRICS:
            metrics[f"mistake_{key}_{row['score']}"] = row[key]
    ood = evaluate_ood(model, data, chosen(config["ood_scores"]), progress=progress)
    metrics.update(ood.flat_metrics())
    return metrics, {"reliability": reliability, "mistakes": mistakes, "pr_curves": curves,
                     "ood": ood.rows, "samples": ood.samples}


def ood_baselines_final_stage(model: nn.Module, data, config: dict[str, Any],
                              progress: Progress = no_progress):
    """Thesis Table 3.1's baselines on a trained classifier (sections 3.3, 3.6.6; NOTES.md B,
    E): test accuracy and calibration, the parameter count `num_params` (the thesis matches
    it to the flow's), and OOD detection by the scores of `ood_scores` (G-ODIN on a G-ODIN
    model, Mahalanobis, energy, GradNorm, MSP) against every OOD set. With `energy_epochs`
    > 0, a copy of the model is then fine-tuned with outliers (`_energy_finetuned`, Liu et
    al. 2020) and scored by `finetuned_scores`, named `<score>_ft` (`energy_ft`: the
    thesis' Energy column)."""
    metrics, reliability = classifier_test_metrics(model, data, config["num_bins"])
    metrics["num_params"] = sum(p.numel() for p in model.parameters())
    cached = FeatureCache(model)  # the scores share one forward pass per input chunk
    ood = evaluate_ood(cached, data, resolve_scores(cached, config["ood_scores"]),
                       progress=progress)
    if config["energy_epochs"] > 0:
        progress("energy fine-tuning")
        tuned, tuned_metrics = _energy_finetuned(model, data, config)
        metrics.update(tuned_metrics)
        tuned = FeatureCache(tuned)
        tuned_ood = evaluate_ood(tuned, data, resolve_scores(tuned, config["finetuned_scores"]),
                                 progress=lambda text: progress(f"fine-tuned model, {text}"))
        ood.rows += [{**row, "score": f"{row['score']}_ft"} for row in tuned_ood.rows]
    metrics.update(ood.flat_metrics())
    return metrics, {"reliability": reliability, "ood": ood.rows, "samples": ood.samples}


def _energy_finetuned(model: nn.Module, data, config: dict[str, Any]):
    """A copy of `model` fine-tuned with the energy-bounded loss on the training split and
    the outlier set `outlier_set` (`workloads.energy_finetuning`, `workloads.data.outliers`)
    for `energy_epochs`; with its test accuracy `test_acc_ft` and the mean energies of the
    ID training inputs and the outliers before and after (`energy_in_before`, ...), which
    show whether the margins `energy_m_in` / `energy_m_out` bind."""
    outliers = load_outliers(config["outlier_set"], data, config.get("data_dir"),
                             seed=config["data_seed"])
    tuned = copy.deepcopy(model)
    metrics = {"energy_in_before": mean_energy(tuned, data.x_train),
               "energy_out_before": mean_energy(tuned, outliers)}
    history = finetune_with_outliers(
        tuned, data.x_train, data.y_train, outliers, epochs=config["energy_epochs"],
        lr=config["energy_lr"], batch_size=config["energy_batch_size"],
        outlier_batch_size=config["outlier_batch_size"], m_in=config["energy_m_in"],
        m_out=config["energy_m_out"], weight=config["energy_weight"],
        momentum=config["energy_momentum"], weight_decay=config["energy_weight_decay"],
        seed=config["seed"])
    tuned.eval()
    metrics.update(energy_in_after=mean_energy(tuned, data.x_train),
                   energy_out_after=mean_energy(tuned, outliers),
                   energy_ft_loss=history[-1]["loss"],
                   test_acc_ft=evaluate_split(tuned, data.x_test, data.y_test)["acc"])
    return tuned, metrics


def _flow_of(model: nn.Module) -> Flow:
    model = _unwrap(model)
    return model.flow if isinstance(model, DIGLM) else model


def _generator(*seeds: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash(seeds) % 2**62)


def _density_metrics(model: nn.Module, x: torch.Tensor, seed: int,
                     prefix: str) -> dict[str, float]:
    """Mean bits/dim of the dequantized inputs (fixed noise), mean log p and AM of the clean
    inputs."""
    flow = _flow_of(model)
    log_px = build_score("log_px")
    noisy = flow.dequantize(x, _generator(seed, -1))
    return {f"{prefix}_bpd": flow.bits_per_dim(log_px(model, noisy)).mean().item(),
            f"{prefix}_log_px": log_px(model, x).mean().item(),
            f"{prefix}_am": (-build_score("neg_am")(model, x)).mean().item()}


def generative_objective(flow: Flow, noise: torch.Generator, alpha: float,
                         beta: float | None):
    """The batch objective of `train_epoch`: dequantize with `noise`, then the flow loss
    (beta None) or the DIGLM loss."""

    def objective(model, xb, yb):
        xb = flow.dequantize(xb, noise)
        if beta is None:
            return flow_objective(model, xb, alpha)
        return diglm_objective(model, xb, yb, alpha, beta)

    return objective


DIAGNOSTIC_SCORES = ("log_px", "neg_am")


def _diagnostic(model: nn.Module, data, config: dict[str, Any], epoch: int,
                history: list[dict[str, Any]]) -> dict[str, float]:
    """The training-time diagnostic (thesis Fig. 3.3 / 3.17): AUROC of log p(x) and -AM
    against each OOD set on `diagnostic_samples` inputs, appended to `history` (kept in the
    checkpoint, drawn at the end) and returned as `diag_auroc_<score>_<set>` metrics."""
    scores = {name: build_score(name) for name in DIAGNOSTIC_SCORES}
    rows = ood_auroc_snapshot(model, data, scores, config.get("diagnostic_samples", 256))
    history += [{"epoch": epoch, **row} for row in rows]
    return {f"diag_auroc_{r['score']}_{r['ood_set']}": r["auroc"] for r in rows}


def diagnostic_endpoints(history: list[dict[str, Any]]) -> dict[str, float]:
    """`diag_auroc_<score>_first` / `_last`: the diagnostic's AUROC (mean over OOD sets) at
    its first and last snapshot, the quantities of the thesis's Fig. 3.17 claim that the AM
    ordering degrades during training."""
    if not history:
        return {}
    frame: dict[tuple[str, int], list[float]] = {}
    for row in history:
        frame.setdefault((row["score"], row["epoch"]), []).append(row["auroc"])
    first, last = min(r["epoch"] for r in history), max(r["epoch"] for r in history)
    return {f"diag_auroc_{score}_{end}": float(sum(v) / len(v))
            for (score, epoch), v in frame.items()
            for end, at in (("first", first), ("last", last)) if epoch == at}


def train_generative(config: dict[str, Any], session: Session) -> None:
    """RealNVP flow (`model="flow"`) or DIGLM (`model="diglm"`) with the AM regularizer.

    Flow loss: -log p(x) + alpha * AM(x) (NOTES.md B, eq. 3.35). DIGLM loss: -log p(y|x) +
    beta * (-log p(x) + alpha * AM(x)) (NOTES.md C, eq. 4.13). Inputs get dequantization
    noise by the `dequantization` convention ("centred" or "start"), recorded in the config.

    Reports every epoch: `epoch`, `train_loss`, `train_nll`, `train_am` (alpha > 0),
    `train_acc`/`train_ce` (DIGLM), `val_bpd`, `val_log_px`, `val_am`, `val_acc` (DIGLM),
    `steps`, `lr`, `status`, `train_seconds`, `loop_seconds`. The last report adds the test
    metrics and the OOD stage's `ood_<score>_<set>_<metric>`; the final checkpoint keeps the
    model's weights and `ood` rows (long format) and `samples` (log p(x), AM) for the report.
    With `diagnostic_every` = k > 0, every k-th epoch also reports `diag_auroc_<score>_<set>`
    (log p(x) and -AM on `diagnostic_samples` inputs; `_diagnostic`), kept as `diagnostic`
    rows for the AUROC-versus-epoch plot. With `background_mu` > 0 a background model is
    trained after the trial's model (`_background_model`) and the OOD stage adds the
    likelihood ratio (`likelihood_ratio`) to the requested scores.
    A non-finite loss or validation bits/dim ends the trial with `status="diverged"`.
    """
    loop_started = time.perf_counter()
    clock = CheckpointClock(config)
    torch.manual_seed(config["seed"])
    data = load_trial_data(config)
    model = build_generative_model(config, data.input_shape, data.levels, data.num_classes)
    diglm = isinstance(model, DIGLM)
    model = session.prepare_model(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"],
                                 weight_decay=config.get("weight_decay", 0.0))
    alpha, epochs = config["alpha"], config["epochs"]

    state, final_artifacts = session.restore()
    if state is not None and "final_metrics" in state:
        session.report(state["final_metrics"], state=state, final=final_artifacts)
        return
    if state is None:
        state = {"epoch": -1, "steps": 0, "train_seconds": 0.0}
    else:
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    state.setdefault("diagnostic", [])
    diagnostic_every = config.get("diagnostic_every", 0)

    for epoch in range(state["epoch"] + 1, epochs):
        objective = generative_objective(
            _flow_of(model), _generator(config["seed"], epoch, session.rank), alpha,
            config["beta"] if diglm else None)
        started = time.perf_counter()
        stats = train_epoch(model, optimizer, objective, data.x_train, data.y_train,
                            config["batch_size"], epoch, seed=config["seed"],
                            rank=session.rank, world_size=session.world_size,
                            device=session.device, max_grad_norm=config.get("max_grad_norm"))
        state["train_seconds"] += time.perf_counter() - started
        state["steps"] += stats.steps
        state["epoch"] = epoch
        metrics = {"epoch": epoch + 1, "train_loss": stats.loss,
                   **{f"train_{k}": v for k, v in stats.parts.items() if math.isfinite(v)},
                   "steps": state["steps"], "lr": config["lr"],
                   "train_seconds": state["train_seconds"]}
        if diglm:
            metrics["train_acc"] = stats.accuracy
        evaluated = _unwrap(model)
        if math.isfinite(stats.loss):
            metrics.update(_density_metrics(evaluated, data.x_val, config["seed"], "val"))
            if diglm:
                metrics["val_acc"] = evaluate_split(evaluated, data.x_val, data.y_val)["acc"]
        if (diagnostic_every > 0 and (epoch + 1) % diagnostic_every == 0 and session.rank == 0
                and math.isfinite(metrics.get("val_bpd", math.nan))):
            metrics.update(_diagnostic(evaluated, data, config, epoch + 1, state["diagnostic"]))
        metrics["loop_seconds"] = time.perf_counter() - loop_started
        if not (math.isfinite(stats.loss) and math.isfinite(metrics["val_bpd"])):
            session.report({**metrics, "val_bpd": math.nan, "status": "diverged",
                            "diverged_epoch": epoch + 1})
            return
        state["model"] = evaluated.state_dict()
        state["optimizer"] = optimizer.state_dict()
        if epoch + 1 < epochs:
            session.report({**metrics, "status": "running"},
                           state=state if clock.due(epoch) else None)
            continue
        if session.rank != 0:  # rank 0 evaluates; the others wait at the collective report
            session.report({**metrics, "epochs": epoch + 1, "status": "completed"})
            return
        session.progress("final stage")
        final_metrics, final = generative_final_stage(evaluated, data, config,
                                                      progress=session.progress)
        metrics.update(final_metrics, epochs=epoch + 1, status="completed",
                       loop_seconds=time.perf_counter() - loop_started)
        metrics.update(diagnostic_endpoints(state["diagnostic"]))
        final["diagnostic"] = state["diagnostic"]
        state["final_metrics"] = metrics
        session.report(metrics, state=state, final=final)
        return


def generative_final_stage(model: nn.Module, data, config: dict[str, Any],
                           progress: Progress = no_progress):
    """A trained flow or DIGLM: test bits/dim, log p(x) and AM (`test_*`), a DIGLM's test
    accuracy and calibration, and the OOD stage of `ood_scores` (with `score_params`); with
    `background_mu` > 0, a background model trained first and the likelihood ratio added."""
    final: dict[str, Any] = {}
    metrics = _density_metrics(model, data.x_test, config["seed"], "test")
    if isinstance(model, DIGLM):
        test, final["reliability"] = classifier_test_metrics(model, data, config["num_bins"])
        metrics.update(test)
    requested, params = config["ood_scores"], dict(config.get("score_params") or {})
    if config.get("background_mu", 0) > 0:  # the likelihood ratio's background model
        progress("training the background model")
        device = next(model.parameters()).device
        background, history = _background_model(config, data, device)
        params["likelihood_ratio"] = {"background": background}
        names = list(resolve_scores(model, requested))
        requested = "+".join(dict.fromkeys([*names, "likelihood_ratio"]))
        metrics["background_train_nll"] = history[-1].loss
    ood = evaluate_ood(model, data, resolve_scores(model, requested, params),
                       progress=progress)
    metrics.update(ood.flat_metrics())
    final.update(ood=ood.rows, samples=ood.samples)
    return metrics, final


def _background_model(config: dict[str, Any], data, device):
    """Ren et al.'s background model for the likelihood ratio: a fresh flow of the trial's
    architecture (a DIGLM's flow for a DIGLM) trained for `background_epochs` (default: the
    trial's epochs) on training inputs with a fraction `background_mu` of pixels replaced
    at random, L2 `background_weight_decay` (`workloads.background`)."""
    torch.manual_seed(config["seed"] + 1)
    flow = build_generative_model({**config, "model": "flow"}, data.input_shape, data.levels,
                                  data.num_classes).to(device)
    history = train_background(flow, data.x_train, config["background_mu"],
                               config.get("background_epochs") or config["epochs"],
                               config["lr"], config["batch_size"],
                               config.get("background_weight_decay", 0.0), config["seed"],
                               device)
    return flow.eval(), history


def train_vae(config: dict[str, Any], session: Session) -> None:
    """Document 002's VAE (section 3.3; `workloads.models.vae.ConvVAE`): Gaussian or 256-way
    categorical decoder, trained on -ELBO with KL weight `beta` (1: VAE, > 1: beta-VAE) by
    Adam at `lr` for `epochs`, or until the validation loss has not improved for `patience`
    epochs (0: never; the document stops early on validation data) -- the best validation
    epoch's weights are evaluated.

    Reports every epoch: `epoch`, `train_loss`, `train_recon`, `train_kl`, `val_loss`
    (-ELBO of the validation inputs), `steps`, `status`, `train_seconds`, `loop_seconds`.
    The last report adds `best_epoch`, `epochs_run`, `test_nll` / `test_bpd` (IWAE with the
    largest K) and the OOD stage of `vae_final_stage`. A non-finite loss ends the trial with
    `status="diverged"`."""
    loop_started = time.perf_counter()
    clock = CheckpointClock(config)
    torch.manual_seed(config["seed"])
    data = load_trial_data(config)
    model = session.prepare_model(build_vae(config, data.input_shape, data.levels))
    vae = _unwrap(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    epochs, patience, beta = config["epochs"], config.get("patience", 0), config["beta"]

    state, final_artifacts = session.restore()
    if state is not None and "final_metrics" in state:
        session.report(state["final_metrics"], state=state, final=final_artifacts)
        return
    if state is None:
        state = {"epoch": -1, "steps": 0, "train_seconds": 0.0, "best_val_loss": math.inf,
                 "best_epoch": -1, "best_model": None}
    else:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])

    for epoch in range(state["epoch"] + 1, epochs):
        objective = vae_objective(vae, _generator(config["seed"], epoch, session.rank), beta)
        started = time.perf_counter()
        stats = train_epoch(model, optimizer, objective, data.x_train, data.y_train,
                            config["batch_size"], epoch, seed=config["seed"],
                            rank=session.rank, world_size=session.world_size,
                            device=session.device)
        state["train_seconds"] += time.perf_counter() - started
        state["steps"] += stats.steps
        state["epoch"] = epoch
        metrics = {"epoch": epoch + 1, "train_loss": stats.loss,
                   **{f"train_{k}": v for k, v in stats.parts.items()},
                   "steps": state["steps"], "lr": config["lr"],
                   "train_seconds": state["train_seconds"]}
        if not math.isfinite(stats.loss):
            session.report({**metrics, "val_loss": math.nan, "status": "diverged",
                            "diverged_epoch": epoch + 1})
            return
        metrics["val_loss"] = _vae_validation_loss(vae, data.x_val, beta, config["seed"])
        if metrics["val_loss"] < state["best_val_loss"]:
            state.update(best_val_loss=metrics["val_loss"], best_epoch=epoch,
                         best_model=copy.deepcopy(vae.state_dict()))
        stop = patience > 0 and epoch - state["best_epoch"] >= patience
        metrics["loop_seconds"] = time.perf_counter() - loop_started
        state["model"] = vae.state_dict()
        state["optimizer"] = optimizer.state_dict()
        if not (stop or epoch + 1 == epochs):
            session.report({**metrics, "status": "running"},
                           state=state if clock.due(epoch) else None)
            continue
        # `epochs_run`, not `epochs`: that is the config's maximum, a key of the trial
        metrics.update(best_epoch=state["best_epoch"] + 1, epochs_run=epoch + 1,
                       status="completed")
        if session.rank != 0:  # rank 0 evaluates; the others wait at the collective report
            session.report(metrics)
            return
        evaluated = copy.deepcopy(vae)
        evaluated.load_state_dict(state["best_model"])
        session.progress("final stage")
        final, artifacts = vae_final_stage(evaluated.eval(), data, config,
                                           progress=session.progress)
        metrics.update(final, loop_seconds=time.perf_counter() - loop_started)
        state["final_metrics"] = metrics
        session.report(metrics, state=state, final=artifacts)
        return


def vae_objective(vae: nn.Module, noise: torch.Generator, beta: float):
    """The batch objective of `train_epoch`: -ELBO_beta of the inputs, dequantized with
    `noise` for a Gaussian decoder (through the model passed in: DDP's wrapper in training)."""

    def objective(model, xb, yb):
        return beta_vae_loss(model, vae.dequantize(xb, noise), beta)

    return objective


@torch.no_grad()
def _vae_validation_loss(vae: nn.Module, x: torch.Tensor, beta: float, seed: int,
                         batch_size: int = 512) -> float:
    """Mean -ELBO_beta of `x` in eval mode, with fixed posterior noise and dequantization."""
    device = next(vae.parameters()).device
    with torch.random.fork_rng(devices=[]), evaluating(vae):
        torch.manual_seed(seed)
        losses = [beta_vae_loss(vae, vae.dequantize(x[i:i + batch_size]).to(device),
                                beta)[0].item() * len(x[i:i + batch_size])
                  for i in range(0, len(x), batch_size)]
    return sum(losses) / len(x)


def vae_score_name(samples: int, bn: str) -> str:
    """`iwae5`, `iwae50` (encoder BN in eval mode), `iwae5_bn`, `iwae50_bn` (adapted)."""
    return f"iwae{samples}" + ("_bn" if bn == "adapted" else "")


def vae_final_stage(model: nn.Module, data, config: dict[str, Any],
                    progress: Progress = no_progress):
    """Document 002 on a trained VAE: test NLL and bits/dim (IWAE with the largest K of
    `iwae_samples`); OOD detection with IWAE_K for each K of `iwae_samples` ("5+50") and each
    encoder BN mode of `bn_modes` ("eval+adapted"; adapted: statistics of each batch of
    `bn_batch` scored inputs, section 3.3.5); and document 002's Table 3.1 test
    (`latent_svm` rows): a linear SVM separating the test inputs' posterior means (positive)
    from each OOD set's (negative), in each BN mode, beside the two controls of section
    3.3.7 -- training vs test inputs of the ID set, and a random projection of the raw
    pixels to the latent size."""
    samples = sorted(int(k) for k in _numbers(config["iwae_samples"]))
    modes = str(config["bn_modes"]).split("+")
    scores = {vae_score_name(k, bn): build_score("iwae", samples=k, bn=bn,
                                                 bn_batch=config["bn_batch"],
                                                 seed=config["seed"])
              for bn in modes for k in samples}
    plain = "eval" if "eval" in modes else modes[0]
    progress("test bits/dim")
    largest = vae_score_name(samples[-1], plain)
    test_log_px = scores[largest](model, data.x_test)  # also the OOD stage's ID values
    # bits/dim of the discrete pixels: a Gaussian decoder's density times the grid cell
    # volume (levels - 1)^-D gives the pixels' probability; a categorical decoder's already is
    nll, dim = -test_log_px.mean().item(), math.prod(data.input_shape)
    cell = math.log(data.levels - 1) if config["decoder"] == "gaussian" else 0.0
    metrics = {"test_nll": nll, "test_bpd": (nll / dim + cell) / math.log(2)}
    ood = evaluate_ood(model, data, scores, progress=progress,
                       id_values={largest: test_log_px.double().numpy()})
    metrics.update(ood.flat_metrics())
    progress("latent SVMs (Table 3.1)")
    rows = []
    n = min(len(data.x_test), config.get("svm_samples", 1000))
    x_id = data.x_test[:n]
    negatives = {f"{config['dataset']} train": data.x_train[:n], **data.ood}
    for bn in modes:
        adapted, key = bn == "adapted", "svm_bn" if bn == "adapted" else "svm"
        codes_id = latent_means(model, x_id, adapted, config["bn_batch"])
        for negative, x_neg in negatives.items():
            codes_neg = latent_means(model, x_neg[:n], adapted, config["bn_batch"])
            result = linear_separability(codes_id, codes_neg, seed=config["seed"])
            rows.append({"representation": f"latent ({bn} BN)", "positive": config["dataset"],
                         "negative": negative, **result})
            if negative in data.ood:
                metrics[f"{key}_{negative}_pos_acc"] = result["pos_acc"]
                metrics[f"{key}_{negative}_neg_acc"] = result["neg_acc"]
                metrics[f"{key}_min_acc"] = min(metrics.get(f"{key}_min_acc", 1.0),
                                                result["pos_acc"], result["neg_acc"])
    pixels_id = random_projection(x_id, config["latent_dim"], config["seed"])
    for negative, x_neg in negatives.items():
        pixels_neg = random_projection(x_neg[:n], config["latent_dim"], config["seed"])
        rows.append({"representation": "pixels (random projection)",
                     "positive": config["dataset"], "negative": negative,
                     **linear_separability(pixels_id, pixels_neg, seed=config["seed"])})
    return metrics, {"ood": ood.rows, "samples": ood.samples, "latent_svm": rows}


LOOPS: dict[str, Callable[[dict[str, Any], Session], None]] = {
    "classifier": train_classifier,
    "feature_gmm": functools.partial(train_classifier, final_stage=feature_gmm_final_stage),
    "failure_prediction": functools.partial(train_classifier,
                                            final_stage=failure_prediction_final_stage),
    "class_anomaly": train_class_anomaly,
    "generative": train_generative,
    "ood_baselines": functools.partial(train_classifier, final_stage=ood_baselines_final_stage),
    "vae": train_vae,
}
