"""Command-line overrides as Hydra reads them: the key each one sets, and whether it
sweeps (``a=1,2``, ``choice(...)``, ``range(...)``, ``interval(...)``, ``glob(...)``).

Hydra's own override parser decides, so a value that only looks like a sweep is not
one: a dict (``key={a:1,b:2}``), a quoted string (``key='a,b'``), a nested list or an
interpolation with a comma each set one value. The sweep's folder name
(:mod:`vaelab.sweeps`) and the columns vaelab-compare shows
(:mod:`vaelab.compare.records`) both ask here.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable


@functools.lru_cache(maxsize=4096)
def parse(override: str) -> tuple[str, bool]:
    """``(key, swept)`` for one override: ``model.beta=0.5,2`` -> ``("model.beta", True)``.

    The key has no ``+``/``++``/``~`` prefix and keeps a group's ``@package``. A string
    Hydra cannot parse (a flag's value caught among the overrides, ``-cn train``'s
    ``train``) sets nothing swept: its key is the text before ``=``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        (parsed,) = OverridesParser.create().parse_overrides([override])
    except Exception:  # noqa: BLE001 - not an override Hydra would accept
        return override.partition("=")[0].lstrip("+~"), False
    return parsed.get_key_element().lstrip("+~"), parsed.is_sweep_override()


def override_key(override: str) -> str:
    """The key an override sets (``+model.beta=2`` -> ``model.beta``)."""
    return parse(override)[0]


def is_swept(override: str) -> bool:
    """Whether an override sweeps (several values, or a range or space to search)."""
    return parse(override)[1]


def swept_keys(overrides: Iterable[str]) -> list[str]:
    """The key of each override that sweeps, in their order."""
    return [k for k, swept in map(parse, overrides) if swept]
