"""The ELBO's maths, checked against torch.distributions without Lightning."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from vaelab.model import maths
from vaelab.model.likelihoods import SIGMA_MODES, BernoulliLikelihood, GaussianLikelihood
from vaelab.model.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from vaelab.model.vae import VAE

SHAPE = (2, 6, 4)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def reference_gaussian(x, mean, log_sigma):
    return Independent(Normal(mean, log_sigma.exp().expand_as(x)), 3).log_prob(x)


@pytest.mark.parametrize("sigma_shape", [(), SHAPE, (5, *SHAPE)])
def test_gaussian_log_prob_matches_torch_normal(sigma_shape):
    x, mean = torch.rand(5, *SHAPE), torch.randn(5, *SHAPE)
    log_sigma = torch.randn(sigma_shape)
    torch.testing.assert_close(maths.gaussian_log_prob(x, mean, log_sigma), reference_gaussian(x, mean, log_sigma))


def test_bernoulli_log_prob_matches_torch_bernoulli():
    logits = torch.randn(7, *SHAPE) * 3
    x = torch.bernoulli(torch.rand(7, *SHAPE))
    expected = Independent(Bernoulli(logits=logits), 3).log_prob(x)
    torch.testing.assert_close(maths.bernoulli_log_prob(x, logits), expected)
    likelihood = BernoulliLikelihood(SHAPE)
    torch.testing.assert_close(likelihood.log_prob(logits, x), expected)


def test_kl_matches_torch_kl_divergence():
    mu, log_var = torch.randn(9, 5), torch.randn(9, 5)
    q = Normal(mu, (0.5 * log_var).exp())
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(maths.kl_standard_normal(mu, log_var), kl_divergence(q, p))


def test_diagonal_and_standard_normal_log_probs():
    z, mu, log_var = torch.randn(4, 3, 5), torch.randn(3, 5), torch.randn(3, 5)
    torch.testing.assert_close(
        maths.diagonal_normal_log_prob(z, mu, log_var), Normal(mu, (0.5 * log_var).exp()).log_prob(z).sum(-1)
    )
    torch.testing.assert_close(maths.standard_normal_log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


def decoder_output(likelihood, batch=6):
    return torch.randn(batch, SHAPE[0] * likelihood.params_per_channel, *SHAPE[1:], requires_grad=True)


@pytest.mark.parametrize("mode", SIGMA_MODES)
def test_every_sigma_mode_matches_torch_normal(mode):
    likelihood = GaussianLikelihood(SHAPE, sigma=mode, sigma_value=0.3, sigma_init=0.2)
    likelihood.eval()
    out = decoder_output(likelihood)
    x = torch.rand(6, *SHAPE)
    log_sigma = likelihood.log_sigma_for(out, x)
    mean = likelihood.mean(out)
    torch.testing.assert_close(likelihood.log_prob(out, x), reference_gaussian(x, mean, log_sigma))
    if mode == "fixed":
        torch.testing.assert_close(log_sigma, torch.tensor(math.log(0.3)))


def test_gaussian_keeps_constants():
    """sigma = 1 and a perfect mean: log N(x; x, 1) = -0.5 log(2 pi) per dimension."""
    x = torch.rand(3, *SHAPE)
    got = maths.gaussian_log_prob(x, x, torch.tensor(0.0))
    torch.testing.assert_close(got, torch.full((3,), -0.5 * math.log(2 * math.pi) * math.prod(SHAPE)))


@pytest.mark.parametrize("shape", ["shared", "pixel"])
def test_optimal_sigma_is_the_batch_rmse(shape):
    likelihood = GaussianLikelihood(SHAPE, sigma="optimal", optimal_shape=shape, log_sigma_min=-20)
    likelihood.train()
    out, x = decoder_output(likelihood), torch.rand(6, *SHAPE)
    sq = (x - out).square()
    rmse = sq.mean().sqrt() if shape == "shared" else sq.mean(dim=0).sqrt()
    torch.testing.assert_close(likelihood.log_sigma_for(out, x).exp(), rmse)
    # it is the maximiser of the Gaussian log-likelihood over sigma
    best = likelihood.log_prob(out, x).sum()
    for factor in (0.9, 1.1):
        assert reference_gaussian(x, out, (rmse * factor).log()).sum() < best


@pytest.mark.parametrize("shape", ["shared", "pixel"])
def test_optimal_sigma_in_eval_is_the_measured_training_mse(shape):
    likelihood = GaussianLikelihood(SHAPE, sigma="optimal", optimal_shape=shape, log_sigma_min=-20)
    likelihood.train()
    out, x = torch.randn(6, *SHAPE), torch.rand(6, *SHAPE)
    initial = likelihood.train_mse.clone()
    likelihood.log_prob(out, x)  # training scores with the batch's own MSE ...
    torch.testing.assert_close(likelihood.train_mse, initial)  # ... and leaves the eval sigma alone
    # measured sums of squared errors over images -> the eval-mode sigma^2
    train_out, train_x = torch.randn(20, *SHAPE), torch.rand(20, *SHAPE)
    sq = (train_x - train_out).square()
    likelihood.set_train_mse(
        likelihood.squared_error(train_out[:12], train_x[:12]) + likelihood.squared_error(train_out[12:], train_x[12:]),
        20,
    )
    expected = sq.mean() if shape == "shared" else sq.mean(dim=0)
    torch.testing.assert_close(likelihood.train_mse, expected)
    likelihood.eval()
    test_out, test_x = torch.randn(6, *SHAPE), torch.rand(6, *SHAPE)
    likelihood.log_prob(test_out, test_x)  # test data must not move the estimate
    torch.testing.assert_close(likelihood.train_mse, expected)
    torch.testing.assert_close(likelihood.log_sigma_for(test_out, test_x), 0.5 * expected.log())
    assert "train_mse" in likelihood.state_dict()  # so checkpoints carry it
    # a checkpoint of the running-average era still loads
    old = GaussianLikelihood(SHAPE, sigma="optimal", optimal_shape=shape)
    old.load_state_dict({"running_mse": expected * 2, "num_mse_updates": torch.tensor(7)})
    torch.testing.assert_close(old.train_mse, expected * 2)


@pytest.mark.parametrize("mode", ["learned_shared", "learned_pixel", "predicted"])
def test_gradients_reach_every_learned_sigma(mode):
    likelihood = GaussianLikelihood(SHAPE, sigma=mode)
    out, x = decoder_output(likelihood), torch.rand(6, *SHAPE)
    likelihood.log_prob(out, x).sum().backward()
    if mode == "predicted":
        grad = out.grad.chunk(2, dim=1)[1]
    else:
        grad = likelihood.log_sigma.grad
        assert grad.shape == (() if mode == "learned_shared" else SHAPE)
    assert torch.isfinite(grad).all() and (grad != 0).all()


def test_soft_floor_and_ceiling_hold():
    x = torch.linspace(-50, 50, 1001)
    floored = maths.soft_floor(x, -6.0)
    assert (floored >= -6.0).all()
    torch.testing.assert_close(floored[x > 10], x[x > 10])
    capped = maths.soft_ceiling(x, 2.0)
    assert (capped <= 2.0).all()
    torch.testing.assert_close(capped[x < -10], x[x < -10])
    clamped = maths.soft_clamp(x, -6.0, 2.0)
    assert (clamped >= -6.0).all() and (clamped <= 2.0).all() and (clamped.diff() >= 0).all()
    wide = maths.soft_clamp(x, -10.0, 10.0)
    middle = (x > -2) & (x < 2)
    torch.testing.assert_close(wide[middle], x[middle], atol=1e-3, rtol=0)
    likelihood = GaussianLikelihood(SHAPE, sigma="learned_pixel", sigma_init=1e-9, log_sigma_min=-4)
    assert (likelihood.log_sigma_for(decoder_output(likelihood)) >= -4).all()
    predicted = GaussianLikelihood(SHAPE, sigma="predicted", log_sigma_min=-4, log_sigma_max=1)
    raw = torch.cat([torch.zeros(2, *SHAPE), torch.linspace(-100, 100, 2 * math.prod(SHAPE)).view(2, *SHAPE)], 1)
    log_sigma = predicted.log_sigma_for(raw)
    assert (log_sigma >= -4).all() and (log_sigma <= 1).all()


def test_free_bits_and_warmup():
    kl = torch.tensor([[0.1, 2.0], [0.3, 4.0]])
    assert maths.free_bits_kl(kl, 0.0) == pytest.approx(3.2)
    assert maths.free_bits_kl(kl, 0.5) == pytest.approx(0.5 + 3.0)
    assert [maths.linear_warmup(s, 4) for s in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]
    assert maths.linear_warmup(0, 0) == 1.0


def test_bits_per_dim_conventions():
    nll = torch.tensor(100.0)
    assert float(maths.bits_per_dim(nll, 50, None)) == pytest.approx(100 / (50 * math.log(2)))
    assert float(maths.bits_per_dim(nll, 50, 256)) == pytest.approx(100 / (50 * math.log(2)) + 8.0)


def test_dequantised_inputs_stay_in_their_bins():
    likelihood = GaussianLikelihood(SHAPE, dequantize=True)
    images = torch.randint(0, 256, (50, *SHAPE), dtype=torch.uint8)
    x = likelihood.prepare(images, 256)
    assert ((x * 256).floor() == images.float()).all()
    dynamic = BernoulliLikelihood(SHAPE, binarize="dynamic").prepare(images, 256)
    assert set(dynamic.unique().tolist()) <= {0.0, 1.0}


def make_vae(likelihood, conv=False, latent_dim=3):
    enc, dec = (ConvEncoder, ConvDecoder) if conv else (MLPEncoder, MLPDecoder)
    kwargs = {"channels": [4]} if conv else {"hidden": [16]}
    return VAE(partial(enc, **kwargs), partial(dec, **kwargs), likelihood, SHAPE, levels=256, latent_dim=latent_dim)


def test_importance_weighted_bound_at_k1_is_the_one_sample_elbo():
    model = make_vae(GaussianLikelihood(SHAPE, sigma="learned_shared")).eval()
    x = torch.rand(4, *SHAPE)
    torch.manual_seed(1)
    got = model.importance_weighted_log_likelihood(x, 1)
    torch.manual_seed(1)
    mu, log_var = model.encode(x)
    z = mu + (0.5 * log_var).exp() * torch.randn(1, *mu.shape)
    log_px = model.likelihood.log_prob(model.decode(z[0]), x)
    expected = log_px + maths.standard_normal_log_prob(z[0]) - maths.diagonal_normal_log_prob(z[0], mu, log_var)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_importance_weighted_bound_is_above_the_elbo(likelihood):
    lik = BernoulliLikelihood(SHAPE) if likelihood == "bernoulli" else GaussianLikelihood(SHAPE, sigma="predicted")
    model = make_vae(lik, conv=likelihood == "gaussian").eval()
    x = torch.bernoulli(torch.rand(8, *SHAPE))
    with torch.no_grad():
        # analytic-KL ELBO averaged over many reparameterised samples
        mu, log_var = model.encode(x)
        kl = maths.kl_standard_normal(mu, log_var).sum(1)
        log_px = torch.stack([lik.log_prob(model.decode(maths.reparameterize(mu, log_var)), x) for _ in range(2000)])
        elbo = log_px.mean(0) - kl
        k1 = torch.stack([model.importance_weighted_log_likelihood(x, 1) for _ in range(2000)]).mean(0)
        k50 = torch.stack([model.importance_weighted_log_likelihood(x, 50) for _ in range(40)]).mean(0)
    # K = 1 is the ELBO in expectation; K > 1 is a tighter (higher) bound
    torch.testing.assert_close(k1, elbo, atol=0.05 * elbo.abs().max().item() + 0.5, rtol=0)
    assert (k50 > elbo).all()


def test_the_bernoulli_of_repeated_images_is_that_of_their_copies():
    """The bound scores K decoder outputs per image without K copies of the images."""
    x = torch.bernoulli(torch.rand(5, *SHAPE))
    logits = torch.randn(7 * 5, *SHAPE) * 4
    copies = x.unsqueeze(0).expand(7, *x.shape).flatten(0, 1)
    expected = maths.bernoulli_log_prob(copies, logits).view(7, 5)
    torch.testing.assert_close(maths.bernoulli_log_prob_repeated(x, logits), expected)
    torch.testing.assert_close(BernoulliLikelihood(SHAPE).log_prob_repeated(logits, x), expected)
    gaussian = GaussianLikelihood(SHAPE, sigma="learned_shared")
    torch.testing.assert_close(gaussian.log_prob_repeated(logits, x), gaussian.log_prob(logits, copies).view(7, 5))


def test_importance_weighted_bound_chunks_give_the_same_answer():
    """Splitting K into chunks must not change the estimator (same random draws)."""
    model = make_vae(BernoulliLikelihood(SHAPE)).eval()
    x = torch.bernoulli(torch.rand(5, *SHAPE))
    torch.manual_seed(3)
    whole = maths.importance_weighted_bound(lambda k: model.log_importance_weights(x, k), 12, 12)
    torch.manual_seed(3)
    chunked = maths.importance_weighted_bound(lambda k: model.log_importance_weights(x, k), 12, 5)
    # the same 12 draws split 5 + 5 + 2 come in a different order of the generator, so compare statistically
    assert whole.shape == chunked.shape == (5,)
    torch.manual_seed(3)
    lw = torch.cat(
        [model.log_importance_weights(x, 5), model.log_importance_weights(x, 5), model.log_importance_weights(x, 2)]
    )
    torch.testing.assert_close(chunked, torch.logsumexp(lw, 0) - math.log(12))


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("mode", SIGMA_MODES)
def test_vae_forward_shapes_for_every_mode(conv, mode):
    shape = (1, 8, 8)
    lik = GaussianLikelihood(shape, sigma=mode)
    enc, dec = (ConvEncoder, ConvDecoder) if conv else (MLPEncoder, MLPDecoder)
    model = VAE(enc, dec, lik, shape, levels=17, latent_dim=4)
    x = lik.prepare(torch.randint(0, 17, (3, *shape), dtype=torch.uint8), 17)
    out = model(x)
    assert out["log_px"].shape == (3,) and out["kl_per_dim"].shape == (3, 4)
    assert model.reconstruct(x).shape == (3, *shape)
    assert model.sample(5).shape == (5, *shape)


def test_conv_rejects_an_image_size_it_cannot_take():
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvEncoder((1, 10, 10), latent_dim=2, channels=[8, 8])


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("mode", ["bernoulli", "fixed", "predicted"])
def test_output_bias_starts_the_decoder_at_the_mean_image(mode, conv):
    shape = (2, 8, 8)
    likelihood = (
        BernoulliLikelihood(shape) if mode == "bernoulli" else GaussianLikelihood(shape, sigma=mode, sigma_init=0.2)
    )
    enc, dec = (ConvEncoder, ConvDecoder) if conv else (MLPEncoder, MLPDecoder)
    model = VAE(enc, dec, likelihood, shape, levels=256, latent_dim=3)
    images = torch.randint(0, 256, (4000, *shape), dtype=torch.uint8)
    mean = model.mean_input(images, chunk=1500)
    torch.testing.assert_close(
        mean,
        images.float().mean(0) / (255 if mode == "bernoulli" else 256) + (0 if mode == "bernoulli" else 0.5 / 256),
        atol=0.03,
        rtol=0,
    )
    model.set_output_bias(mean)
    last = [m for m in model.decoder.modules() if isinstance(m, (torch.nn.Linear, torch.nn.ConvTranspose2d))][-1]
    torch.nn.init.zeros_(last.weight)  # the output is then the bias alone
    out = model.decode(torch.randn(5, 3))
    expected = mean.mean(dim=(1, 2), keepdim=True).expand_as(mean) if conv else mean
    torch.testing.assert_close(model.likelihood.mean(out), expected.expand(5, *shape), atol=1e-3, rtol=0)
    if mode == "predicted":
        torch.testing.assert_close(out.chunk(2, dim=1)[1], torch.full((5, *shape), math.log(0.2)))
