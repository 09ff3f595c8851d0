"""What the records of a sweep's jobs share: finding the job folders, the spellings of
values and overrides, and what the sweep varied.

A job is any folder under the sweep that holds ``.hydra/config.yaml`` (its name does
not matter): :func:`find_jobs`. One job is read into one flat record by
:func:`vaelab.compare.job.load_job` (its status, what it trained, its numbers).
:func:`swept_keys` tells which overrides the sweep varied (those whose values differ
between jobs, and those the sweep's command sweeps, from its ``multirun.yaml``), and
:func:`setting` a job's value of one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vaelab.overrides import swept_keys as swept_in_command

#: how the table orders job statuses (what each means: :mod:`vaelab.compare.job`)
STATUS_ORDER = {"done": 0, "running": 1, "started": 2, "interrupted": 3, "failed": 4, "unknown": 5}
#: keys of the flat record that are not metrics or table values
NESTED = ("overrides", "config", "choices")


# -- finding jobs ---------------------------------------------------------------------
def natural_key(text: str) -> list[Any]:
    """Sort key that puts ``job2`` before ``job10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def is_job(folder: Path) -> bool:
    return (folder / ".hydra" / "config.yaml").is_file()


def find_jobs(sweep: str | Path) -> list[Path]:
    """Every job folder under ``sweep`` (a folder holding ``.hydra/config.yaml``; the
    sweep folder itself when it is a single run), in natural order of their paths.
    Job folders are not searched further; hidden folders are skipped."""
    sweep = Path(sweep)
    if not sweep.is_dir():
        raise FileNotFoundError(f"{sweep}: no such folder")
    if is_job(sweep):
        return [sweep]
    jobs = []
    for root, dirs, _files in os.walk(sweep):
        folder = Path(root)
        if folder != sweep and is_job(folder):
            jobs.append(folder)
            dirs.clear()
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
    return sorted(jobs, key=lambda p: natural_key(p.relative_to(sweep).as_posix()))


def _read_yaml(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text())


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number  # inf and nan are kept: they are the job's result


def parse_override(override: str) -> tuple[str, str]:
    """``"model.beta=0.5"`` -> ``("model.beta", "0.5")``; ``+k=v`` and ``++k=v`` add
    keys, ``~k`` deletes one (value ``"~"``)."""
    key, sep, value = override.partition("=")
    if key.startswith("~"):
        return key.lstrip("~"), "~" if not sep else f"~{value}"
    return key.lstrip("+"), value


def format_value(value: Any) -> str:
    """One spelling for a config value, whether it came from an override string or the
    composed config (``False``/``false`` -> ``false``, ``2.0``/``2`` stay apart only
    if they differ as numbers)."""
    if isinstance(value, str):
        try:
            import yaml

            parsed = yaml.safe_load(value)
        except Exception:  # noqa: BLE001 - any unparsable string is shown as written
            return value
        if isinstance(parsed, (dict, list, bool, int, float)) or parsed is None:
            value = parsed
        else:
            return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def config_value(config: dict | None, key: str) -> Any:
    """The value at dotted ``key`` of a plain config dict (None when absent)."""
    node: Any = config
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


# -- what was swept --------------------------------------------------------------------
def setting(record: dict[str, Any], key: str) -> str:
    """A job's value of ``key``: its own override, else its config group choice, else
    the composed config's value (as text; empty when the key is nowhere)."""
    if key in record.get("overrides", {}):
        return format_value(record["overrides"][key])
    choices = record.get("choices") or {}
    if key in choices:
        return format_value(choices[key])
    value = config_value(record.get("config"), key)
    return "" if value is None else format_value(value)


def sweep_overrides(sweep: str | Path) -> list[str] | None:
    """The sweep's overrides from its ``multirun.yaml``: the command's, then the
    sweeper's ``params`` (as an experiment config sets them). None when absent."""
    path = Path(sweep) / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        multirun = _read_yaml(path)
    except Exception:  # noqa: BLE001
        return None
    task = config_value(multirun, "hydra.overrides.task")
    params = config_value(multirun, "hydra.sweeper.params")
    overrides = [str(o) for o in task] if isinstance(task, list) else []
    if isinstance(params, dict):
        overrides += [f"{key}={value}" for key, value in params.items()]
    return overrides


def swept_keys(records: Sequence[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """``(swept, common)``: the override keys whose values differ between jobs (or that
    the sweep's command sweeps), in the command's order; and the overrides every job
    shares, ``{key: value}``."""
    order: list[str] = []
    for record in records:
        for key in record.get("overrides", {}):
            if key not in order and not key.startswith("hydra."):
                order.append(key)
    from_command: list[str] = []
    for sweep in dict.fromkeys(r.get("sweep") for r in records if r.get("sweep")):
        command = sweep_overrides(sweep)
        if command:
            from_command += [k for k in swept_in_command(command) if k not in from_command]
    swept, common = [], {}
    for key in order:
        values = {setting(r, key) for r in records}
        if key in from_command or len(values) > 1:
            swept.append(key)
        else:
            common[key] = values.pop() if values else ""
    swept.sort(key=lambda k: (from_command.index(k) if k in from_command else len(from_command), order.index(k)))
    return swept, common


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """The last dotted part of each key (``model.beta`` -> ``beta``), unless two share it."""
    last = [k.rpartition(".")[2] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}
