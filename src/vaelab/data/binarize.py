"""Turn intensity images into 0/1 images, for Bernoulli-likelihood models.

- "static": one Bernoulli draw per pixel with p = value / (levels - 1), made
  once from a seeded generator, so the data set is fixed for the whole run
  (the "statically binarised MNIST" protocol).
- "threshold": value / (levels - 1) >= 0.5.
- None / "none" / "dynamic": left as is; with "dynamic" the model resamples
  each batch.  ("none" is the spelling the Bernoulli likelihood's config uses.)

Both transforms run on the CPU, in fixed-size chunks, so the result does not
depend on the device or on the size of the data set beyond each chunk.
"""

from __future__ import annotations

import torch

from vaelab.exceptions import ConfigError
from vaelab.settings import Binarize, choices

#: the likelihood's choices (vaelab.settings.Binarize), and None for data not binarised
BINARIZE_MODES = (None, *choices(Binarize))
_CHUNK = 4096  # images per random draw: bounds the float32 temporary


def check_mode(mode: str | None) -> str | None:
    """``mode`` if allowed (with "none" read as None), else ValueError listing the allowed values."""
    mode = getattr(mode, "value", mode)  # configs pass enum members
    if mode not in BINARIZE_MODES:
        raise ConfigError(f"binarize must be one of {BINARIZE_MODES}, got {mode!r}")
    return None if mode == "none" else mode


def threshold(images: torch.Tensor, levels: int) -> torch.Tensor:
    """uint8 0/1: 1 where value / (levels - 1) >= 0.5, computed exactly in integers."""
    return (images.to(torch.int32) * 2 >= levels - 1).to(torch.uint8)


def bernoulli(images: torch.Tensor, levels: int, generator: torch.Generator) -> torch.Tensor:
    """uint8 0/1: one Bernoulli(value / (levels - 1)) draw per pixel from ``generator``."""
    images = images.cpu()
    out = torch.empty_like(images)
    for start in range(0, images.shape[0], _CHUNK):
        chunk = images[start : start + _CHUNK]
        u = torch.rand(chunk.shape, generator=generator)
        # u lies in [0, 1): value 0 (p = 0) never fires and value L-1 (p = 1.0 exactly) always does.
        out[start : start + _CHUNK] = (u < chunk.to(torch.float32) / (levels - 1)).to(torch.uint8)
    return out
