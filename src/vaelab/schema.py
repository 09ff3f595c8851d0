"""Structured configs in Hydra: the dataclasses of :mod:`vaelab.settings` stored in
Hydra's ConfigStore as ``schema/<group>/<name>`` and named in the first line of each
config's defaults list, so a wrong type or an unknown choice fails while the config is
composed; and :func:`validate`, which checks what a type cannot express (ranges,
mandatory values, keys a target does not take) before anything is built.

It imports neither torch nor Lightning: a config that does not compose fails before
they are imported.
"""

from __future__ import annotations

from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from vaelab.config_keys import check_target_arguments
from vaelab.exceptions import ConfigError
from vaelab.settings import (
    PRECISIONS,
    RANGES,
    BernoulliLikelihoodSchema,
    ContinuousBernoulliLikelihoodSchema,
    DataSchema,
    DiscretizedLogisticLikelihoodSchema,
    GaussianLikelihoodSchema,
    GaussianLowRankLikelihoodSchema,
    ModelSchema,
    check_iw_training,
    check_log_sigma_bounds,
    default,
    range_error,
)

__all__ = ["ConfigError", "register", "validate"]


def register() -> None:
    store = ConfigStore.instance()
    store.store(group="schema/likelihood", name="gaussian", node=GaussianLikelihoodSchema)
    store.store(group="schema/likelihood", name="bernoulli", node=BernoulliLikelihoodSchema)
    store.store(group="schema/likelihood", name="gaussian_low_rank", node=GaussianLowRankLikelihoodSchema)
    store.store(group="schema/likelihood", name="discretized_logistic", node=DiscretizedLogisticLikelihoodSchema)
    store.store(group="schema/likelihood", name="continuous_bernoulli", node=ContinuousBernoulliLikelihoodSchema)
    store.store(group="schema/model", name="vae", node=ModelSchema)
    store.store(group="schema/data", name="images", node=DataSchema)
    OmegaConf.register_new_resolver("vaelab.default", default, replace=True)


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
    for key in RANGES:
        value = _select(cfg, key)
        message = None if value is _MISSING else range_error(key, value)
        if message:
            raise ConfigError(message)
    precision = _select(cfg, "trainer.precision")
    if precision is not _MISSING and precision is not None and str(precision) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r} is not allowed: must be one of {', '.join(PRECISIONS)}")
    channels_last = _select(cfg, "model.channels_last")
    encoder = _select(cfg, "model.encoder._target_")
    if channels_last is True and isinstance(encoder, str) and "Conv" not in encoder.rsplit(".", 1)[-1]:
        raise ConfigError(
            f"model.channels_last=true is for convolutional networks, but model.encoder is {encoder}; use model=conv"
        )
    samples = _select(cfg, "model.train_iw_samples")
    if samples is not _MISSING and samples is not None:
        check_iw_training(
            samples,
            *(
                default if value is _MISSING else value
                for value, default in (
                    (_select(cfg, "model.beta"), 1.0),
                    (_select(cfg, "model.free_bits"), 0.0),
                    (_select(cfg, "model.kl_warmup_steps"), 0),
                )
            ),
        )
    # the Gaussian's and the low-rank Gaussian's log-sigma bounds
    lo, hi = _select(cfg, "likelihood.log_sigma_min"), _select(cfg, "likelihood.log_sigma_max")
    if lo is not _MISSING and hi is not _MISSING:
        check_log_sigma_bounds(lo, hi)
