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
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, HydraException, InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from vaelab import job_record
from vaelab.config_keys import unknown_key_message
from vaelab.exceptions import (  # noqa: F401 - NonFiniteLossError re-exported
    JobBusyError,
    MissingExtraError,
    NonFiniteLossError,
    UserError,
)
from vaelab.sweeps import (
    JobFolderLock,
    in_multirun,
    record_command,
    value_for_failed_job,
    write_failure,
)

#: exceptions whose message tells the user what to change: vaelab's own typed errors,
#: and Hydra's and OmegaConf's (an unknown choice, a value of the wrong type, a key
#: that is not in the config). Anything else, a ValueError from a bug included, is
#: reported with its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, HydraException, OmegaConfBaseException)

# Lines of Hydra's and OmegaConf's messages that locate rather than explain.
_NOISE = (
    "full_key:",
    "object_type=",
    "reference_type=",
    "Config search path",
    "provider=",
    "Set the environment variable",
)

#: whether the user asked for tracebacks (read once, before run_cli changes the variable)
_SHOW_TRACEBACKS = os.environ.get("HYDRA_FULL_ERROR") == "1"


def _unknown_override(error: BaseException) -> str | None:
    """Hydra's "Could not override 'model.betta'" (a key the config does not have) as
    :func:`vaelab.config_keys.unknown_key_message`, or None for any other error."""
    cause = error.__cause__
    if not isinstance(error, ConfigCompositionException) or not isinstance(cause, OmegaConfBaseException):
        return None
    named = re.match(r"Could not override '([^']+)'", str(error))
    if named is None:
        return None
    full_key = named.group(1)
    value = re.search(r"use \+" + re.escape(full_key) + r"=(.*)$", str(error), re.MULTILINE)
    parent = getattr(cause, "parent_node", None)
    return unknown_key_message(
        full_key, value.group(1) if value else None, parent if isinstance(parent, DictConfig) else None
    )


#: config groups an extra's Hydra plugin registers: a config that names one without the extra says which to install
EXTRA_CONFIGS = {
    # config: (extra, what needs it, its package, the module that registers the config)
    "hydra/launcher/submitit_slurm": (
        "slurm",
        "hydra/launcher=slurm",
        "hydra-submitit-launcher",
        "hydra_plugins.hydra_submitit_launcher",
    ),
}


#: modules only an extra installs: (extra, what needs it)
EXTRA_MODULES = {
    "tensorboard": ("tensorboard", "logger=tensorboard"),
    "optuna": ("optuna", "hparams_search=optuna"),
    "submitit": ("slurm", "hydra/launcher=slurm"),
}


def _missing_extra_module(error: BaseException) -> str | None:
    """An optional extra's module that is not installed (TensorBoard's, imported by
    Lightning's logger): the extra to install, in one line."""
    if not isinstance(error, ModuleNotFoundError):
        return None
    # a failed import names its module; Lightning's logger, finding neither package, names them in `...`
    names = [error.name] if error.name else re.findall(r"`([A-Za-z_][\w.]*)`", str(error))
    for module in (name.split(".")[0] for name in names):
        if module in EXTRA_MODULES:
            extra, feature = EXTRA_MODULES[module]
            return str(MissingExtraError(extra, feature, module))
    return None


def _missing_extra_config(error: BaseException) -> str | None:
    """Hydra's "Could not load 'hydra/launcher/submitit_slurm'" where the plugin that provides
    that config (an extra's) is not installed: the extra to install, in one line."""
    import importlib.util

    if not isinstance(error, HydraException):
        return None
    for config, (extra, feature, package, module) in EXTRA_CONFIGS.items():
        if f"'{config}'" in str(error) and importlib.util.find_spec(module) is None:
            return str(MissingExtraError(extra, feature, package))
    return None


def one_line(error: BaseException) -> str | None:
    """A one-line message for a user-fixable error (Hydra's wrappers unwrapped), else None."""
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    missing_extra = _missing_extra_config(error) or _missing_extra_module(error)
    if missing_extra is not None:
        return missing_extra
    unknown = _unknown_override(error)
    if unknown is not None:
        return unknown
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        # a config file that is not valid YAML (Hydra raises the parser's error as it is)
        mark = error.problem_mark
        return f"{mark.name}: not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    if not isinstance(error, USER_ERRORS):
        return None
    parts = [str(error)]
    if isinstance(error, HydraException) and error.__cause__ is not None:
        parts.append(str(error.__cause__))
    lines = [line.strip() for part in parts for line in part.splitlines()]
    return "; ".join(line.rstrip(".:") for line in lines if line and not line.startswith(_NOISE))


def remove_unstarted_run_dir(run_dir: Path) -> None:
    """Delete a run folder that holds nothing but what start-up wrote (Hydra's .hydra/
    folder, the log file, loggers' still-empty folders, the job's run.json), so a run that failed before
    training leaves nothing behind. A folder with anything else in it is left alone."""
    if not run_dir.is_dir():
        return

    def start_up_only(path: Path) -> bool:
        if path.is_dir():
            return path.name == ".hydra" or not any(path.iterdir())
        return path.suffix == ".log" or path.name in (JobFolderLock.NAME, job_record.NAME)

    if all(start_up_only(p) for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)


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
            if in_multirun() and isinstance(error, JobBusyError):  # not this process's job: no FAILED
                print(f"error: {error}", file=sys.stderr, flush=True)
                return value_for_failed_job()
            if HydraConfig.initialized():  # run.json: failed, and why
                job_record.fail(Path(HydraConfig.get().runtime.output_dir), error, sweep_job=in_multirun())
            if in_multirun():  # the launcher records the failure; the folder says why
                failure = write_failure(Path(HydraConfig.get().runtime.output_dir), error)
                worst = value_for_failed_job()
                if worst is None:
                    raise
                print(
                    f"error: this trial failed ({type(error).__name__}: {error}); reported to the sweeper as {worst}, "
                    f"details in {failure}",
                    file=sys.stderr,
                    flush=True,
                )
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
    from vaelab.console import quiet_library_noise

    quiet_library_noise()
    record_command(sys.argv[1:])
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except Exception as error:
        message = one_line(error)
        if message is None or _SHOW_TRACEBACKS:
            raise
        _exit_with(message)
