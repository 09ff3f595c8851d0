"""Structured configs: the types and ranges of the values users type and sweep.

The dataclasses are stored in Hydra's ConfigStore as ``schema/<group>/<name>`` and
named in the first line of each config's defaults list, so a wrong type or an
unknown choice (``likelihood.sigma=gaussian``) fails while the config is composed.
Ranges that a type cannot express (beta >= 0, lr > 0, ...) are checked by
:func:`validate` before anything is built. Both fail with one line naming the key,
the value and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from vaelab.config_keys import check_target_arguments
from vaelab.exceptions import ConfigError


class SigmaMode(str, Enum):
    fixed = "fixed"
    learned_shared = "learned_shared"
    learned_pixel = "learned_pixel"
    predicted = "predicted"
    optimal = "optimal"


class OptimalShape(str, Enum):
    shared = "shared"
    pixel = "pixel"


class Binarize(str, Enum):
    dynamic = "dynamic"
    static = "static"
    threshold = "threshold"
    none = "none"


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
class ModelSchema:
    _target_: str = "vaelab.model.vae.VAE"
    latent_dim: int = 16
    beta: float = 1.0
    kl_warmup_steps: int = 0
    free_bits: float = 0.0
    test_iw_samples: int = 100
    # decoder outputs per chunk of the test-time IW bound: 2**22 floats (16 MB) per tensor;
    # 2**24 raised an MNIST run's peak memory by ~250 MB and was no faster (BENCHMARKS.md)
    iw_chunk_elements: int = 2**22
    # None: the likelihood's choice (Likelihood.init_output_bias_by_default; BENCHMARKS.md)
    init_output_bias: Optional[bool] = None
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


def register() -> None:
    store = ConfigStore.instance()
    store.store(group="schema/likelihood", name="gaussian", node=GaussianLikelihoodSchema)
    store.store(group="schema/likelihood", name="bernoulli", node=BernoulliLikelihoodSchema)
    store.store(group="schema/model", name="vae", node=ModelSchema)
    store.store(group="schema/data", name="images", node=DataSchema)


# trainer.precision values the model supports (Lightning's names): float32, or mixed
# precision with the likelihood and KL kept in float32. Lightning runs 16-mixed as
# bf16-mixed on a CPU. 16-bit weights ("-true") and float64 are not supported.
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16", "16")


# (key, type, test, what is allowed): checked in order, the first failure is reported;
# a value of the wrong type (trainer.max_epochs=two) is reported as that, not as a range
RANGE_CHECKS: list[tuple[str, type, Any, str]] = [
    ("model.beta", float, lambda v: v >= 0, ">= 0"),
    ("model.latent_dim", int, lambda v: v >= 1, ">= 1"),
    ("model.kl_warmup_steps", int, lambda v: v >= 0, ">= 0"),
    ("model.free_bits", float, lambda v: v >= 0, ">= 0"),
    ("model.test_iw_samples", int, lambda v: v >= 0, ">= 0"),
    ("model.optimizer.lr", float, lambda v: v > 0, "> 0"),
    ("likelihood.sigma_value", float, lambda v: v > 0, "> 0"),
    ("likelihood.sigma_init", float, lambda v: v > 0, "> 0"),
    ("data.batch_size", int, lambda v: v >= 1, ">= 1"),
    ("data.val_fraction", float, lambda v: 0 <= v < 1, "in [0, 1)"),
    ("trainer.max_epochs", int, lambda v: v == -1 or v >= 1, ">= 1 (or -1 for no limit)"),
]


def _has_type(value: Any, kind: type) -> bool:
    """An int where an int is asked for; an int or float where a number is (never a bool)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind is int else isinstance(value, (int, float))


def _select(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for a mandatory value left unset, a key its
    ``_target_`` does not take, or the first value outside its range."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} must be set: it has no default (e.g. {missing[0]}=...)")
    check_target_arguments(cfg)
    for key, kind, ok, allowed in RANGE_CHECKS:
        value = _select(cfg, key)
        if value is _MISSING or value is None:
            continue
        what = "an integer" if kind is int else "a number"
        if not _has_type(value, kind):
            raise ConfigError(f"{key}={value!r} is not {what}: must be {what} {allowed}")
        if (isinstance(value, float) and math.isnan(value)) or not ok(value):
            raise ConfigError(f"{key}={value!r} is not allowed: must be {what} {allowed}")
    precision = _select(cfg, "trainer.precision")
    if precision is not _MISSING and precision is not None and str(precision) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r} is not allowed: must be one of {', '.join(PRECISIONS)}")
    channels_last = _select(cfg, "model.channels_last")
    encoder = _select(cfg, "model.encoder._target_")
    if channels_last is True and isinstance(encoder, str) and "Conv" not in encoder.rsplit(".", 1)[-1]:
        raise ConfigError(f"model.channels_last=true is for convolutional networks, but model.encoder is {encoder}; use model=conv")
    sigma = _select(cfg, "likelihood.sigma")
    lo, hi = _select(cfg, "likelihood.log_sigma_min"), _select(cfg, "likelihood.log_sigma_max")
    if sigma is not _MISSING and lo is not _MISSING and hi is not _MISSING and lo >= hi:
        raise ConfigError(f"likelihood.log_sigma_min={lo} must be below likelihood.log_sigma_max={hi}")
