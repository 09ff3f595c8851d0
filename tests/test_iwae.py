"""The importance-weighted training objective (model.train_iw_samples, Burda et al.,
2016) and its two gradient estimators: the bound against the test-time bound's
computation, DReG's gradient (Tucker et al., 2019) against the standard one in
expectation over many draws, and a training run from the command line."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from conftest import read_metrics, run_cli, run_folders
from hydra.utils import instantiate
from test_configs import composed

from vaelab.exceptions import ConfigError
from vaelab.model import importance
from vaelab.model.likelihoods import BernoulliLikelihood, GaussianLikelihood
from vaelab.model.networks import MLPDecoder, MLPEncoder
from vaelab.model.vae import VAE
from vaelab.reference import ReferenceVAE
from vaelab.schema import validate

SHAPE = (1, 3, 3)


def tiny_vae(likelihood, **kwargs) -> VAE:
    torch.manual_seed(0)
    return VAE(
        partial(MLPEncoder, hidden=[8]),
        partial(MLPDecoder, hidden=[8]),
        likelihood,
        SHAPE,
        levels=256,
        latent_dim=2,
        **kwargs,
    )


@pytest.mark.parametrize("gradient", ["standard", "dreg"])
def test_the_training_bound_is_the_importance_weighted_bound(gradient):
    model = tiny_vae(BernoulliLikelihood(SHAPE))
    x = torch.bernoulli(torch.rand(6, *SHAPE))
    torch.manual_seed(4)
    loss, bound, samples = importance.importance_weighted_objective(model, x, 7, gradient)
    torch.manual_seed(4)
    expected = torch.logsumexp(model.log_importance_weights(x, 7), dim=0) - math.log(7)
    torch.testing.assert_close(bound, expected.detach())
    assert samples.log_weights.shape == samples.log_px.shape == (7, 6) and samples.z.shape == (7, 6, 2)
    if gradient == "standard":
        torch.testing.assert_close(loss, -bound.mean())


def encoder_and_decoder_gradients(model: VAE, x: torch.Tensor, k: int, gradient: str, seed: int):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss, _, _ = importance.importance_weighted_objective(model, x, k, gradient)
    loss.backward()
    flat = [torch.cat([p.grad.flatten() for p in part.parameters()]) for part in (model.encoder, model.decoder)]
    return flat[0].clone(), flat[1].clone()


def test_dreg_has_the_standard_gradient_in_expectation_with_less_encoder_variance():
    """Both estimators are unbiased for the gradient of the same bound: over the same
    draws, the decoder's gradients are equal draw by draw and the encoder's agree in
    the mean (paired differences within 5 standard errors); DReG's encoder gradient
    varies less (it drops the score term). The path-only estimator without DReG's
    second weight (w~ in place of w~^2) fails the mean check: it is biased."""
    model = tiny_vae(GaussianLikelihood(SHAPE, sigma="fixed", sigma_value=0.5))
    x = torch.rand(1, *SHAPE)
    draws = 400
    standard, dreg = [], []
    for seed in range(draws):
        standard.append(encoder_and_decoder_gradients(model, x, 20, "standard", seed))
        dreg.append(encoder_and_decoder_gradients(model, x, 20, "dreg", seed))
    for (_, dec_s), (_, dec_d) in zip(standard, dreg):
        torch.testing.assert_close(dec_d, dec_s, rtol=1e-4, atol=1e-6)
    enc_s = torch.stack([g for g, _ in standard]).double()
    enc_d = torch.stack([g for g, _ in dreg]).double()
    diff = enc_d - enc_s
    standard_error = diff.std(dim=0) / math.sqrt(draws)
    assert (diff.mean(dim=0).abs() <= 5 * standard_error + 1e-9).all()
    # the means are not all noise: some gradient components are far from zero
    assert (enc_s.mean(dim=0).abs() / (enc_s.std(dim=0) / math.sqrt(draws) + 1e-12)).max() > 10
    assert enc_d.var(dim=0).sum() < 0.5 * enc_s.var(dim=0).sum()


def test_the_vae_trains_on_the_bound_and_logs_the_negative_bound_as_its_loss():
    model = tiny_vae(BernoulliLikelihood(SHAPE), train_iw_samples=5, iw_gradient="dreg")
    x = torch.bernoulli(torch.rand(16, *SHAPE))
    torch.manual_seed(2)
    loss, bound, out = model.importance_weighted_step(x)
    assert out["log_px"].shape == (16,) and out["kl_per_dim"].shape == (16, 2)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert bound.ndim == 0 and torch.isfinite(bound)


@pytest.mark.parametrize("override", ["model.beta=2", "model.free_bits=0.5", "model.kl_warmup_steps=100"])
def test_the_bound_refuses_a_kl_term_to_weigh(override, tmp_path):
    cfg = composed("model.train_iw_samples=5", override, tmp_path=tmp_path)
    with pytest.raises(ConfigError, match="no KL term"):
        validate(cfg)
    with pytest.raises(ConfigError, match="train_iw_samples"):
        tiny_vae(BernoulliLikelihood(SHAPE), train_iw_samples=5, **{override.split("=")[0][6:]: 2})
    validate(composed("model.train_iw_samples=1", override, tmp_path=tmp_path))
    with pytest.raises(ConfigError, match="iw_gradient"):
        tiny_vae(BernoulliLikelihood(SHAPE), train_iw_samples=5, iw_gradient="reinforce")


def test_an_iwae_run_from_the_command_line(tmp_path):
    run_cli(
        "vaelab-train",
        "debug=short",
        "likelihood=bernoulli",
        "model.train_iw_samples=5",
        "model.iw_gradient=dreg",
        "trainer.enable_progress_bar=false",
        cwd=tmp_path,
    )
    (run,) = run_folders(tmp_path)
    metrics = read_metrics(run)["metrics"]
    assert all(math.isfinite(metrics[k]) for k in ("train/loss_epoch", "test/elbo", "test/nll_iw"))


@pytest.mark.parametrize("gradient", ["standard", "dreg"])
def test_the_plain_loops_own_iwae_gradient_is_vaelabs(gradient, tmp_path):
    """vaelab's one-pass DReG (a hook on z) against the plain loop's two autograd.grad
    calls, written apart (vaelab.reference): the same weights and draws give the same
    gradient of every parameter."""
    cfg = composed("likelihood=gaussian_learned_shared", tmp_path=tmp_path)
    shape = (1, 8, 8)
    reference = ReferenceVAE(cfg, shape, levels=17)
    model = VAE(
        instantiate(cfg.model.encoder),
        instantiate(cfg.model.decoder),
        reference.likelihood.__class__(shape, sigma="learned_shared"),
        shape,
        levels=17,
        latent_dim=int(cfg.model.latent_dim),
        train_iw_samples=6,
        iw_gradient=gradient,
    )
    model.load_state_dict(reference.state_dict(), strict=False)
    x = torch.rand(10, *shape)
    torch.manual_seed(9)
    loss, _, _ = importance.importance_weighted_objective(model, x, 6, gradient)
    loss.backward()
    torch.manual_seed(9)
    theirs = reference.importance_weighted_loss(x, 6, dreg=gradient == "dreg")
    if theirs.requires_grad:
        theirs.backward()
    ours = dict(model.named_parameters())
    for name, param in reference.named_parameters():
        torch.testing.assert_close(ours[name].grad, param.grad, rtol=1e-4, atol=1e-6, msg=name)
