"""The values users type and sweep: each one's type, default, choices and range, once.

This module is the one home of those values; everything else reads them from here:

- **choices** are the enums below. Hydra checks them while the config is composed
  (``likelihood.sigma=gaussian`` fails listing them; :mod:`vaelab.schema` stores the
  dataclasses in Hydra's ConfigStore), and the likelihoods and the data module check
  the same enums when they are built from Python (:func:`check_choice`).
- **defaults** are the dataclasses' field defaults. The constructors take theirs from
  them (``beta: float = ModelSchema.beta``), and a config in conf/ states only what it
  changes (tests/test_one_home.py fails on a config that restates a default).
- **ranges** that a type cannot express (beta >= 0, lr > 0, ...) are :data:`RANGES`,
  checked by :func:`vaelab.schema.validate` before anything is built and by the
  constructors (:func:`check_range`), with the same one-line message naming the key,
  the value and what is allowed.

It imports no library (neither Hydra nor torch), so the model and data code read it
without pulling in the command line's machinery.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from vaelab.exceptions import ConfigError

# -- choices ------------------------------------------------------------------------------


class SigmaMode(str, Enum):
    fixed = "fixed"
    learned_shared = "learned_shared"
    learned_pixel = "learned_pixel"
    predicted = "predicted"
    optimal = "optimal"


class OptimalShape(str, Enum):
    shared = "shared"
    pixel = "pixel"


class IWGradient(str, Enum):
    """The gradient estimator of the importance-weighted training bound."""

    standard = "standard"
    dreg = "dreg"


class Binarize(str, Enum):
    dynamic = "dynamic"
    static = "static"
    threshold = "threshold"
    none = "none"


def choices(kind: type[Enum]) -> tuple[str, ...]:
    """The allowed values of an enum above, as the strings a config holds."""
    return tuple(member.value for member in kind)


def check_choice(key: str, value: object, kind: type[Enum]) -> str:
    """``value`` (a string or a member of ``kind``) as a plain string, if it is one of
    ``kind``'s; else a ConfigError listing them."""
    value = getattr(value, "value", value)
    allowed = choices(kind)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(allowed)}")
    return str(value)


# -- defaults -----------------------------------------------------------------------------


@dataclass
class GaussianLikelihoodSchema:
    _target_: str = "vaelab.model.likelihoods.GaussianLikelihood"
    sigma: SigmaMode = SigmaMode.learned_shared
    sigma_value: float = 0.1
    sigma_init: float = 0.1
    log_sigma_min: float = -6.0
    log_sigma_max: float = 2.0
    optimal_shape: OptimalShape = OptimalShape.shared
    dequantize: bool = True


@dataclass
class BernoulliLikelihoodSchema:
    _target_: str = "vaelab.model.likelihoods.BernoulliLikelihood"
    binarize: Binarize = Binarize.dynamic


@dataclass
class GaussianLowRankLikelihoodSchema:
    _target_: str = "vaelab.model.likelihoods.GaussianLowRankLikelihood"
    # columns of the per-image factor U (covariance diag(sigma^2) + U U^T)
    rank: int = 10
    # U = factor_scale * (the decoder's raw columns) / sqrt(rank)
    factor_scale: float = 1.0
    sigma_init: float = 0.1
    log_sigma_min: float = -6.0
    log_sigma_max: float = 2.0
    dequantize: bool = True


@dataclass
class DiscretizedLogisticLikelihoodSchema:
    _target_: str = "vaelab.model.likelihoods.DiscretizedLogisticLikelihood"
    # logistic components per pixel and channel
    components: int = 5
    log_scale_min: float = -7.0


@dataclass
class ContinuousBernoulliLikelihoodSchema:
    _target_: str = "vaelab.model.likelihoods.ContinuousBernoulliLikelihood"
    dequantize: bool = True


@dataclass
class ModelSchema:
    _target_: str = "vaelab.model.vae.VAE"
    latent_dim: int = 16
    beta: float = 1.0
    kl_warmup_steps: int = 0
    free_bits: float = 0.0
    # 0: no importance-weighted bound in the test (conf/model/*.yaml ask for 100 samples)
    test_iw_samples: int = 0
    # samples of the training objective: 1 is the VAE's ELBO, k > 1 the IWAE bound
    train_iw_samples: int = 1
    # its gradient: standard (autograd of the bound) or dreg (doubly reparameterised)
    iw_gradient: IWGradient = IWGradient.standard
    # decoder outputs per chunk of the test-time IW bound: 2**22 floats (16 MB) per tensor;
    # 2**24 raised an MNIST run's peak memory by ~250 MB and was no faster (BENCHMARKS.md)
    iw_chunk_elements: int = 2**22
    # None: the likelihood's choice (Likelihood.init_output_bias_by_default; BENCHMARKS.md)
    init_output_bias: bool | None = None
    compile: bool = False
    channels_last: bool = False
    encoder: Any = None
    decoder: Any = None
    optimizer: Any = None
    scheduler: Any = None


@dataclass
class DataSchema:
    _target_: str = "vaelab.data.ImageDataModule"
    source: Any = None
    root: Any = None
    download: bool = False
    batch_size: int = 128
    eval_batch_size: Any = None
    val_fraction: float = 0.1
    seed: int = 0
    binarize: Any = None
    data_on_device: bool = True


#: the dataclass whose defaults ``${vaelab.default:<group>.<key>}`` reads
SCHEMAS: dict[str, type] = {
    "model": ModelSchema,
    "data": DataSchema,
    "likelihood.gaussian": GaussianLikelihoodSchema,
    "likelihood.bernoulli": BernoulliLikelihoodSchema,
    "likelihood.gaussian_low_rank": GaussianLowRankLikelihoodSchema,
    "likelihood.discretized_logistic": DiscretizedLogisticLikelihoodSchema,
    "likelihood.continuous_bernoulli": ContinuousBernoulliLikelihoodSchema,
}


def default(key: str) -> Any:
    """The default of ``key`` (``model.iw_chunk_elements``) as its dataclass states it:
    for a config outside these groups (conf/eval.yaml) that needs the same value."""
    group, name = key.rsplit(".", 1)
    value = getattr(SCHEMAS[group], name)
    return getattr(value, "value", value)


# -- ranges -------------------------------------------------------------------------------

# trainer.precision values the model supports (Lightning's names): float32, or mixed
# precision with the likelihood and KL kept in float32. Lightning runs 16-mixed as
# bf16-mixed on a CPU. 16-bit weights ("-true") and float64 are not supported.
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16", "16")


@dataclass(frozen=True)
class Range:
    """What values of a number are allowed: its type (int, or float for any number),
    the test, and the test in words."""

    kind: type
    ok: Callable[[Any], bool]
    allowed: str


# Checked in this order, the first failure is reported; a value of the wrong type
# (trainer.max_epochs=two) is reported as that, not as a range.
RANGES: dict[str, Range] = {
    "model.beta": Range(float, lambda v: v >= 0, ">= 0"),
    "model.latent_dim": Range(int, lambda v: v >= 1, ">= 1"),
    "model.kl_warmup_steps": Range(int, lambda v: v >= 0, ">= 0"),
    "model.free_bits": Range(float, lambda v: v >= 0, ">= 0"),
    "model.test_iw_samples": Range(int, lambda v: v >= 0, ">= 0"),
    "model.train_iw_samples": Range(int, lambda v: v >= 1, ">= 1"),
    "model.optimizer.lr": Range(float, lambda v: v > 0, "> 0"),
    "likelihood.sigma_value": Range(float, lambda v: v > 0, "> 0"),
    "likelihood.sigma_init": Range(float, lambda v: v > 0, "> 0"),
    "likelihood.rank": Range(int, lambda v: v >= 1, ">= 1"),
    "likelihood.factor_scale": Range(float, lambda v: v > 0, "> 0"),
    "likelihood.components": Range(int, lambda v: v >= 1, ">= 1"),
    "data.batch_size": Range(int, lambda v: v >= 1, ">= 1"),
    "data.eval_batch_size": Range(int, lambda v: v >= 1, ">= 1"),
    "data.val_fraction": Range(float, lambda v: 0 <= v < 1, "in [0, 1)"),
    "trainer.max_epochs": Range(int, lambda v: v == -1 or v >= 1, ">= 1 (or -1 for no limit)"),
}


def range_error(key: str, value: Any, check_type: bool = True) -> str | None:
    """The one-line message for ``value`` of ``key`` outside :data:`RANGES` (None if
    it is allowed, or unset). ``check_type=False``: any number is tested (what a
    constructor is given from Python, e.g. a numpy integer)."""
    if value is None:
        return None
    rule = RANGES[key]
    what = "an integer" if rule.kind is int else "a number"
    if check_type and not _has_type(value, rule.kind):
        return f"{key}={value!r} is not {what}: must be {what} {rule.allowed}"
    if (isinstance(value, float) and math.isnan(value)) or not rule.ok(value):
        return f"{key}={value!r} is not allowed: must be {what} {rule.allowed}"
    return None


def check_range(key: str, value: Any) -> Any:
    """``value`` if :data:`RANGES` allows it for ``key``, else a ConfigError: for
    constructors, which say what :func:`validate` says for the same value."""
    message = range_error(key, value, check_type=False)
    if message:
        raise ConfigError(message)
    return value


def check_log_sigma_bounds(lo: Any, hi: Any) -> None:
    """A ConfigError for a log-sigma floor not below its ceiling (validate and the likelihood)."""
    if lo >= hi:
        raise ConfigError(f"likelihood.log_sigma_min={lo} must be below likelihood.log_sigma_max={hi}")


def _has_type(value: Any, kind: type) -> bool:
    """An int where an int is asked for; an int or float where a number is (never a bool)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind is int else isinstance(value, (int, float))


def check_iw_training(train_iw_samples: int, beta: float, free_bits: float, kl_warmup_steps: int) -> None:
    """A ConfigError where the importance-weighted training bound (train_iw_samples > 1)
    meets an objective it is not: the bound weighs log p(x, z) - log q(z|x) as a whole,
    so there is no KL term for beta, free bits or a warm-up to act on."""
    if int(train_iw_samples) <= 1:
        return
    changed = [
        f"{key}={value}"
        for key, value, default in (
            ("model.beta", beta, 1.0),
            ("model.free_bits", free_bits, 0.0),
            ("model.kl_warmup_steps", kl_warmup_steps, 0),
        )
        if value != default
    ]
    if changed:
        raise ConfigError(
            f"model.train_iw_samples={train_iw_samples} trains the importance-weighted bound, which has no KL term "
            f"to weigh: {', '.join(changed)} needs model.train_iw_samples=1"
        )
