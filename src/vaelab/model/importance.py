"""The importance-weighted bound (Burda et al., 2016) of a VAE, in memory-bounded chunks.

Plain functions of an :class:`Autoencoder` (anything with ``encode``, ``decode`` and a
``likelihood``, as :class:`vaelab.model.vae.VAE` has), so the bound can be computed
and tested without Lightning. The VAE's methods of the same names call these.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from vaelab.model import maths
from vaelab.model.likelihoods import Likelihood


class Autoencoder(Protocol):
    likelihood: Likelihood

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]: ...

    def decode(self, z: Tensor) -> Tensor: ...


def log_importance_weights(model: Autoencoder, x: Tensor, num_samples: int) -> Tensor:
    """log p(x, z_k) - log q(z_k|x) for ``num_samples`` draws: shape (num_samples, B)."""
    mu, log_var = model.encode(x)
    eps = torch.randn((num_samples, *mu.shape), device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * log_var) * eps
    decoder_out = model.decode(z.flatten(0, 1))
    with maths.full_precision(x):
        x_rep = x.unsqueeze(0).expand(num_samples, *x.shape).flatten(0, 1)
        log_px = model.likelihood.log_prob(decoder_out, x_rep).view(num_samples, -1)
        return log_px + maths.standard_normal_log_prob(z) - maths.diagonal_normal_log_prob(z, mu, log_var)


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
    return maths.importance_weighted_bound(lambda k: log_importance_weights(model, x, k), num_samples, chunk)
