"""Errors a user can fix, reported as one line instead of a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode

from vaelab.data.arrays import DatasetFormatError, DatasetNotFoundError
from vaelab.data.download import ChecksumError
from vaelab.schema import ConfigError

class NonFiniteLossError(FloatingPointError):
    """Training diverged: the loss became NaN or infinite."""

    def __init__(self, value: float, step: int, epoch: int, checkpoint: str | None):
        kept = f"the last good checkpoint, {checkpoint}, is kept as it was" if checkpoint else "no checkpoint had been saved yet"
        super().__init__(
            f"training stopped: the loss became {value} at step {step} (epoch {epoch}); {kept}. "
            "Lower model.optimizer.lr, raise likelihood.log_sigma_min or set trainer.gradient_clip_val."
        )
        self.step, self.epoch, self.checkpoint = step, epoch, checkpoint


#: exceptions whose message tells the user what to change
USER_ERRORS: tuple[type[BaseException], ...] = (
    NonFiniteLossError,
    ConfigError,
    DatasetNotFoundError,
    DatasetFormatError,
    ChecksumError,
    FileNotFoundError,
    ValueError,
)


def user_error(error: BaseException) -> BaseException | None:
    """The user-fixable error behind ``error`` (unwrapping Hydra's instantiate), or None."""
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error if isinstance(error, USER_ERRORS) else None


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def report_user_errors(task: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task: a user error ends the run with ``error: <message>`` on stderr
    and exit code 2. HYDRA_FULL_ERROR=1 shows the traceback instead; in a multirun the
    exception is left to the launcher, which records the job as failed."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except Exception as error:
            cause = user_error(error)
            if cause is None or os.environ.get("HYDRA_FULL_ERROR") == "1" or _in_multirun():
                raise
            print(f"error: {cause}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper
