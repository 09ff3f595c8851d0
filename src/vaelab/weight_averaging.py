"""An exponential moving average of the weights (Polyak averaging) for validation,
checkpoint selection, testing and ``vaelab-eval``.

Lightning's ``EMAWeightAveraging`` does the averaging: it swaps the average in for
every validation, writes it as the checkpoint's ``state_dict`` (the raw weights go to
``current_model_state``, from which a resumed run continues training) and leaves it in
the model when training ends. One thing it gets wrong for a train-then-test run:
``trainer.test(ckpt_path="best")`` after ``fit`` calls the callback's
``on_load_checkpoint``, which, because its average still exists from ``fit``, loads the
checkpoint's *raw* weights into the model, so the test would score weights that
validation never chose. :class:`EMAWeights` loads them only when training resumes;
outside ``fit`` the checkpoint's ``state_dict``, the average, is what the model keeps,
as it is for ``vaelab-eval``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from vaelab.exceptions import ConfigError


class EMAWeights(EMAWeightAveraging):
    """Lightning's EMA of the weights, updated after every step from
    ``update_starting_at_step`` on, whose checkpoints test what they validated."""

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


def ema_weights(
    decay: float | None = None, update_starting_at_step: int = 0, update_every_n_steps: int = 1
) -> EMAWeights | None:
    """The callback, or None (no averaging) where ``decay`` is null: the config's switch.

    ``update_every_n_steps`` > 1 averages every n-th step's weights only: each update
    copies and blends every parameter, which for a small model is a sizeable share of a
    step (the Burda MLP fitted 27% fewer steps into 5 minutes averaging every step;
    BENCHMARKS.md, issue 18); ``decay`` is then per update, so the average spans about
    n / (1 - decay) steps."""
    if decay is None:
        return None
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"callbacks.ema_weights.decay={decay} is not in (0, 1); null switches averaging off")
    if update_starting_at_step < 0:
        raise ConfigError(f"callbacks.ema_weights.update_starting_at_step={update_starting_at_step} is negative")
    if update_every_n_steps < 1:
        raise ConfigError(
            f"callbacks.ema_weights.update_every_n_steps={update_every_n_steps} is not a positive integer"
        )
    return EMAWeights(
        decay=decay, update_starting_at_step=update_starting_at_step, update_every_n_steps=update_every_n_steps
    )
