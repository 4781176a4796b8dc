"""Vector RealNVP and approximate mass: invertibility, exact log-determinant, a density that
integrates to 1, AM in closed form, and the regularizer's gradient by finite differences."""

import pytest
import torch
from torch import nn

from workloads.flows import (
    FlowInputError,
    VectorRealNVP,
    am_regularized_nll,
    approximate_mass,
    bits_per_dim,
)


def random_flow(dim, seed=0, dtype=torch.float32, std=0.3, **kwargs):
    """A flow moved away from its identity initialisation (zero output layers)."""
    torch.manual_seed(seed)
    flow = VectorRealNVP(dim, **kwargs).to(dtype)
    with torch.no_grad():
        for coupling in flow.transform.transforms:
            coupling.net[-1].weight.normal_(0.0, std)
            coupling.net[-1].bias.normal_(0.0, std)
    return flow


def test_round_trip_is_exact():
    flow = random_flow(64)
    x = torch.randn(32, 64)
    z, logabsdet = flow.transform(x)
    back, inverse_logabsdet = flow.transform.inverse(z)
    assert (back - x).abs().max() < 1e-4
    assert torch.allclose(logabsdet, -inverse_logabsdet, atol=1e-4)


def test_logabsdet_matches_brute_force_jacobian():
    flow = random_flow(4, dtype=torch.float64, num_couplings=4, hidden=16)
    x = torch.randn(5, 4, dtype=torch.float64)
    _, logabsdet = flow.transform(x)
    for i in range(len(x)):
        jacobian = torch.autograd.functional.jacobian(
            lambda v: flow.transform(v[None])[0][0], x[i])
        assert logabsdet[i].item() == pytest.approx(
            torch.linalg.slogdet(jacobian).logabsdet.item(), abs=1e-10)


def test_density_integrates_to_one_in_2d():
    flow = random_flow(2, dtype=torch.float64, num_couplings=4, hidden=16)
    side = torch.linspace(-12, 12, 601, dtype=torch.float64)
    grid = torch.cartesian_prod(side, side)
    with torch.no_grad():
        density = flow.log_prob(grid).exp()
    cell = (side[1] - side[0]) ** 2
    assert (density.sum() * cell).item() == pytest.approx(1.0, abs=0.01)


def test_approximate_mass_of_a_standard_normal_is_the_norm():
    flow = VectorRealNVP(6)  # zero-initialised couplings: the identity map, p = N(0, I)
    x = torch.randn(8, 6)
    assert torch.allclose(approximate_mass(flow.log_prob, x), x.norm(dim=1), atol=1e-5)
    assert torch.allclose(bits_per_dim(flow.log_prob(x), 6),
                          -flow.log_prob(x) / (6 * torch.log(torch.tensor(2.0))))


def test_regularizer_gradient_matches_finite_differences():
    flow = random_flow(3, dtype=torch.float64, num_couplings=2, hidden=8)
    x = torch.randn(7, 3, dtype=torch.float64)
    parameter = flow.transform.transforms[0].net[0].weight
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
        VectorRealNVP(4).log_prob(torch.randn(3, 5))
    assert issubclass(FlowInputError, ValueError)
    assert isinstance(VectorRealNVP(4).transform, nn.Module)
