"""Which keys a config node may hold, and what a user most likely meant by one it may not.

A node with a ``_target_`` is passed to that class or function as keyword
arguments, so its keys are the target's parameters: ``+model.betta=2`` would only
fail inside the constructor, with a traceback. :func:`check_target_arguments`
catches it before anything is built, and :func:`unknown_key_message` turns Hydra's
"Could not override 'model.betta'" into "did you mean model.beta?" instead of its
hint to append the key with ``+``, which leads to that crash.
"""

from __future__ import annotations

import difflib
import functools
import inspect

from omegaconf import DictConfig

from vaelab.exceptions import ConfigError


@functools.cache
def target_arguments(target: str) -> frozenset[str] | None:
    """The keyword arguments ``target`` accepts; None when it takes any (``**kwargs``)
    or cannot be inspected (then nothing is checked here and Hydra reports)."""
    from hydra.utils import get_object

    try:
        obj = get_object(target)
        signature = inspect.signature(obj)
    except Exception:  # noqa: BLE001 - an unknown target is Hydra's error to report, at instantiation
        return None
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _user_keys(node: DictConfig) -> list[str]:
    return [str(key) for key in node.keys() if not str(key).startswith("_")]


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def closest(key: str, candidates: list[str] | set[str] | frozenset[str]) -> str | None:
    matches = difflib.get_close_matches(key, sorted(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def check_target_arguments(cfg: DictConfig, prefix: str = "") -> None:
    """Raise :class:`ConfigError` for the first key of a ``_target_`` node that its
    target does not take, naming the closest one it does."""
    target = cfg.get("_target_") if "_target_" in cfg else None
    allowed = target_arguments(str(target)) if isinstance(target, str) else None
    for key in _user_keys(cfg):
        full_key = _join(prefix, key)
        if allowed is not None and key not in allowed:
            guess = closest(key, allowed)
            hint = f"did you mean {_join(prefix, guess)}?" if guess else f"it takes {', '.join(sorted(allowed))}"
            raise ConfigError(f"{full_key} is not a setting of {target}: {hint}")
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            check_target_arguments(child, full_key)


def _root(node: DictConfig) -> DictConfig:
    while node._get_parent() is not None:
        node = node._get_parent()
    return node


def _dotted_keys(node: DictConfig, prefix: str = "", depth: int = 3) -> list[str]:
    """Every key down to ``depth`` levels, dotted (Hydra's own settings left out)."""
    keys = []
    for key in _user_keys(node):
        if not prefix and key == "hydra":
            continue
        full_key = _join(prefix, key)
        keys.append(full_key)
        child = node._get_node(key)
        if depth > 1 and isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            keys += _dotted_keys(child, full_key, depth - 1)
    return keys


def _closest_anywhere(key: str, root: DictConfig) -> str | None:
    """The dotted key elsewhere in the config whose last part is closest to ``key``
    (``beta=2`` -> model.beta)."""
    by_last: dict[str, str] = {}
    for dotted in _dotted_keys(root):
        by_last.setdefault(dotted.rpartition(".")[2], dotted)
    guess = closest(key, set(by_last))
    return by_last[guess] if guess is not None else None


def unknown_key_message(full_key: str, value: str | None, parent: DictConfig | None) -> str:
    """One line for an override of a key the composed config does not have."""
    prefix, _, key = full_key.rpartition(".")
    assignment = f"{full_key}={value}" if value is not None else full_key
    if parent is None:
        return f"{full_key} is not a key of the config"
    existing = _user_keys(parent)
    target = parent.get("_target_") if "_target_" in parent else None
    arguments = target_arguments(str(target)) if isinstance(target, str) else None
    where = prefix or "the config"
    if not prefix:
        existing = [k for k in existing if k != "hydra"]
    if arguments is not None and key in arguments:
        # a real argument that the shipped config leaves at the target's default
        return f"{full_key} is not in the composed config, but {target} takes it: add it with +{assignment}"
    guess = closest(key, set(existing) | set(arguments or ()))
    if guess is not None:
        return f"{full_key} is not a key of {where}: did you mean {_join(prefix, guess)}?"
    elsewhere = _closest_anywhere(key, _root(parent))
    if elsewhere is not None:
        return f"{full_key} is not a key of {where}: did you mean {elsewhere}?"
    listing = f"its keys are {', '.join(existing)}" if existing else "it has no keys"
    if isinstance(target, str) and arguments is not None:
        return f"{full_key} is not a key of {where} ({target}); {listing}"
    return f"{full_key} is not a key of {where}; {listing} (to add a key of your own: +{assignment})"
