"""What a run prints: library messages that say nothing true about the run are
silenced at their source (imports no library: the command line installs this first).

Each silenced message is named by its text (and where it comes from), so that any
other warning of the same library still reaches the user:

- Lightning's "`srun` is available but not used" hint, outside a SLURM allocation:
  on a machine that merely has SLURM installed there is nothing to prepend srun to
  (vaelab reaches SLURM through ``hydra/launcher=slurm``). Inside an allocation
  (``SLURM_JOB_ID`` set, e.g. an sbatch script that forgot srun) it stays, because
  there it is true.
- Lightning's "Tip: ... litlogger" advertisement, printed on every run, and its
  "Trainer already configured with model summary callbacks", which says that
  vaelab's :class:`vaelab.model_summary.ModelSummary` is the one in use.
- torch's "`isinstance(treespec, LeafSpec)` is deprecated", raised by Lightning's own
  ``utilities/_pytree.py`` (Lightning 2.6.6, the newest, still calls it): nothing the
  user can change.
- "You have overridden `on_after_batch_transfer` in `LightningModule` but have passed
  in a `LightningDataModule`": the VAE prepares its inputs there on purpose, because
  how (dequantised, binarised, scaled) is the likelihood's choice, not the data's.
"""

from __future__ import annotations

import logging
import os
import warnings

_TIP_LOGGER = "lightning.pytorch.utilities.rank_zero"


#: fragments of Lightning's rank-zero info messages that are dropped
_DROPPED_INFO = ("litlogger", "Trainer already configured with model summary callbacks")


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(fragment in message for fragment in _DROPPED_INFO)


_tip_filter = _DropInfo()


def lightning_prints_once() -> None:
    """Lightning's own console handlers, whatever logging is set up before it is imported.

    Imported before any logging set-up, Lightning gives ``lightning.pytorch`` and
    ``lightning.fabric`` a plain handler of their own and stops their messages there.
    Imported after Hydra has configured the root logger (vaelab-train imports it only
    once the config has composed), it lets them propagate instead, and each message
    ("`Trainer.fit` stopped", "Restoring states ...") came out twice: through the
    ``lightning`` package's handler and again through Hydra's. This sets up what
    Lightning does when it comes first, by logger name, before Lightning is imported."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(logging.StreamHandler())
        logger.propagate = False


def quiet_library_noise() -> None:
    """Install the filters above (idempotent: each is added once), and keep each of
    Lightning's messages to one line (:func:`lightning_prints_once`)."""
    lightning_prints_once()
    if "SLURM_JOB_ID" not in os.environ:
        warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    warnings.filterwarnings(
        "ignore", message=r"You have overridden `on_after_batch_transfer` in `LightningModule` but have passed in a"
    )
    tip_logger = logging.getLogger(_TIP_LOGGER)
    if _tip_filter not in tip_logger.filters:
        tip_logger.addFilter(_tip_filter)
