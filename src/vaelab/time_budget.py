"""A learning-rate schedule over the wall-time budget (``trainer.max_time``).

A schedule in epochs does not know where a time limit will cut it: the Burda
benchmark's cosine over 3280 epochs, stopped by ``trainer.max_time`` after ~180 of
them, ends at 99.3% of its starting rate, where the last epochs at a low rate are
what finish a model off. This callback reads the fraction of the budget spent from
Lightning's own ``Timer`` (the callback ``trainer.max_time`` installs, whose clock a
resumed run restores) and sets the rate before every training step, so the schedule
ends where the budget does, whatever the machine's speed.

Shapes (``progress`` = the fraction of the budget spent, 0 to 1):

- ``cosine``: ``final + (1 - final) * (1 + cos(pi * progress)) / 2`` of the base rate;
- ``linear``: ``1 - (1 - final) * progress``;
- ``burda``: Burda et al.'s (2016) schedule, 3^i epochs at 10^(-i/7) of the base rate
  for i = 0..7, compressed into the budget: stage i takes 3^i / 3280 of it.

The base rate is each parameter group's ``initial_lr`` (set from ``lr`` on the first
step, as PyTorch's schedulers do), which the optimiser's checkpoint keeps.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Timer

from vaelab.exceptions import ConfigError

SHAPES = ("cosine", "linear", "burda")

#: Burda et al.'s stages: 3^i epochs each, 3280 in all
_BURDA_STAGE_ENDS = [sum(3**j for j in range(i + 1)) / 3280 for i in range(8)]


def lr_factor(shape: str, progress: float, final_fraction: float = 0.0) -> float:
    """The fraction of the base rate at ``progress`` (0 to 1, clipped) of the budget."""
    progress = min(max(progress, 0.0), 1.0)
    if shape == "cosine":
        return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if shape == "linear":
        return 1.0 - (1.0 - final_fraction) * progress
    if shape == "burda":
        stage = next(i for i, end in enumerate(_BURDA_STAGE_ENDS) if progress <= end or i == 7)
        return 10.0 ** (-stage / 7)
    raise ConfigError(f"time-budget schedule shape {shape!r} is not one of {', '.join(SHAPES)}")


def time_budget_lr(shape: str | None = None, final_fraction: float = 0.0) -> TimeBudgetLR | None:
    """The callback, or None (no schedule) where ``shape`` is null: the config's switch."""
    return None if shape is None else TimeBudgetLR(shape, final_fraction)


class TimeBudgetLR(pl.Callback):
    """Sets the learning rate from the fraction of ``trainer.max_time`` spent.

    Needs ``trainer.max_time`` and no epoch schedule of the model's
    (``model.scheduler=null``); ``train/lr`` is logged at the end of every epoch.
    """

    def __init__(self, shape: str = "cosine", final_fraction: float = 0.0) -> None:
        lr_factor(shape, 0.0, final_fraction)  # an unknown shape fails at construction
        if not 0.0 <= final_fraction <= 1.0:
            raise ConfigError(f"time-budget schedule final_fraction={final_fraction} is not in [0, 1]")
        self.shape = shape
        self.final_fraction = final_fraction
        self._timer: Timer | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is None or timer.time_remaining() is None:
            raise ConfigError(
                "the time-budget learning-rate schedule (callbacks.time_budget_lr) needs a budget: "
                "set trainer.max_time (DD:HH:MM:SS), or remove the callback"
            )
        if trainer.lr_scheduler_configs:
            raise ConfigError(
                "model.scheduler and the time-budget schedule (callbacks.time_budget_lr) would both "
                "set the learning rate: set model.scheduler=null, or remove the callback"
            )
        self._timer = timer

    def progress(self) -> float:
        """The fraction of the training budget spent so far."""
        assert self._timer is not None
        elapsed = self._timer.time_elapsed("train")
        return elapsed / (elapsed + max(self._timer.time_remaining("train"), 0.0))

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Every DDP rank steps at rank zero's rate: each rank's Timer keeps its own clock,
        # and replicas stay equal only while they apply equal updates (Lightning's Timer
        # broadcasts its decision to stop the same way). One process: no communication.
        progress = trainer.strategy.broadcast(self.progress())
        factor = lr_factor(self.shape, progress, self.final_fraction)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * factor

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.optimizers:
            pl_module.log("train/lr", trainer.optimizers[0].param_groups[0]["lr"], on_epoch=True, on_step=False)
