"""Document 002's VAE study: the IWAE bound against a closed-form likelihood, the decoders'
log-likelihoods and the KL by hand, the encoder's batch-norm adaptation, the linear-SVM
separability test, and the `vae_ood` sweep end to end (smoke through Ray Tune and W&B; the
paper profile on FashionMNIST / MNIST IDX files and CIFAR-10 / SVHN files)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import command, command_in_process

from orchestrator.tracking.offline import find_offline_runs, read_offline_run
from workloads.data import load_dataset
from workloads.evaluation.latent_separability import linear_separability, random_projection
from workloads.evaluation.metrics import ood_metrics
from workloads.models.vae import (
    ConvVAE,
    VAEInputError,
    adapted_encoder,
    beta_vae_loss,
    iwae_log_likelihood,
    latent_means,
    vae_log_likelihood,
)
from workloads.scores import build_score


def linear_gaussian(d=3, dx=5, sigma=0.5, seed=0):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, sigma^2 I): log p(x) = log N(x; b, WW^T + sigma^2 I)
    in closed form, and the exact posterior q(z|x) = N(S W^T (x - b) / sigma^2, S),
    S = (I + W^T W / sigma^2)^-1."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dx, d, generator=g, dtype=torch.float64)
    b = torch.randn(dx, generator=g, dtype=torch.float64)
    cov_post = torch.linalg.inv(torch.eye(d, dtype=torch.float64) + w.T @ w / sigma ** 2)

    def exact_posterior(x):
        mean = (x - b) @ w @ cov_post.T / sigma ** 2
        return mean, torch.log(torch.diagonal(cov_post)).expand(len(x), d)

    def log_likelihood(x, z):
        mean = z @ w.T + b
        return torch.distributions.Normal(mean, sigma).log_prob(x[:, None]).sum(-1)

    marginal = torch.distributions.MultivariateNormal(
        b, w @ w.T + sigma ** 2 * torch.eye(dx, dtype=torch.float64))
    return exact_posterior, log_likelihood, marginal, w, b


def test_iwae_is_the_exact_log_likelihood_under_the_exact_posterior():
    """With a diagonal exact posterior every importance weight is p(x): IWAE_K = log p(x)."""
    # W with orthogonal columns makes the exact posterior covariance diagonal
    posterior, log_likelihood, _, w, b = linear_gaussian()
    q, _ = torch.linalg.qr(w)
    w_orth = q * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    sigma, d = 0.5, 3
    cov_post = torch.linalg.inv(torch.eye(d, dtype=torch.float64) + w_orth.T @ w_orth / sigma ** 2)
    assert torch.allclose(cov_post, torch.diag(torch.diagonal(cov_post)), atol=1e-12)

    def exact(x):
        return ((x - b) @ w_orth @ cov_post.T / sigma ** 2,
                torch.log(torch.diagonal(cov_post)).expand(len(x), d))

    def likelihood(x, z):
        return torch.distributions.Normal(z @ w_orth.T + b, sigma).log_prob(x[:, None]).sum(-1)

    marginal = torch.distributions.MultivariateNormal(
        b, w_orth @ w_orth.T + sigma ** 2 * torch.eye(5, dtype=torch.float64))
    x = marginal.sample((20,))
    for samples in (1, 5, 50):
        iwae = iwae_log_likelihood(exact, likelihood, x, samples, torch.Generator().manual_seed(1))
        assert torch.allclose(iwae, marginal.log_prob(x), atol=1e-9)


def test_iwae_tightens_with_k_below_the_log_likelihood():
    """With a poor posterior (the prior), IWAE_1 < IWAE_50 < log p(x) on average (Burda et al.
    2016, Theorem 1), and splitting the samples over passes changes nothing."""
    _, log_likelihood, marginal, _, _ = linear_gaussian()

    def prior(x):
        return torch.zeros(len(x), 3, dtype=torch.float64), torch.zeros(len(x), 3,
                                                                      dtype=torch.float64)

    x = marginal.sample((400,))
    bound = {k: iwae_log_likelihood(prior, log_likelihood, x, k,
                                    torch.Generator().manual_seed(0)).mean().item()
             for k in (1, 5, 50)}
    exact = marginal.log_prob(x).mean().item()
    assert bound[1] < bound[5] < bound[50] < exact
    whole = iwae_log_likelihood(prior, log_likelihood, x, 50, torch.Generator().manual_seed(3))
    split = iwae_log_likelihood(prior, log_likelihood, x, 50, torch.Generator().manual_seed(3),
                                samples_per_pass=7)
    assert torch.allclose(whole, split, atol=1e-10)


def _grid(x, levels):
    return torch.round(x * (levels - 1)) / (levels - 1)


def test_decoder_log_likelihoods_and_kl_by_hand():
    torch.manual_seed(0)
    x = _grid(torch.rand(3, 1, 8, 8), 17)
    z = torch.randn(3, 2, 4)
    gaussian = ConvVAE((1, 8, 8), 17, latent_dim=4, hidden=8, decoder="gaussian").eval()
    out = torch.sigmoid(gaussian.decoder(gaussian.project(z.reshape(6, 4))))
    scale = gaussian.log_scale.exp().view(1, -1, 1, 1)
    expected = torch.distributions.Normal(out, scale).log_prob(
        x.repeat_interleave(2, 0)).flatten(1).sum(1).view(3, 2)
    assert torch.allclose(gaussian.decode_log_likelihood(x, z), expected, atol=1e-4)

    categorical = ConvVAE((1, 8, 8), 17, latent_dim=4, hidden=8, decoder="categorical").eval()
    logits = categorical.decoder(categorical.project(z.reshape(6, 4))).view(6, 1, 17, 8, 8)
    levels = torch.round(x * 16).long().repeat_interleave(2, 0)
    log_probs = logits.log_softmax(2).gather(2, levels[:, :, None]).squeeze(2)
    assert torch.allclose(categorical.decode_log_likelihood(x, z),
                          log_probs.flatten(1).sum(1).view(3, 2), atol=1e-4)
    with pytest.raises(VAEInputError):
        categorical.decode_log_likelihood(x + 2.0, z)

    mean, log_var = categorical.encode(x)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, (0.5 * log_var).exp()),
        torch.distributions.Normal(0.0, 1.0)).sum(1)
    torch.manual_seed(1)
    recon, kl_model = categorical(x)
    assert torch.allclose(kl_model, kl, atol=1e-5)
    loss, parts = beta_vae_loss(categorical, x, beta=4.0)
    assert parts["kl"] == pytest.approx(kl.mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx((parts["recon"] + 4.0 * parts["kl"]).item(), rel=1e-5)


def test_shapes_of_the_document_images():
    for shape, code in (((1, 28, 28), 7), ((3, 32, 32), 4), ((1, 8, 8), 4)):
        vae = ConvVAE(shape, 256, latent_dim=8, hidden=4)
        assert vae.code_size == code
        x = _grid(torch.rand(2, *shape), 256)
        assert vae_log_likelihood(vae.eval(), x, 3).shape == (2,)
    with pytest.raises(VAEInputError):
        ConvVAE((1, 8, 8), 17).encode(torch.rand(2, 1, 28, 28))


def test_adapted_encoder_uses_the_batch_statistics_and_leaves_the_running_ones():
    torch.manual_seed(0)
    vae = ConvVAE((1, 8, 8), 17, latent_dim=4, hidden=8)
    vae.train()
    for _ in range(5):  # running statistics of inputs in [0, 1]
        vae(torch.rand(64, 1, 8, 8))
    vae.eval()
    shifted = torch.rand(32, 1, 8, 8) * 0.2 + 0.8  # another "domain"
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    eval_codes = vae.encode(shifted)[0]
    with adapted_encoder(vae):
        adapted_codes = vae.encode(shifted)[0]
        assert all(m.training for m in vae.encoder.modules()
                   if isinstance(m, torch.nn.BatchNorm2d))
        assert not any(m.training for m in vae.decoder.modules()
                       if isinstance(m, torch.nn.BatchNorm2d))
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items()
               if "num_batches" not in k)
    assert not vae.training and not any(m.training for m in vae.modules())
    # by hand: the encoder with each BN normalising by the batch's own mean and variance
    h = shifted
    for layer in vae.encoder:
        if isinstance(layer, torch.nn.BatchNorm2d):
            mean = h.mean((0, 2, 3), keepdim=True)
            var = h.var((0, 2, 3), unbiased=False, keepdim=True)
            h = (h - mean) / torch.sqrt(var + layer.eps) * layer.weight.view(1, -1, 1, 1) \
                + layer.bias.view(1, -1, 1, 1)
        else:
            h = layer(h)
    expected = vae.posterior(h).chunk(2, 1)[0]
    assert torch.allclose(adapted_codes, expected, atol=1e-4)
    assert not torch.allclose(adapted_codes, eval_codes, atol=1e-3)
    # latent_means in adapted mode: batch by batch
    means = latent_means(vae, shifted, adapted=True, batch_size=16)
    with adapted_encoder(vae):
        first = vae.encode(shifted[:16])[0]
    assert torch.allclose(means[:16], first, atol=1e-5)


def test_iwae_score_scores_in_batches_of_bn_batch_and_is_reproducible():
    torch.manual_seed(0)
    vae = ConvVAE((1, 8, 8), 17, latent_dim=4, hidden=8).eval()
    x = _grid(torch.rand(40, 1, 8, 8), 17)
    score = build_score("iwae", samples=5, bn="adapted", bn_batch=20)
    values = score(vae, x)
    assert torch.equal(values, score(vae, x))
    assert torch.allclose(values[20:], score(vae, x[20:]), atol=1e-4)
    assert not torch.allclose(values[20:30], score(vae, x[10:30])[10:], atol=1e-3)
    plain = build_score("iwae", samples=5, bn="eval", bn_batch=20)
    assert torch.allclose(plain(vae, x)[20:], plain(vae, x[20:]), atol=1e-4)
    assert not torch.allclose(plain(vae, x), values, atol=1e-3)
    with pytest.raises(ValueError, match="bn"):
        build_score("iwae", bn="train")


def test_a_trained_vae_ranks_digits_above_noise():
    torch.manual_seed(0)
    data = load_dataset("digits")
    vae = ConvVAE(data.input_shape, data.levels, latent_dim=8, hidden=16)
    optimizer = torch.optim.Adam(vae.parameters(), lr=2e-3)
    losses = []
    for _ in range(15):
        for i in range(0, len(data.x_train), 64):
            loss, _ = beta_vae_loss(vae, vae.dequantize(data.x_train[i:i + 64]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    score = build_score("iwae", samples=5)
    id_scores = score(vae, data.x_test).numpy()
    noise = data.ood["uniform_noise"][:len(id_scores)]
    assert ood_metrics(id_scores, score(vae, noise).numpy())["auroc"] > 0.95


def test_linear_separability_of_separable_and_identical_codes():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 6, generator=g)
    far = torch.randn(400, 6, generator=g) + 3.0
    same = torch.randn(400, 6, generator=g)
    separable = linear_separability(a, far)
    assert separable["pos_acc"] > 0.95 and separable["neg_acc"] > 0.95 and separable["n"] == 400
    control = linear_separability(a, same)
    assert 0.3 < (control["pos_acc"] + control["neg_acc"]) / 2 < 0.65
    assert random_projection(torch.rand(5, 1, 8, 8), 4).shape == (5, 4)
    with pytest.raises(ValueError):
        linear_separability(a[:3], far[:3])


@pytest.mark.slow
def test_vae_ood_smoke_sweep(vae_smoke_sweep, tmp_path, env):
    _, sweep_dir = vae_smoke_sweep  # conftest: 30 epochs, W&B offline
    results = sweep_dir / "results"
    table = pd.read_csv(results / "trials.csv")
    assert len(table) == 2 and (table.status == "completed").all()
    assert set(table.decoder) == {"gaussian", "categorical"}
    assert table.test_bpd.map(math.isfinite).all()
    ood = pd.read_csv(results / "ood.csv")
    assert set(ood.score) == {"iwae2", "iwae5", "iwae2_bn", "iwae5_bn"}
    assert set(ood.ood_set) == {"gaussian_noise", "uniform_noise", "natural_patches"}
    assert ood.auroc.between(0, 1).all()
    svm = pd.read_csv(results / "latent_svm.csv")
    assert set(svm.representation) == {"latent (eval BN)", "latent (adapted BN)",
                                       "pixels (random projection)"}
    assert "digits train" in set(svm.negative) and svm.pos_acc.between(0, 1).all()
    reproduction = (sweep_dir / "REPRODUCTION.md").read_text()
    assert "Document 002 Table 3.1" in reproduction
    assert "Adapting the encoder's batch-norm statistics" in reproduction
    runs = {run.run_id: run for run in map(read_offline_run, find_offline_runs(sweep_dir))}
    media = runs[table.trial_id[0]].path / "files" / "media" / "table"
    assert list(media.glob("latent_svm_*.table.json"))

    bad = command_in_process("sweep", "vae_ood", "--profile", "smoke", "--set",
                             "iwae_samples=5+0", "--storage", tmp_path, env=env)
    assert bad.returncode == 2 and "iwae_samples" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_vae_ood_paper_profile_on_fashionmnist_and_cifar_files(tmp_path, env):
    """The paper profile's two datasets on files in their real formats: FashionMNIST ->
    MNIST (IDX) and CIFAR-10 (pickles) -> FashionMNIST; the absent OOD sets (SVHN among
    them: torchvision checks its .mat files' MD5, which test-written files cannot pass) are
    skipped with a note."""
    from test_datasets import write_cifar, write_idx

    data = tmp_path / "data"
    write_idx(data, "FashionMNIST", 200, seed=0)
    write_idx(data, "MNIST", 200, seed=1)
    write_cifar(data, "cifar10", 200, seed=2)
    proc = command("sweep", "vae_ood", "--profile", "paper", "--set", "decoder=gaussian",
                   "--set", "epochs=1", "--set", "hidden=4", "--set", "latent_dim=8",
                   "--seeds", 1, "--gpus-per-worker", 0, "--cpus-per-worker", 1,
                   "--data-dir", data, "--storage", tmp_path / "runs", "--wandb", "disabled",
                   env=env)
    assert "OOD set kmnist of fashionmnist is skipped" in proc.stdout
    assert "OOD set svhn of cifar10 is skipped" in proc.stdout
    (sweep_dir,) = (tmp_path / "runs").glob("vae_ood-paper-*")
    table = pd.read_csv(sweep_dir / "results" / "trials.csv")
    assert set(table.dataset) == {"fashionmnist", "cifar10"}
    assert (table.status == "completed").all()
    ood = pd.read_csv(sweep_dir / "results" / "ood.csv")
    pairs = set(zip(ood.dataset, ood.ood_set))
    assert ("fashionmnist", "mnist") in pairs and ("cifar10", "fashionmnist") in pairs
    assert np.isfinite(ood.auroc).all()
    assert set(ood.score) == {"iwae5", "iwae50", "iwae5_bn", "iwae50_bn"}


@pytest.mark.slow
def test_vae_ood_on_celeba_with_lsun(tmp_path, env):
    """Document 002's main pair: CelebA (its aligned JPEGs and lists) -> LSUN (ODIN's
    prepared folder), SVHN skipped when absent; the latent SVM separates CelebA from LSUN."""
    from test_datasets import write_celeba, write_lsun

    data = tmp_path / "data"
    write_celeba(data, 100, seed=0)
    write_lsun(data, 40, seed=1)
    proc = command("sweep", "vae_ood", "--profile", "paper", "--set", "dataset=celeba",
                   "--set", "decoder=gaussian", "--set", "epochs=1", "--set", "hidden=4",
                   "--set", "latent_dim=8", "--set", "batch_size=16", "--seeds", 1,
                   "--gpus-per-worker", 0, "--cpus-per-worker", 1, "--data-dir", data,
                   "--storage", tmp_path / "runs", "--wandb", "disabled", env=env)
    assert "OOD set svhn of celeba is skipped" in proc.stdout
    (sweep_dir,) = (tmp_path / "runs").glob("vae_ood-paper-*")
    table = pd.read_csv(sweep_dir / "results" / "trials.csv")
    assert list(table.dataset) == ["celeba"] and table.status[0] == "completed"
    ood = pd.read_csv(sweep_dir / "results" / "ood.csv")
    assert "lsun" in set(ood.ood_set) and "svhn" not in set(ood.ood_set)
    assert np.isfinite(ood.auroc).all()
    svm = pd.read_csv(sweep_dir / "results" / "latent_svm.csv")
    assert {"lsun", "celeba train"} <= set(svm.negative)
    text = (sweep_dir / "REPRODUCTION.md").read_text()
    assert [line for line in text.splitlines() if "latent (eval BN)" in line and "lsun" in line]


def test_vae_final_stage_scores_each_input_once_per_score(monkeypatch):
    """The test set's IWAE with the largest K is both the bits/dim and the OOD stage's ID
    values: it is computed once (it was computed twice), and the OOD rows are the ones a
    fresh evaluation gives."""
    from search_spaces import expand_setup, get_search_space
    from workloads.evaluation.ood_evaluation import evaluate_ood
    from workloads.scores.vae import IWAELogLikelihood
    from workloads.studies.vae_ood import vae_final_stage

    config = expand_setup(get_search_space("vae_ood").profile("smoke").trial_configs()[0])
    data = load_dataset("digits")
    torch.manual_seed(0)
    vae = ConvVAE(data.input_shape, data.levels, latent_dim=config["latent_dim"],
                  hidden=config["hidden"]).eval()
    scored: dict[tuple, int] = {}
    forward = IWAELogLikelihood.forward

    def counting(self, model, x):
        key = (self.samples, self.bn)
        scored[key] = scored.get(key, 0) + len(x)
        return forward(self, model, x)

    monkeypatch.setattr(IWAELogLikelihood, "forward", counting)
    metrics, artifacts = vae_final_stage(vae, data, config)
    per_score = len(data.x_test) + sum(min(len(data.x_test), len(x)) for x in data.ood.values())
    samples = sorted(int(k) for k in config["iwae_samples"].split("+"))
    modes = config["bn_modes"].split("+")
    assert scored == {(k, bn): per_score for k in samples for bn in modes}

    monkeypatch.setattr(IWAELogLikelihood, "forward", forward)
    fresh = evaluate_ood(vae, data, {f"iwae{samples[-1]}": IWAELogLikelihood(
        samples[-1], "eval", config["bn_batch"], config["seed"])})
    ours = [r for r in artifacts["ood"] if r["score"] == f"iwae{samples[-1]}"]
    assert ours == fresh.rows
