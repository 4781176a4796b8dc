import math

import pytest
import torch

from workloads.training.losses import ffn_loss, gffn_loss, log_partition


def _batch(n, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 3, torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("kind", ["logsumexp", "softplus"])
def test_gffn_equals_ffn_at_batch_size_one(kind):
    logits, y = _batch(1)
    assert torch.allclose(gffn_loss(logits, y, kind), ffn_loss(logits, y, kind), atol=1e-6)


@pytest.mark.parametrize("kind", ["logsumexp", "softplus"])
@pytest.mark.parametrize("n", [2, 7, 64])
def test_gffn_minus_ffn_is_at_least_log_batch_size(kind, n):
    logits, y = _batch(n, seed=n)
    gap = gffn_loss(logits, y, kind) - ffn_loss(logits, y, kind)
    lnz = log_partition(logits, kind)
    assert torch.allclose(gap, torch.logsumexp(lnz, 0) - lnz.mean(), atol=1e-5)
    assert gap.item() >= math.log(n) - 1e-5
    # equality when every example has the same ln Z
    same = torch.zeros(n, 5)
    assert (gffn_loss(same, y, kind) - ffn_loss(same, y, kind)).item() == pytest.approx(
        math.log(n), abs=1e-5)


def test_ffn_loss_is_cross_entropy():
    logits, y = _batch(16)
    assert torch.allclose(ffn_loss(logits, y), torch.nn.functional.cross_entropy(logits, y))


def test_softplus_partition_is_sum_of_softplus():
    logits, _ = _batch(4)
    assert torch.allclose(log_partition(logits, "softplus"),
                          torch.log1p(logits.exp()).sum(1), atol=1e-5)
    with pytest.raises(ValueError):
        log_partition(logits, "nope")


def test_gffn_gradient_is_softmax_weighted_partition_gradient():
    """d loss / d theta = -mean_l grad f_y(x_l) + sum_l p'(x_l) grad lnZ(x_l),
    with p'(x_l) = softmax_l lnZ(x_l) (NOTES.md A), for a small linear model."""
    torch.manual_seed(0)
    x = torch.randn(6, 3)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    model = torch.nn.Linear(3, 4)
    gffn_loss(model(x), y).backward()
    autograd = [p.grad.clone() for p in model.parameters()]

    params = list(model.parameters())
    logits = model(x)
    lnz = torch.logsumexp(logits, 1)
    weights = torch.softmax(lnz, 0).detach()
    expected = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        g_fy = torch.autograd.grad(logits[i, y[i]], params, retain_graph=True)
        g_lnz = torch.autograd.grad(lnz[i], params, retain_graph=True)
        for e, a, b in zip(expected, g_fy, g_lnz):
            e += -a / len(x) + weights[i] * b
    for got, want in zip(autograd, expected):
        assert torch.allclose(got, want, atol=1e-6)
