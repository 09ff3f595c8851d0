"""Reading a sweep: job folders -> one flat record per job, and what the sweep varied.

A job is any folder under the sweep that holds ``.hydra/config.yaml`` (its name does
not matter). :func:`load_job` reads one into a flat record: its status, the overrides
that made it, what it trained (from the ``run`` section vaelab-train writes into
``metrics.json``: likelihood, sigma mode, data set, data model, beta, seed; guessed from
the config for jobs without one) and its metrics (``metrics.json``; for a job still
running or failed, the last values logged in ``csv/metrics.csv``).

Status of a job:

- ``done``: ``metrics.json`` is there (and is newer than any ``FAILED`` marker, which
  a later, successful retry of the job leaves behind);
- ``failed``: the folder holds ``FAILED`` (written with the error by the training
  command), or its ``*.log`` ends with a Python traceback;
- ``running``: neither, and ``csv/metrics.csv`` has rows;
- ``started``: neither, and nothing logged yet (or a job killed before it logged:
  nothing in the folder can tell these apart).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vaelab.overrides import swept_keys as swept_in_command
from vaelab.model.collapse import is_collapsed

FAILURE_MARKER = "FAILED"
STATUS_ORDER = {"done": 0, "running": 1, "started": 2, "failed": 3}
#: keys of the flat record that are not metrics or table values
NESTED = ("overrides", "config", "choices")
_TRACEBACK = "Traceback (most recent call last):"
_LOG_RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d[ T]\d\d:\d\d")  # Hydra's job log format: [time][name][LEVEL] - ...
#: a FAILED marker this much older than the job's latest file is from an earlier try
_RETRY_SLACK_S = 2.0


# -- finding and reading jobs --------------------------------------------------------
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


def read_csv_metrics(path: Path) -> tuple[dict[str, float], dict[str, float], int | None, int]:
    """From a Lightning CSVLogger file: the last value of each metric, the best
    (highest) ``val/elbo`` ... as ``{"val/elbo": best}``, the number of epochs
    completed (None when unknown) and the number of rows."""
    last: dict[str, float] = {}
    best: dict[str, float] = {}
    epochs: int | None = None
    rows = 0
    if not path.is_file():
        return last, best, epochs, rows
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            rows += 1
            epoch_end = False
            for name, text in row.items():
                if name in (None, "epoch", "step") or text in (None, ""):
                    continue
                value = _float(text)
                if value is None:
                    continue
                last[name] = value
                if name.startswith("val/") or name.endswith("_epoch"):
                    epoch_end = True
                if name == "val/elbo" and not math.isnan(value):
                    best[name] = max(best.get(name, -math.inf), value)
            epoch = _float(row.get("epoch"))
            if epoch_end and epoch is not None:
                epochs = max(epochs or 0, int(epoch) + 1)
    return last, best, epochs, rows


def log_failure(job_dir: Path, tail_bytes: int = 65536) -> str | None:
    """The exception line when a ``*.log`` file in the job folder ends with a Python
    traceback (no log record after it), else None."""
    for log in sorted(job_dir.glob("*.log")):
        try:
            with log.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - tail_bytes))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            continue
        start = text.rfind(_TRACEBACK)
        if start < 0:
            continue
        after = [line for line in text[start:].splitlines()[1:] if line.strip()]
        if any(_LOG_RECORD.match(line) for line in after):
            continue  # the job logged on after the traceback
        unindented = [line for line in after if not line.startswith((" ", "\t"))]
        return unindented[-1].strip() if unindented else "traceback in " + log.name
    return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -math.inf


def sigma_label(likelihood: dict) -> str:
    """``fixed 0.1``, ``learned_shared``, ``optimal (pixel)``... for a Gaussian decoder."""
    mode = str(likelihood.get("sigma"))
    if mode == "fixed":
        return f"fixed {format_value(likelihood.get('sigma_value'))}"
    if mode == "optimal":
        return f"optimal ({likelihood.get('optimal_shape', 'shared')})"
    return mode


def guess_likelihood(likelihood: dict, choices: dict) -> str:
    """``gaussian``, ``bernoulli``... from a likelihood config (jobs whose metrics.json
    does not state it: still running, failed, or written by an older vaelab)."""
    target = str(likelihood.get("_target_", ""))
    if "sigma" in likelihood:
        return "gaussian"
    if "Bernoulli" in target or "binarize" in likelihood:
        return "bernoulli"
    return str(choices.get("likelihood") or target.rpartition(".")[2].removesuffix("Likelihood").lower())


def guess_data(config: dict, choices: dict) -> str:
    """The data set's name from the data config group choice, else its source's class."""
    target = str(config_value(config, "data.source._target_") or "")
    return str(choices.get("data") or target.rpartition(".")[2].lower() or "data")


def guess_data_model(kind: str, likelihood: dict) -> str:
    """What the likelihood scores, as Likelihood.data_model words it."""
    if kind == "gaussian":
        return "dequantised" if likelihood.get("dequantize", True) else "not dequantised"
    if kind == "bernoulli":
        binarize = likelihood.get("binarize", "dynamic")
        return "binary" if binarize == "none" else f"binarised ({binarize})"
    return kind


def load_job(job_dir: str | Path, sweep: str | Path | None = None) -> dict[str, Any]:
    """One job as a flat record (a dict). Scalar keys:

    ``job`` (path relative to ``sweep``), ``path``, ``sweep``, ``status``, ``message``
    (why it failed, or what could not be read), ``likelihood`` (``gaussian``,
    ``bernoulli``), ``sigma`` (sigma mode, empty for Bernoulli), ``decoder`` (the
    two together, for plot legends), ``seed``, ``data`` (the data set), ``data_model``
    (``dequantised``, ``binarised (dynamic)``...), ``comparable`` (the two together:
    NLLs compare only between jobs that share it), ``active_units`` and ``collapsed``
    (test; None before the test), ``beta``, ``beta_eff`` (test, else last logged;
    None for Bernoulli), ``nll`` and ``nll_source`` (``test/nll_iw``, else
    ``-test/elbo``), ``bpd`` (bits/dim of that NLL), ``val_elbo_best``, ``epochs``,
    ``global_step``, ``has_samples``, ``has_sigma_map``, and every metric by its
    logged name (``test/elbo``, ``val/kl``...: from ``metrics.json``, or for a job
    without one, the last value in ``csv/metrics.csv``).

    Three keys hold mappings: ``overrides`` (the job's own ``key: value`` strings),
    ``config`` (the composed config, uninterpolated) and ``choices`` (Hydra's config
    group choices, e.g. ``likelihood: gaussian``).
    """
    job_dir = Path(job_dir)
    sweep = Path(sweep) if sweep is not None else job_dir
    rel = job_dir.relative_to(sweep).as_posix() if job_dir != sweep and job_dir.is_relative_to(sweep) else job_dir.name
    record: dict[str, Any] = {"job": rel, "path": str(job_dir.absolute()), "sweep": str(sweep), "status": "started", "message": ""}
    problems: list[str] = []

    def read(path: Path, reader: Any, default: Any) -> Any:
        if not path.is_file():
            return default
        try:
            return reader(path)
        except Exception as error:  # noqa: BLE001 - half-written or damaged files leave blanks
            problems.append(f"{path.relative_to(job_dir)} unreadable ({type(error).__name__})")
            return default

    hydra_dir = job_dir / ".hydra"
    config = read(hydra_dir / "config.yaml", _read_yaml, None)
    config = config if isinstance(config, dict) else {}
    overrides_list = read(hydra_dir / "overrides.yaml", _read_yaml, None) or []
    hydra_cfg = read(hydra_dir / "hydra.yaml", _read_yaml, None)
    choices = config_value(hydra_cfg, "hydra.runtime.choices") if isinstance(hydra_cfg, dict) else None
    record["overrides"] = dict(parse_override(str(o)) for o in overrides_list if isinstance(o, str))
    record["config"] = config
    record["choices"] = choices if isinstance(choices, dict) else {}

    # what was trained: as the run states it (metrics.json), else guessed from the config
    summary = read(job_dir / "metrics.json", lambda p: json.loads(p.read_text()), None)
    summary = summary if isinstance(summary, dict) else None
    stated = summary.get("run") if summary is not None and isinstance(summary.get("run"), dict) else {}
    likelihood = config.get("likelihood") if isinstance(config.get("likelihood"), dict) else {}
    kind = stated.get("likelihood") or guess_likelihood(likelihood, record["choices"])
    record["likelihood"] = kind
    record["sigma"] = sigma_label(likelihood) if kind == "gaussian" else ""
    if kind == "gaussian":
        record["decoder"] = f"Gaussian, sigma {record['sigma']}"
    elif kind == "bernoulli":
        record["decoder"] = f"Bernoulli, binarize={likelihood.get('binarize')}"
    else:
        record["decoder"] = kind
    record["beta"] = _float(config_value(config, "model.beta"))
    record["seed"] = stated.get("seed", config.get("seed"))
    record["data"] = stated.get("data") or guess_data(config, record["choices"])
    record["data_model"] = stated.get("data_model") or guess_data_model(kind, likelihood)
    #: runs whose NLL and bits/dim compare: one data set, one data model
    record["comparable"] = f"{record['data']}, {record['data_model']}"

    # what it measured
    last, best, csv_epochs, csv_rows = read(job_dir / "csv" / "metrics.csv", read_csv_metrics, ({}, {}, None, 0))
    if summary is not None:
        metrics = {k: _float(v) for k, v in (summary.get("metrics") or {}).items()}
        record.update({k: v for k, v in metrics.items() if v is not None})
        record["epochs"] = summary.get("epochs", csv_epochs)
        record["global_step"] = summary.get("global_step")
    else:
        record.update(last)
        record["epochs"] = csv_epochs
        record["global_step"] = None
    record["val_elbo_best"] = best.get("val/elbo", record.get("val/elbo"))

    beta_eff = next((record[k] for k in ("test/beta_eff", "val/beta_eff", "train/beta_eff_epoch", "train/beta_eff") if record.get(k) is not None), None)
    record["beta_eff"] = beta_eff if kind != "bernoulli" else None
    if record.get("test/nll_iw") is not None:
        record["nll"], record["nll_source"], record["bpd"] = record["test/nll_iw"], "test/nll_iw", record.get("test/bpd_iw")
    elif record.get("test/elbo") is not None:
        record["nll"], record["nll_source"], record["bpd"] = -record["test/elbo"], "-test/elbo", record.get("test/bpd")
    else:
        record["nll"], record["nll_source"], record["bpd"] = None, "", None
    record["active_units"] = record.get("test/active_units")
    record["collapsed"] = is_collapsed(record["active_units"], record.get("test/kl")) if record.get("test/kl") is not None else None
    images = job_dir / "images"
    record["has_samples"] = (images / "samples.png").is_file()
    record["has_sigma_map"] = (images / "sigma_map.png").is_file()

    # status
    marker = job_dir / FAILURE_MARKER
    latest_activity = max(_mtime(job_dir / "metrics.json"), _mtime(job_dir / "csv" / "metrics.csv"))
    marker_stale = marker.exists() and latest_activity > _mtime(marker) + _RETRY_SLACK_S
    failure = None
    if marker.exists() and not marker_stale:
        try:
            lines = [line.strip() for line in marker.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            lines = []
        failure = lines[0] if lines else "FAILED marker (no message)"
    elif summary is None:
        failure = log_failure(job_dir)
    if summary is not None and failure is None:
        record["status"] = "done"
    elif failure is not None:
        record["status"], record["message"] = "failed", failure
    elif csv_rows:
        record["status"] = "running"
    if marker_stale and record["status"] != "done":
        problems.append("an earlier try of this job failed (FAILED is older than its latest files)")
    if problems:
        record["message"] = "; ".join(filter(None, [record["message"], *problems]))
    return record


def load_sweep(sweep: str | Path) -> list[dict[str, Any]]:
    """:func:`load_job` for every job of :func:`find_jobs`, in folder order."""
    sweep = Path(sweep)
    return [load_job(job, sweep) for job in find_jobs(sweep)]


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
