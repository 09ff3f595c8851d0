"""The numbers a beta/sigma comparison rests on: active units, the eval sigma of
sigma=optimal, bits/dim conventions, set-wide sigma extremes, the start of training.

Each test trains a small model on the bundled digits with the real Trainer (or calls
the metric directly) and checks the number against an independent computation.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer
from hydra.utils import instantiate
from test_configs import composed

from vaelab.build import build_model
from vaelab.model.collapse import ACTIVE_UNIT_THRESHOLD, is_collapsed
from vaelab.model.latents import LatentUsage
from vaelab.model.likelihoods import BernoulliLikelihood, GaussianLikelihood


def fitted(tmp_path, *overrides: str, epochs: int = 3, eval_batch_size: int | None = None):
    cfg = composed("trainer.enable_progress_bar=false", *overrides, tmp_path=tmp_path)
    if eval_batch_size is not None:
        cfg.data.eval_batch_size = eval_batch_size
    pl.seed_everything(0)  # the same model every time: the assertions below are on its numbers
    datamodule = instantiate(cfg.data)
    model = build_model(cfg, datamodule)
    trainer = quiet_trainer(max_epochs=epochs)
    trainer.fit(model, datamodule=datamodule)
    return cfg, datamodule, model, trainer


def test_latent_usage_matches_a_direct_computation():
    torch.manual_seed(0)
    mu = torch.randn(300, 5) * torch.tensor([1.0, 0.5, 0.05, 0.2, 0.0])  # variances 1, .25, .0025, .04, 0
    log_var = torch.randn(300, 5) * 0.1
    kl = 0.5 * (mu.square() + log_var.exp() - 1.0 - log_var)
    metric = LatentUsage(5)
    for start in range(0, 300, 64):  # in batches, as evaluation feeds it
        metric.update(mu[start : start + 64], kl[start : start + 64])
    usage = metric.compute()
    variance = mu.var(dim=0, unbiased=False)
    torch.testing.assert_close(usage["posterior_mean_variance"], variance, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(usage["kl_per_dim"], kl.mean(dim=0), rtol=1e-5, atol=1e-6)
    assert int(usage["active_units"]) == int((variance > ACTIVE_UNIT_THRESHOLD).sum()) == 3


def test_collapse_is_no_active_unit_or_almost_no_kl():
    assert is_collapsed(0, 3.0) and is_collapsed(4, 0.2) and not is_collapsed(4, 3.0)
    assert not is_collapsed(None, None)


def test_test_metrics_report_active_units_and_kl_per_dimension(tmp_path):
    cfg, datamodule, model, trainer = fitted(tmp_path, "model.latent_dim=6")
    metrics = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    report = model.latent_report
    assert len(report["kl_per_dim"]) == len(report["posterior_mean_variance"]) == 6
    # the per-dimension KLs add up to the test KL (both are means over the same images)
    assert sum(report["kl_per_dim"]) == pytest.approx(metrics["test/kl"], rel=0.05)
    assert metrics["test/active_units"] == sum(v > ACTIVE_UNIT_THRESHOLD for v in report["posterior_mean_variance"])
    # recomputed from the encoder: the variance over the test set of E_q[z|x]
    model.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        x = model.likelihood.prepare(datamodule.test_images, model.levels)
        mu, _ = model.encode(x)
    torch.testing.assert_close(
        torch.tensor(report["posterior_mean_variance"]), mu.var(dim=0, unbiased=False), rtol=0.05, atol=1e-3
    )


@pytest.mark.parametrize("shape", ["shared", "pixel"])
def test_optimal_sigma_is_measured_with_the_weights_it_scores(tmp_path, shape):
    cfg, datamodule, model, trainer = fitted(
        tmp_path, "likelihood.sigma=optimal", f"likelihood.optimal_shape={shape}", epochs=8
    )
    stored = model.likelihood.train_mse.clone()  # measured before the last validation
    # an independent measurement: one-sample reconstructions of every training image
    model.eval()
    with torch.no_grad():
        x = model.likelihood.prepare(datamodule.train_images, model.levels)
        mu, log_var = model.encode(x)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        sq = (x - model.likelihood.mean(model.decode(z))).square()
        expected = sq.mean() if shape == "shared" else sq.mean(dim=0)
    if shape == "shared":
        assert float(stored) == pytest.approx(float(expected), rel=0.03)
    else:  # per pixel: each is a mean over 1437 images; compare the map as a whole
        assert float((stored - expected).abs().mean()) < 0.05 * float(expected.mean())
    # the test scores with the same sigma, measured again on the weights tested
    metrics = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    assert metrics["test/sigma_mean"] == pytest.approx(float(expected.sqrt().mean()), rel=0.05)


def test_bits_per_dim_add_the_dequantisation_term_only_with_dequantisation(tmp_path):
    dims = 64  # digits are 8x8
    for dequantize in (True, False):
        cfg, datamodule, model, trainer = fitted(
            tmp_path / str(dequantize), f"likelihood.dequantize={str(dequantize).lower()}", epochs=1
        )
        metrics = trainer.test(model, datamodule=datamodule, verbose=False)[0]
        correction = dims * math.log(17) if dequantize else 0.0  # digits have 17 intensity levels
        assert metrics["test/bpd"] == pytest.approx(
            (-metrics["test/elbo"] + correction) / (dims * math.log(2)), rel=1e-4
        )


def test_sigma_extremes_are_the_whole_sets_not_a_mean_over_batches(tmp_path):
    cfg, datamodule, model, trainer = fitted(tmp_path, "likelihood.sigma=predicted", epochs=10)
    results = {}
    for batch_size in (1, 512):
        datamodule.eval_batch_size = batch_size
        torch.manual_seed(0)
        results[batch_size] = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    # a mean of per-image minima would sit far above the set's minimum; extremes agree
    # whatever the batch size, up to the noise of other z draws
    for name in ("test/sigma_min", "test/sigma_max"):
        assert results[1][name] == pytest.approx(results[512][name], rel=0.4), name
    assert results[1]["test/sigma_min"] < results[1]["test/sigma_mean"] < results[1]["test/sigma_max"]
    # independently: predicted sigma over the test set, for one draw of z per image
    model.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        x = model.likelihood.prepare(datamodule.test_images, model.levels)
        mu, log_var = model.encode(x)
        sigma = model.likelihood.current_sigma(model.decode(mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)))
    assert results[512]["test/sigma_min"] == pytest.approx(float(sigma.min()), rel=0.5)
    assert results[512]["test/sigma_max"] == pytest.approx(float(sigma.max()), rel=0.5)
    per_image_min = float(sigma.flatten(1).min(dim=1).values.mean())
    assert per_image_min > 1.4 * results[1]["test/sigma_min"]  # what the old metric would have shown


def test_each_likelihood_chooses_whether_the_decoder_starts_at_the_mean_image(tmp_path):
    shape = (1, 8, 8)
    assert BernoulliLikelihood(shape).init_output_bias_by_default
    assert not GaussianLikelihood(shape).init_output_bias_by_default
    assert GaussianLikelihood(shape, sigma="predicted").init_output_bias_by_default
    assert not any(
        GaussianLikelihood(shape, sigma=m).init_output_bias_by_default for m in ("fixed", "learned_pixel", "optimal")
    )
    for likelihood, expected in (("bernoulli", True), ("gaussian", False)):
        cfg = composed(f"likelihood={likelihood}", tmp_path=tmp_path)
        assert cfg.model.init_output_bias is None  # the default lets the likelihood choose
        model = build_model(cfg, instantiate(cfg.data))
        assert model.init_output_bias is expected
        forced = build_model(
            composed(
                f"likelihood={likelihood}", f"model.init_output_bias={str(not expected).lower()}", tmp_path=tmp_path
            ),
            instantiate(cfg.data),
        )
        assert forced.init_output_bias is (not expected)
