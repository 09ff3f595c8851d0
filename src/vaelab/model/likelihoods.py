"""Decoder likelihoods p(x|z): how the decoder's output becomes a log-probability.

A likelihood owns three things the VAE should not have to know about:
how a batch of uint8 images becomes the float tensor the model sees (scaling,
dequantisation, binarisation), how many output channels the decoder needs per
data channel, and log p(x|z) itself. The Gaussian's sigma lives here too,
whatever its mode, so that sigma is one config switch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vaelab.model import maths
from vaelab.settings import (
    BernoulliLikelihoodSchema,
    Binarize,
    GaussianLikelihoodSchema,
    OptimalShape,
    SigmaMode,
    check_choice,
    check_log_sigma_bounds,
    check_range,
    choices,
)

# The choices, defaults and ranges of the likelihoods' arguments are vaelab.settings's.
SIGMA_MODES = choices(SigmaMode)
OPTIMAL_SHAPES = choices(OptimalShape)
BINARIZE_MODES = choices(Binarize)


class Likelihood(nn.Module):
    """Interface shared by the likelihoods (see module docstring)."""

    #: decoder output channels per data channel
    params_per_channel: int = 1
    #: whether ``model.init_output_bias=null`` (the default) starts the decoder at the
    #: mean image: measured per likelihood against a plain loop (BENCHMARKS.md, "Where
    #: training starts"); the mean-image start collapses Gaussian posteriors
    init_output_bias_by_default: bool = False

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

    def dequantization_levels(self, levels: int) -> int | None:
        """The ``levels`` of the dequantisation correction bits/dim add (D log levels),
        or None where log_prob is not a density of uniformly dequantised integers (a
        probability mass needs no correction; a density of undequantised data bounds
        nothing, so it gets none)."""
        return None

    def data_model(self) -> str:
        """What the likelihood scores, in words: runs compare by NLL or bits/dim only
        when this (and the data set) is the same."""
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

    # no collapse to undo, and on binarised MNIST the start at the mean image's logits
    # trains as well as PyTorch's (BENCHMARKS.md, "Where training starts")
    init_output_bias_by_default = True

    def __init__(
        self, image_shape: tuple[int, int, int], binarize: Binarize | str = BernoulliLikelihoodSchema.binarize
    ):
        super().__init__(image_shape)
        self.binarize = check_choice("likelihood.binarize", binarize, Binarize)

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

    def data_model(self) -> str:
        return "binary" if self.binarize == "none" else f"binarised ({self.binarize})"


class GaussianLikelihood(Likelihood):
    """Diagonal Gaussian decoder N(x; mu(z), sigma^2) with the full log-density.

    sigma modes:
      fixed           sigma = ``sigma_value``
      learned_shared  one learned log-sigma for the whole image
      learned_pixel   one learned log-sigma per pixel and channel, independent of z
      predicted       the decoder outputs a per-pixel log-sigma for each z
      optimal         sigma^2 = MSE of the batch (Rybkin et al., 2021), over the
                      whole image (``optimal_shape=shared``) or per pixel. In eval
                      mode sigma^2 is the buffer ``train_mse``: the MSE of the
                      current weights on training data, measured before each
                      validation and test (VAE.measure_sigma_on_training_data) and
                      saved with the weights, so test data never choose their own
                      sigma and the sigma scored is that of the weights scored.
    Learned, predicted and optimal log-sigma have a soft floor ``log_sigma_min``;
    predicted also a soft ceiling ``log_sigma_max``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        sigma: SigmaMode | str = GaussianLikelihoodSchema.sigma,
        sigma_value: float = GaussianLikelihoodSchema.sigma_value,
        sigma_init: float = GaussianLikelihoodSchema.sigma_init,
        log_sigma_min: float = GaussianLikelihoodSchema.log_sigma_min,
        log_sigma_max: float = GaussianLikelihoodSchema.log_sigma_max,
        optimal_shape: OptimalShape | str = GaussianLikelihoodSchema.optimal_shape,
        dequantize: bool = GaussianLikelihoodSchema.dequantize,
    ):
        super().__init__(image_shape)
        sigma = check_choice("likelihood.sigma", sigma, SigmaMode)
        optimal_shape = check_choice("likelihood.optimal_shape", optimal_shape, OptimalShape)
        check_range("likelihood.sigma_value", sigma_value)
        check_range("likelihood.sigma_init", sigma_init)
        check_log_sigma_bounds(log_sigma_min, log_sigma_max)
        self.sigma_mode = sigma
        self.log_sigma_min = float(log_sigma_min)
        self.log_sigma_max = float(log_sigma_max)
        self.optimal_shape = optimal_shape
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
            # sigma^2 in eval mode: the training MSE of the weights it is saved with
            self.register_buffer("train_mse", torch.full(shape, sigma_init**2))
            #: the latest training batch's MSE (what training scored with), for logging
            self._batch_mse: Tensor | None = None

    # -- data -------------------------------------------------------------------------
    def prepare(self, images: Tensor, levels: int) -> Tensor:
        if self.dequantize:
            # Uniform dequantisation: a density on [0, 1] that is a bound on the
            # discrete likelihood, and no pixel is ever exactly constant.
            return (images.float() + torch.rand(images.shape, device=images.device)) / levels
        return images.float() / (levels - 1)

    @property
    def init_output_bias_by_default(self) -> bool:  # type: ignore[override]
        """Only a predicted sigma starts at the mean image (with log-sigma at
        ``sigma_init``): measured against a plain loop on MNIST and digits over seeds
        and betas 0.25-4 (BENCHMARKS.md, "Where training starts"), the mean-image start
        collapses or sets back the posterior of every other sigma mode on MNIST, and
        trains a predicted sigma better, with more active units."""
        return self.sigma_mode == "predicted"

    def dequantization_levels(self, levels: int) -> int | None:
        return levels if self.dequantize else None

    def data_model(self) -> str:
        return "dequantised" if self.dequantize else "not dequantised"

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
            self._batch_mse = mse.detach()
        else:
            mse = self.train_mse
        return maths.soft_floor(0.5 * torch.log(mse), self.log_sigma_min)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Checkpoints written before 2026-12-01 kept a running average as
        ``running_mse`` (and an update count): loaded as ``train_mse``, which the next
        validation or test measures again anyway."""
        if f"{prefix}running_mse" in state_dict:
            state_dict[f"{prefix}train_mse"] = state_dict.pop(f"{prefix}running_mse")
            state_dict.pop(f"{prefix}num_mse_updates", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def measures_sigma_on_training_data(self) -> bool:
        """True for ``optimal``: eval-mode sigma must be measured with the weights."""
        return self.sigma_mode == "optimal"

    def squared_error(self, decoder_out: Tensor, x: Tensor) -> Tensor:
        """(x - mean)^2 summed over the batch: (C, H, W). Summed over images (not
        averaged) so shards of the training data add up across processes."""
        return (x - self.mean(decoder_out).float()).square().sum(dim=0)

    @torch.no_grad()
    def set_train_mse(self, squared_error_sum: Tensor, num_images: int) -> None:
        """``train_mse`` from :meth:`squared_error` summed over ``num_images`` images."""
        per_pixel = squared_error_sum / num_images
        self.train_mse.copy_(per_pixel if self.optimal_shape == "pixel" else per_pixel.mean())

    def batch_mse(self, mean: Tensor, x: Tensor) -> Tensor:
        """The optimal sigma^2 for this batch: MSE over everything, or per pixel."""
        sq = (x - mean.float()).square()
        return sq.mean() if self.optimal_shape == "shared" else sq.mean(dim=0)

    def log_prob(self, decoder_out: Tensor, x: Tensor) -> Tensor:
        mean = self.mean(decoder_out).float()
        return maths.gaussian_log_prob(x, mean, self.log_sigma_for(decoder_out, x))

    # -- reporting -------------------------------------------------------------------------
    def current_sigma(self, decoder_out: Tensor) -> Tensor:
        """The sigma that scores data now, for logging and plots: in training, for
        ``optimal``, the latest batch's."""
        if self.sigma_mode == "optimal":
            mse = self._batch_mse if self.training and self._batch_mse is not None else self.train_mse
            return torch.exp(maths.soft_floor(0.5 * torch.log(mse), self.log_sigma_min))
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
