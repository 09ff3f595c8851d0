"""Seeds as a sweep axis: jobs that differ only by seed become one setting with a spread.

``vaelab-train -m seed=1,2,3 model.beta=0.5,2`` trains each setting three times.
:func:`aggregate_seeds` folds the jobs of one setting (same swept values but the seed,
same data set and data model) into one record of the same shape as a job's: every
number the mean over the setting's finished jobs, with ``<key>_sd`` its sample
standard deviation, ``n`` how many finished, ``seeds`` which. Tables and plots take
those records as they take jobs', and show the spread where there is one.

Two settings are *within noise* of each other when the gap between their means is
smaller than twice the standard error of that gap, sqrt(sd1^2/n1 + sd2^2/n2): with the
seeds run, the data cannot order them (:func:`within_noise`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from vaelab.compare.records import NESTED, setting, swept_keys

SEED_KEY = "seed"
#: how many standard errors of the gap make two means distinguishable
NOISE_STANDARD_ERRORS = 2.0
#: record keys that describe the setting (taken from its first job), not measured
_DESCRIPTIVE = ("likelihood", "sigma", "decoder", "beta", "data", "data_model", "comparable", "nll_source", "sweep")


def seeds_swept(records: Sequence[dict[str, Any]]) -> bool:
    """Whether some setting of the sweep was trained with more than one seed."""
    return any(len(members) > 1 for members in group_by_setting(records).values())


def setting_of(record: dict[str, Any], swept: Sequence[str]) -> tuple:
    """What identifies a job's setting: its swept values other than the seed, and
    what its numbers are of (data set and data model)."""
    return (record.get("comparable"), *((k, setting(record, k)) for k in swept if k != SEED_KEY))


def group_by_setting(records: Sequence[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Records grouped by :func:`setting_of`, in the order the settings first appear."""
    swept, _ = swept_keys(records)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(setting_of(record, swept), []).append(record)
    return groups


def _numbers(records: Sequence[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and key not in _DESCRIPTIVE
                and key != SEED_KEY
            ):
                keys[key] = None
    return list(keys)


def aggregate(members: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One setting's record from its jobs' (see the module docstring)."""
    done = [m for m in members if m.get("status") == "done"]
    first = (done or list(members))[0]
    record: dict[str, Any] = {k: first.get(k) for k in _DESCRIPTIVE if k in first}
    record.update({k: first[k] for k in NESTED if k in first})
    record["overrides"] = {k: v for k, v in (first.get("overrides") or {}).items() if k != SEED_KEY}
    record["status"] = "done" if done else first.get("status", "started")
    record["job"] = first.get("job", "")
    record["jobs"] = [m.get("job", "") for m in members]
    record["path"] = first.get("path")
    record["has_samples"] = bool(first.get("has_samples"))
    record["has_sigma_map"] = bool(first.get("has_sigma_map"))
    record["n"] = len(done)
    record["seeds"] = [m.get(SEED_KEY) for m in done]
    record["message"] = "; ".join(f"{m.get('job')}: {m['message']}" for m in members if m.get("message"))
    for key in _numbers(done):
        values = [
            float(m[key]) for m in done if isinstance(m.get(key), (int, float)) and not isinstance(m.get(key), bool)
        ]
        finite = [v for v in values if math.isfinite(v)]
        if not values:
            continue
        record[key] = (
            statistics.fmean(finite) if len(finite) == len(values) else (values[0] if len(values) == 1 else math.nan)
        )
        if len(finite) >= 2 and len(finite) == len(values):
            record[f"{key}_sd"] = statistics.stdev(finite)
    collapsed = [m.get("collapsed") for m in done if m.get("collapsed") is not None]
    record["collapsed_count"] = sum(bool(c) for c in collapsed)
    record["collapsed"] = bool(collapsed) and all(collapsed)
    if done and "active_units" in record:
        units = [m["active_units"] for m in done if m.get("active_units") is not None]
        record["active_units_range"] = f"{min(units):g}-{max(units):g}" if units and min(units) != max(units) else None
    return record


def aggregate_seeds(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per setting (:func:`aggregate`), in the order settings first appear."""
    return [aggregate(members) for members in group_by_setting(records).values()]


def within_noise(a: dict[str, Any], b: dict[str, Any], key: str) -> bool | None:
    """Whether settings ``a`` and ``b`` differ in ``key`` by less than
    NOISE_STANDARD_ERRORS standard errors of the gap; None when either has no spread
    (a single seed: nothing to measure the noise by)."""
    if a.get(key) is None or b.get(key) is None or f"{key}_sd" not in a or f"{key}_sd" not in b:
        return None
    standard_error = math.sqrt(a[f"{key}_sd"] ** 2 / a["n"] + b[f"{key}_sd"] ** 2 / b["n"])
    return abs(a[key] - b[key]) < NOISE_STANDARD_ERRORS * standard_error
