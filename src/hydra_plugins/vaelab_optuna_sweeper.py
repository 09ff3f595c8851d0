"""vaelab's Optuna sweeper: ``hydra/sweeper=vaelab_optuna`` (``hparams_search=optuna`` selects it).

Hydra takes sweepers from the ``hydra_plugins`` package only, hence this module; it
holds the sweeper's structured config and the thin :class:`VaelabOptunaSweeper`, and
the study itself is :mod:`vaelab.optuna_sweep` (ask, launch, tell). Hydra imports every
plugin module at start-up, so nothing here imports Optuna: a core install without the
``optuna`` extra composes and trains as before, and only a sweep with this sweeper
says, in one line, to ``pip install 'vaelab[optuna]'``.

It replaces hydra-optuna-sweeper, whose releases require ``optuna<3`` (or a Hydra 1.4
pre-release): see the README's Optuna section for what this one adds (a study stored
in ``<sweep>/optuna.db``, resumed from there, and pruning).
"""

# no `from __future__ import annotations`: Hydra executes plugin modules without entering them
# in sys.modules, where dataclasses look string annotations up; hence Optional below
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class VaelabOptunaSweeperConf:
    """What ``hydra.sweeper.*`` accepts (typed: ``n_trials=abc`` is refused at composition)."""

    _target_: str = "hydra_plugins.vaelab_optuna_sweeper.VaelabOptunaSweeper"
    # the sampler and pruner reach the sweeper as configs: it instantiates them itself
    _recursive_: bool = False
    #: minimize or maximize (a list of them: one per value a multi-objective job returns)
    direction: Any = "minimize"
    #: the study's name in its storage (default: the sweep folder's name)
    study_name: Optional[str] = None  # noqa: UP045
    #: an Optuna storage URL; null: sqlite:///<sweep folder>/optuna.db
    storage: Optional[str] = None  # noqa: UP045
    #: trials in the study in all: re-running the command runs only those still missing
    n_trials: int = 20
    #: trials asked for, and launched, at once
    n_jobs: int = 1
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    #: e.g. {_target_: optuna.pruners.MedianPruner}; null: no trial is pruned
    pruner: Any = None
    #: the search space: key -> Hydra sweep syntax (interval, tag(log, ...), choice, range)
    params: Optional[dict[str, str]] = None  # noqa: UP045


ConfigStore.instance().store(
    group="hydra/sweeper", name="vaelab_optuna", node=VaelabOptunaSweeperConf, provider="vaelab"
)


class VaelabOptunaSweeper(Sweeper):
    """Runs an Optuna study through whichever Hydra launcher is configured (see module docstring)."""

    def __init__(self, **settings: Any) -> None:
        from vaelab import optuna_sweep  # says which extra to install when Optuna is missing

        self.settings = optuna_sweep.SweepSettings.from_config(settings)
        self.config: Optional[DictConfig] = None  # noqa: UP045
        self.launcher: Any = None
        self.config_loader: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.config_loader = hydra_context.config_loader
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        from vaelab import optuna_sweep

        assert self.config is not None and self.launcher is not None, "setup() first"
        optuna_sweep.run_study(self.settings, self.config, self.launcher, arguments, self.config_loader)
