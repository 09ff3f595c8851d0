"""Pruning: a trial of an Optuna sweep reports its metric after each validation, and
stops training when the study's pruner says it is hopeless.

:class:`OptunaPruning` is in every run's callbacks (``conf/callbacks/default.yaml``)
and does nothing unless its job is a trial of the Optuna sweeper
(:func:`vaelab.optuna_trial.this_jobs_trial`; Optuna is imported only then). It
reports ``optimized_metric`` (by default ``-val/elbo``, the sign the study
minimises) as the trial's intermediate value at each epoch. When the pruner prunes,
it marks the trial (user attribute ``vaelab.pruned_at_epoch``) and stops training as
early stopping does: the job still tests its best checkpoint and records its metrics,
so its folder is complete, and the sweeper tells the study the trial was PRUNED.

With the default pruner (none: ``optuna.pruners.NopPruner``) nothing is ever pruned.
Optuna's ``PyTorchLightningPruningCallback`` (the optuna-integration package) raises
``TrialPruned`` out of ``fit``, which here would end the job as failed, and under DDP
supports only some strategies; these few lines stop training the way vaelab's jobs end.
Under DDP, rank zero decides and the decision is broadcast to the other ranks.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import TrainerFn

from vaelab import optuna_trial
from vaelab.optimized_metric import metric_for_sweeper

log = logging.getLogger("vaelab.optuna")


class OptunaPruning(pl.Callback):
    def __init__(self, metric: str | None = "-val/elbo") -> None:
        self.metric = metric
        self.address = optuna_trial.this_jobs_trial()
        self._trial: Any = None
        self._warned = False

    @property
    def active(self) -> bool:
        return self.address is not None and bool(self.metric)

    def trial(self) -> Any:
        if self._trial is None:
            self._trial = self.address.open(optuna_trial.sweeper_pruner_config())
        return self._trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # during fit only: the validation vaelab runs where training stopped reports nothing new
        if not self.active or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        prune = False
        if trainer.is_global_zero:
            prune = self._report(trainer)
        if trainer.world_size > 1:
            prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            trainer.should_stop = True

    def _report(self, trainer: pl.Trainer) -> bool:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        if self.metric.lstrip("-") not in metrics:
            if not self._warned:
                log.warning(
                    "Pruning: %s is not logged at validation, so this trial reports nothing to the pruner", self.metric
                )
                self._warned = True
            return False
        trial = self.trial()
        epoch = trainer.current_epoch
        trial.report(metric_for_sweeper(metrics, self.metric), step=epoch)
        if not trial.should_prune():
            return False
        trial.set_user_attr(optuna_trial.PRUNED_ATTR, epoch)
        print(
            f"Trial {self.address.number} pruned at epoch {epoch} by the study's pruner: training stops here",
            flush=True,
        )
        return True
