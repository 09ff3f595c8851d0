"""The training progress bar: Lightning's Rich bar, brought up to date a few times a
second instead of on every batch (conf/callbacks/default.yaml, ``progress_bar``)."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar as _RichProgressBar


class RichProgressBar(_RichProgressBar):
    """Lightning's Rich progress bar, brought up to date at most ``refresh_rate`` times
    a second while training (and at an epoch's last batch).

    Lightning's own redraws at that rate, but on every batch it updates the bar's task
    and re-reads every progress-bar metric (a dict built from the trainer's metrics,
    each converted to a float). Validation and test bars are Lightning's, unchanged.
    """

    #: the clock the updates are spaced on (tests give the bar one of their own)
    clock = staticmethod(time.monotonic)

    def __init__(self, refresh_rate: int = 4, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self._next_train_update = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._next_train_update = 0.0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = self.clock()
        if now < self._next_train_update and batch_idx + 1 < trainer.num_training_batches:
            return
        self._next_train_update = now + 1.0 / max(1, self.refresh_rate)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def progress_bar(enabled: bool = True, refresh_per_second: int = 4) -> pl.Callback | None:
    """The training progress bar, brought up to date ``refresh_per_second`` times a
    second: :class:`RichProgressBar` when Rich is installed, else Lightning's tqdm bar
    (whose refresh rate counts batches); None when ``enabled`` is false
    (``trainer.enable_progress_bar=false``), so that the trainer gets none.

    Lightning's default Rich bar redraws 100 times a second from a thread of its own,
    which competes with the training loop for the interpreter: about 5% of a small
    MLP's CPU step (bench/throughput.py), against under 1% at 4 redraws a second.
    """
    if not enabled:
        return None
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

    if _RICH_AVAILABLE:
        return RichProgressBar(refresh_rate=refresh_per_second)
    # tqdm's refresh_rate counts batches, not redraws a second
    return TQDMProgressBar(refresh_rate=max(1, 100 // max(1, refresh_per_second)))
