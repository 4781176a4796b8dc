"""RealNVP (vector and multi-scale image), pixel preprocessing and approximate mass:
invertibility, exact log-determinants against brute-force Jacobians, densities that
integrate to 1, AM in closed form, and the regularizer's gradient by finite differences."""

import pytest
import torch
from torch import nn

from workloads.models.flows import (
    Flow,
    FlowInputError,
    ImageRealNVP,
    VectorRealNVP,
    am_regularized_nll,
    approximate_mass,
    bits_per_dim,
    build_flow,
    dequantize,
)


def random_flow(dim, seed=0, dtype=torch.float32, std=0.3, **kwargs):
    """A flow moved away from its identity initialisation (zero output layers)."""
    torch.manual_seed(seed)
    body = VectorRealNVP(dim, **kwargs).to(dtype)
    with torch.no_grad():
        for coupling in body.transforms:
            coupling.net[-1].weight.normal_(0.0, std)
            coupling.net[-1].bias.normal_(0.0, std)
    return Flow(body, (dim,), levels=None)


def perturb(module, std=0.05, seed=0):
    """Move every zero-initialised output layer away from the identity."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(std * torch.randn_like(parameter))
    return module


def brute_force_logabsdet(function, x):
    jacobian = torch.autograd.functional.jacobian(lambda v: function(v[None])[0].flatten(), x)
    return torch.linalg.slogdet(jacobian.reshape(x.numel(), x.numel())).logabsdet.item()


def test_round_trip_is_exact():
    flow = random_flow(64)
    x = torch.randn(32, 64)
    z, logabsdet = flow.body(x)
    back, inverse_logabsdet = flow.body.inverse(z)
    assert (back - x).abs().max() < 1e-4
    assert torch.allclose(logabsdet, -inverse_logabsdet, atol=1e-4)


def test_logabsdet_matches_brute_force_jacobian():
    flow = random_flow(4, dtype=torch.float64, num_couplings=4, hidden=16)
    x = torch.randn(5, 4, dtype=torch.float64)
    _, logabsdet = flow.body(x)
    for i in range(len(x)):
        assert logabsdet[i].item() == pytest.approx(
            brute_force_logabsdet(lambda v: flow.body(v)[0], x[i]), abs=1e-10)


def small_image_flow(dtype=torch.float32, shape=(1, 4, 4), num_scales=2):
    body = ImageRealNVP(shape, num_scales=num_scales, num_blocks=1, hidden=8)
    return perturb(body.to(dtype))


@pytest.mark.parametrize("shape,num_scales", [((1, 8, 8), 2), ((3, 8, 8), 3)])
def test_image_flow_round_trip(shape, num_scales):
    body = small_image_flow(shape=shape, num_scales=num_scales)
    x = torch.randn(6, *shape)
    z, logabsdet = body(x)
    assert z.shape == (6, x[0].numel())
    back, inverse_logabsdet = body.inverse(z)
    assert (back - x).abs().max() < 1e-4
    assert torch.allclose(logabsdet, -inverse_logabsdet, atol=1e-4)
    assert logabsdet.abs().max() > 1e-3  # the couplings are not the identity


def test_image_flow_logabsdet_matches_brute_force_jacobian():
    body = small_image_flow(torch.float64)  # checkerboard, squeeze, channel, factor-out
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    _, logabsdet = body(x)
    for i in range(len(x)):
        assert logabsdet[i].item() == pytest.approx(
            brute_force_logabsdet(lambda v: body(v)[0], x[i]), abs=1e-9)


@pytest.mark.parametrize("convention", ["centred", "start"])
def test_preprocessing_logabsdet_is_exact(convention):
    """Pixel embedding + logit: log p(x) in pixel space counts their Jacobian exactly."""
    torch.manual_seed(0)
    flow = Flow(small_image_flow(torch.float64), (1, 4, 4), levels=17,
                convention=convention, logit_lambda=0.05).double()
    x = dequantize(torch.randint(0, 17, (2, 1, 4, 4)).double() / 16, 17, convention)
    z, logabsdet = flow.transform(x)
    for i in range(len(x)):
        assert logabsdet[i].item() == pytest.approx(
            brute_force_logabsdet(lambda v: flow.transform(v)[0], x[i]), abs=1e-9)


def test_dequantization_conventions_share_the_training_distribution():
    """Both conventions fill the same bins in the flow's unit cube; clean pixels land at the
    lower edge (`start`) or the middle (`centred`) of theirs."""
    from workloads.models.flows import PixelEmbedding

    x = torch.arange(17.0) / 16
    generator = torch.Generator().manual_seed(0)
    for convention, offset in (("start", 0.0), ("centred", 0.5)):
        embed = PixelEmbedding(17, convention)
        clean, _ = embed(x)
        assert torch.allclose(clean * 17, torch.arange(17.0) + offset, atol=1e-5)
        noisy, _ = embed(dequantize(x.repeat(200), 17, convention, generator))
        bins = (noisy * 17).floor()
        assert torch.equal(bins, torch.arange(17.0).repeat(200))
        assert noisy.min() >= 0 and noisy.max() < 1


def test_density_integrates_to_one_in_2d():
    flow = random_flow(2, dtype=torch.float64, num_couplings=4, hidden=16)
    side = torch.linspace(-12, 12, 601, dtype=torch.float64)
    grid = torch.cartesian_prod(side, side)
    with torch.no_grad():
        density = flow.log_prob(grid).exp()
    cell = (side[1] - side[0]) ** 2
    assert (density.sum() * cell).item() == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("convention", ["centred", "start"])
def test_pixel_density_integrates_to_one_in_2d(convention):
    """With preprocessing, p is a density on the dequantized pixel support; a tiny logit
    lambda leaves almost no base mass outside it."""
    body = random_flow(2, dtype=torch.float64, num_couplings=4, hidden=16).body
    flow = Flow(body, (2,), levels=5, convention=convention, logit_lambda=1e-4).double()
    low = 0.0 if convention == "start" else -0.125  # support: one grid step 1/4 wide bins
    side = low + (torch.arange(800, dtype=torch.float64) + 0.5) / 800 * 1.25
    grid = torch.cartesian_prod(side, side)
    with torch.no_grad():
        density = flow.log_prob(grid).exp()
    cell = (1.25 / 800) ** 2
    assert (density.sum() * cell).item() == pytest.approx(1.0, abs=0.01)


def test_approximate_mass_of_a_standard_normal_is_the_norm():
    flow = Flow(VectorRealNVP(6), (6,), levels=None)  # the identity map: p = N(0, I)
    x = torch.randn(8, 6)
    assert torch.allclose(approximate_mass(flow.log_prob, x), x.norm(dim=1), atol=1e-5)
    assert torch.allclose(bits_per_dim(flow.log_prob(x), 6),
                          -flow.log_prob(x) / (6 * torch.log(torch.tensor(2.0))))


def test_regularizer_gradient_matches_finite_differences():
    flow = random_flow(3, dtype=torch.float64, num_couplings=2, hidden=8)
    x = torch.randn(7, 3, dtype=torch.float64)
    parameter = flow.body.transforms[0].net[0].weight
    loss = am_regularized_nll(flow.log_prob, x, alpha=2.0)
    (grad,) = torch.autograd.grad(loss, parameter)
    h = 1e-6
    def nudged(index, step):
        with torch.no_grad():
            parameter[index] += step
        value = am_regularized_nll(flow.log_prob, x, alpha=2.0).item()
        with torch.no_grad():
            parameter[index] -= step
        return value

    for index in [(0, 0), (3, 1), (7, 2)]:
        up, down = nudged(index, h), nudged(index, -h)
        assert grad[index].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8)
    # alpha = 0 is the plain negative log-likelihood
    assert am_regularized_nll(flow.log_prob, x, 0.0).item() == pytest.approx(
        -flow.log_prob(x).mean().item())


def test_wrong_input_shape_is_a_named_error():
    with pytest.raises(FlowInputError):
        Flow(VectorRealNVP(4), (4,), levels=None).log_prob(torch.randn(3, 5))
    with pytest.raises(FlowInputError):
        ImageRealNVP((1, 6, 6), num_scales=3)  # 6x6 cannot be squeezed twice
    with pytest.raises(FlowInputError):
        build_flow("image", (64,), levels=17)
    assert issubclass(FlowInputError, ValueError)
    assert isinstance(VectorRealNVP(4), nn.Module)


def test_presets_build_the_documented_architectures():
    flow = build_flow("image", (1, 28, 28), levels=256, preset="fashionmnist")
    assert len(flow.body.scales) == 2
    assert len(flow.body.scales[0].transforms[0].net.blocks) == 6
    cifar = build_flow("image", (3, 32, 32), levels=256, preset="cifar10")
    assert len(cifar.body.scales) == 3
    assert len(cifar.body.scales[0].transforms[0].net.blocks) == 8
    x = torch.rand(2, 1, 28, 28)
    assert torch.isfinite(flow.log_prob(x)).all()
    samples = flow.sample(2, torch.Generator().manual_seed(0))
    assert samples.shape == (2, 1, 28, 28) and torch.isfinite(flow.log_prob(samples)).all()


def test_diglm_objective_is_the_documented_composition():
    """loss = CE + beta * (NLL + alpha * AM) (NOTES.md C, eq. 4.13), from one flow pass."""
    import torch.nn.functional as F

    from workloads.models import DIGLM, diglm_objective

    torch.manual_seed(0)
    model = DIGLM(Flow(perturb(VectorRealNVP(4, num_couplings=2, hidden=8)).double(), (4,),
                       levels=None), 3).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    loss, parts = diglm_objective(model, x, y, alpha=2.0, beta=0.1)
    ce = F.cross_entropy(model(x), y)
    nll = -model.log_prob(x).mean()
    am = model.approximate_mass(x).mean()
    assert loss.item() == pytest.approx((ce + 0.1 * (nll + 2.0 * am)).item(), rel=1e-12)
    assert parts["am"].item() == pytest.approx(am.item())
    assert parts["correct"].item() == (model.predict(x) == y).sum().item()
    assert torch.equal(model.features(x), model.flow.transform(x)[0])
