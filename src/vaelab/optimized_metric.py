"""``optimized_metric``: the number each trial of an optimising sweeper (Optuna)
returns. A single run or a grid sweep ignores it."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from vaelab import sweeps
from vaelab.exceptions import ConfigError


def check_sweeper_metric(cfg: DictConfig) -> None:
    """An optimising sweeper needs ``optimized_metric`` from every trial: a val/ metric
    with validation switched off can never be there, so say so before training."""
    name = str(cfg.get("optimized_metric") or "").lstrip("-")
    no_validation = cfg.trainer.get("limit_val_batches") in (0, 0.0)
    if sweeps.sweeper_optimises() and name.startswith("val/") and no_validation:
        raise ConfigError(
            f"optimized_metric={cfg.optimized_metric} needs validation, but trainer.limit_val_batches=0 switches it "
            "off; let validation run or optimise a test/ metric"
        )


def metric_for_sweeper(metrics: dict[str, Any], name: str | None) -> float | None:
    """The value of ``optimized_metric`` (``-name``: the metric negated)."""
    if not name:
        return None
    sign, key = (-1.0, name[1:]) if name.startswith("-") else (1.0, name)
    if key not in metrics:
        raise ConfigError(
            f"optimized_metric={name} was not logged by this trial; it logged {', '.join(sorted(metrics))}"
        )
    return sign * float(metrics[key])


def sweeper_value(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    """What this job returns to Hydra: the metric an optimising sweeper asked for, else
    None (a single run or a grid sweep ignores the value: no job fails over a missing one)."""
    return metric_for_sweeper(metrics, cfg.get("optimized_metric")) if sweeps.sweeper_optimises() else None
