"""An Optuna study run as a Hydra sweep, over Optuna's ask-and-tell interface.

The sweeper (``hydra_plugins/vaelab_optuna_sweeper.py``) asks the study for
``n_jobs`` trials at a time, launches them as one batch of Hydra jobs through the
configured launcher (one after another, joblib, SLURM: each trial a job with its own
folder, named after its values), and tells the study how each ended:

- COMPLETE with the value the job returned (``optimized_metric``);
- FAIL when the job failed: it returns the worst value (``sweeps.value_for_failed_job``)
  or raised; the study goes on;
- PRUNED when the study's pruner stopped it (the job marks its trial:
  :mod:`vaelab.optuna_pruning`).

The study lives in a storage, by default ``sqlite:///<sweep folder>/optuna.db``, and
``n_trials`` counts every trial the study holds that ended (complete, pruned or
failed): the same command again continues the study and runs only the trials still
missing, a larger ``n_trials`` adds trials. A trial a killed sweep left running is
marked failed (``vaelab.interrupted``, not counted) and its values are queued again,
so it re-runs in the same job folder and continues from that folder's last checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vaelab.exceptions import ConfigError, require_extra

require_extra("optuna", "optuna", "hparams_search=optuna (Hydra's sweeper vaelab_optuna)")

import optuna  # noqa: E402 - after the one-line check that it is installed
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from vaelab import optuna_space, optuna_trial  # noqa: E402
from vaelab.sweeps import shown_path  # noqa: E402

log = logging.getLogger("vaelab.optuna")

#: user attribute of a trial a killed sweep left running (marked failed, not counted, re-run)
INTERRUPTED_ATTR = "vaelab.interrupted"
#: user attribute of the trial queued again in its place
RERUN_OF_ATTR = "vaelab.rerun_of"
DB_NAME = "optuna.db"
DIRECTIONS = ("minimize", "maximize")


@dataclass
class SweepSettings:
    """``hydra.sweeper.*``, checked (one-line errors for values out of range)."""

    directions: list[str]
    study_name: str | None
    storage: str | None
    n_trials: int
    n_jobs: int
    sampler: Any
    pruner: Any
    params: dict[str, str]

    @classmethod
    def from_config(cls, settings: dict[str, Any]) -> SweepSettings:
        direction = settings.get("direction", "minimize")
        directions = [direction] if isinstance(direction, str) else [str(d) for d in direction]
        wrong = [d for d in directions if d not in DIRECTIONS]
        if not directions or wrong:
            raise ConfigError(f"hydra.sweeper.direction={direction}: each direction is minimize or maximize")
        for key in ("n_trials", "n_jobs"):
            if int(settings.get(key, 1)) < 1:
                raise ConfigError(f"hydra.sweeper.{key}={settings[key]}: at least 1")
        params = settings.get("params") or {}
        return cls(
            directions=directions,
            study_name=settings.get("study_name"),
            storage=settings.get("storage"),
            n_trials=int(settings.get("n_trials", 20)),
            n_jobs=int(settings.get("n_jobs", 1)),
            sampler=settings.get("sampler"),
            pruner=settings.get("pruner"),
            params={str(k): str(v) for k, v in params.items()},
        )


def default_storage(sweep_dir: str | Path) -> str:
    """``sqlite:///<sweep folder>/optuna.db``, absolute: the jobs find it from wherever they run."""
    return f"sqlite:///{Path(sweep_dir).absolute() / DB_NAME}"


def counted(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards ``n_trials``: it ended, and not by its sweep being killed."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get(INTERRUPTED_ATTR)


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by a sweep that was killed: marked failed (not counted) and
    their values queued again. Returns their numbers."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, True)
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={RERUN_OF_ATTR: trial.number})
    if stale:
        numbers = ", ".join(str(t.number) for t in stale)
        print(
            f"Trials {numbers} were interrupted (left running by an earlier sweep): marked failed, run again",
            flush=True,
        )
    return [t.number for t in stale]


def build_sampler(sampler_cfg: Any, seed_offset: int) -> Any:
    """The configured sampler; a seeded one is seeded with ``seed + trials already in the
    study``, so a resumed study does not propose again the values it began with."""
    if sampler_cfg is None:
        return None
    sampler_cfg = OmegaConf.create(sampler_cfg) if not isinstance(sampler_cfg, DictConfig) else sampler_cfg
    seed = sampler_cfg.get("seed")
    if seed is not None and seed_offset:
        return instantiate(sampler_cfg, seed=int(seed) + seed_offset)
    return instantiate(sampler_cfg)


def open_study(settings: SweepSettings, sweep_dir: Path) -> tuple[optuna.Study, str]:
    storage = settings.storage or default_storage(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    study_name = settings.study_name or sweep_dir.name
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        directions=settings.directions,
        pruner=optuna_trial.build_pruner(settings.pruner),
        load_if_exists=True,
    )
    if [d.name.lower() for d in study.directions] != settings.directions:
        raise ConfigError(
            f"study {study_name} in {storage} was created to "
            f"{', '.join(d.name.lower() for d in study.directions)}, not "
            f"{', '.join(settings.directions)}: choose another hydra.sweeper.study_name or sweep_name"
        )
    study.sampler = build_sampler(settings.sampler, len(study.get_trials(deepcopy=False))) or study.sampler
    return study, storage


def job_values(result: JobReturn, n_values: int) -> list[float] | None:
    """The values a finished job returned, or None for a failed one (it raised, or
    returned a value that is not finite: the worst value a failed trial reports)."""
    if result.status != JobStatus.COMPLETED:
        return None
    value = result.return_value
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"a trial returned {value!r}, not a number: is optimized_metric set?") from None
    if len(values) != n_values:
        raise ConfigError(f"a trial returned {len(values)} values for {n_values} directions (hydra.sweeper.direction)")
    return values if all(math.isfinite(v) for v in values) else None


def tell(study: optuna.Study, trial: optuna.Trial, result: JobReturn) -> bool:
    """Tell the study how the trial's job ended (see the module docstring) and say so.
    False when the sampler has nothing left to propose (a grid or brute-force sampler
    that has tried every combination stops the study)."""
    # the storage, not trial.user_attrs: that is a copy cached when the trial was asked,
    # before the job (another process) marked it pruned
    stored = study._storage.get_trial(trial._trial_id)
    values = None
    if optuna_trial.PRUNED_ATTR in stored.user_attrs:
        state = TrialState.PRUNED
    else:
        try:
            values = job_values(result, len(study.directions))
        except ConfigError:
            study.tell(trial, state=TrialState.FAIL)  # recorded before the sweep stops over it
            raise
        state = TrialState.FAIL if values is None else TrialState.COMPLETE
        if result.status != JobStatus.COMPLETED:
            print(f"Trial {trial.number} failed: {result._return_value!r}", flush=True)
    going_on = True
    try:
        study.tell(trial, values=values, state=state)
    except RuntimeError as error:
        if "Study.stop" not in str(error):
            raise
        going_on = False
    shown = f" {values[0] if len(values) == 1 else values}" if values else ""
    folder = OmegaConf.select(result.hydra_cfg, "hydra.runtime.output_dir", default=None) if result.hydra_cfg else None
    print(
        f"Trial {trial.number}: {state.name.lower()}{shown}" + (f" ({shown_path(folder)})" if folder else ""),
        flush=True,
    )
    return going_on


def run_study(
    settings: SweepSettings, config: DictConfig, launcher: Any, arguments: Sequence[str], config_loader: Any = None
) -> optuna.Study:
    sweep_dir = Path(config.hydra.sweep.dir)
    params = [f"{k}={v}" for k, v in settings.params.items()] + list(arguments)
    space = optuna_space.search_space(params, config_loader)
    study, storage = open_study(settings, sweep_dir)
    requeue_interrupted(study)
    done = sum(counted(t) for t in study.get_trials(deepcopy=False))
    print(f"Optuna study {study.study_name} in {storage}: {done} of {settings.n_trials} trials done", flush=True)
    while done < settings.n_trials:
        trials = [study.ask(space.distributions) for _ in range(min(settings.n_jobs, settings.n_trials - done))]
        overrides = [
            space.trial_overrides(t.params) + optuna_trial.env_overrides(storage, study.study_name, t.number)
            for t in trials
        ]
        results = launcher.launch(overrides, initial_job_idx=trials[0].number)
        going_on = [tell(study, trial, result) for trial, result in zip(trials, results)]
        done += len(trials)
        if not all(going_on):
            print("The sampler has tried every combination of the search space: the study stops", flush=True)
            break
    write_results(study, sweep_dir)
    return study


def write_results(study: optuna.Study, sweep_dir: Path) -> None:
    """``<sweep>/optimization_results.yaml``: the best trial's values and value (the
    Pareto front for several objectives), as hydra-optuna-sweeper wrote it."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name}
    if not finished:
        print("No trial of the study completed: no best value", flush=True)
    elif len(study.directions) == 1:
        best = study.best_trial
        results.update(best_params=best.params, best_value=best.value, best_trial=best.number)
        print(f"Best parameters: {best.params}\nBest value: {best.value} (trial {best.number})", flush=True)
    else:
        results["solutions"] = [{"params": t.params, "values": t.values, "trial": t.number} for t in study.best_trials]
        print(f"Pareto front: {len(study.best_trials)} trials", flush=True)
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
