"""Objects from a composed config: the data (read now), the model sized for it, the
Trainer. vaelab-train and vaelab-eval build them the same way."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from vaelab.config import instantiate_likelihood
from vaelab.exceptions import ConfigError


def load_data_now(datamodule: pl.LightningDataModule) -> None:
    """Read (and if asked, download) the data before loggers and the trainer write
    anything, so missing or corrupt files fail at start-up. Lightning's own calls
    later find the data module already set up."""
    if rank_zero_only.rank == 0:
        datamodule.prepare_data()
    datamodule.setup("fit")


def build_model(cfg: DictConfig, datamodule: Any, **overrides: Any) -> pl.LightningModule:
    """The VAE of a composed config, sized for ``datamodule``'s images."""
    likelihood = instantiate_likelihood(cfg.likelihood, datamodule.image_shape, datamodule.levels)
    if getattr(likelihood, "binarize", None) == "none" and datamodule.levels > 2:
        raise ConfigError(
            f"likelihood.binarize=none needs binary data, but these images have {datamodule.levels} intensity "
            "levels; use likelihood.binarize=dynamic, static or threshold"
        )
    return instantiate(
        cfg.model,
        likelihood=likelihood,
        image_shape=datamodule.image_shape,
        levels=datamodule.levels,
        **overrides,
    )


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list, overrides: dict[str, Any]) -> pl.Trainer:
    """The Trainer of ``cfg.trainer``. Lightning's MisconfigurationException while it is
    built is a setting the user chose (devices, strategy, precision on this machine),
    so it is a one-line ConfigError; raised later it may be a bug and keeps its traceback."""
    try:
        return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)
    except InstantiationException as error:
        if isinstance(error.__cause__, MisconfigurationException):
            raise ConfigError(f"trainer: {error.__cause__}") from error
        raise
