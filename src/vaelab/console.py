"""What a run prints: library messages that say nothing true about the run are
silenced at their source, and the model summary leaves out what it did not measure.

Each silenced message is named by its text (and where it comes from), so that any
other warning of the same library still reaches the user:

- Lightning's "`srun` is available but not used" hint, outside a SLURM allocation:
  on a machine that merely has SLURM installed there is nothing to prepend srun to
  (vaelab reaches SLURM through ``hydra/launcher=slurm``). Inside an allocation
  (``SLURM_JOB_ID`` set, e.g. an sbatch script that forgot srun) it stays, because
  there it is true.
- Lightning's "Tip: ... litlogger" advertisement, printed on every run, and its
  "Trainer already configured with model summary callbacks", which says that
  vaelab's :class:`ModelSummary` (below) is the one in use.
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
from typing import Any

from lightning.pytorch.callbacks import RichModelSummary

_TIP_LOGGER = "lightning.pytorch.utilities.rank_zero"


#: fragments of Lightning's rank-zero info messages that are dropped
_DROPPED_INFO = ("litlogger", "Trainer already configured with model summary callbacks")


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(fragment in message for fragment in _DROPPED_INFO)


_tip_filter = _DropInfo()


def quiet_library_noise() -> None:
    """Install the filters above (idempotent: each is added once)."""
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


class ModelSummary(RichModelSummary):
    """Lightning's Rich model summary without the FLOPs column and total when nothing
    was counted. Lightning counts FLOPs only by running ``example_input_array``
    through the model; the VAE has none (a forward pass would draw from the random
    stream a seeded run trains with), so the column would be a row of zeros."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        if total_flops:
            RichModelSummary.summarize(
                summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                total_flops, **summarize_kwargs,
            )
            return
        from lightning.pytorch.utilities.model_summary.model_summary import (
            get_formatted_model_size,
            get_human_readable_count,
        )
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        right = {"Params", "Params per Device", "In sizes", "Out sizes"}
        for name, _ in columns:
            table.add_column(name, justify="right" if name in right else "left", style="dim" if name == " " else None)
        for row in zip(*(values for _, values in columns)):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        grid = Table.grid(expand=True)
        grid.add_column()
        grid.add_row(f"[bold]Trainable params[/]: {get_human_readable_count(int(trainable_parameters))}")
        grid.add_row(f"[bold]Non-trainable params[/]: {get_human_readable_count(int(total_parameters - trainable_parameters))}")
        grid.add_row(f"[bold]Total params[/]: {get_human_readable_count(int(total_parameters))}")
        grid.add_row(f"[bold]Total estimated model params size (MB)[/]: {get_formatted_model_size(model_size)}")
        console.print(grid)
