"""Where the Hydra configs live, and small helpers to build objects from them."""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.utils import get_object, instantiate
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


def instantiate_likelihood(cfg: DictConfig, image_shape: Sequence[int], levels: int) -> Any:
    """The likelihood of a config's ``likelihood`` node for images of ``image_shape``
    with ``levels`` intensities. Every likelihood takes the image shape; ``levels``
    goes to those whose constructor names it (a probability mass of the integer levels
    needs them at construction; a density on [0, 1] is told them per batch, in
    ``prepare``), so neither a config nor a user states what the data already say."""
    data: dict[str, Any] = {"image_shape": tuple(int(s) for s in image_shape)}
    if "levels" in inspect.signature(get_object(cfg._target_)).parameters:
        data["levels"] = int(levels)
    return instantiate(cfg, **data)
