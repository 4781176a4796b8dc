"""The likelihood corrections of document 002 (section 2.4.4-5) as scores, against closed
forms: typicality on a standard normal flow, input complexity against the compressors."""

import io
import math
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from workloads.data import load_dataset
from workloads.evaluation.ood_evaluation import evaluate_ood, resolve_scores
from workloads.models import build_flow
from workloads.models.flows import Flow, VectorRealNVP
from workloads.scores import build_score
from workloads.scores.density import compressed_bits, discrete_log2_probability


def standard_normal_flow(dim=5):
    """An untrained vector flow without pixel preprocessing is the identity: p = N(0, I)."""
    return Flow(VectorRealNVP(dim), (dim,), levels=None)


def nll(x):
    return 0.5 * (x.double() ** 2).sum(1) + 0.5 * x.shape[1] * math.log(2 * math.pi)


def test_typicality_per_input_and_per_batch_by_hand():
    flow = standard_normal_flow()
    g = torch.Generator().manual_seed(0)
    train, x = torch.randn(400, 5, generator=g), torch.randn(12, 5, generator=g) * 1.5
    val = torch.randn(300, 5, generator=g)
    entropy = nll(train).mean().item()  # ~ D/2 (1 + log 2 pi) = 7.09 for D = 5
    single = build_score("typicality").fit(flow, train, None, val, None)
    assert single.entropy == pytest.approx(entropy, rel=1e-6)
    assert torch.allclose(single(flow, x).double(), -(nll(x) - entropy).abs(), atol=1e-4)
    batch = build_score("typicality", batch=4).fit(flow, train, None, val, None)
    expected = -(nll(x).reshape(3, 4).mean(1) - entropy).abs().repeat_interleave(4)
    assert torch.allclose(batch(flow, x).double(), expected, atol=1e-4)
    # the bootstrap epsilon: seeded, and smaller for larger batches (~ 1/sqrt(M))
    again = build_score("typicality", batch=4).fit(flow, train, None, val, None)
    big = build_score("typicality", batch=16).fit(flow, train, None, val, None)
    assert batch.threshold == again.threshold and big.threshold < batch.threshold
    # a last partial group is its own batch
    assert torch.allclose(batch(flow, x[:6]).double()[4:],
                          -(nll(x[4:6]).mean() - entropy).abs().repeat(2), atol=1e-4)


def test_typicality_draws_its_bootstrap_batches_from_validation_data():
    """Nalisnick et al. (2019), Algorithm 1: H from the training NLL, epsilon the 1 - alpha
    quantile of |mean NLL of M validation inputs - H| over K batches drawn with replacement;
    `fit_score` hands the score both splits. The training set's own batches would give
    another epsilon (here the validation inputs are wider than the training ones)."""
    from types import SimpleNamespace

    from workloads.scores import fit_score

    flow = standard_normal_flow()
    g = torch.Generator().manual_seed(1)
    train, val = torch.randn(400, 5, generator=g), 1.2 * torch.randn(200, 5, generator=g)
    data = SimpleNamespace(x_train=train, y_train=None, x_val=val, y_val=None)
    score = fit_score("typicality", {"batch": 4, "resamples": 500, "quantile": 0.9}, flow,
                      data)
    entropy = nll(train).mean().item()
    draws = np.random.default_rng(0).integers(0, len(val), size=(500, 4))
    expected = np.quantile(np.abs(nll(val).numpy()[draws].mean(1) - entropy), 0.9)
    assert score.threshold == pytest.approx(expected, rel=1e-6)
    on_train = np.quantile(np.abs(nll(train).numpy()[draws % 400].mean(1) - entropy), 0.9)
    assert score.threshold > on_train
    with pytest.raises(ValueError, match="held-out"):
        build_score("typicality").fit(flow, train, None)


def test_input_complexity_adds_the_code_length_in_bits():
    data = load_dataset("digits")
    flow = build_flow("vector", data.input_shape, data.levels, num_couplings=2, hidden=16)
    x = data.x_test[:6]
    pixels = np.rint(x.double().numpy() * (data.levels - 1)).astype(np.uint8)
    zlib_bits = torch.tensor([8.0 * len(zlib.compress(p.tobytes(), 9)) for p in pixels],
                             dtype=torch.float64)
    png_bits = []
    for p in pixels:
        buffer = io.BytesIO()
        Image.fromarray(p[0]).save(buffer, format="PNG", optimize=True)
        png_bits.append(8.0 * len(buffer.getvalue()))
    assert torch.equal(compressed_bits(x, data.levels, "zlib"), zlib_bits)
    assert compressed_bits(x, data.levels, "png").tolist() == png_bits
    # a blank image costs fewer bits than a digit
    assert compressed_bits(torch.zeros(1, 1, 8, 8), 17, "zlib") < zlib_bits.min()
    with torch.no_grad():
        log2_p = discrete_log2_probability(flow, x).double()
        # log2 P = -D * bits/dim
        assert torch.allclose(log2_p, -64 * flow.bits_per_dim(flow.log_prob(x)).double())
    for compressor, bits in (("zlib", zlib_bits), ("png", torch.tensor(png_bits))):
        score = build_score("input_complexity", compressor=compressor)
        assert torch.allclose(score(flow, x).double(), log2_p + bits, rtol=1e-6)
    with pytest.raises(ValueError, match="compressor"):
        build_score("input_complexity", compressor="gzip")
    with pytest.raises(ValueError, match="pixel inputs"):
        build_score("input_complexity")(standard_normal_flow(), torch.zeros(2, 5))


def test_the_ood_stage_runs_the_corrections_by_name():
    torch.manual_seed(0)
    data = load_dataset("digits")
    flow = build_flow("vector", data.input_shape, data.levels, num_couplings=2, hidden=16)
    scores = resolve_scores(flow, "log_px+input_complexity+typicality")
    result = evaluate_ood(flow, data, scores, resamples=20)
    assert {r["score"] for r in result.rows} == {"log_px", "input_complexity", "typicality"}
    assert all(np.isfinite(r["auroc"]) for r in result.rows)


class WideNormal(torch.nn.Module):
    """N(0, s^2 I) as a density model: log p(x) = -|x|^2 / (2 s^2) - D/2 log(2 pi s^2)."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def log_prob(self, x):
        d = x.shape[1]
        return -(x ** 2).sum(1) / (2 * self.scale ** 2) \
            - 0.5 * d * math.log(2 * math.pi * self.scale ** 2)


def test_likelihood_ratio_against_a_wider_gaussian_by_hand():
    """Model N(0, I), background N(0, 4 I): LLR(x) = -3/8 |x|^2 + D/2 log 4."""
    flow = standard_normal_flow()
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
    score = build_score("likelihood_ratio", background=WideNormal(2.0))
    expected = -3 / 8 * (x.double() ** 2).sum(1) + 2.5 * math.log(4)
    assert torch.allclose(score(flow, x).double(), expected, atol=1e-4)
    same = build_score("likelihood_ratio", background=flow)
    assert torch.allclose(same(flow, x), torch.zeros(16), atol=1e-6)
    inputs = x.clone().requires_grad_(True)  # differentiable: attacks can follow it
    (grad,) = torch.autograd.grad(score.forward(flow, inputs).sum(), inputs)
    assert torch.allclose(grad.double(), -3 / 4 * x.double(), atol=1e-4)
    with pytest.raises(ValueError, match="background_mu"):
        build_score("likelihood_ratio")(flow, x)


def test_perturb_pixels_replaces_a_fraction_mu_with_grid_values():
    from workloads.training.background import perturb_pixels

    levels = 17
    x = torch.full((200, 1, 8, 8), 3 / (levels - 1))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(perturb_pixels(x, 0.0, levels, g), x)
    out = perturb_pixels(x, 0.3, levels, g)
    grid = out * (levels - 1)
    assert torch.allclose(grid, grid.round(), atol=1e-5)  # on the pixel grid
    changed = (out != x).double().mean().item()
    # a replaced value equals the old one with probability 1/17
    assert changed == pytest.approx(0.3 * (1 - 1 / levels), abs=0.01)
    every = perturb_pixels(x, 1.0, levels, g) * (levels - 1)
    counts = torch.bincount(every.round().long().flatten(), minlength=levels).double()
    assert (counts / counts.sum() - 1 / levels).abs().max() < 0.01  # uniform over the grid
    with pytest.raises(ValueError, match="mu"):
        perturb_pixels(x, 1.5, levels)


def test_the_background_model_learns_the_perturbed_inputs():
    from workloads.training.background import perturb_pixels, train_background

    data = load_dataset("digits", ood=False)
    torch.manual_seed(0)
    flow = build_flow("vector", data.input_shape, data.levels, "centred", 0.05,
                      num_couplings=2, hidden=32)
    perturbed = perturb_pixels(data.x_val, 0.2, data.levels,
                               torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = flow.log_prob(perturbed).mean()
    history = train_background(flow, data.x_train, 0.2, epochs=4, lr=1e-3, batch_size=64)
    with torch.no_grad():
        after = flow.log_prob(perturbed).mean()
    assert history[-1].loss < history[0].loss and after > before
