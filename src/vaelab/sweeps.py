"""What a job needs to know about the sweep it belongs to.

- Folder names. A sweep's folder is named after its command (the swept keys and a
  hash of every override), so re-running the same command finds the same folder and
  resumes it; each job's sub-folder is named after the overrides that set it apart
  from the other jobs (readable, with a short hash when long).
- Resuming. A job whose folder holds ``metrics.json`` is finished: its recorded
  result is reused. A job whose folder holds ``checkpoints/last.ckpt`` was
  interrupted: it continues from there.
- Sharing a machine. Jobs run in parallel by a launcher split the CPU threads
  between them (each takes a device slot of its own: :mod:`vaelab.device_slots`).
- Failure. A job that fails writes ``FAILED`` with the error into its folder.

The command line is recorded by :func:`record_command` in the launching process, in
an environment variable, because the job folders are named inside the launcher's
worker processes, which do not see the original ``sys.argv``. Keys a sweeper sweeps
from its config (``hydra.sweeper.params``: Optuna's search space, an experiment's
grid) name the folder as the command's do.

:class:`SweepReport`, a Hydra callback (``conf/hydra/default.yaml``), runs in the
launching process whatever the launcher (one after another, parallel, SLURM) or the
sweeper (grid, Optuna): it says where the sweep writes when it starts, and how its
jobs ended and how to compare them when it ends.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import re
import traceback
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf

from vaelab import locks
from vaelab.overrides import is_swept, override_key, swept_keys

COMMAND_ENV = "VAELAB_COMMAND_OVERRIDES"
MAX_NAME = 80


def record_command(argv: list[str]) -> None:
    """Remember this command's overrides for the jobs it launches (see module docstring)."""
    os.environ[COMMAND_ENV] = json.dumps([a for a in argv if not a.startswith("-")])


def command_overrides() -> list[str]:
    return json.loads(os.environ.get(COMMAND_ENV, "[]"))


def short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def safe_name(text: str) -> str:
    """A file-name-safe version of an override string: no slashes, spaces or quotes."""
    return re.sub(r"[^A-Za-z0-9=,.+\-_\[\]]", "_", text)


MAX_PREFIX = 64


def sweeper_params(root: Any = None) -> dict[str, str]:
    """The sweeper's ``hydra.sweeper.params`` (Optuna's search space, an experiment's
    grid): from the config being resolved (``root``, in the launching process before
    Hydra's config is set), else from Hydra's config (in a job). Empty when none."""
    params = OmegaConf.select(root, "hydra.sweeper.params", default=None) if root is not None else None
    if params is None and HydraConfig.initialized():
        params = OmegaConf.select(HydraConfig.get(), "sweeper.params", default=None)
    if params is None:
        return {}
    return {str(k): str(v) for k, v in params.items()}


def _cut(items: list[str], sep: str, limit: int) -> tuple[str, bool]:
    """``items`` joined by ``sep``, whole items only, at most ``limit`` characters (the
    first item is cut if it alone is longer); and whether any was left out."""
    text = ""
    for item in items:
        longer = f"{text}{sep}{item}" if text else item
        if len(longer) > limit:
            return (text or item[:limit]), True
        text = longer
    return text, False


#: overrides that say how many trials a study runs, or how many at once, not which: left out
#: of the sweep's name, so that a larger hydra.sweeper.n_trials continues the same study
NOT_NAMING = ("hydra.sweeper.n_trials", "hydra.sweeper.n_jobs")


def sweep_name(*, _root_: Any = None) -> str:
    """``<swept keys>_<hash of the command>``: the same command, the same folder.
    The swept keys are the command's and the sweeper's ``params``' (whole keys, the
    first few when they are many); the hash is of every override but :data:`NOT_NAMING`."""
    overrides = sorted(o for o in command_overrides() if override_key(o) not in NOT_NAMING)
    swept = swept_keys(overrides)
    swept += sorted(k for k, v in sweeper_params(_root_).items() if is_swept(f"{k}={v}") and k not in swept)
    prefix, cut = _cut(swept, "+", MAX_PREFIX)
    prefix = f"{prefix}+more" if cut else prefix
    return f"{safe_name(prefix or 'sweep')}_{short_hash(json.dumps(overrides))}"


def job_name() -> str:
    """The overrides that set this job apart (not those shared by the whole command).
    A long name keeps whole ``key=value`` items and ends in a hash of all of them."""
    # keys the command sets to one value for every job (compared by key: Hydra writes
    # a job's values back normalised, e.g. `false` as `False`)
    shared = {override_key(o) for o in command_overrides() if not is_swept(o)}
    own = [
        o
        for o in HydraConfig.get().overrides.task
        if override_key(o) not in shared and not override_key(o).startswith("hydra")
    ]
    if not own:
        return f"job{HydraConfig.get().job.num}"
    return job_folder_name(own)


def job_folder_name(overrides: list[str]) -> str:
    """``a=1,b=2`` for the given overrides (sorted); past ``MAX_NAME`` characters, or
    when a character had to be replaced, the whole items that fit and ``-<hash>``."""
    full = ",".join(sorted(overrides))
    name = safe_name(full)
    if len(name) > MAX_NAME or name != full:
        kept, _ = _cut([safe_name(o) for o in sorted(overrides)], ",", MAX_NAME - 9)
        name = f"{kept}-{short_hash(full)}"
    return name


def run_group() -> str | None:
    """The sweep a job belongs to (its W&B group); None for a single run."""
    return sweep_name() if in_multirun() else None


def run_name() -> str | None:
    """A job's name from its own overrides (its W&B run name); None for a single run."""
    return job_name() if in_multirun() else None


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("vaelab.sweep_name", sweep_name, replace=True)
    OmegaConf.register_new_resolver("vaelab.job_name", job_name, replace=True)
    OmegaConf.register_new_resolver("vaelab.run_group", run_group, replace=True)
    OmegaConf.register_new_resolver("vaelab.run_name", run_name, replace=True)


# -- what the launching process says ---------------------------------------------------
def shown_path(folder: str | Path) -> str:
    """``folder`` as the user would type it: relative to the current folder when under it."""
    folder = Path(folder).absolute()
    try:
        return str(folder.relative_to(Path.cwd()))
    except ValueError:
        return str(folder)


def job_states(folder: Path) -> dict[str, int]:
    """How many of the sweep's job folders are done (``metrics.json``), failed
    (``FAILED``) or neither (not run, running, or stopped)."""
    states = {"done": 0, "failed": 0, "not finished": 0}
    for job in folder.iterdir() if folder.is_dir() else []:
        if not (job / ".hydra").is_dir():
            continue
        state = (
            "done" if (job / "metrics.json").is_file() else "failed" if (job / "FAILED").is_file() else "not finished"
        )
        states[state] += 1
    return states


def sweep_summary(folder: str | Path) -> str:
    """What a sweep's folder holds, and the command that compares its jobs."""
    folder = Path(folder)
    states = job_states(folder)
    jobs = sum(states.values())
    counts = ", ".join(f"{n} {state}" for state, n in states.items() if n or state == "done")
    shown = shown_path(folder)
    return f"Sweep folder: {shown} ({jobs} job{'s' * (jobs != 1)}: {counts})\nCompare its jobs: vaelab-compare {shown}"


class SweepReport(Callback):
    """Hydra calls this in the launching process of every sweep (see the module
    docstring). At the start it prints the sweep's folder and writes the sweep's
    config to ``<sweep>/multirun.yaml``, as Hydra's grid sweeper does and the Optuna
    sweeper does not (vaelab-compare reads the swept keys from it, and the notebook
    finds sweeps by it). At the end it prints :func:`sweep_summary`; a sweep that
    ends with an error (a failed job, an interrupt) prints it as the process exits."""

    def __init__(self) -> None:
        self.folder: Path | None = None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.folder = Path(config.hydra.sweep.dir)
        self.folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(config, self.folder / "multirun.yaml")
        print(f"Sweep folder: {shown_path(self.folder)} (the same command again resumes it)", flush=True)
        atexit.register(self.report_end)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self.report_end()

    def report_end(self) -> None:
        if self.folder is None:
            return
        folder, self.folder = self.folder, None
        atexit.unregister(self.report_end)
        print(sweep_summary(folder), flush=True)


# -- the job's situation --------------------------------------------------------------
def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def parallel_jobs() -> int:
    """How many jobs the launcher runs at once on this machine (1 when not known)."""
    if not in_multirun():
        return 1
    n_jobs = OmegaConf.select(HydraConfig.get(), "launcher.n_jobs", default=None)
    if n_jobs is None:
        return 1
    n_jobs = int(n_jobs)
    # joblib's convention: -1 means one job per core
    return (os.cpu_count() or 1) if n_jobs < 0 else max(1, n_jobs)


def slurm_cpus_per_task() -> int | None:
    """The CPUs SLURM gave each task of this job (None outside SLURM, or when not set)."""
    value = os.environ.get("SLURM_CPUS_PER_TASK")
    return int(value) if value and value.isdigit() else None


def limit_threads(n_jobs: int) -> int:
    """Give this job its share of the CPU threads, so parallel jobs do not oversubscribe:
    in a SLURM job the CPUs SLURM allotted per task, else the cores divided among the
    launcher's parallel jobs."""
    import torch

    slurm_cpus = slurm_cpus_per_task()
    if slurm_cpus is not None:
        torch.set_num_threads(slurm_cpus)
    elif n_jobs > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_jobs))
    return torch.get_num_threads()


def finished_result(run_dir: Path) -> dict[str, Any] | None:
    """The recorded summary of a job that already finished, else None."""
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def interrupted_checkpoint(run_dir: Path) -> Path | None:
    path = run_dir / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def sweeper_optimises() -> bool:
    """Whether this job's value steers a sweeper (Optuna), rather than being ignored (a grid)."""
    return in_multirun() and "basic" not in str(HydraConfig.get().sweeper.get("_target_", "")).lower()


def value_for_failed_job() -> float | list[float] | None:
    """What a failed job returns to a sweeper that needs a value to go on, else None
    (the failure is raised, and the launcher records it). A failed trial of the Optuna
    sweeper reports the worst value of each objective (+inf when minimising), which the
    sweeper (:mod:`vaelab.optuna_sweep`) records as a failed trial: the study goes on, and
    the launcher does not print a traceback for a trial that failed for a reason the
    trial's folder states (``FAILED``)."""
    if not in_multirun():
        return None
    sweeper = HydraConfig.get().sweeper
    if "optuna" not in str(sweeper.get("_target_", "")).lower():
        return None
    directions = sweeper.get("direction", "minimize")
    directions = [directions] if isinstance(directions, (str, Enum)) else list(directions)
    worst = [-math.inf if str(d).endswith("maximize") else math.inf for d in directions]
    return worst[0] if len(worst) == 1 else worst


def write_failure(run_dir: Path, error: BaseException) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "FAILED"
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    path.write_text(f"{type(error).__name__}: {error}\n\n{text}")
    return path


class JobFolderLock:
    """One process at a time trains a job folder: an exclusive file lock on
    ``<job folder>/.lock``, held for as long as the job runs and released by the OS
    if the process dies. A second process (the same sweep started twice, or SLURM
    requeueing a job whose first run still goes on) gets :class:`JobBusyError`
    instead of training the job again into the same files."""

    NAME = ".lock"

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / self.NAME
        self._handle: Any = None

    def __enter__(self) -> None:
        from vaelab.exceptions import JobBusyError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = locks.try_lock(self.path)
        if self._handle is None:
            raise JobBusyError(
                f"{self.path.parent} is being trained by another process ({locks.holder(self.path, 'unknown')}); "
                "this one leaves it alone"
            )

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            locks.unlock(self._handle)
            self._handle = None
