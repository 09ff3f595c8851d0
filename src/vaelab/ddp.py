"""DDP whose extra processes run exactly one job, inside single runs and sweeps alike.

Lightning's ``ddp`` strategy starts ranks 1..N-1 by re-running the command line
(``sys.argv``). Inside a Hydra multirun or an Optuna sweep that re-runs the whole
sweep in every extra rank, into folders of their own (Lightning issue 11300).

:class:`JobDDPStrategy` is Lightning's DDP strategy with one change: its launcher
starts the extra ranks as ``python -m vaelab.ddp_rank``, handing them the job's fully
resolved config (the overrides Hydra chose for this job, its folder, its checkpoint
to resume from, its devices) in an environment variable. The extra ranks do not run
Hydra at all: they cannot launch a sweep, write a Hydra folder, or report a value to a
sweeper. Only rank zero writes files, checkpoints and W&B runs, into the job's folder.

Where a cluster starts the processes itself (SLURM with one task per device,
``torchrun``), Lightning's cluster environment says so and nothing is re-executed:
every task runs the job function that SLURM started it with.

:func:`job_processes` ends a job's processes cleanly, so the next job of a sweep run
in the same process starts a process group of its own.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.distributed import _destroy_dist_connection
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

log = logging.getLogger(__name__)

#: the environment variable that carries a job's resolved config to its extra ranks
JOB_CONFIG_ENV = "VAELAB_DDP_JOB_CONFIG"
#: what the launcher sets in the main process; removed again when the job ends
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS")


def is_extra_rank() -> bool:
    """True in a process that :class:`JobDDPStrategy` started for a job's rank > 0."""
    return JOB_CONFIG_ENV in os.environ


class JobScriptLauncher(_SubprocessScriptLauncher):
    """Starts ranks 1..N-1 of this node as ``python -m vaelab.ddp_rank`` with the job's config.

    Unlike Lightning's launcher it does not watch the children from a thread that
    kills the main process when one fails (in a sweep that would end every other job
    too): a rank that dies breaks the job's collectives, the job fails, and
    :func:`job_processes` ends the remaining ranks."""

    def __init__(self, strategy: JobDDPStrategy) -> None:
        assert strategy.cluster_environment is not None
        super().__init__(strategy.cluster_environment, strategy.num_processes, strategy.num_nodes)
        self.strategy = strategy

    def launch(self, function: Any, *args: Any, trainer: pl.Trainer | None = None, **kwargs: Any) -> Any:
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
        return function(*args, **kwargs)

    def _call_children_scripts(self) -> None:
        job_config = self.strategy.job_config
        if job_config is None:
            raise RuntimeError("JobDDPStrategy needs the job's config: set strategy.job_config before trainer.fit")
        self._check_can_spawn_children()
        self.procs = []
        env = self.cluster_environment
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        os.environ["NODE_RANK"] = str(env.node_rank())
        os.environ["LOCAL_RANK"] = str(env.local_rank())
        os.environ["WORLD_SIZE"] = str(self.num_processes * self.num_nodes)
        # Each process takes its share of this job's threads (a job of a parallel sweep
        # already holds only its share of the machine), unless the user set them.
        if "OMP_NUM_THREADS" not in os.environ:
            threads = max(1, torch.get_num_threads() // self.num_processes)
            torch.set_num_threads(threads)
            os.environ["OMP_NUM_THREADS"] = str(threads)
        for local_rank in range(1, self.num_processes):
            child_env = {**os.environ, "LOCAL_RANK": str(local_rank), JOB_CONFIG_ENV: json.dumps(job_config)}
            command = [sys.executable, "-m", "vaelab.ddp_rank"]
            self.procs.append(subprocess.Popen(command, env=child_env))
        log.info("Started %d extra DDP process(es) for this job: pids %s", len(self.procs), [p.pid for p in self.procs])


class JobDDPStrategy(DDPStrategy):
    """Lightning's DDP, with extra ranks that run this job only (see the module docstring).

    ``job_config`` (the resolved config the extra ranks train with) is set by
    ``vaelab-train`` before fitting."""

    strategy_name = "vaelab_ddp"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.job_config: dict[str, Any] | None = None

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _SubprocessScriptLauncher):
            self._launcher = JobScriptLauncher(self)


@contextmanager
def job_processes(trainer: pl.Trainer, job_config: dict[str, Any]) -> Iterator[None]:
    """Run one job's fit and test across its DDP processes, and end them with the job.

    On the way out, in the main process: the process group is destroyed, the extra
    ranks are waited for (and killed if the job failed), and the environment
    variables the launcher set are removed, so that the next job of a sweep run in
    this process starts processes of its own. Without DDP this does nothing."""
    strategy = trainer.strategy
    if not isinstance(strategy, DDPStrategy):
        yield
        return
    if isinstance(strategy, JobDDPStrategy):
        strategy.job_config = job_config
    saved = {key: os.environ.get(key) for key in _DDP_ENV}
    failed = True
    try:
        yield
        failed = False
    finally:
        _destroy_dist_connection()
        launcher = strategy.launcher
        if isinstance(launcher, JobScriptLauncher):
            end_children(launcher.procs, kill=failed)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    bad = [p for p in getattr(launcher, "procs", []) if p.returncode]
    if bad:
        raise RuntimeError(
            f"DDP rank process(es) {[p.pid for p in bad]} exited with code(s) {[p.returncode for p in bad]}"
        )


def rank_pids(trainer: pl.Trainer) -> list[int]:
    """Process ids of the extra ranks this process started for its job (empty without)."""
    launcher = trainer.strategy.launcher if isinstance(trainer.strategy, DDPStrategy) else None
    return [p.pid for p in getattr(launcher, "procs", [])]


def end_children(procs: list[subprocess.Popen], kill: bool, timeout_s: float = 120.0) -> None:
    """Wait for a job's extra ranks to exit (they finish right after rank zero), or
    kill them when the job failed and they may be stuck in a collective."""
    for proc in procs:
        if kill and proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("DDP rank process %d did not exit within %.0f s; killing it", proc.pid, timeout_s)
            proc.kill()
            proc.wait()
