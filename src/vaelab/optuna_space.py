"""The search space of an Optuna sweep, from Hydra's override syntax.

``hydra.sweeper.params`` (and sweep overrides on the command line) are written as in
any Hydra sweep and read by Hydra's own override parser:

- ``interval(a, b)``: a float uniform in [a, b] (Hydra's intervals are of floats);
  ``tag(log, interval(a, b))`` log-uniform.
- ``choice(x, y, ...)`` (or ``x,y,...``): one of the values, unordered.
- ``glob(pattern)`` of a config group: one of the group's options that match.
- ``range(a, b, step)``: the values Hydra's range yields (b excluded), as an ordered
  integer distribution (floats: one of those values).

Any other override (``debug=short``) is passed unchanged to every trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from vaelab.exceptions import ConfigError


@dataclass
class SearchSpace:
    #: Optuna's distribution of each searched key
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    #: the override prefix of a searched key (``+`` for a key the config does not have)
    prefixes: dict[str, str] = field(default_factory=dict)
    #: overrides every trial gets as they are
    fixed: list[str] = field(default_factory=list)

    def trial_overrides(self, params: dict[str, Any]) -> list[str]:
        """A trial's values as overrides, then the fixed ones."""
        return [f"{self.prefixes.get(k, '')}{k}={value_text(v)}" for k, v in params.items()] + self.fixed


def value_text(value: Any) -> str:
    if value is None:
        return "null"
    return str(value)


def _choices(override: Override) -> list[Any]:
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    for value in values:
        if not isinstance(value, (str, int, float, bool, type(None))):
            raise ConfigError(
                f"{override.input_line}: Optuna chooses among strings, numbers, booleans or null, "
                f"not {type(value).__name__}"
            )
    return values


def distribution(override: Override) -> BaseDistribution:
    """Optuna's distribution for one sweep override (see the module docstring)."""
    if override.is_choice_sweep():
        return CategoricalDistribution(_choices(override))
    if override.is_range_sweep():
        values = _choices(override)
        if not values:
            raise ConfigError(f"{override.input_line}: the range is empty")
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        if ints and not override.value().shuffle and len(values) > 1 and values[1] > values[0]:
            return IntDistribution(values[0], values[-1], step=values[1] - values[0])
        return CategoricalDistribution(values)
    if override.is_interval_sweep():
        interval = override.value()
        low, high, log = interval.start, interval.end, "log" in interval.tags
        if not low < high:
            raise ConfigError(f"{override.input_line}: an interval needs its start below its end")
        if log and low <= 0:
            raise ConfigError(f"{override.input_line}: a log interval needs a start above 0")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise ConfigError(
        f"{override.input_line}: the Optuna sweeper searches choice(), range() and interval(), not this kind of sweep"
    )


def search_space(overrides: list[str], config_loader: Any = None) -> SearchSpace:
    """The distributions of the sweep overrides and the fixed others (later ones win).
    With Hydra's ``config_loader``, ``glob(gaussian_*)`` of a config group is a choice
    among the group's options that match."""
    space = SearchSpace()
    for override in OverridesParser.create(config_loader=config_loader).parse_overrides(overrides):
        key = override.key_or_group if override.package is None else f"{override.key_or_group}@{override.package}"
        if override.is_sweep_override():
            space.distributions[key] = distribution(override)
            space.prefixes[key] = "+" if override.is_add() else "++" if override.is_force_add() else ""
        else:
            space.distributions.pop(key, None)
            space.fixed.append(override.input_line)
    return space
