"""Which Optuna trial a job is, told by the sweeper to the job's process.

:mod:`vaelab.optuna_sweep` launches each trial as a Hydra job with three environment
variables, set through the job's ``hydra.job.env_set`` override, so they reach the
job wherever the launcher runs it (this process, a joblib worker, a SLURM node) and
are removed again when the job ends. The job uses them to report its validation
metric to its trial, for the study's pruner (:mod:`vaelab.optuna_pruning`): the
storage must therefore be reachable from where the job runs (the default SQLite
file in the sweep folder is, on a file system the nodes share).

This module imports nothing heavy: the job side needs Optuna only when pruning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

STORAGE_ENV = "VAELAB_OPTUNA_STORAGE"
STUDY_ENV = "VAELAB_OPTUNA_STUDY"
TRIAL_ENV = "VAELAB_OPTUNA_TRIAL"
#: the user attribute a job sets on its trial when the pruner stopped it (the sweeper then tells PRUNED)
PRUNED_ATTR = "vaelab.pruned_at_epoch"


def quoted(value: str) -> str:
    """``value`` as a quoted string of Hydra's override grammar."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def env_overrides(storage: str, study_name: str, number: int) -> list[str]:
    """The overrides that hand trial ``number`` of the study to its job."""
    return [
        f"++hydra.job.env_set.{STORAGE_ENV}={quoted(storage)}",
        f"++hydra.job.env_set.{STUDY_ENV}={quoted(study_name)}",
        f"++hydra.job.env_set.{TRIAL_ENV}={number}",
    ]


@dataclass(frozen=True)
class TrialAddress:
    storage: str
    study_name: str
    number: int

    def open(self, pruner_cfg: Any = None) -> Any:
        """The running trial (an ``optuna.Trial``) in its storage, judged by the study's
        pruner (a storage keeps no pruner: each process that asks builds its own)."""
        import optuna

        study = optuna.load_study(study_name=self.study_name, storage=self.storage, pruner=build_pruner(pruner_cfg))
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, self.number)
        return optuna.Trial(study, trial_id)


def build_pruner(pruner_cfg: Any) -> Any:
    """``hydra.sweeper.pruner`` instantiated; none configured: Optuna's NopPruner (never
    Optuna's own default, the median pruner)."""
    import optuna
    from hydra.utils import instantiate

    return instantiate(pruner_cfg) if pruner_cfg else optuna.pruners.NopPruner()


def sweeper_pruner_config() -> Any:
    """This job's ``hydra.sweeper.pruner`` (the sweeper's, composed with the job's config)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    return OmegaConf.select(HydraConfig.get(), "sweeper.pruner", default=None) if HydraConfig.initialized() else None


def this_jobs_trial() -> TrialAddress | None:
    """The trial this process's job is, or None outside the Optuna sweeper."""
    storage, study, number = (os.environ.get(name) for name in (STORAGE_ENV, STUDY_ENV, TRIAL_ENV))
    if not (storage and study and number and number.isdigit()):
        return None
    return TrialAddress(storage, study, int(number))
