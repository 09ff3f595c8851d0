"""A plain PyTorch training loop of vaelab's objective: the reference its numbers answer to.

No Lightning, no callbacks, no vaelab initialisation: the encoder, decoder and
likelihood are built from the same config (so the networks and the log-density are
the same objects), weights keep PyTorch's default initialisation, and the loop is the
textbook one: shuffled minibatches, loss = beta * KL - E_q[log p(x|z)] (or, with
``model.train_iw_samples`` k > 1, the k-sample IWAE bound, written out on its own
with DReG's gradient), Adam from the config, one validation pass per epoch, the
weights of the best validation ELBO scored on the test set. ``sigma=optimal`` is evaluated with the training-set MSE of the
weights being scored, measured here with its own few lines.

Tests train the same config with ``vaelab-train`` and with :func:`train_reference` and
require the test ELBOs to agree: a default, an initialisation or a schedule that moves
vaelab's result away from what this loop reaches fails CI (tests/test_reference.py).
bench/init_bias.py uses it to measure which starts of training collapse the posterior.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from vaelab.config import instantiate_likelihood
from vaelab.model import maths
from vaelab.model.likelihoods import GaussianLikelihood, Likelihood
from vaelab.time_budget import lr_factor


@dataclass
class ReferenceResult:
    """Per-image means over the test set of the scored (best validation) weights."""

    elbo: float
    recon: float
    kl: float
    active_units: int
    best_epoch: int
    val_elbo: list[float] = field(default_factory=list)
    #: optimiser steps taken, and the seconds they and the validations took
    steps: int = 0
    train_seconds: float = 0.0


class ReferenceVAE(nn.Module):
    """Encoder, decoder and likelihood of a config, held together without Lightning."""

    def __init__(self, cfg: DictConfig, image_shape: tuple[int, int, int], levels: int):
        super().__init__()
        self.likelihood: Likelihood = instantiate_likelihood(cfg.likelihood, image_shape, levels)
        latent_dim = int(cfg.model.latent_dim)
        self.encoder = instantiate(cfg.model.encoder)(image_shape=image_shape, latent_dim=latent_dim)
        self.decoder = instantiate(cfg.model.decoder)(
            image_shape=image_shape,
            latent_dim=latent_dim,
            out_channels=image_shape[0] * self.likelihood.params_per_channel,
        )
        self.beta = float(cfg.model.beta)
        #: sigma^2 measured on the training data, for sigma=optimal at evaluation
        self.eval_mse: Tensor | None = None

    def terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log p(x|z) per image, KL per image and latent dimension, mu. (Not the decoder's
        mean: the discretised logistic's exact mean costs 30 log-masses.)"""
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        out = self.decoder(z)
        if self.is_optimal and not self.training:
            mean = self.likelihood.mean(out)
            log_px = maths.gaussian_log_prob(x, mean, 0.5 * torch.log(self.eval_mse))
        else:
            log_px = self.likelihood.log_prob(out, x)
        return log_px, maths.kl_standard_normal(mu, log_var), mu

    def importance_weighted_loss(self, x: Tensor, k: int, dreg: bool) -> Tensor:
        """The k-sample IWAE loss, -mean log (1/k) sum_j w_j, written out here on its own:
        with ``dreg``, its gradients are set by two autograd.grad calls, the decoder's
        from sum_j w~_j log w_j and the encoder's from sum_j w~_j^2 log w_j with q's
        parameters held constant (Tucker et al., 2019), and the loss is returned detached."""
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        z = mu + torch.exp(0.5 * log_var) * torch.randn((k, *mu.shape))
        log_px = self.likelihood.log_prob(self.decoder(z.flatten(0, 1)), x.repeat(k, *([1] * (x.dim() - 1))))
        q_mu, q_log_var = (mu.detach(), log_var.detach()) if dreg else (mu, log_var)
        log_prior = -0.5 * (z.square() + math.log(2 * math.pi)).sum(-1)
        log_q = -0.5 * ((z - q_mu).square() / q_log_var.exp() + q_log_var + math.log(2 * math.pi)).sum(-1)
        log_w = log_px.view(k, -1) + log_prior - log_q
        loss = -(torch.logsumexp(log_w, dim=0) - math.log(k)).mean()
        if not dreg:
            return loss
        weights = torch.softmax(log_w.detach(), dim=0)
        encoder = list(self.encoder.parameters())
        rest = [p for p in self.parameters() if p.requires_grad and all(p is not q for q in encoder)]
        decoder_grads = torch.autograd.grad(
            -(weights * log_w).sum(0).mean(), rest, retain_graph=True, allow_unused=True
        )
        encoder_grads = torch.autograd.grad(-(weights.square() * log_w).sum(0).mean(), encoder)
        for param, grad in zip([*rest, *encoder], [*decoder_grads, *encoder_grads]):
            param.grad = grad
        return loss.detach()

    @property
    def is_optimal(self) -> bool:
        return isinstance(self.likelihood, GaussianLikelihood) and self.likelihood.sigma_mode == "optimal"


def _batches(images: Tensor, batch_size: int, generator: torch.Generator | None = None) -> list[Tensor]:
    order = (
        torch.randperm(images.shape[0], generator=generator) if generator is not None else torch.arange(images.shape[0])
    )
    return [images[order[i : i + batch_size]] for i in range(0, images.shape[0], batch_size)]


@torch.no_grad()
def _measure_optimal_mse(model: ReferenceVAE, images: Tensor, levels: int, batch_size: int) -> None:
    """sigma^2 = mean squared error of the current weights on the training images
    (shared or per pixel, as the likelihood says), one z sample per image."""
    model.train()  # the training-time objective's reconstruction, no eval-mode sigma
    sq_sum: Tensor | float = 0.0
    for batch in _batches(images, batch_size):
        x = model.likelihood.prepare(batch, levels)
        mu, log_var = model.encoder(x).chunk(2, dim=1)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        sq_sum = sq_sum + (x - model.likelihood.mean(model.decoder(z))).square().sum(dim=0)
    per_pixel = sq_sum / images.shape[0]
    model.eval_mse = per_pixel if model.likelihood.optimal_shape == "pixel" else per_pixel.mean()


@torch.no_grad()
def _evaluate(model: ReferenceVAE, images: Tensor, levels: int, batch_size: int) -> dict[str, Any]:
    model.eval()
    recon = kl = 0.0
    means: list[Tensor] = []
    for batch in _batches(images, batch_size):
        x = model.likelihood.prepare(batch, levels)
        log_px, kl_per_dim, mu = model.terms(x)
        recon += float(log_px.sum())
        kl += float(kl_per_dim.sum())
        means.append(mu)
    n = images.shape[0]
    variance = torch.cat(means).var(dim=0, unbiased=False)
    return {"elbo": (recon - kl) / n, "recon": recon / n, "kl": kl / n, "active_units": int((variance > 0.01).sum())}


def train_reference(
    cfg: DictConfig,
    datamodule: Any,
    epochs: int,
    seed: int,
    init_output_bias: bool = False,
    eval_batch_size: int = 512,
    time_budget_s: float | None = None,
    schedule: str | None = None,
    final_fraction: float = 0.0,
    ema_decay: float | None = None,
    ema_start_step: int = 0,
    ema_every_n_steps: int = 1,
) -> ReferenceResult:
    """Train ``cfg``'s model on ``datamodule``'s splits (set up already) for ``epochs``
    epochs with a plain loop; the test numbers of the epoch with the best validation ELBO.

    ``init_output_bias`` starts the decoder's last bias at the mean training input
    (what ``model.init_output_bias`` does in vaelab), for measuring what it changes.
    ``time_budget_s`` stops training after the first step that ends past it (as
    ``trainer.max_time`` does; validations count), the stopped epoch validated;
    ``schedule`` (a shape of :func:`vaelab.time_budget.lr_factor`) sets the learning
    rate before every step from the fraction of that budget spent, as
    ``callbacks.time_budget_lr`` does. ``ema_decay`` validates and tests an exponential
    moving average of the weights, updated after every ``ema_every_n_steps``-th step
    from ``ema_start_step`` on (``callbacks.ema_weights``; the steps Lightning's callback
    picks), with PyTorch's own ``AveragedModel``.
    """
    torch.manual_seed(seed)
    image_shape = tuple(datamodule.image_shape)
    levels = int(datamodule.levels)
    model = ReferenceVAE(cfg, image_shape, levels)
    train_images, val_images, test_images = (
        datamodule.train_images.cpu(),
        datamodule.val_images.cpu(),
        datamodule.test_images.cpu(),
    )
    if init_output_bias:
        with torch.no_grad():
            mean = model.likelihood.prepare(train_images, levels).mean(dim=0)
            last = [m for m in model.decoder.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose2d))][-1]
            bias = model.likelihood.output_bias(mean)
            last.bias.copy_(bias.flatten() if isinstance(last, nn.Linear) else bias.mean(dim=(1, 2)))
    optimizer = instantiate(cfg.model.optimizer)(params=model.parameters())
    average = (
        None
        if ema_decay is None
        else torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay), use_buffers=True
        )
    )
    scored = model if average is None else average.module
    batch_size = int(cfg.data.batch_size)
    iw_samples = int(cfg.model.get("train_iw_samples", 1))
    gradient = cfg.model.get("iw_gradient", "standard")
    dreg = getattr(gradient, "value", gradient) == "dreg"
    generator = torch.Generator().manual_seed(seed)
    best: tuple[float, int, dict] = (-math.inf, -1, {})
    history: list[float] = []
    if schedule is not None and time_budget_s is None:
        raise ValueError("a time-budget schedule needs time_budget_s")
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    steps, started, out_of_time = 0, time.perf_counter(), False
    for epoch in range(epochs):
        model.train()
        for batch in _batches(train_images, batch_size, generator):
            if schedule is not None:
                factor = lr_factor(schedule, (time.perf_counter() - started) / time_budget_s, final_fraction)
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * factor
            x = model.likelihood.prepare(batch, levels)
            optimizer.zero_grad(set_to_none=True)
            if iw_samples > 1:
                loss = model.importance_weighted_loss(x, iw_samples, dreg)
            else:
                log_px, kl_per_dim, _ = model.terms(x)
                loss = model.beta * kl_per_dim.sum(dim=1).mean() - log_px.mean()
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"reference loop: non-finite loss at epoch {epoch}")
            if loss.requires_grad:  # (DReG has set the gradients already)
                loss.backward()
            optimizer.step()
            if average is not None and steps >= ema_start_step and steps % ema_every_n_steps == 0:
                average.update_parameters(model)
            steps += 1
            if time_budget_s is not None and time.perf_counter() - started >= time_budget_s:
                out_of_time = True
                break
        if scored.is_optimal:
            _measure_optimal_mse(scored, train_images, levels, eval_batch_size)
        val = _evaluate(scored, val_images, levels, eval_batch_size)["elbo"]
        history.append(val)
        if val > best[0]:
            best = (val, epoch, {"state": copy.deepcopy(scored.state_dict()), "eval_mse": scored.eval_mse})
        if out_of_time:
            break
    train_seconds = time.perf_counter() - started
    scored.load_state_dict(best[2]["state"])
    scored.eval_mse = best[2]["eval_mse"]
    test = _evaluate(scored, test_images, levels, eval_batch_size)
    return ReferenceResult(
        elbo=test["elbo"],
        recon=test["recon"],
        kl=test["kl"],
        active_units=test["active_units"],
        best_epoch=best[1],
        val_elbo=history,
        steps=steps,
        train_seconds=train_seconds,
    )
