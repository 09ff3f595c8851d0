"""Entry point `vaelab-compare`: one table and a few plots for the jobs of a sweep.

    vaelab-compare logs/train/multiruns/<sweep>                 # writes <sweep>/compare/
    vaelab-compare logs/train/multiruns/<sweep> --out /tmp/cmp --metric test/bpd

A job is any folder under the sweep that holds ``.hydra/config.yaml`` (its name does
not matter). Each job is read into one flat record (:func:`load_job`): its status,
the overrides that made it, its likelihood, sigma mode and beta, and its metrics
(``metrics.json``; for a job still running or failed, the last values logged in
``csv/metrics.csv``). :func:`build_table` sorts the records by test NLL and lays them
out as ``table.md`` and ``table.csv``; :func:`plot_rate_distortion`,
:func:`plot_elbo_nll_vs_beta` and :func:`plot_montage` draw the figures. The notebook
``notebooks/compare_sweep.ipynb`` calls the same functions.

Works on a sweep that is still running or partly failed: missing files leave blanks.
Status of a job:

- ``done``: ``metrics.json`` is there (and is newer than any ``FAILED`` marker, which
  a later, successful retry of the job leaves behind);
- ``failed``: the folder holds ``FAILED`` (written with the error by the training
  command), or its ``*.log`` ends with a Python traceback;
- ``running``: neither, and ``csv/metrics.csv`` has rows;
- ``started``: neither, and nothing logged yet (or a job killed before it logged:
  nothing in the folder can tell these apart).

Numbers are nats per image, as everywhere in vaelab (see README, "What is logged").
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_METRIC = "test/nll_iw"
FAILURE_MARKER = "FAILED"
OUT_DIR_NAME = "compare"
STATUS_ORDER = {"done": 0, "running": 1, "started": 2, "failed": 3}
#: keys of the flat record that are not metrics or table values
NESTED = ("overrides", "config", "choices")
#: metrics of higher-is-better kind (everything else sorts ascending)
_HIGHER_IS_BETTER = ("elbo", "recon")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
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


def load_job(job_dir: str | Path, sweep: str | Path | None = None) -> dict[str, Any]:
    """One job as a flat record (a dict). Scalar keys:

    ``job`` (path relative to ``sweep``), ``path``, ``sweep``, ``status``, ``message``
    (why it failed, or what could not be read), ``likelihood`` (``gaussian``,
    ``bernoulli``), ``sigma`` (sigma mode, empty for Bernoulli), ``decoder`` (the
    two together, for plot legends), ``beta``, ``beta_eff`` (test, else last logged;
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

    # what was trained
    likelihood = config.get("likelihood") if isinstance(config.get("likelihood"), dict) else {}
    target = str(likelihood.get("_target_", ""))
    if "sigma" in likelihood:
        kind = "gaussian"
    elif "Bernoulli" in target or "binarize" in likelihood:
        kind = "bernoulli"
    else:
        kind = str(record["choices"].get("likelihood") or target.rpartition(".")[2].removesuffix("Likelihood").lower())
    record["likelihood"] = kind
    record["sigma"] = sigma_label(likelihood) if kind == "gaussian" else ""
    if kind == "gaussian":
        record["decoder"] = f"Gaussian, sigma {record['sigma']}"
    elif kind == "bernoulli":
        record["decoder"] = f"Bernoulli, binarize={likelihood.get('binarize')}"
    else:
        record["decoder"] = kind
    record["beta"] = _float(config_value(config, "model.beta"))

    # what it measured
    summary = read(job_dir / "metrics.json", lambda p: json.loads(p.read_text()), None)
    summary = summary if isinstance(summary, dict) else None
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


def _swept_in_command(overrides: Sequence[str]) -> list[str]:
    """Keys the command sweeps (``a=1,2``, ``range(...)``, ``choice(...)``...)."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create()
    except Exception:  # noqa: BLE001
        return []
    keys = []
    for override in overrides:
        try:
            (parsed,) = parser.parse_overrides([override])
        except Exception:  # noqa: BLE001 - an unparsable one: the jobs' values decide
            continue
        if parsed.is_sweep_override():
            keys.append(parsed.get_key_element().lstrip("+~"))
    return keys


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
            from_command += [k for k in _swept_in_command(command) if k not in from_command]
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


# -- sorting and the table ------------------------------------------------------------
def higher_is_better(metric: str) -> bool:
    name = metric.rpartition("/")[2]
    return any(word in name for word in _HIGHER_IS_BETTER)


def metric_value(record: dict[str, Any], metric: str = DEFAULT_METRIC) -> float | None:
    """The record's ``metric``; for the default, test NLL falls back to ``-test/elbo``."""
    if metric == DEFAULT_METRIC:
        return record.get("nll")
    value = record.get(metric)
    return _float(value) if not isinstance(value, (dict, list, bool)) else None


def sort_records(records: Iterable[dict[str, Any]], metric: str = DEFAULT_METRIC) -> list[dict[str, Any]]:
    """Done jobs first, best ``metric`` first (lower is better unless the metric is an
    ELBO or reconstruction term); then running, started and failed jobs; jobs without
    the metric after those with it, in folder order."""
    sign = -1.0 if higher_is_better(metric) else 1.0

    def key(record: dict[str, Any]) -> tuple:
        value = metric_value(record, metric)
        missing = value is None or math.isnan(value)
        return (STATUS_ORDER.get(record.get("status", ""), 9), missing, 0.0 if missing else sign * value, natural_key(record.get("job", "")))

    return sorted(records, key=key)


@dataclass
class Column:
    key: str  # the record's key (and the CSV header)
    header: str  # the Markdown header
    fmt: str = "{}"


@dataclass
class Table:
    """The comparison table: ``rows`` hold the raw values (floats, None for blanks)."""

    columns: list[Column]
    rows: list[dict[str, Any]]
    metric: str
    swept: list[str]
    common: dict[str, str]
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def cell(self, row: dict[str, Any], column: Column) -> str:
        value = row.get(column.key)
        if value is None or value == "":
            return ""
        if isinstance(value, float):
            if math.isnan(value) or math.isinf(value):
                return str(value)
            text = column.fmt.format(value)
        else:
            text = str(value)
        if column.key == "nll" and row.get("nll_source") == "-test/elbo":
            text += "*"
        return text.replace("|", "\\|").replace("\n", " ")

    def summary(self) -> str:
        parts = [f"{n} {status}" for status, n in self.counts.items() if n]
        return f"{len(self.rows)} jobs: " + ", ".join(parts)

    def markdown(self, title: str | None = None) -> str:
        lines = [f"# {title}", ""] if title else []
        direction = "higher is better" if higher_is_better(self.metric) else "lower is better"
        what = "test NLL (test/nll_iw, else -test/elbo)" if self.metric == DEFAULT_METRIC else self.metric
        lines += [f"{self.summary()}. Sorted by {what}, {direction}; jobs not done are listed last.", ""]
        if self.common:
            lines += ["Overrides shared by every job: " + ", ".join(f"`{k}={v}`" for k, v in self.common.items()) + ".", ""]
        lines += ["Nats per image; beta_eff = 2 sigma^2 beta (equal beta_eff: the same objective).", ""]
        lines.append("| " + " | ".join(c.header for c in self.columns) + " |")
        lines.append("|" + "|".join("---" if c.fmt == "{}" else "---:" for c in self.columns) + "|")
        for row in self.rows:
            lines.append("| " + " | ".join(self.cell(row, c) for c in self.columns) + " |")
        if self.notes:
            lines += ["", *[f"- {note}" for note in self.notes]]
        return "\n".join(lines) + "\n"

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        keys = [c.key for c in self.columns] + ["nll_source", "message", "path"]
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            # swept columns by their override key (unless that is a column's name too)
            names = [k.removeprefix("set:") if k.removeprefix("set:") not in keys else k for k in keys]
            writer.writerow(names)
            for row in self.rows:
                writer.writerow(["" if row.get(k) is None else row.get(k) for k in keys])
        return path


def build_table(records: Sequence[dict[str, Any]], metric: str | None = None) -> Table:
    """One row per job, sorted by :func:`sort_records`. Columns: job, status, the swept
    keys, likelihood, sigma, beta, beta_eff, test ELBO, recon, KL, NLL, bits/dim,
    best val ELBO, epochs (and ``metric`` when it is none of these)."""
    metric = metric or DEFAULT_METRIC
    swept, common = swept_keys(records)
    ordered = sort_records(records, metric)
    standard = [
        Column("likelihood", "likelihood"),
        Column("sigma", "sigma"),
        Column("beta", "beta", "{:g}"),
        Column("beta_eff", "beta_eff", "{:.3g}"),
        Column("test/elbo", "test ELBO", "{:.2f}"),
        Column("test/recon", "recon", "{:.2f}"),
        Column("test/kl", "KL", "{:.2f}"),
        Column("nll", "NLL", "{:.2f}"),
        Column("bpd", "bits/dim", "{:.3f}"),
        Column("val_elbo_best", "best val ELBO", "{:.2f}"),
        Column("epochs", "epochs", "{:g}"),
    ]
    names = {c.key for c in standard} | {"job", "status"}
    # a swept key that is also a column (the `likelihood` config group) is shown once
    swept = [k for k in swept if not (k in names and all(setting(r, k) == str(r.get(k) or "") for r in records))]
    columns = [Column("job", "job"), Column("status", "status")]
    columns += [Column(f"set:{k}", k if k not in names else f"{k} (override)") for k in swept]
    columns += standard
    if metric != DEFAULT_METRIC and metric not in {c.key for c in columns}:
        columns.append(Column(metric, metric, "{:.4g}"))
    rows = []
    for record in ordered:
        row = {k: v for k, v in record.items() if k not in NESTED}
        row.update({f"set:{k}": setting(record, k) for k in swept})
        if metric != DEFAULT_METRIC:
            row[metric] = metric_value(record, metric)
        rows.append(row)
    counts = {status: sum(r["status"] == status for r in records) for status in STATUS_ORDER}
    notes = []
    if any(r.get("nll_source") == "-test/elbo" for r in records):
        notes.append("NLL* : no test/nll_iw was logged, -test/elbo is shown (an upper bound on the NLL).")
    if any(r["status"] != "done" for r in records):
        notes.append("Jobs not done show the last values logged in csv/metrics.csv (beta_eff, best val ELBO, epochs so far).")
    for row in rows:
        if row.get("message"):
            notes.append(f"`{row['job']}` ({row['status']}): {row['message']}")
    if not counts["done"]:
        notes.append("No job has finished yet: no test numbers.")
    if metric != DEFAULT_METRIC and all(metric_value(r, metric) is None for r in records):
        logged = sorted({k for r in records for k in r if "/" in k and isinstance(r[k], float)})
        notes.append(f"No job logged {metric}, so the rows are in folder order; logged metrics: {', '.join(logged)}.")
    return Table(columns, rows, metric, swept, common, counts, notes)


# -- plots ------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path | None, dpi: int = 110) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, facecolor="white")


def line_groups(records: Sequence[dict[str, Any]], value: str) -> dict[str, list[dict[str, Any]]]:
    """Records that have ``value`` and a beta, grouped into lines across beta: one line
    per decoder (sigma mode, or Bernoulli), and per value of any other swept key."""
    swept, _ = swept_keys(records)
    others = [k for k in swept if k != "model.beta" and not k.startswith("likelihood")]
    names = short_names(others)
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record.get(value) is None or record.get("beta") is None:
            continue
        label = ", ".join([record["decoder"], *(f"{names[k]}={setting(record, k)}" for k in others)])
        groups.setdefault(label, []).append(record)
    for members in groups.values():
        members.sort(key=lambda r: r["beta"])
    return dict(sorted(groups.items()))


def _done(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "done"]


def plot_rate_distortion(records: Sequence[dict[str, Any]], path: str | Path | None = None) -> Any:
    """Rate (test KL) against distortion (-test recon), one line per decoder across beta,
    each point labelled with its beta. Returns the Figure (None when no done job has
    both numbers); saved to ``path`` when given."""
    done = [r for r in _done(records) if r.get("test/kl") is not None and r.get("test/recon") is not None]
    if not done:
        return None
    groups = line_groups(done, "test/kl")
    xs, ys = [r["test/kl"] for r in done], [-r["test/recon"] for r in done]
    span = (max(xs) - min(xs) or 1.0, max(ys) - min(ys) or 1.0)
    fig = _figure(8, 5.5 + 0.18 * math.ceil(len(groups) / 2))
    ax = fig.add_subplot()
    for index, (label, members) in enumerate(groups.items()):
        x = [r["test/kl"] for r in members]
        y = [-r["test/recon"] for r in members]
        (line,) = ax.plot(x, y, marker=_MARKERS[index % len(_MARKERS)], label=label)
        for i, (betas, xi, yi) in enumerate(_merge_close(members, x, y, span)):
            ax.annotate(
                "β=" + ", ".join(f"{b:g}" for b in betas), (xi, yi), textcoords="offset points",
                xytext=(5, 5 if i % 2 == 0 else -11), fontsize=8, color=line.get_color(),
            )
    ax.set_xlabel("rate: KL(q(z|x) ‖ p(z))  [nats per image]")
    ax.set_ylabel("distortion: −E_q[log p(x|z)]  [nats per image]")
    ax.set_title(f"Rate–distortion on the test set ({len(done)} finished jobs; points labelled with training β)")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.08, y=0.08)
    fig.legend(loc="outside lower center", ncols=min(2, len(groups)), title="decoder", fontsize=8, title_fontsize=9)
    _save(fig, path)
    return fig


def _merge_close(
    members: Sequence[dict[str, Any]], x: Sequence[float], y: Sequence[float], span: tuple[float, float], tol: float = 0.02
) -> list[tuple[list[float], float, float]]:
    """Points of one line that (nearly) coincide get one label listing their betas."""
    labels: list[tuple[list[float], float, float]] = []
    for r, xi, yi in zip(members, x, y):
        for betas, xj, yj in labels:
            if abs(xi - xj) <= tol * span[0] and abs(yi - yj) <= tol * span[1]:
                betas.append(r["beta"])
                break
        else:
            labels.append(([r["beta"]], xi, yi))
    return labels


def _beta_axis(ax: Any, betas: Sequence[float]) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    if any(b <= 0 for b in betas):
        positive = [b for b in betas if b > 0]
        ax.set_xscale("symlog", linthresh=min(positive) if positive else 1e-3)
    else:
        ax.set_xscale("log")
    distinct = sorted(set(betas))
    if len(distinct) <= 12:
        ax.xaxis.set_major_locator(FixedLocator(distinct))
        ax.set_xticklabels([f"{b:g}" for b in distinct])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    ax.set_xlabel("β (KL weight in training; log scale)")


def plot_elbo_nll_vs_beta(records: Sequence[dict[str, Any]], path: str | Path | None = None) -> Any:
    """Two panels against beta (log axis): test ELBO, and test NLL (importance-weighted;
    -ELBO where no NLL was logged). One line per decoder. Returns the Figure, or None
    when no done job has a test ELBO."""
    done = [r for r in _done(records) if r.get("test/elbo") is not None]
    if not done:
        return None
    groups = {key: line_groups(done, key) for key in ("test/elbo", "nll")}
    n_labels = len(set(groups["test/elbo"]) | set(groups["nll"]))
    fig = _figure(12, 5 + 0.18 * math.ceil(n_labels / 3))
    left, right = fig.subplots(1, 2)
    markers = {label: _MARKERS[i % len(_MARKERS)] for i, label in enumerate(sorted(set(groups["test/elbo"]) | set(groups["nll"])))}
    colours = {label: f"C{i % 10}" for i, label in enumerate(sorted(markers))}
    for ax, key, ylabel, title in (
        (left, "test/elbo", "test ELBO  [nats per image]  (higher is better)", "ELBO (β = 1 bound) against training β"),
        (right, "nll", "test NLL  [nats per image]  (lower is better)", "Importance-weighted NLL against training β"),
    ):
        for label, members in groups[key].items():
            ax.plot(
                [r["beta"] for r in members], [r[key] for r in members],
                marker=markers[label], color=colours[label], label=label,
            )
        _beta_axis(ax, [r["beta"] for r in done if r.get("beta") is not None])
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    if any(r.get("nll_source") == "-test/elbo" for r in done):
        right.set_title("NLL against training β (−ELBO where no IW estimate)")
    handles = {label: h for ax in (left, right) for h, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(
        list(handles.values()), list(handles), loc="outside lower center", ncols=min(3, len(handles)),
        title="decoder", fontsize=8, title_fontsize=9,
    )
    fig.suptitle(f"Test ELBO and NLL across β ({len(done)} finished jobs)")
    _save(fig, path)
    return fig


def job_title(record: dict[str, Any], swept: Sequence[str], width: int = 34) -> str:
    """The job's swept values (short key names; keys it does not have left out),
    wrapped to lines of ``width`` characters; its folder when nothing was swept."""
    names = short_names(list(swept))
    parts = [f"{names[k]}={value}" for k in swept if (value := setting(record, k)) != ""]
    return textwrap.fill(", ".join(parts), width, break_on_hyphens=False) if parts else record["job"]


def _tile(record: dict[str, Any], box: int, with_map: bool) -> Any:
    """The job's samples.png fitted into a ``box`` x ``box`` square, and when
    ``with_map``, a second square beside it with its sigma_map.png (blank when it has
    none); one RGB image. None when samples.png cannot be read."""
    from PIL import Image

    images = Path(record["path"]) / "images"
    gap = box // 20
    tile = Image.new("RGB", (2 * box + gap if with_map else box, box), "white")
    for slot, name in enumerate(["samples.png", "sigma_map.png"] if with_map else ["samples.png"]):
        try:
            with Image.open(images / name) as image:
                image = image.convert("RGB")
                if max(image.size) > box:
                    image.thumbnail((box, box), Image.Resampling.LANCZOS)
                scale = min(box / image.width, box / image.height)
                if scale > 1:  # small grids: blow up, keeping pixels sharp
                    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.NEAREST)
                left = slot * (box + gap) + (box - image.width) // 2
                tile.paste(image, (left, (box - image.height) // 2))
        except (OSError, ValueError):
            if slot == 0:
                return None
    return tile


def _grid_shape(n: int, cell_w: float, cell_h: float, max_cols: int, target: float = 1.4) -> tuple[int, int]:
    """Columns and rows for ``n`` cells: a figure close to ``target`` wide:high, with
    few empty cells."""
    best = min(
        range(1, max(1, min(n, max_cols)) + 1),
        key=lambda c: abs(math.log((c * cell_w) / (math.ceil(n / c) * cell_h) / target)) + (c * math.ceil(n / c) - n) / n,
    )
    return best, math.ceil(n / best)


def plot_montage(records: Sequence[dict[str, Any]], path: str | Path | None = None, box_px: int = 180, max_cols: int = 8) -> Any:
    """One tile per done job, in the given order: its prior samples, with its sigma map
    beside them when any job has one, titled with the job's swept values and its NLL.
    Tiles shrink as jobs are added, so 20+ jobs fit one readable grid. Returns the
    Figure, or None when no done job has samples.png."""
    swept, _ = swept_keys(records)
    done = [r for r in _done(records) if r.get("has_samples")]
    with_map = any(r.get("has_sigma_map") for r in done)
    tiles = [(r, t) for r in done if (t := _tile(r, box_px, with_map)) is not None]
    if not tiles:
        return None
    n = len(tiles)
    box_in = 2.0 if n <= 12 else 1.6
    cell_w = box_in * (2.05 if with_map else 1.0) + 0.2
    width_chars = max(20, int(cell_w * 17))
    titles = [job_title(r, swept, width_chars) + "\n" + (f"NLL {r['nll']:.1f} nats" if r.get("nll") is not None else r["job"]) for r, _ in tiles]
    cell_h = box_in + 0.14 * max(t.count("\n") + 1 for t in titles) + 0.15
    cols, rows = _grid_shape(n, cell_w, cell_h, max_cols)
    fig = _figure(cols * cell_w, rows * cell_h + 0.45)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (record, tile), title in zip(axes.flat, tiles, titles):
        ax.imshow(tile, interpolation="antialiased")
        ax.set_title(title, fontsize=7)
    fig.suptitle(
        f"Prior samples of the {n} finished jobs"
        + (";  right: decoder sigma per pixel (sigma_map.png), where it varies" if with_map else ""),
        fontsize=10,
    )
    _save(fig, path, dpi=100)
    return fig


# -- all of it ---------------------------------------------------------------------------
@dataclass
class Comparison:
    records: list[dict[str, Any]]
    table: Table
    written: list[Path]
    skipped: list[str]


def compare(sweep: str | Path, out: str | Path | None = None, metric: str | None = None) -> Comparison:
    """Read every job of ``sweep`` and write table.md, table.csv and (when jobs have
    finished) rate_distortion.png, elbo_nll_vs_beta.png and montage.png into ``out``
    (default ``<sweep>/compare``)."""
    sweep = Path(sweep)
    records = load_sweep(sweep)
    if not records:
        raise FileNotFoundError(f"no jobs under {sweep} (a job is a folder holding .hydra/config.yaml)")
    out = Path(out) if out is not None else sweep / OUT_DIR_NAME
    out.mkdir(parents=True, exist_ok=True)
    table = build_table(records, metric)
    written = [out / "table.md", table.write_csv(out / "table.csv")]
    written[0].write_text(table.markdown(title=f"Sweep {sweep.resolve()}"))
    ordered = sort_records(records, table.metric)
    skipped = []
    for name, plot in (
        ("rate_distortion.png", plot_rate_distortion),
        ("elbo_nll_vs_beta.png", plot_elbo_nll_vs_beta),
        ("montage.png", plot_montage),
    ):
        fig = plot(ordered, out / name)
        if fig is None:
            skipped.append(name)
        else:
            written.append(out / name)
    return Comparison(records, table, written, skipped)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (vaelab-compare)."""
    parser = argparse.ArgumentParser(
        prog="vaelab-compare",
        description="Compare the jobs of a vaelab sweep: a table sorted by test NLL, rate-distortion and "
        "ELBO/NLL-vs-beta plots, and a montage of samples. Writes into <sweep>/compare/ unless --out is given.",
    )
    parser.add_argument("sweep", type=Path, help="a sweep folder (logs/train/multiruns/<sweep>), or any folder of job folders")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: <sweep>/compare)")
    parser.add_argument(
        "--metric", default=DEFAULT_METRIC,
        help=f"metric to sort by (default {DEFAULT_METRIC}, falling back to -test/elbo); "
        "ELBO and recon metrics sort highest first, others lowest first",
    )
    args = parser.parse_args(argv)
    try:
        result = compare(args.sweep, args.out, args.metric)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = result.table
    print(table.markdown(title=f"Sweep {args.sweep.resolve()}"))
    if not table.counts["done"]:
        others = ", ".join(f"{n} {s}" for s, n in table.counts.items() if n)
        print(f"No finished jobs yet ({others}): wrote the table only; the plots need finished jobs.")
    elif result.skipped:
        print("Not written (nothing to plot): " + ", ".join(result.skipped))
    print("Wrote:")
    for path in result.written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
