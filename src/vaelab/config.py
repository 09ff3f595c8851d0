"""Where the Hydra configs live, and small helpers to build objects from them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vaelab import schema, sweeps

# `${vaelab.cwd:}`: the folder the command runs in. Hydra's own `${hydra:runtime.cwd}`
# cannot be used in paths that hydra.sweep.dir depends on: multirun resolves the
# sweep folder before the Hydra config is set.
OmegaConf.register_new_resolver("vaelab.cwd", os.getcwd, replace=True)
schema.register()
sweeps.register_resolvers()


def config_dir() -> str:
    """The conf/ folder: packaged inside a wheel, or at the top of a source checkout."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return str(packaged)
    return str(Path(__file__).resolve().parents[2] / "conf")


def instantiate_dict(cfg: DictConfig | None, **kwargs: Any) -> list[Any]:
    """Instantiate every entry of a config group whose members are named objects
    (callbacks, loggers). Entries without ``_target_`` (or set to null), and entries
    whose factory returns None (a callback that is switched off), are skipped."""
    if not cfg:
        return []
    built = (
        instantiate(node, **kwargs) for node in cfg.values() if isinstance(node, DictConfig) and "_target_" in node
    )
    return [obj for obj in built if obj is not None]
