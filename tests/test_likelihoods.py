"""The decoders beyond the independent Gaussian (low-rank plus diagonal Gaussian,
discretised logistic mixture, continuous Bernoulli) and every likelihood's sample():
their maths against torch.distributions or a brute-force reference, in float64 where
the reference needs it, gradients included; and one slow test that trains each
through the command line."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch.distributions import (
    AffineTransform,
    ContinuousBernoulli,
    LowRankMultivariateNormal,
    MultivariateNormal,
    SigmoidTransform,
    TransformedDistribution,
    Uniform,
)

from vaelab.exceptions import ConfigError
from vaelab.model import maths
from vaelab.model.likelihoods import (
    SIGMA_MODES,
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    DiscretizedLogisticLikelihood,
    GaussianLikelihood,
    GaussianLowRankLikelihood,
)
from vaelab.model.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from vaelab.model.vae import VAE

SHAPE = (2, 4, 4)  # two channels, so layouts that mix channels and parameters show
D = math.prod(SHAPE)


def low_rank_inputs(batch=5, rank=3, dtype=torch.float64, sigma=0.3, factor_scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *SHAPE, generator=g, dtype=dtype)
    mean = torch.rand(batch, *SHAPE, generator=g, dtype=dtype)
    log_sigma = math.log(sigma) + 0.3 * torch.randn(batch, *SHAPE, generator=g, dtype=dtype)
    factor = factor_scale * torch.randn(batch, rank, *SHAPE, generator=g, dtype=dtype)
    return x, mean, log_sigma, factor


def torch_low_rank(x, mean, log_sigma, factor):
    batch, rank = factor.shape[:2]
    dist = LowRankMultivariateNormal(
        mean.reshape(batch, -1), factor.reshape(batch, rank, -1).mT, torch.exp(2 * log_sigma).reshape(batch, -1)
    )
    return dist.log_prob(x.reshape(batch, -1))


# -- low-rank plus diagonal Gaussian --------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 3, 8])
def test_woodbury_log_density_matches_torch_low_rank_normal_values_and_gradients(rank):
    inputs = [t.requires_grad_() for t in low_rank_inputs(rank=rank)]
    ours = maths.low_rank_gaussian_log_prob(*inputs)
    reference = torch_low_rank(*inputs)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(ours.sum(), inputs)
    reference_grads = torch.autograd.grad(reference.sum(), inputs)
    for got, want in zip(grads, reference_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_woodbury_log_density_is_the_dense_multivariate_normal():
    """The dense D x D covariance, by brute force: no shared code with the Woodbury path."""
    x, mean, log_sigma, factor = low_rank_inputs(rank=2)
    for i in range(x.shape[0]):
        u = factor[i].reshape(2, -1).T
        cov = torch.diag(torch.exp(2 * log_sigma[i]).flatten()) + u @ u.T
        want = MultivariateNormal(mean[i].flatten(), covariance_matrix=cov).log_prob(x[i].flatten())
        got = maths.low_rank_gaussian_log_prob(x[i : i + 1], mean[i : i + 1], log_sigma[i : i + 1], factor[i : i + 1])
        torch.testing.assert_close(got[0], want)


def test_woodbury_with_zero_factor_is_the_diagonal_gaussian():
    x, mean, log_sigma, factor = low_rank_inputs(rank=4)
    got = maths.low_rank_gaussian_log_prob(x, mean, log_sigma, torch.zeros_like(factor))
    torch.testing.assert_close(got, maths.gaussian_log_prob(x, mean, log_sigma))


def test_woodbury_in_float32_at_a_trained_decoders_scales():
    """A small diagonal sigma (the floor's e^-6 ~ 0.0025) under a large U makes the
    capacitance matrix ill-conditioned: float32 must still agree with float64."""
    x, mean, log_sigma, factor = low_rank_inputs(batch=8, rank=10, sigma=0.003, factor_scale=0.1)
    want = maths.low_rank_gaussian_log_prob(x, mean, log_sigma, factor)
    got = maths.low_rank_gaussian_log_prob(x.float(), mean.float(), log_sigma.float(), factor.float())
    assert got.isfinite().all()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0.05)


def test_low_rank_likelihood_splits_the_decoder_output_and_scales_the_factor():
    rank = 3
    lik = GaussianLowRankLikelihood(SHAPE, rank=rank, log_sigma_min=-5, log_sigma_max=1)
    assert lik.params_per_channel == 2 + rank
    out = torch.randn(4, SHAPE[0] * lik.params_per_channel, *SHAPE[1:], requires_grad=True)
    x = torch.rand(4, *SHAPE)
    mean, log_sigma, factor = lik.parts(out)
    c = SHAPE[0]
    torch.testing.assert_close(mean, out[:, :c])
    torch.testing.assert_close(lik.mean(out), out[:, :c])
    torch.testing.assert_close(log_sigma, maths.soft_clamp(out[:, c : 2 * c], -5.0, 1.0))
    torch.testing.assert_close(factor[:, 1], out[:, 3 * c : 4 * c] / math.sqrt(rank))
    got = lik.log_prob(out, x)
    want = torch_low_rank(*(t.double() for t in (x, mean, log_sigma, factor))).float()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)
    got.sum().backward()
    assert out.grad.isfinite().all() and out.grad[:, 2 * c :].abs().sum() > 0


def test_low_rank_samples_have_the_low_rank_covariance():
    lik = GaussianLowRankLikelihood(SHAPE, rank=2)
    out = torch.randn(1, SHAPE[0] * 4, *SHAPE[1:]).expand(40_000, -1, -1, -1)
    draws = lik.sample(out, torch.Generator().manual_seed(0)).reshape(40_000, -1).double()
    mean, log_sigma, factor = (t[0].double() for t in lik.parts(out[:1]))
    u = factor.reshape(2, -1).T
    cov = torch.diag(torch.exp(2 * log_sigma).flatten()) + u @ u.T
    torch.testing.assert_close(draws.mean(0), mean.flatten(), atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), cov, atol=0.05 * cov.abs().max().item(), rtol=0)
    # the noise is correlated: the off-diagonal covariance is U U^T's, not zero
    off = ~torch.eye(D, dtype=torch.bool)
    assert (u @ u.T)[off].abs().max() > 0.2
    torch.testing.assert_close(lik.sigma_map(out[:1])[0].double().flatten() ** 2, cov.diagonal(), rtol=1e-5, atol=0)


def test_low_rank_bits_per_dim_compare_with_the_dequantised_gaussians():
    lik, gaussian = GaussianLowRankLikelihood(SHAPE), GaussianLikelihood(SHAPE)
    assert lik.dequantization_levels(256) == gaussian.dequantization_levels(256) == 256
    assert lik.data_model() == gaussian.data_model() == "dequantised"
    plain = GaussianLowRankLikelihood(SHAPE, dequantize=False)
    assert plain.dequantization_levels(256) is None and plain.data_model() == "not dequantised"
    images = torch.randint(0, 256, (50, *SHAPE), dtype=torch.uint8)
    assert ((lik.prepare(images, 256) * 256).floor() == images.float()).all()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: GaussianLowRankLikelihood(SHAPE, rank=0), "likelihood.rank=0 is not allowed: must be an integer >= 1"),
        (lambda: GaussianLowRankLikelihood(SHAPE, log_sigma_min=3.0), "must be below likelihood.log_sigma_max"),
        (lambda: GaussianLowRankLikelihood(SHAPE, sigma_init=0.0), "likelihood.sigma_init=0.0 is not allowed"),
        (
            lambda: DiscretizedLogisticLikelihood(SHAPE, levels=256, components=0),
            "likelihood.components=0 is not allowed: must be an integer >= 1",
        ),
    ],
)
def test_bad_settings_fail_naming_the_key(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


# -- discretised logistic mixture ---------------------------------------------------------------


def logistic(loc, scale):
    """The logistic distribution as torch.distributions builds it: a sigmoid-transformed uniform."""
    return TransformedDistribution(
        Uniform(torch.zeros_like(loc), torch.ones_like(loc)),
        [SigmoidTransform().inv, AffineTransform(loc, scale)],
    )


def reference_log_mass(x, loc, log_scale, levels, with_torch_distributions=False):
    """log P(bin of x) from the logistic CDF in float64: a difference of CDFs (above the
    location, of survival functions 1 - F(v) = F(2 loc - v), so neither side cancels);
    the edge bins take the tails. The CDF is sigmoid((v - loc) / scale), or
    torch.distributions' logistic (which clips its sigmoid to [eps, 1 - eps]: for
    moderate parameters only)."""
    x, loc, log_scale = (t.double() for t in (x, loc, log_scale))
    scale, h = log_scale.exp(), 0.5 / (levels - 1)
    cdf = logistic(loc, scale).cdf if with_torch_distributions else lambda v: torch.sigmoid((v - loc) / scale)
    upper, lower = (x + h).clamp(max=1.0), (x - h).clamp(min=0.0)
    cdf_up, cdf_low = cdf(upper), cdf(lower)
    sf_up, sf_low = cdf(2 * loc - upper), cdf(2 * loc - lower)
    lowest, highest = x < h, x > 1 - h
    mass = torch.where(loc > x, cdf_up - cdf_low, sf_low - sf_up)
    mass = torch.where(lowest, cdf_up, torch.where(highest, sf_low, mass))
    return mass.log()


def mixture_params(batch, n, dtype=torch.float32, seed=0, loc_spread=1.5, log_scale=(-4.0, 1.0)):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(batch, n, *SHAPE, generator=g, dtype=dtype)
    loc = loc_spread * torch.randn(batch, n, *SHAPE, generator=g, dtype=dtype) + 0.5
    lo, hi = log_scale
    scale = lo + (hi - lo) * torch.rand(batch, n, *SHAPE, generator=g, dtype=dtype)
    return logits, loc, scale


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_discretised_logistic_masses_of_all_levels_sum_to_one(levels):
    logits, loc, log_scale = mixture_params(3, 4, log_scale=(-7.0, 2.0))
    k = torch.arange(levels, dtype=torch.float32) / (levels - 1)
    x = k.view(levels, 1, *([1] * len(SHAPE))).expand(levels, 3, *SHAPE)  # every level, every pixel
    log_mass = maths.discretized_logistic_log_mass(
        x.unsqueeze(2), loc.unsqueeze(0), log_scale.unsqueeze(0), levels
    )  # (levels, B, n, C, H, W)
    torch.testing.assert_close(torch.logsumexp(log_mass, dim=0), torch.zeros_like(loc), atol=2e-5, rtol=0)
    mixture = torch.logsumexp(torch.log_softmax(logits, 1).unsqueeze(0) + log_mass, dim=2)
    torch.testing.assert_close(torch.logsumexp(mixture, dim=0), torch.zeros(3, *SHAPE), atol=2e-5, rtol=0)


def test_the_reference_cdf_is_torch_distributions_logistic():
    _, loc, log_scale = mixture_params(4, 3, dtype=torch.float64, loc_spread=0.3, log_scale=(-2.0, 0.5))
    x = (torch.randint(0, 17, loc.shape) / 16).double()
    torch.testing.assert_close(
        reference_log_mass(x, loc, log_scale, 17), reference_log_mass(x, loc, log_scale, 17, True), rtol=1e-9, atol=0
    )


@pytest.mark.parametrize("levels", [17, 256])
def test_discretised_logistic_mixture_matches_a_brute_force_reference(levels):
    logits, loc, log_scale = mixture_params(6, 3)
    images = torch.randint(0, levels, (6, *SHAPE))
    images[0] = 0
    images[1] = levels - 1  # the edge bins
    x = images.float() / (levels - 1)
    got = maths.discretized_logistic_mixture_log_prob(x, logits, loc, log_scale, levels)
    per_component = reference_log_mass(x.unsqueeze(1), loc, log_scale, levels)
    want = maths.sum_except_batch(torch.logsumexp(torch.log_softmax(logits.double(), 1) + per_component, 1))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-3)


def test_discretised_logistic_is_accurate_at_the_extremes():
    """Scales far below a bin and pixels far in the tails, where 1 - CDF and differences
    of CDFs underflow in float32 (PixelCNN++'s mid-point fallback territory): agrees with
    float64, and gradients stay finite beyond even float64's range."""
    levels = 256
    x = torch.tensor([0.0, 1.0, 0.5, 0.5, 0.5, 0.2, 0.8, 100 / 255])
    loc = torch.tensor([0.9, 0.05, 0.5, 0.5002, 0.9, -3.0, 4.0, 0.4])
    log_scale = torch.tensor([-3.0, -3.0, -9.0, -9.0, -3.5, -1.0, -0.5, -8.0])
    got = maths.discretized_logistic_log_mass(x, loc, log_scale, levels)
    want = reference_log_mass(x, loc, log_scale, levels)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    assert got[2] > -1e-3  # a scale far below the bin puts all the mass in it
    far = [t.clone().requires_grad_() for t in (torch.tensor([0.5, 0.0, 1.0]), torch.tensor([-50.0, 60.0, -60.0]))]
    log_scale_far = torch.tensor([-7.0, -7.0, -7.0], requires_grad=True)
    extreme = maths.discretized_logistic_log_mass(far[0], far[1], log_scale_far, levels)
    assert extreme.isfinite().all() and (extreme < -1e4).all()
    grads = torch.autograd.grad(extreme.sum(), [far[1], log_scale_far])
    assert all(g.isfinite().all() for g in grads)


def test_discretised_logistic_likelihood_layout_gradients_and_exact_mean():
    levels, n = 17, 3
    lik = DiscretizedLogisticLikelihood(SHAPE, levels=levels, components=n, log_scale_min=-6)
    assert lik.params_per_channel == 3 * n
    out = torch.randn(5, SHAPE[0] * 3 * n, *SHAPE[1:], requires_grad=True)
    logits, loc, log_scale = lik.parts(out)
    c = SHAPE[0]
    torch.testing.assert_close(loc[:, 1], out[:, n * c + c : n * c + 2 * c])  # block 1, component 1
    torch.testing.assert_close(log_scale, maths.soft_floor(out[:, 2 * n * c :].unflatten(1, (n, c)), -6.0))
    x = lik.prepare(torch.randint(0, levels, (5, *SHAPE), dtype=torch.uint8), levels)
    log_px = lik.log_prob(out, x)
    log_px.sum().backward()
    assert out.grad.isfinite().all() and (log_px < 0).all()
    # the mean is exactly sum_k k/(levels-1) P(k), here summed over every level by brute force
    grid = (torch.arange(levels) / (levels - 1)).view(levels, 1, 1, 1, 1, 1)
    log_mass = maths.discretized_logistic_log_mass(grid, loc.unsqueeze(0), log_scale.unsqueeze(0), levels)
    mass = (torch.softmax(logits, 1).unsqueeze(0) * log_mass.exp()).sum(2)  # (levels, B, C, H, W)
    want = (grid.squeeze(-1) * mass).sum(0)
    torch.testing.assert_close(lik.mean(out), want, atol=1e-5, rtol=0)
    chunked = maths.discretized_logistic_mixture_mean(logits, loc, log_scale, levels, chunk_elements=100)
    torch.testing.assert_close(chunked, want, atol=1e-5, rtol=0)


def test_discretised_logistic_samples_follow_its_masses():
    levels = 5
    lik = DiscretizedLogisticLikelihood((1, 1, 1), levels=levels, components=2)
    out = torch.tensor([1.0, -0.5, 0.1, 0.8, math.log(0.15), math.log(0.3)]).view(1, 6, 1, 1)
    draws = lik.sample(out.expand(100_000, -1, -1, -1), torch.Generator().manual_seed(0))
    assert set(draws.unique().tolist()) <= {k / (levels - 1) for k in range(levels)}
    freq = torch.stack([(draws == k / (levels - 1)).float().mean() for k in range(levels)])
    masses = torch.stack(
        [lik.log_prob(out, torch.full((1, 1, 1, 1), k / (levels - 1))).exp()[0] for k in range(levels)]
    )
    torch.testing.assert_close(masses.sum(), torch.tensor(1.0))
    torch.testing.assert_close(freq, masses, atol=0.006, rtol=0)


def test_discretised_logistic_bits_per_dim_are_exact_and_its_inputs_are_the_levels():
    lik = DiscretizedLogisticLikelihood(SHAPE, levels=256)
    assert lik.dequantization_levels(256) is None and lik.data_model() == "discrete"
    images = torch.randint(0, 256, (10, *SHAPE), dtype=torch.uint8)
    torch.testing.assert_close(lik.prepare(images, 256), images.float() / 255)
    with pytest.raises(ValueError, match="built for 256 intensity levels"):
        lik.prepare(images, 17)


# -- continuous Bernoulli ---------------------------------------------------------------------

#: logits across the closed forms, the Taylor regions and their borders
ETAS = torch.tensor(
    [
        -30.0,
        -9.0,
        -2.0,
        -0.5,
        -0.1001,
        -0.1,
        -0.0999,
        -0.03,
        -1e-3,
        -1e-6,
        0.0,
        1e-6,
        0.004,
        0.0999,
        0.1,
        0.3,
        2.5,
        17.0,
    ]
)


def test_continuous_bernoulli_matches_torch_distributions_in_float64():
    eta = ETAS.double().requires_grad_()
    x = torch.rand(50, 1, dtype=torch.float64)
    ours = maths.continuous_bernoulli_log_norm(eta) + x * eta - torch.nn.functional.softplus(eta)
    reference = ContinuousBernoulli(logits=eta).log_prob(x)
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(
        torch.autograd.grad(ours.sum(), eta)[0], torch.autograd.grad(reference.sum(), eta)[0], rtol=1e-6, atol=1e-7
    )
    torch.testing.assert_close(maths.continuous_bernoulli_mean(eta), ContinuousBernoulli(logits=eta).mean)
    # torch's quantile is u itself where lambda is within 1e-3 of 1/2 (|eta| < 0.004): there,
    # the closed form log1p(u expm1(eta)) / eta, exact in float64 for these eta
    u, eta = torch.rand(50, 1, dtype=torch.float64), eta.detach()
    wide = eta.abs() > 0.005
    torch.testing.assert_close(
        maths.continuous_bernoulli_icdf(u, eta[wide]), ContinuousBernoulli(logits=eta[wide]).icdf(u), rtol=0, atol=1e-9
    )
    near = eta[~wide & (eta != 0)]
    closed = torch.log1p(u * torch.expm1(near)) / near
    torch.testing.assert_close(maths.continuous_bernoulli_icdf(u, near), closed, rtol=0, atol=1e-6)
    torch.testing.assert_close(maths.continuous_bernoulli_icdf(u, torch.zeros(1, dtype=torch.float64)), u)


def test_continuous_bernoulli_is_exact_in_float32_where_torch_rounds_lambda_to_one():
    """torch.distributions works from lambda = sigmoid(eta), which float32 rounds to 1
    above eta ~ 17 and clamps: a decoder fitting near-black dequantised pixels drives
    eta to hundreds. From the logits, float32 stays exact."""
    eta = torch.tensor([-500.0, -40.0, 20.0, 90.0])
    exact = torch.log(eta.double() / torch.tanh(eta.double() / 2))
    torch.testing.assert_close(maths.continuous_bernoulli_log_norm(eta).double(), exact, rtol=1e-6, atol=0)
    assert (ContinuousBernoulli(logits=eta)._cont_bern_log_norm().double() - exact).abs().max() > 0.5
    mean = maths.continuous_bernoulli_mean(eta).double()
    torch.testing.assert_close(mean, 0.5 + 0.5 / torch.tanh(eta.double() / 2) - 1 / eta.double(), rtol=1e-5, atol=0)


def test_continuous_bernoulli_density_integrates_to_one_and_is_smooth_at_one_half():
    x = torch.linspace(0, 1, 20_001, dtype=torch.float64).view(-1, 1)
    eta = ETAS.double()
    density = (maths.continuous_bernoulli_log_norm(eta) + x * eta - torch.nn.functional.softplus(eta)).exp()
    torch.testing.assert_close(torch.trapezoid(density, x, dim=0), torch.ones_like(eta), rtol=1e-6, atol=0)
    # float32 values and gradients agree on both sides of the Taylor border
    near = torch.tensor([0.0999, 0.1, 0.1001], requires_grad=True)
    values = maths.continuous_bernoulli_log_norm(near)
    (grad,) = torch.autograd.grad(values.sum(), near)
    torch.testing.assert_close(grad, near.detach() / 6, rtol=2e-3, atol=0)  # d/deta (eta^2 / 12)
    torch.testing.assert_close(
        values.double(), torch.log(near.double() / torch.tanh(near.double() / 2)), rtol=0, atol=5e-7
    )


def test_continuous_bernoulli_likelihood_mean_sample_and_data_model():
    lik = ContinuousBernoulliLikelihood(SHAPE)
    logits = torch.linspace(-6, 6, D).view(1, *SHAPE)
    mean = lik.mean(logits)
    assert (mean - torch.sigmoid(logits)).abs().max() > 0.2  # not the Bernoulli's mean
    draws = lik.sample(logits.expand(20_000, -1, -1, -1), torch.Generator().manual_seed(0))
    assert draws.min() >= 0 and draws.max() <= 1
    torch.testing.assert_close(draws.mean(0, keepdim=True), mean, atol=0.01, rtol=0)
    x = torch.rand(3, *SHAPE)
    out = torch.randn(3, *SHAPE, requires_grad=True)
    want = ContinuousBernoulli(logits=out.double()).log_prob(x.double()).sum(dim=(1, 2, 3))
    got = lik.log_prob(out, x)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)
    got.sum().backward()
    assert out.grad.isfinite().all()
    assert lik.dequantization_levels(256) == 256 and lik.data_model() == "dequantised"
    plain = ContinuousBernoulliLikelihood(SHAPE, dequantize=False)
    assert plain.dequantization_levels(256) is None and plain.data_model() == "not dequantised"
    images = torch.randint(0, 256, (4, *SHAPE), dtype=torch.uint8)
    torch.testing.assert_close(plain.prepare(images, 256), images.float() / 255)


# -- every likelihood: sample(), the mean-image start, the VAE ----------------------------------------


def every_likelihood(shape=SHAPE, levels=256):
    return {
        "bernoulli": BernoulliLikelihood(shape),
        **{f"gaussian_{mode}": GaussianLikelihood(shape, sigma=mode, sigma_value=0.2) for mode in SIGMA_MODES},
        "gaussian_low_rank": GaussianLowRankLikelihood(shape, rank=3),
        "discretized_logistic": DiscretizedLogisticLikelihood(shape, levels=levels, components=2),
        "continuous_bernoulli": ContinuousBernoulliLikelihood(shape),
    }


@pytest.mark.parametrize("name", list(every_likelihood()))
def test_sample_is_one_draw_of_the_means_shape_repeatable_by_generator(name):
    lik = every_likelihood()[name]
    out = torch.randn(6, SHAPE[0] * lik.params_per_channel, *SHAPE[1:])
    first = lik.sample(out, torch.Generator().manual_seed(5))
    assert first.shape == lik.mean(out).shape == (6, *SHAPE) and first.isfinite().all()
    torch.testing.assert_close(lik.sample(out, torch.Generator().manual_seed(5)), first)
    assert not torch.equal(lik.sample(out, torch.Generator().manual_seed(6)), first)
    if name in ("bernoulli", "discretized_logistic", "continuous_bernoulli"):  # supports within [0, 1]
        assert first.min() >= 0 and first.max() <= 1


@pytest.mark.parametrize("mode", SIGMA_MODES)
def test_gaussian_samples_are_the_mean_plus_eval_sigma_noise(mode):
    lik = GaussianLikelihood(SHAPE, sigma=mode, sigma_value=0.2, sigma_init=0.3)
    if mode == "optimal":
        lik.train_mse.fill_(0.05**2)
    lik.train()  # optimal's draw uses the eval-mode sigma, training or not
    out = torch.randn(1, SHAPE[0] * lik.params_per_channel, *SHAPE[1:]).expand(20_000, -1, -1, -1)
    draws = lik.sample(out)
    sigma = torch.exp(lik.log_sigma_for(out[:1])).expand(1, *SHAPE)
    torch.testing.assert_close(
        draws.mean(0, keepdim=True), lik.mean(out[:1]), atol=4 * sigma.max().item() / 100, rtol=0
    )
    torch.testing.assert_close(draws.std(0, keepdim=True), sigma, rtol=0.03, atol=0)
    if mode == "optimal":
        want = torch.exp(maths.soft_floor(torch.tensor(math.log(0.05)), lik.log_sigma_min))
        torch.testing.assert_close(sigma, want.expand_as(sigma), rtol=1e-5, atol=0)


def test_bernoulli_samples_are_binary_with_the_means_frequency():
    lik = BernoulliLikelihood(SHAPE)
    logits = torch.linspace(-3, 3, D).view(1, *SHAPE)
    draws = lik.sample(logits.expand(20_000, -1, -1, -1))
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(draws.mean(0, keepdim=True), torch.sigmoid(logits), atol=0.015, rtol=0)


@pytest.mark.parametrize("name", ["gaussian_low_rank", "discretized_logistic", "continuous_bernoulli"])
def test_output_bias_starts_the_new_decoders_at_the_mean_image(name):
    levels = 256
    lik = every_likelihood(levels=levels)[name]
    model = VAE(
        partial(MLPEncoder, hidden=[16]), partial(MLPDecoder, hidden=[16]), lik, SHAPE, levels=levels, latent_dim=3
    )
    assert model.init_output_bias is False  # none of them starts there by default (not measured)
    images = torch.randint(0, levels, (3000, *SHAPE), dtype=torch.uint8)
    images[:, 0, 0, 0] = 0  # a black pixel: the edge cases of every mean
    images[:, 1, 0, 0] = levels - 1
    data_mean = model.mean_input(images)
    model.set_output_bias(data_mean)
    last = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(last.weight)
    out = model.decode(torch.randn(2, 3))
    bin_width = 1 / (levels - 1)
    torch.testing.assert_close(lik.mean(out), data_mean.expand(2, *SHAPE), atol=bin_width, rtol=0)
    if name == "gaussian_low_rank":
        assert (lik.parts(out)[2] == 0).all()  # U = 0: the diagonal Gaussian of sigma=predicted
        raw_log_sigma = out[:, SHAPE[0] : 2 * SHAPE[0]]
        torch.testing.assert_close(raw_log_sigma, torch.full_like(raw_log_sigma, math.log(0.1)))


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("name", ["gaussian_low_rank", "discretized_logistic", "continuous_bernoulli"])
def test_the_new_likelihoods_run_in_the_vae(name, conv):
    shape, levels = (1, 8, 8), 17
    lik = every_likelihood(shape, levels)[name]
    enc, dec = (
        (partial(ConvEncoder, channels=[4]), partial(ConvDecoder, channels=[4])) if conv else (MLPEncoder, MLPDecoder)
    )
    model = VAE(enc, dec, lik, shape, levels=levels, latent_dim=4)
    x = lik.prepare(torch.randint(0, levels, (3, *shape), dtype=torch.uint8), levels)
    out = model(x)
    assert out["log_px"].shape == (3,) and out["log_px"].isfinite().all()
    (out["kl_per_dim"].sum() - out["log_px"].sum()).backward()
    assert all(p.grad.isfinite().all() for p in model.parameters() if p.grad is not None)
    model.eval()
    assert model.reconstruct(x).shape == (3, *shape) and model.sample(5).shape == (5, *shape)
    assert lik.sample(model.decode(torch.randn(2, 4))).shape == (2, *shape)
    nll = -model.importance_weighted_log_likelihood(x, 8)
    assert nll.shape == (3,) and nll.isfinite().all()
    if name == "discretized_logistic":  # a mass: bits/dim without a dequantisation term
        assert float(model.bits_per_dim(torch.tensor(100.0))) == pytest.approx(100 / (64 * math.log(2)))
    else:
        assert float(model.bits_per_dim(torch.tensor(100.0))) == pytest.approx(100 / (64 * math.log(2)) + math.log2(17))


# -- through the command line -----------------------------------------------------------------


@pytest.mark.slow
def test_the_new_likelihoods_train_through_the_command_line(train, tmp_path):
    from conftest import read_metrics, run_folders

    names = ["gaussian_low_rank", "discretized_logistic", "continuous_bernoulli"]
    quick = ["debug=short", "trainer.enable_progress_bar=false"]
    train("-m", f"likelihood={','.join(names)}", *quick)
    train("-m", "model=conv", f"likelihood={','.join(names)}", *quick)
    runs = run_folders(tmp_path)
    assert len(runs) == 2 * len(names)
    seen = set()
    for run_dir in runs:
        summary = read_metrics(run_dir)
        metrics, data_model = summary["metrics"], summary["run"]["data_model"]
        seen.add(summary["run"]["likelihood"])
        for key in ("test/elbo", "test/recon", "test/kl", "test/bpd", "test/nll_iw"):
            assert math.isfinite(metrics[key]), (run_dir, key)
        # digits: D = 64 numbers of 17 levels; a mass needs no dequantisation term
        correction = 0.0 if data_model == "discrete" else math.log2(17)
        assert metrics["test/bpd"] == pytest.approx(-metrics["test/elbo"] / (64 * math.log(2)) + correction, rel=1e-4)
        assert data_model in ("discrete", "dequantised")
        for image in ("reconstructions.png", "samples.png"):
            assert (run_dir / "images" / image).stat().st_size > 1000, (run_dir, image)
        assert (run_dir / "images" / "sigma_map.png").exists() == (summary["run"]["likelihood"] == "gaussian_low_rank")
    assert seen == {"gaussian_low_rank", "discretized_logistic", "continuous_bernoulli"}


def test_every_likelihood_is_named_and_labelled_as_vaelab_compare_reads_it():
    """The name a run states (from the class) is one vaelab-compare has a legend for,
    and it is the likelihood= config's name; rank and components reach the record."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from vaelab.compare.job import decoder_label
    from vaelab.job_record import likelihood_name
    from vaelab.run_record import describe_job

    shape = (1, 8, 8)
    cases = {
        "gaussian_low_rank": (GaussianLowRankLikelihood(shape, rank=3), "Gaussian, low rank (rank 3)"),
        "discretized_logistic": (DiscretizedLogisticLikelihood(shape, levels=17, components=4), "discretised logistic"),
        "continuous_bernoulli": (ContinuousBernoulliLikelihood(shape), "continuous Bernoulli"),
    }
    for config_name, (likelihood, label) in cases.items():
        kind = likelihood_name(type(likelihood).__name__)
        assert kind == config_name
        model = SimpleNamespace(likelihood=likelihood, beta=1.0, init_output_bias=False)
        run = describe_job(OmegaConf.create({"seed": 1}), model, SimpleNamespace(source=None))
        assert run["likelihood"] == kind
        assert decoder_label(kind, "", run).startswith(label), decoder_label(kind, "", run)
        if config_name == "discretized_logistic":
            assert run["components"] == 4 and "rank" not in run
