"""A blur statistic that needs no network: the variance of the Laplacian.

The Laplacian (a 3x3 second-difference filter) responds to edges and fine detail and
is zero on flat or linearly shaded regions; a blurred image has a smaller response,
so the variance of the response over an image falls with blur (Pech-Pacheco et al.,
2000, as a focus measure). It was chosen over the share of spectral energy above a
cut-off frequency because it has no cut-off to choose and works unchanged from 8x8
digits to 32x32 colour images. Reported as a ratio to the same statistic of real
test images: 1 is as sharp as the data, below 1 blurrier, above 1 noisier or
sharper than the data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian_variance(images: Tensor) -> Tensor:
    """Per image (B,): the variance over pixels of the 3x3 Laplacian of each channel
    (no padding, so borders add no artificial edges), averaged over channels. Images
    are (B, C, H, W) intensities, in [0, 1] for numbers comparable across models."""
    images = images.float()
    channels = images.shape[1]
    kernel = _LAPLACIAN.to(images.device).expand(channels, 1, 3, 3)
    response = F.conv2d(images, kernel, groups=channels)
    return response.flatten(2).var(dim=2, unbiased=False).mean(dim=1)


def sharpness_ratio(images: Tensor, reference: Tensor) -> float:
    """Mean Laplacian variance of ``images`` over that of ``reference`` (the test images)."""
    return float(laplacian_variance(images).mean() / laplacian_variance(reference).mean())
