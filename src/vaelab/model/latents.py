"""How much of the latent space a model uses: active units and the KL per dimension.

Posterior collapse (the decoder ignores z, every q(z|x) equals the prior) shows as a
test KL near zero; a partial collapse only per dimension (:mod:`vaelab.model.collapse`
says when a run counts as collapsed). :class:`LatentUsage` accumulates what both need
over an evaluation set as sums, so torchmetrics adds them up across DDP processes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from vaelab.model.collapse import ACTIVE_UNIT_THRESHOLD


class LatentUsage(Metric):
    """Per-dimension variance over the data of the posterior mean, and mean KL."""

    full_state_update = False

    def __init__(self, latent_dim: int, **kwargs):
        super().__init__(**kwargs)
        zeros = torch.zeros(latent_dim, dtype=torch.float64)
        self.add_state("mu_sum", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("mu_sq_sum", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("kl_sum", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mu: Tensor, kl_per_dim: Tensor) -> None:
        """``mu``: posterior means (B, L); ``kl_per_dim``: KL per image and dimension (B, L)."""
        mu = mu.detach().double()
        self.mu_sum += mu.sum(dim=0)
        self.mu_sq_sum += mu.square().sum(dim=0)
        self.kl_sum += kl_per_dim.detach().double().sum(dim=0)
        self.count += mu.shape[0]

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp(min=1.0)
        mean = self.mu_sum / n
        variance = (self.mu_sq_sum / n - mean.square()).clamp(min=0.0)
        return {
            "posterior_mean_variance": variance.float(),
            "kl_per_dim": (self.kl_sum / n).float(),
            "active_units": (variance > ACTIVE_UNIT_THRESHOLD).sum(),
        }
