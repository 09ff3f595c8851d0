"""Decoder likelihoods p(x|z): how the decoder's output becomes a log-probability.

A likelihood owns three things the VAE should not have to know about:
how a batch of uint8 images becomes the float tensor the model sees (scaling,
dequantisation, binarisation), how many output channels the decoder needs per
data channel, and log p(x|z) itself. The Gaussian's sigma lives here too,
whatever its mode, so that sigma is one config switch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from vaelab.model import maths
from vaelab.settings import (
    BernoulliLikelihoodSchema,
    Binarize,
    ContinuousBernoulliLikelihoodSchema,
    DiscretizedLogisticLikelihoodSchema,
    GaussianLikelihoodSchema,
    GaussianLowRankLikelihoodSchema,
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


def _noise(
    draw: Callable[..., Tensor], shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None
) -> Tensor:
    """``draw`` (torch.rand or torch.randn) of ``shape`` on ``like``'s device and dtype,
    drawn where ``generator`` lives (a CPU generator makes the same draws on any device)."""
    device = generator.device if generator is not None else like.device
    return draw(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


class Likelihood(nn.Module):
    """Interface shared by the likelihoods (see module docstring)."""

    #: decoder output channels per data channel
    params_per_channel: int = 1
    #: whether ``model.init_output_bias=null`` (the default) starts the decoder at the
    #: mean image: measured per likelihood against a plain loop (BENCHMARKS.md, "Where
    #: training starts"); the mean-image start collapses Gaussian posteriors
    init_output_bias_by_default: bool = False
    #: the setting that keeps the likelihood's scale away from 0, which a diverged run
    #: is told to raise (:class:`vaelab.exceptions.NonFiniteLossError`); None where the
    #: likelihood has no scale (a Bernoulli's logits)
    scale_floor: str | None = None

    def __init__(self, image_shape: tuple[int, int, int]):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)

    def prepare(self, images: Tensor, levels: int) -> Tensor:
        """uint8 images (B, C, H, W) with ``levels`` intensities -> float model inputs."""
        raise NotImplementedError

    def log_prob(self, decoder_out: Tensor, x: Tensor) -> Tensor:
        """log p(x|z) per example, summed over every pixel and channel: shape (B,)."""
        raise NotImplementedError

    def log_prob_repeated(self, decoder_out: Tensor, x: Tensor) -> Tensor:
        """log p(x|z_k) of each of B examples ``x`` under K decoder outputs each
        (``decoder_out`` of K * B examples, sample-major, as the importance-weighted
        bound decodes them): shape (K, B). Here, :meth:`log_prob` of K copies of x; a
        likelihood may compute it without the copies."""
        k = decoder_out.shape[0] // x.shape[0]
        return self.log_prob(decoder_out, x.unsqueeze(0).expand(k, *x.shape).flatten(0, 1)).view(k, -1)

    def mean(self, decoder_out: Tensor) -> Tensor:
        """The decoder's mean image, for reconstructions and samples."""
        raise NotImplementedError

    def sample(self, decoder_out: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One draw of x ~ p(x|z) per decoder output, in the model's input space (what
        :meth:`prepare` returns) and of the shape of :meth:`mean`: the mean image's
        noisy counterpart. A draw lies in the distribution's support, clamped to [0, 1]
        only where that is the support; ``generator`` (on any device) makes it repeatable."""
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


class DequantizedDensity(Likelihood):
    """A density on [0, 1] of integer pixel values (the Gaussians, the continuous
    Bernoulli): with ``dequantize`` (the default) it scores (x + u) / levels, u ~ U(0, 1),
    a bound on the likelihood of the integers in which no pixel is ever exactly
    constant, and bits/dim add the correction D log levels; without, it scores
    x / (levels - 1), which bounds nothing, and gets no correction. One class so that
    every such density prepares, corrects and names its data the same way, and their
    bits/dim compare."""

    def __init__(self, image_shape: tuple[int, int, int], dequantize: bool):
        super().__init__(image_shape)
        self.dequantize = bool(dequantize)

    def prepare(self, images: Tensor, levels: int) -> Tensor:
        if self.dequantize:
            return (images.float() + torch.rand(images.shape, device=images.device)) / levels
        return images.float() / (levels - 1)

    def dequantization_levels(self, levels: int) -> int | None:
        return levels if self.dequantize else None

    def data_model(self) -> str:
        return "dequantised" if self.dequantize else "not dequantised"


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

    def log_prob_repeated(self, decoder_out: Tensor, x: Tensor) -> Tensor:
        return maths.bernoulli_log_prob_repeated(x, decoder_out.float())

    def mean(self, decoder_out: Tensor) -> Tensor:
        return torch.sigmoid(decoder_out)

    def sample(self, decoder_out: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A binary image: 1 where u < sigmoid(logits), u ~ U(0, 1)."""
        probs = torch.sigmoid(decoder_out.float())
        return (_noise(torch.rand, tuple(probs.shape), probs, generator) < probs).to(probs.dtype)

    def output_bias(self, data_mean: Tensor) -> Tensor:
        return torch.logit(data_mean, eps=1e-3)

    def data_model(self) -> str:
        return "binary" if self.binarize == "none" else f"binarised ({self.binarize})"


class GaussianLikelihood(DequantizedDensity):
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
        super().__init__(image_shape, dequantize)
        sigma = check_choice("likelihood.sigma", sigma, SigmaMode)
        optimal_shape = check_choice("likelihood.optimal_shape", optimal_shape, OptimalShape)
        check_range("likelihood.sigma_value", sigma_value)
        check_range("likelihood.sigma_init", sigma_init)
        check_log_sigma_bounds(log_sigma_min, log_sigma_max)
        self.sigma_mode = sigma
        self.scale_floor = "likelihood.sigma_value" if sigma == "fixed" else "likelihood.log_sigma_min"
        self.log_sigma_min = float(log_sigma_min)
        self.log_sigma_max = float(log_sigma_max)
        self.optimal_shape = optimal_shape
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

    @property
    def init_output_bias_by_default(self) -> bool:  # type: ignore[override]
        """Only a predicted sigma starts at the mean image (with log-sigma at
        ``sigma_init``): measured against a plain loop on MNIST and digits over seeds
        and betas 0.25-4 (BENCHMARKS.md, "Where training starts"), the mean-image start
        collapses or sets back the posterior of every other sigma mode on MNIST, and
        trains a predicted sigma better, with more active units."""
        return self.sigma_mode == "predicted"

    # -- the decoder's output ------------------------------------------------------------
    def output_bias(self, data_mean: Tensor) -> Tensor:
        if self.sigma_mode == "predicted":
            return torch.cat([data_mean, torch.full_like(data_mean, self.initial_log_sigma)])
        return data_mean

    def mean(self, decoder_out: Tensor) -> Tensor:
        if self.sigma_mode == "predicted":
            return decoder_out.chunk(2, dim=1)[0]
        return decoder_out

    def sample(self, decoder_out: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """mean + sigma * eps, eps ~ N(0, I), with the sigma that scores data in eval mode
        (for ``optimal``, ``train_mse``'s, whether the module is training or not). Not
        clamped: a Gaussian's draws leave [0, 1]."""
        mean = self.mean(decoder_out).float()
        sigma = torch.exp(self.log_sigma_for(decoder_out)).expand_as(mean)
        return mean + sigma * _noise(torch.randn, tuple(mean.shape), mean, generator)

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


class GaussianLowRankLikelihood(DequantizedDensity):
    """Gaussian decoder with a low-rank plus diagonal covariance per image (structured
    uncertainty: Dorta et al., CVPR 2018; SOS-VAE, TMLR 2022):

        p(x|z) = N(x; mu(z), diag(sigma(z)^2) + U(z) U(z)^T)

    over all D = C * H * W numbers of an image, U of shape D x ``rank``. The independent
    Gaussian must explain every correlated residual (a stroke a pixel to the side) as
    noise, or blur the mean to hedge; U models those residuals as a few directions of
    correlated variation instead. The log-density is the full one
    (:func:`vaelab.model.maths.low_rank_gaussian_log_prob`: Woodbury identity and the
    matrix determinant lemma, O(D r^2) per image), so its nats and bits/dim compare with
    the diagonal Gaussian's (the same dequantisation, ``dequantization_levels`` and
    ``data_model``).

    The decoder outputs 2 + rank channels per data channel: the mean, the raw log-sigma
    (soft-clamped to (``log_sigma_min``, ``log_sigma_max``), as sigma=predicted's) and
    the rank columns of U, each laid out like the image. U is the raw columns times
    ``factor_scale`` / sqrt(rank): the variance U adds to a pixel, sum_k U_dk^2, then
    starts at the scale of factor_scale^2 times one raw output's whatever the rank, so
    a higher rank does not start with noisier images. Training was stable on digits
    (MLP, 30 epochs) at factor_scale 1, 0.1 and 0.01, ranks 2 and 10, and with the
    mean-image start; in every one of them the posterior all but collapsed (test KL
    0.3-1.7 nats, against 5.5 for sigma=predicted): a rank-10 Gaussian of 8x8 digits
    is a fair density of them without z (factor analysis), so a VAE with this decoder
    may need KL warm-up or free bits to use its latents.

    ``init_output_bias_by_default`` is False (as for the Gaussian's sigma modes but
    predicted: not measured against the plain loop for this decoder); with
    ``model.init_output_bias=true`` the decoder starts at the mean image, log-sigma at
    log(``sigma_init``) and U = 0 (the diagonal Gaussian of sigma=predicted).
    """

    scale_floor = "likelihood.log_sigma_min"

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        rank: int = GaussianLowRankLikelihoodSchema.rank,
        factor_scale: float = GaussianLowRankLikelihoodSchema.factor_scale,
        sigma_init: float = GaussianLowRankLikelihoodSchema.sigma_init,
        log_sigma_min: float = GaussianLowRankLikelihoodSchema.log_sigma_min,
        log_sigma_max: float = GaussianLowRankLikelihoodSchema.log_sigma_max,
        dequantize: bool = GaussianLowRankLikelihoodSchema.dequantize,
    ):
        super().__init__(image_shape, dequantize)
        check_range("likelihood.rank", rank)
        check_range("likelihood.factor_scale", factor_scale)
        check_range("likelihood.sigma_init", sigma_init)
        check_log_sigma_bounds(log_sigma_min, log_sigma_max)
        self.rank = int(rank)
        #: what multiplies the decoder's raw columns of U
        self.factor_multiplier = float(factor_scale) / math.sqrt(self.rank)
        self.initial_log_sigma = math.log(sigma_init)
        self.log_sigma_min = float(log_sigma_min)
        self.log_sigma_max = float(log_sigma_max)
        self.params_per_channel = 2 + self.rank

    def parts(self, decoder_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The mean (B, C, H, W), log-sigma (B, C, H, W) and U^T (B, rank, C, H, W)."""
        channels = self.image_shape[0]
        out = decoder_out.float()
        mean, raw_log_sigma = out[:, :channels], out[:, channels : 2 * channels]
        factor = out[:, 2 * channels :].unflatten(1, (self.rank, channels)) * self.factor_multiplier
        return mean, maths.soft_clamp(raw_log_sigma, self.log_sigma_min, self.log_sigma_max), factor

    def log_prob(self, decoder_out: Tensor, x: Tensor) -> Tensor:
        mean, log_sigma, factor = self.parts(decoder_out)
        return maths.low_rank_gaussian_log_prob(x, mean, log_sigma, factor)

    def mean(self, decoder_out: Tensor) -> Tensor:
        return decoder_out[:, : self.image_shape[0]]

    def sample(self, decoder_out: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """mean + sigma * eps1 + U eps2, eps1 ~ N(0, I_D), eps2 ~ N(0, I_rank): the noise
        is correlated across pixels along U's columns. Not clamped."""
        mean, log_sigma, factor = self.parts(decoder_out)
        eps1 = _noise(torch.randn, tuple(mean.shape), mean, generator)
        eps2 = _noise(torch.randn, (mean.shape[0], self.rank), mean, generator)
        return mean + torch.exp(log_sigma) * eps1 + torch.einsum("br...,br->b...", factor, eps2)

    def output_bias(self, data_mean: Tensor) -> Tensor:
        return torch.cat(
            [
                data_mean,
                torch.full_like(data_mean, self.initial_log_sigma),
                torch.zeros(
                    (self.rank * data_mean.shape[0], *data_mean.shape[1:]),
                    dtype=data_mean.dtype,
                    device=data_mean.device,
                ),
            ]
        )

    def sigma_map(self, decoder_out: Tensor | None = None) -> Tensor | None:
        """Each pixel's marginal standard deviation sqrt(sigma^2 + sum_k U_dk^2), (B, C, H, W):
        where the decoder is unsure, whether the diagonal or U carries it."""
        if decoder_out is None:
            return None
        _, log_sigma, factor = self.parts(decoder_out)
        return torch.sqrt(torch.exp(2.0 * log_sigma) + factor.square().sum(dim=1)).detach()


class DiscretizedLogisticLikelihood(Likelihood):
    """A mixture of discretised logistics over the integer intensities (PixelCNN++,
    Salimans et al., 2017): log_prob is a probability mass of the integer pixel values
    themselves, so its bits/dim are exact, with no dequantisation bound and no
    correction (``dequantization_levels`` is None, ``data_model`` "discrete").

    Each pixel and channel has its own mixture of ``components`` logistics: the decoder
    outputs 3 * components channels per data channel (mixture logits, locations, raw
    log-scales, each block laid out like the image). Channels are independent given z:
    PixelCNN++'s linear coupling of R, G and B is autoregressive in the channels, which
    a decoder that outputs every pixel at once does not have. Levels k lie at
    k / (levels - 1) in [0, 1] (:meth:`prepare`, no noise), bins of width
    1 / (levels - 1) centred on them, the edge bins take the tails
    (:func:`vaelab.model.maths.discretized_logistic_log_mass`). The log-scale has a
    soft floor ``log_scale_min``: a mass is at most 1, so it cannot run away as a
    density can; the floor only keeps the scale representable.

    ``mean`` is the exact mean of the discretised mixture (a sum over the levels,
    ``levels - 1`` sigmoids per number and component: 4.4 s per 1000 28x28 images of
    256 levels with 5 components on the 2-core CPU, 30x the log-mass; for digits, 16
    sigmoids per number and component); ``sample`` a draw quantised to the levels, in
    [0, 1]. ``init_output_bias_by_default`` is False (not measured); the output bias
    puts every component at the mean image with a scale of one bin, so the mean starts
    within a bin of the data's mean.
    """

    scale_floor = "likelihood.log_scale_min"

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        levels: int,
        components: int = DiscretizedLogisticLikelihoodSchema.components,
        log_scale_min: float = DiscretizedLogisticLikelihoodSchema.log_scale_min,
    ):
        super().__init__(image_shape)
        check_range("likelihood.components", components)
        if int(levels) < 2:
            raise ValueError(f"a discretised likelihood needs at least 2 intensity levels, got {levels}")
        self.levels = int(levels)
        self.components = int(components)
        self.log_scale_min = float(log_scale_min)
        self.params_per_channel = 3 * self.components

    def prepare(self, images: Tensor, levels: int) -> Tensor:
        if levels != self.levels:
            raise ValueError(f"this likelihood was built for {self.levels} intensity levels, the images have {levels}")
        return images.float() / (levels - 1)

    def data_model(self) -> str:
        return "discrete"

    def parts(self, decoder_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mixture logits, locations and log-scales, each (B, components, C, H, W)."""
        out = decoder_out.float().unflatten(1, (3, self.components, self.image_shape[0]))
        logits, loc, raw_log_scale = out.unbind(dim=1)
        return logits, loc, maths.soft_floor(raw_log_scale, self.log_scale_min)

    def log_prob(self, decoder_out: Tensor, x: Tensor) -> Tensor:
        return maths.discretized_logistic_mixture_log_prob(x, *self.parts(decoder_out), self.levels)

    def mean(self, decoder_out: Tensor) -> Tensor:
        return maths.discretized_logistic_mixture_mean(*self.parts(decoder_out), self.levels)

    def sample(self, decoder_out: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A component by the Gumbel-max trick, a logistic draw loc + scale * logit(u) from
        it, rounded to the nearest level (the bins are centred on the levels) and
        clamped to the edge levels (which take the tails): values k / (levels - 1)."""
        logits, loc, log_scale = self.parts(decoder_out)
        gumbel = -torch.log(-torch.log(_noise(torch.rand, tuple(logits.shape), logits, generator).clamp(1e-12, 1.0)))
        chosen = (logits + gumbel).argmax(dim=1, keepdim=True)
        loc, log_scale = loc.gather(1, chosen).squeeze(1), log_scale.gather(1, chosen).squeeze(1)
        u = _noise(torch.rand, tuple(loc.shape), loc, generator).clamp(1e-6, 1.0 - 1e-6)
        x = loc + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
        top = self.levels - 1
        return torch.round(x * top).clamp(0, top) / top

    def output_bias(self, data_mean: Tensor) -> Tensor:
        n = self.components
        # the raw log-scale that the soft floor maps to one bin's width (inverse softplus)
        gap = torch.tensor(math.log(1.0 / (self.levels - 1)) - self.log_scale_min, dtype=data_mean.dtype)
        raw = self.log_scale_min + torch.log(torch.expm1(gap.clamp(min=1e-6)))
        return torch.cat(
            [
                torch.zeros_like(data_mean).repeat(n, 1, 1),
                data_mean.repeat(n, 1, 1),
                torch.full_like(data_mean, float(raw)).repeat(n, 1, 1),
            ]
        )


class ContinuousBernoulliLikelihood(DequantizedDensity):
    """The continuous Bernoulli (Loaiza-Ganem and Cunningham, 2019) for data in [0, 1]:
    p(x|lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x), the decoder outputs the logits
    of lambda. "BCE on grey images" scores grey data with a Bernoulli, which is no
    density of them; C(lambda) makes it one
    (:func:`vaelab.model.maths.continuous_bernoulli_log_norm`, exact from the logits
    and stable at lambda = 1/2).

    ``mean`` is the CB mean, not sigmoid(logits) (the two differ by up to about 0.24);
    ``sample`` an inverse-CDF draw, in [0, 1]. ``dequantize`` (default on)
    scores uniformly dequantised data as the Gaussian does, so its bits/dim compare
    with the dequantised Gaussian's; off, data_model is "not dequantised" and bits/dim
    bound nothing. ``init_output_bias_by_default`` is False (not measured); the output
    bias is the logits whose CB mean is the data's mean image.
    """

    def __init__(
        self, image_shape: tuple[int, int, int], dequantize: bool = ContinuousBernoulliLikelihoodSchema.dequantize
    ):
        super().__init__(image_shape, dequantize)

    def log_prob(self, decoder_out: Tensor, x: Tensor) -> Tensor:
        return maths.continuous_bernoulli_log_prob(x, decoder_out.float())

    def mean(self, decoder_out: Tensor) -> Tensor:
        return maths.continuous_bernoulli_mean(decoder_out.float())

    def sample(self, decoder_out: Tensor, generator: torch.Generator | None = None) -> Tensor:
        logits = decoder_out.float()
        return maths.continuous_bernoulli_icdf(_noise(torch.rand, tuple(logits.shape), logits, generator), logits)

    @torch.no_grad()
    def output_bias(self, data_mean: Tensor) -> Tensor:
        """The logits whose CB mean is ``data_mean`` (clamped to [1e-4, 1 - 1e-4]): the
        mean is increasing in the logits, so bisection in float64 finds them."""
        target = data_mean.double().clamp(1e-4, 1.0 - 1e-4)
        lo, hi = torch.full_like(target, -2e4), torch.full_like(target, 2e4)
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            below = maths.continuous_bernoulli_mean(mid) < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (0.5 * (lo + hi)).to(data_mean.dtype)
