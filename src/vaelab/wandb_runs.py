"""Weights & Biases runs: one per job, offline when there is no API key, finished
with the job's test numbers (or as failed) when the job ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("vaelab.train")


class WandbLogger(_LightningWandbLogger):
    """Lightning's W&B logger without its ``anonymous=None`` argument to ``wandb.init``:
    wandb >= 0.19 ignores the setting and warns "The anonymous setting has no effect"
    on every run whenever it is passed at all, None included."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


def use_offline_wandb_without_key(cfg: DictConfig) -> None:
    """With no W&B API key, log offline instead of failing, and say how to upload later."""
    node = OmegaConf.select(cfg, "logger.wandb")
    if node is None or node.get("mode") != "online":
        return
    import wandb

    # W&B's own credential check (key in WANDB_API_KEY, ~/.netrc or the settings),
    # without prompting and without a request to the server
    if wandb.login(prompt=False, verify=False):
        return
    node.mode = "offline"
    folder = Path(node.save_dir) / "wandb"
    log.warning(
        "W&B: no API key found (WANDB_API_KEY or `wandb login`), so this run is logged offline in %s. "
        "Upload it later with: wandb sync %s/offline-run-*",
        folder,
        folder,
    )


def has_started_run(logger: _LightningWandbLogger) -> bool:
    """Whether ``logger`` has started (or been given) its W&B run, without starting one.

    Lightning's public accessors do not say: ``logger.experiment`` starts a run when
    there is none (the job's run would then be started only to be finished), and
    ``logger.version`` falls back to the id given to the constructor. ``wandb.run`` is
    the process's current run, which need not be this logger's. So this reads the
    logger's private ``_experiment`` (Lightning 2.6), and is the one place in vaelab
    that does."""
    return getattr(logger, "_experiment", None) is not None


def finish_experiment_trackers(trainer: pl.Trainer, metrics: dict[str, Any] | None) -> None:
    """End each job's W&B run (failed when ``metrics`` is None), with the final test
    numbers in its summary, so the next job in the same process starts a run of its own."""
    for logger in trainer.loggers:
        if isinstance(logger, _LightningWandbLogger) and has_started_run(logger):
            if metrics is not None:
                logger.experiment.summary.update({k: v for k, v in metrics.items() if isinstance(v, float)})
            logger.experiment.finish(exit_code=0 if metrics is not None else 1)
