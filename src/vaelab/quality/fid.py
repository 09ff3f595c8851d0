"""The Frechet distance between feature distributions (FID), with a feature network
of the data set's own (vaelab.quality.feature_net) in place of Inception.

torchmetrics' FrechetInceptionDistance does the statistics (means, covariances and
the matrix square root in float64); it accepts any feature module. Its numbers are
not Inception FIDs and do not compare with published ones: they compare models of
one data set scored with one classifier (the checksum in its cache file's name).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


class FrechetDistance:
    """Real images' features once, then any number of generated sets against them."""

    def __init__(self, features: nn.Module, image_shape: tuple[int, int, int], real: Iterable[Tensor]):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.metric = FrechetInceptionDistance(
            feature=features,
            normalize=True,
            input_img_size=tuple(image_shape),
            reset_real_features=False,
            # measured by one process (rank zero of a DDP run) on every image: its
            # compute must not wait for the other processes' (absent) features
            sync_on_compute=False,
        )
        for batch in real:
            self.metric.update(batch.float(), real=True)

    @torch.no_grad()
    def __call__(self, fake: Iterable[Tensor]) -> float:
        """FID of ``fake`` (batches of (B, C, H, W) intensities in [0, 1])."""
        self.metric.reset()  # the generated features only (reset_real_features=False)
        for batch in fake:
            self.metric.update(batch.float().clamp(0.0, 1.0), real=False)
        return float(self.metric.compute())
