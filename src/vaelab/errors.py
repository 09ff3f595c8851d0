"""Errors a user can fix, reported as one line instead of a traceback.

Two places report them: :func:`run_cli` around Hydra (composition errors such as
an unknown choice or a value of the wrong type, which Hydra raises before any of
our code runs) and :func:`report_user_errors` around the task (range checks,
missing or corrupt data, divergence), which also removes the run folder a failed
start would otherwise leave behind. ``HYDRA_FULL_ERROR=1`` shows tracebacks.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException
from hydra.types import RunMode
from omegaconf.errors import OmegaConfBaseException

from vaelab.data.arrays import DatasetFormatError, DatasetNotFoundError
from vaelab.data.download import ChecksumError
from vaelab.schema import ConfigError
from vaelab.sweeps import record_command, value_for_failed_job, write_failure


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
    HydraException,
    OmegaConfBaseException,
)

# Lines of Hydra's and OmegaConf's messages that locate rather than explain.
_NOISE = ("full_key:", "object_type=", "reference_type=", "Config search path", "provider=", "Set the environment variable")

#: whether the user asked for tracebacks (read once, before run_cli changes the variable)
_SHOW_TRACEBACKS = os.environ.get("HYDRA_FULL_ERROR") == "1"


def one_line(error: BaseException) -> str | None:
    """A one-line message for a user-fixable error (Hydra's wrappers unwrapped), else None."""
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    if not isinstance(error, USER_ERRORS):
        return None
    parts = [str(error)]
    if isinstance(error, HydraException) and error.__cause__ is not None:
        parts.append(str(error.__cause__))
    lines = [line.strip() for part in parts for line in part.splitlines()]
    return "; ".join(line.rstrip(".:") for line in lines if line and not line.startswith(_NOISE))


def remove_unstarted_run_dir(run_dir: Path) -> None:
    """Delete a run folder that holds nothing but what start-up wrote (Hydra's .hydra/
    folder, the log file, loggers' still-empty folders), so a run that failed before
    training leaves nothing behind. A folder with anything else in it is left alone."""
    if not run_dir.is_dir():
        return

    def start_up_only(path: Path) -> bool:
        if path.is_dir():
            return path.name == ".hydra" or not any(path.iterdir())
        return path.suffix == ".log"

    if all(start_up_only(p) for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _exit_with(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def report_user_errors(task: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task: a user error ends the run with ``error: <message>`` on stderr
    and exit code 2, and removes the unstarted run folder. In a multirun the exception
    is left to the launcher, which records the job as failed."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except Exception as error:
            if _in_multirun():  # the launcher records the failure; the folder says why
                failure = write_failure(Path(HydraConfig.get().runtime.output_dir), error)
                worst = value_for_failed_job()
                if worst is None:
                    raise
                print(f"error: this trial failed ({type(error).__name__}: {error}); reported to the sweeper as {worst}, "
                      f"details in {failure}", file=sys.stderr, flush=True)
                return worst
            message = one_line(error)
            if message is None or _SHOW_TRACEBACKS:
                raise
            if HydraConfig.initialized():
                remove_unstarted_run_dir(Path(HydraConfig.get().runtime.output_dir))
            _exit_with(message)

    return wrapper


def run_cli(hydra_main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` function so that Hydra's own errors (composition,
    overrides) are one line too: Hydra is told to raise, and we report."""
    record_command(sys.argv[1:])
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except Exception as error:
        message = one_line(error)
        if message is None or _SHOW_TRACEBACKS:
            raise
        _exit_with(message)
