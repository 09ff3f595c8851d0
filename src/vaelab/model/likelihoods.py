"""Decoder likelihoods p(x|z): how the decoder's output becomes a log-probability.

A likelihood owns three things the VAE should not have to know about:
how a batch of uint8 images becomes the float tensor the model sees (scaling,
dequantisation, binarisation), how many output channels the decoder needs per
data channel, and log p(x|z) itself. The Gaussian's sigma lives here too,
whatever its mode, so that sigma is one config switch.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from vaelab.model import maths

SIGMA_MODES = ("fixed", "learned_shared", "learned_pixel", "predicted", "optimal")
OPTIMAL_SHAPES = ("shared", "pixel")
BINARIZE_MODES = ("dynamic", "static", "threshold", "none")


def _check_choice(key: str, value: object, allowed: tuple[str, ...]) -> str:
    """``value`` as a plain string (configs pass enum members), if it is allowed."""
    value = getattr(value, "value", value)
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not allowed; choose one of {', '.join(allowed)}")
    return str(value)


class Likelihood(nn.Module):
    """Interface shared by the likelihoods (see module docstring)."""

    #: decoder output channels per data channel
    params_per_channel: int = 1
    #: True when log_prob is a probability mass (no dequantisation correction in bits/dim)
    is_discrete: bool = False

    def __init__(self, image_shape: tuple[int, int, int]):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)

    def prepare(self, images: Tensor, levels: int) -> Tensor:
        """uint8 images (B, C, H, W) with ``levels`` intensities -> float model inputs."""
        raise NotImplementedError

    def log_prob(self, decoder_out: Tensor, x: Tensor) -> Tensor:
        """log p(x|z) per example, summed over every pixel and channel: shape (B,)."""
        raise NotImplementedError

    def mean(self, decoder_out: Tensor) -> Tensor:
        """The decoder's mean image, for reconstructions and samples."""
        raise NotImplementedError

    def output_bias(self, data_mean: Tensor) -> Tensor:
        """The decoder output that predicts the mean image everywhere: a (C * k, H, W)
        starting bias for the decoder's last layer, so training does not spend its
        first steps learning the average image."""
        raise NotImplementedError

    def sigma_stats(self, decoder_out: Tensor) -> dict[str, Tensor]:
        """Summary statistics of the decoder's sigma (empty for non-Gaussian)."""
        return {}

    def sigma_map(self, decoder_out: Tensor | None = None) -> Tensor | None:
        """A (C, H, W) or (B, C, H, W) map of sigma for plotting, when sigma varies by pixel."""
        return None


class BernoulliLikelihood(Likelihood):
    """Bernoulli decoder for binary images; the decoder outputs logits.

    ``binarize`` says how the binary data arise: ``dynamic`` draws a fresh
    Bernoulli sample of every batch (the standard for MNIST likelihood numbers);
    ``static`` and ``threshold`` are applied once by the data module, so batches
    are already 0/1; ``none`` trusts that the data are binary.
    """

    is_discrete = True

    def __init__(self, image_shape: tuple[int, int, int], binarize: str = "dynamic"):
        super().__init__(image_shape)
        self.binarize = _check_choice("likelihood.binarize", binarize, BINARIZE_MODES)

    def prepare(self, images: Tensor, levels: int) -> Tensor:
        x = images.float() / (levels - 1)
        if self.binarize == "dynamic":
            # the same draw as torch.bernoulli(x), about twice as fast on CPU
            x = (torch.rand_like(x) < x).to(x.dtype)
        return x

    def log_prob(self, decoder_out: Tensor, x: Tensor) -> Tensor:
        return maths.bernoulli_log_prob(x, decoder_out.float())

    def mean(self, decoder_out: Tensor) -> Tensor:
        return torch.sigmoid(decoder_out)

    def output_bias(self, data_mean: Tensor) -> Tensor:
        return torch.logit(data_mean, eps=1e-3)


class GaussianLikelihood(Likelihood):
    """Diagonal Gaussian decoder N(x; mu(z), sigma^2) with the full log-density.

    sigma modes:
      fixed           sigma = ``sigma_value``
      learned_shared  one learned log-sigma for the whole image
      learned_pixel   one learned log-sigma per pixel and channel, independent of z
      predicted       the decoder outputs a per-pixel log-sigma for each z
      optimal         sigma^2 = MSE of the batch (Rybkin et al., 2021), over the
                      whole image (``optimal_shape=shared``) or per pixel. In eval
                      mode sigma comes from a running average of the training MSE
                      kept as a buffer, so test data never choose their own sigma.
    Learned, predicted and optimal log-sigma have a soft floor ``log_sigma_min``;
    predicted also a soft ceiling ``log_sigma_max``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        sigma: str = "learned_shared",
        sigma_value: float = 0.1,
        sigma_init: float = 0.1,
        log_sigma_min: float = -6.0,
        log_sigma_max: float = 2.0,
        optimal_shape: Literal["shared", "pixel"] = "shared",
        optimal_momentum: float = 0.99,
        dequantize: bool = True,
    ):
        super().__init__(image_shape)
        sigma = _check_choice("likelihood.sigma", sigma, SIGMA_MODES)
        optimal_shape = _check_choice("likelihood.optimal_shape", optimal_shape, OPTIMAL_SHAPES)
        if sigma_value <= 0 or sigma_init <= 0:
            raise ValueError("likelihood.sigma_value and likelihood.sigma_init must be > 0")
        if log_sigma_min >= log_sigma_max:
            raise ValueError("likelihood.log_sigma_min must be below likelihood.log_sigma_max")
        self.sigma_mode = sigma
        self.log_sigma_min = float(log_sigma_min)
        self.log_sigma_max = float(log_sigma_max)
        self.optimal_shape = optimal_shape
        self.optimal_momentum = float(optimal_momentum)
        self.dequantize = dequantize
        self.params_per_channel = 2 if sigma == "predicted" else 1
        self.initial_log_sigma = math.log(sigma_init)

        if sigma == "fixed":
            self.register_buffer("fixed_log_sigma", torch.tensor(math.log(sigma_value)))
        elif sigma == "learned_shared":
            self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma_init)))
        elif sigma == "learned_pixel":
            self.log_sigma = nn.Parameter(torch.full(self.image_shape, math.log(sigma_init)))
        elif sigma == "optimal":
            shape = self.image_shape if optimal_shape == "pixel" else ()
            # Running average of the training MSE: the sigma^2 used in eval mode.
            self.register_buffer("running_mse", torch.full(shape, sigma_init**2))
            self.register_buffer("num_mse_updates", torch.tensor(0, dtype=torch.long))

    # -- data -------------------------------------------------------------------------
    def prepare(self, images: Tensor, levels: int) -> Tensor:
        if self.dequantize:
            # Uniform dequantisation: a density on [0, 1] that is a bound on the
            # discrete likelihood, and no pixel is ever exactly constant.
            return (images.float() + torch.rand(images.shape, device=images.device)) / levels
        return images.float() / (levels - 1)

    # -- the decoder's output ------------------------------------------------------------
    def output_bias(self, data_mean: Tensor) -> Tensor:
        if self.sigma_mode == "predicted":
            return torch.cat([data_mean, torch.full_like(data_mean, self.initial_log_sigma)])
        return data_mean

    def mean(self, decoder_out: Tensor) -> Tensor:
        if self.sigma_mode == "predicted":
            return decoder_out.chunk(2, dim=1)[0]
        return decoder_out

    def log_sigma_for(self, decoder_out: Tensor, x: Tensor | None = None) -> Tensor:
        """The log-sigma that scores ``x``; broadcastable to the data's shape."""
        mode = self.sigma_mode
        if mode == "fixed":
            return self.fixed_log_sigma
        if mode in ("learned_shared", "learned_pixel"):
            return maths.soft_floor(self.log_sigma, self.log_sigma_min)
        if mode == "predicted":
            raw = decoder_out.chunk(2, dim=1)[1].float()
            return maths.soft_clamp(raw, self.log_sigma_min, self.log_sigma_max)
        # optimal
        if self.training and x is not None:
            mse = self.batch_mse(self.mean(decoder_out), x)
            self._update_running_mse(mse.detach())
        else:
            mse = self.running_mse
        return maths.soft_floor(0.5 * torch.log(mse), self.log_sigma_min)

    def batch_mse(self, mean: Tensor, x: Tensor) -> Tensor:
        """The optimal sigma^2 for this batch: MSE over everything, or per pixel."""
        sq = (x - mean.float()).square()
        return sq.mean() if self.optimal_shape == "shared" else sq.mean(dim=0)

    @torch.no_grad()
    def _update_running_mse(self, mse: Tensor) -> None:
        if int(self.num_mse_updates) == 0:
            self.running_mse.copy_(mse)
        else:
            self.running_mse.lerp_(mse, 1.0 - self.optimal_momentum)
        self.num_mse_updates += 1

    def log_prob(self, decoder_out: Tensor, x: Tensor) -> Tensor:
        mean = self.mean(decoder_out).float()
        return maths.gaussian_log_prob(x, mean, self.log_sigma_for(decoder_out, x))

    # -- reporting -------------------------------------------------------------------------
    def current_sigma(self, decoder_out: Tensor) -> Tensor:
        """sigma without touching the running MSE (for logging and plots)."""
        if self.sigma_mode == "optimal":
            return torch.exp(maths.soft_floor(0.5 * torch.log(self.running_mse), self.log_sigma_min))
        return torch.exp(self.log_sigma_for(decoder_out))

    def sigma_stats(self, decoder_out: Tensor) -> dict[str, Tensor]:
        sigma = self.current_sigma(decoder_out).detach().float()
        return {
            "sigma_mean": sigma.mean(),
            "sigma_min": sigma.min(),
            "sigma_max": sigma.max(),
            "sigma_sq_mean": sigma.square().mean(),
        }

    def sigma_map(self, decoder_out: Tensor | None = None) -> Tensor | None:
        if self.sigma_mode == "learned_pixel" or (self.sigma_mode == "optimal" and self.optimal_shape == "pixel"):
            return self.current_sigma(decoder_out).detach()
        if self.sigma_mode == "predicted" and decoder_out is not None:
            return self.current_sigma(decoder_out).detach()
        return None
