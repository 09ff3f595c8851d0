"""The importance-weighted bound (Burda et al., 2016) of a VAE, in memory-bounded chunks.

Plain functions of an :class:`Autoencoder` (anything with ``encode``, ``decode`` and a
``likelihood``, as :class:`vaelab.model.vae.VAE` has), so the bound can be computed
and tested without Lightning. The VAE's methods of the same names call these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from vaelab.model import maths
from vaelab.model.likelihoods import Likelihood


class Autoencoder(Protocol):
    likelihood: Likelihood

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]: ...

    def decode(self, z: Tensor) -> Tensor: ...


@dataclass
class ImportanceSamples:
    """``num_samples`` draws z_k ~ q(z|x) per example and what they score."""

    log_weights: Tensor  # log p(x, z_k) - log q(z_k|x), (K, B)
    log_px: Tensor  # log p(x|z_k), (K, B)
    z: Tensor  # (K, B, latent_dim)
    mu: Tensor  # q's mean and log-variance, (B, latent_dim)
    log_var: Tensor
    decoder_out: Tensor  # (K * B, ...)


def draw_importance_samples(
    model: Autoencoder,
    x: Tensor,
    num_samples: int,
    stop_q_gradient: bool = False,
    posterior: tuple[Tensor, Tensor] | None = None,
) -> ImportanceSamples:
    """Draw z_k = mu + sigma * eps_k, k = 1..``num_samples``, and their log-weights.
    ``stop_q_gradient``: log q(z_k|x) takes mu and sigma as constants, so gradients reach
    the encoder only through z_k (the path DReG's estimator is built on).
    ``posterior``: q's (mu, log_var) of ``x`` when already computed (the chunks of one
    bound share them)."""
    mu, log_var = posterior if posterior is not None else model.encode(x)
    eps = torch.randn((num_samples, *mu.shape), device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * log_var) * eps
    decoder_out = model.decode(z.flatten(0, 1))
    with maths.full_precision(x):
        log_px = model.likelihood.log_prob_repeated(decoder_out, x)
        q_mu, q_log_var = (mu.detach(), log_var.detach()) if stop_q_gradient else (mu, log_var)
        log_w = log_px + maths.standard_normal_log_prob(z) - maths.diagonal_normal_log_prob(z, q_mu, q_log_var)
    return ImportanceSamples(log_w, log_px, z, mu, log_var, decoder_out)


def log_importance_weights(model: Autoencoder, x: Tensor, num_samples: int) -> Tensor:
    """log p(x, z_k) - log q(z_k|x) for ``num_samples`` draws: shape (num_samples, B)."""
    return draw_importance_samples(model, x, num_samples).log_weights


def importance_weighted_objective(
    model: Autoencoder, x: Tensor, num_samples: int, gradient: str = "standard"
) -> tuple[Tensor, Tensor, ImportanceSamples]:
    """The IWAE training objective (Burda et al., 2016): (loss, bound, samples).

    ``bound`` is log (1/K) sum_k w_k per example, (B,); ``loss`` is what to
    differentiate, a scalar whose gradient is the gradient of -mean(bound) in
    expectation, by one of two estimators:

    - ``standard``: -mean(bound) itself. Its encoder gradient holds the score term
      d log q / d(mu, sigma), whose signal-to-noise ratio falls like 1/sqrt(K) (Rainforth
      et al., 2018): the larger K, the worse the encoder learns.
    - ``dreg``: the doubly reparameterised gradient (Tucker et al., 2019). With
      normalised weights w~_k = w_k / sum_j w_j held constant, the decoder's gradient is
      the standard one, sum_k w~_k d log w_k / d theta; the encoder's is
      sum_k w~_k^2 (d log w_k / d z_k)(d z_k / d phi), with q's parameters held constant
      in log q(z_k|x) (no score term). One backward pass: the loss is
      -mean(sum_k w~_k log w_k) and a hook on z multiplies its gradient by w~_k once more.
      Its value is not the bound; log ``bound``.
    """
    if gradient == "standard":
        samples = draw_importance_samples(model, x, num_samples)
        bound = torch.logsumexp(samples.log_weights, dim=0) - math.log(num_samples)
        return -bound.mean(), bound.detach(), samples
    if gradient != "dreg":
        raise ValueError(f"unknown IWAE gradient estimator {gradient!r}: standard or dreg")
    samples = draw_importance_samples(model, x, num_samples, stop_q_gradient=True)
    bound = torch.logsumexp(samples.log_weights, dim=0) - math.log(num_samples)
    weights = torch.softmax(samples.log_weights.detach(), dim=0)
    if samples.z.requires_grad:
        samples.z.register_hook(lambda grad: grad * weights.unsqueeze(-1).to(grad.dtype))
    loss = -(weights * samples.log_weights).sum(dim=0).mean()
    return loss, bound.detach(), samples


def samples_per_chunk(x: Tensor, num_samples: int, params_per_channel: int, chunk_elements: int) -> int:
    """How many of the ``num_samples`` draws fit in one chunk whose decoder output
    (``params_per_channel`` numbers per input number) has at most ``chunk_elements`` numbers."""
    per_sample = x.shape[0] * math.prod(x.shape[1:]) * params_per_channel
    return max(1, min(num_samples, chunk_elements // max(1, per_sample)))


@torch.no_grad()
def importance_weighted_log_likelihood(model: Autoencoder, x: Tensor, num_samples: int, chunk_elements: int) -> Tensor:
    """The IWAE bound log (1/K) sum_k p(x, z_k)/q(z_k|x) per example (Burda et al., 2016).

    Samples are drawn in chunks sized so that one chunk's decoder output has at
    most ``chunk_elements`` numbers, and combined with a running logsumexp,
    so K = 5000 fits in memory for any batch size.
    """
    chunk = samples_per_chunk(x, num_samples, model.likelihood.params_per_channel, chunk_elements)
    posterior = model.encode(x)  # once, not once per chunk: every chunk draws from the same q
    return maths.importance_weighted_bound(
        lambda k: draw_importance_samples(model, x, k, posterior=posterior).log_weights, num_samples, chunk
    )
