"""sigma=optimal's eval-mode sigma, measured on training data with the current weights.

The squared error of one-sample reconstructions of (up to SIGMA_MEASUREMENT_IMAGES)
training images, each DDP process a share, summed across them, becomes the
likelihood's ``train_mse`` (GaussianLikelihood.set_train_mse). The VAE runs this
before every validation and test, so the sigma that scores a checkpoint is the one
its weights have on training data (a running average of training batches lags the
weights and overstates it), and test data never choose their own sigma.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from vaelab.model import maths
from vaelab.model.importance import Autoencoder

#: training images the eval-mode sigma of sigma=optimal is measured on (a fixed subset:
#: enough that its standard error is far below a nat, cheap beside an epoch)
SIGMA_MEASUREMENT_IMAGES = 10_000
#: input numbers reconstructed at once while measuring (bounds the temporaries)
MEASUREMENT_CHUNK_ELEMENTS = 2**22


@torch.no_grad()
def measure_train_mse(
    model: Autoencoder,
    images: Tensor,
    levels: int,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    reduce_sum: Callable[[Tensor], Tensor] | None = None,
) -> None:
    """Set ``model.likelihood``'s ``train_mse`` from uint8 training ``images``: this
    process scores ``images[rank::world]`` of the first SIGMA_MEASUREMENT_IMAGES;
    ``reduce_sum`` (with ``world > 1``) sums the squared errors and counts across processes."""
    likelihood = model.likelihood
    image_shape = tuple(images.shape[1:])
    shard = images[:SIGMA_MEASUREMENT_IMAGES][rank::world]
    total = torch.zeros(image_shape, device=device)
    chunk = max(1, MEASUREMENT_CHUNK_ELEMENTS // math.prod(image_shape))
    for start in range(0, shard.shape[0], chunk):
        x = likelihood.prepare(shard[start : start + chunk].to(device), levels)
        mu, log_var = model.encode(x)
        decoder_out = model.decode(maths.reparameterize(mu, log_var))
        with maths.full_precision(x):
            total += likelihood.squared_error(decoder_out, x)
    packed = torch.cat([total.flatten(), total.new_tensor([shard.shape[0]])])
    if world > 1 and reduce_sum is not None:
        packed = reduce_sum(packed)
    likelihood.set_train_mse(packed[:-1].view(image_shape), int(packed[-1].item()))
