"""Document 002 (NOTES.md F): a VAE with a Gaussian or 256-way categorical decoder
(`workloads.models.vae.ConvVAE`), its train loop (`VAELoop`), and its final stage: test
NLL and bits/dim by IWAE, OOD detection by IWAE_K in each encoder BN mode, and Table 3.1's
linear separability of the latent codes."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from workloads.data import load_trial_data
from workloads.evaluation.examples import EXAMPLES, Examples
from workloads.evaluation.latent_separability import linear_separability, random_projection
from workloads.evaluation.ood_evaluation import Progress, evaluate_ood, no_progress
from workloads.models import build_vae
from workloads.models.modes import evaluating
from workloads.models.vae import beta_vae_loss, latent_means
from workloads.scores import build_score
from workloads.studies.config_lists import plus_list
from workloads.training.epochs import load_optimizer_state, seeded_generator, train_epoch
from workloads.training.loop import EpochLoop, Worker, unwrap


class VAELoop(EpochLoop):
    """Document 002's VAE (section 3.3) trained on -ELBO with KL weight `beta` (1: VAE, > 1:
    beta-VAE) by Adam at `lr` for `epochs`, or until the validation loss has not improved
    for `patience` epochs (0: never; the document stops early on validation data) -- the
    best validation epoch's weights are evaluated.

    Reports every epoch `train_loss`, `train_recon`, `train_kl`, `lr`, `val_loss` (-ELBO of
    the validation inputs); the last report adds `best_epoch`, `epochs_run` (`epochs` is
    the config's maximum, a key of the trial), `test_nll` / `test_bpd` (IWAE with the
    largest K) and the OOD stage of `vae_final_stage`.
    """

    best = ("val_loss", "min")
    keep_best_weights = True
    nan_when_diverged = ("val_loss",)
    validation_metrics = ("val_loss",)
    epochs_metric = "epochs_run"

    def __init__(self, config: dict[str, Any], worker: Worker):
        self.config, self.worker = config, worker
        self.data = data = load_trial_data(config)
        self.model = worker.prepare_model(build_vae(config, data.input_shape, data.levels))
        self.vae = unwrap(self.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config["lr"])
        self.epochs = config["epochs"]
        self.patience = config.get("patience", 0) or None

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        config, worker = self.config, self.worker
        objective = vae_objective(self.vae, seeded_generator(config["seed"], epoch, worker.rank),
                                  config["beta"])
        stats = train_epoch(self.model, self.optimizer, objective, self.data.x_train,
                            self.data.y_train, config["batch_size"], epoch,
                            seed=config["seed"], rank=worker.rank,
                            world_size=worker.world_size, device=worker.device)
        return {"steps": stats.steps, "train_loss": stats.loss,
                **{f"train_{k}": v for k, v in stats.parts.items()}, "lr": config["lr"]}

    def validate(self, epoch: int, state: dict[str, Any]) -> dict[str, Any]:
        return {"val_loss": _vae_validation_loss(self.vae, self.data.x_val,
                                                 self.config["beta"], self.config["seed"])}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.vae.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vae.load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])  # the config's lr (PBT)

    def final_stage(self, model, state, progress):
        return vae_final_stage(model, self.data, self.config, progress=progress)



LOOP = VAELoop

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
    samples = sorted(plus_list(config["iwae_samples"], int))
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
    examples = Examples(data)
    ood = evaluate_ood(model, data, scores, progress=progress,
                       id_values={largest: test_log_px.double().numpy()}, examples=examples)
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
    return metrics, {"ood": ood.rows, "samples": ood.samples, "latent_svm": rows,
                     EXAMPLES: examples.frame()}
