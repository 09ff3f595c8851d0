"""One job folder -> one flat record: what the job trained, how far it got, what it measured.

A job says what it is in its own records, and this module reads them rather than
guessing: ``run.json`` (:mod:`vaelab.job_record`: its status, overrides and what it
trains, written from the start of training), ``metrics.json`` (its numbers, written
when it finishes), ``csv/metrics.csv`` (the values logged so far) and Hydra's
``.hydra/`` files (the composed config and its group choices).

Status of a job:

- ``done``: ``metrics.json`` is there;
- ``failed``: its record says so (``message`` is the error, in one line);
- ``running``: its record says running, it has logged rows, and its process still
  runs (a sweep job's folder lock is held; a single run's process is alive);
  ``started`` the same, with nothing logged yet;
- ``interrupted``: its record says running and its process is gone (killed, out of
  time): a sweep run again continues it from ``checkpoints/last.ckpt``;
- ``unknown``: a folder without ``run.json`` (written by an older vaelab, or stopped
  before training started). Such a folder is read by :func:`_unrecorded_status`: its
  ``FAILED`` marker if any, ``started`` while its folder lock is held; the likelihood
  is named after the class in its config's ``likelihood._target_``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from vaelab import job_record
from vaelab.compare.records import _float, _read_yaml, config_value, find_jobs, format_value, parse_override
from vaelab.model.collapse import is_collapsed

FAILURE_MARKER = "FAILED"


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


def sigma_label(run: dict[str, Any]) -> str:
    """``fixed 0.1``, ``learned_shared``, ``optimal (pixel)``... from what a Gaussian
    run states (the value and shape only where it states them)."""
    mode = run.get("sigma")
    if mode is None:
        return ""
    if mode == "fixed" and run.get("sigma_value") is not None:
        return f"fixed {format_value(run['sigma_value'])}"
    if mode == "optimal" and run.get("optimal_shape"):
        return f"optimal ({run['optimal_shape']})"
    return str(mode)


#: how legends name a likelihood (its run's ``likelihood``); others by their name in words
_DECODER_NAMES = {
    "gaussian": "Gaussian",
    "gaussian_low_rank": "Gaussian, low rank",
    "discretized_logistic": "discretised logistic",
    "discretized_logistic_mixture": "discretised logistic mixture",
    "continuous_bernoulli": "continuous Bernoulli",
}


def decoder_label(kind: str, sigma: str, run: dict[str, Any]) -> str:
    """The likelihood and its setting together, for plot legends: a Gaussian's sigma, a
    Bernoulli likelihood's binarisation, and the rank or number of mixture components
    where the run states them (two ranks are two decoders)."""
    if kind == "bernoulli":
        return f"Bernoulli, binarize={run.get('binarize')}"
    label = _DECODER_NAMES.get(kind, kind.replace("_", " "))
    if run.get("rank") is not None:
        label += f" (rank {run['rank']})"
    if run.get("components") is not None:
        label += f" ({run['components']} component{'s' * (run['components'] != 1)})"
    return f"{label}, sigma {sigma}" if sigma else label


#: what a job's NLL is of, by the data model its likelihood states: a probability mass
#: of the integer pixel values (the discretised logistic: ``discrete``) and a density of
#: the same integers dequantised with uniform noise (``dequantised``: Gaussian, low-rank
#: Gaussian, continuous Bernoulli) are one comparison, since the dequantised density's
#: bits/dim (with the D log levels correction) bound from above the bits/dim of a mass
#: of those integers (Theis et al., 2016); other data models (binarised, not
#: dequantised) are of data of their own
COMPARED_AS = {"discrete": "integer pixel values", "dequantised": "integer pixel values"}


def comparable_group(data: str, data_model: str) -> str:
    """The group of jobs whose NLL and bits/dim compare (``mnist, integer pixel
    values``, ``mnist, binarised (dynamic)``): one data set, one kind of data."""
    return f"{data}, {COMPARED_AS.get(data_model, data_model)}"


def _likelihood_of_config(config: dict) -> str:
    """For a job that does not state its likelihood: named as vaelab-train names it
    (``GaussianLikelihood`` -> ``gaussian``, :func:`vaelab.job_record.likelihood_name`),
    from the class its config builds."""
    return job_record.likelihood_name(str(config_value(config, "likelihood._target_") or ""))


def _unrecorded_status(job_dir: Path, summary: dict | None) -> tuple[str, str]:
    """The status of a job folder without run.json (see the module docstring)."""
    if summary is not None:
        return "done", ""
    marker = job_dir / FAILURE_MARKER
    if marker.is_file():
        try:
            lines = [line.strip() for line in marker.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            lines = []
        return "failed", lines[0] if lines else "FAILED marker (no message)"
    from vaelab import locks
    from vaelab.sweeps import JobFolderLock

    if locks.is_held(job_dir / JobFolderLock.NAME):
        return "started", ""
    return "unknown", f"no {job_record.NAME}: written by an older vaelab, or stopped before training started"


def job_status(job_dir: Path, own: dict[str, Any] | None, summary: dict | None, logged_rows: int) -> tuple[str, str]:
    """``(status, message)`` of a job from its records (see the module docstring)."""
    if own is None:
        return _unrecorded_status(job_dir, summary)
    state, message = own.get("status"), str(own.get("message") or "")
    if summary is not None:
        return "done", (f"failed after writing metrics.json: {message}" if state == job_record.FAILED else "")
    if state == job_record.FAILED:
        return "failed", message or "failed (no message)"
    if state == job_record.DONE:
        return "done", "its record says done, but metrics.json is missing"
    if state != job_record.RUNNING:
        return "unknown", f"{job_record.NAME} holds status {state!r}"
    alive = job_record.still_running(job_dir, own)
    if alive is False:
        how = (
            "the sweep run again continues it"
            if own.get("folder_lock")
            else f"its process (pid {own.get('pid')}) is gone"
        )
        return "interrupted", f"stopped while training (killed, or out of time): {how}"
    note = "" if alive else f"training on {own.get('host')}: from here it cannot be told whether it still runs"
    return ("running" if logged_rows else "started"), note


def load_job(job_dir: str | Path, sweep: str | Path | None = None) -> dict[str, Any]:
    """One job as a flat record (a dict). Scalar keys:

    ``job`` (path relative to ``sweep``), ``path``, ``sweep``, ``status``, ``message``
    (why it failed or stopped, or what could not be read), ``likelihood``
    (``gaussian``, ``bernoulli``, ``gaussian_low_rank``...), ``sigma`` (sigma mode,
    with a fixed sigma's value; empty for a likelihood without one), ``decoder`` (the
    two together, for plot legends: :func:`decoder_label`), ``seed``, ``data`` (the
    data set), ``data_model`` (``dequantised``, ``discrete``, ``binarised
    (dynamic)``...), ``comparable`` (:func:`comparable_group`: NLLs compare only
    between jobs that share it), ``active_units`` and ``collapsed`` (test; None before the test),
    ``beta``, ``beta_eff`` (test, else last logged; None for Bernoulli), ``nll`` and
    ``nll_source`` (``test/nll_iw``, else ``-test/elbo``), ``bpd`` (bits/dim of that
    NLL), ``val_elbo_best``, ``epochs``, ``global_step``, ``has_samples``,
    ``has_sigma_map``, and every metric by its logged name (``test/elbo``,
    ``val/kl``...: from ``metrics.json``, or for a job without one, the last value in
    ``csv/metrics.csv``).

    Three keys hold mappings: ``overrides`` (the job's own ``key: value`` strings),
    ``config`` (the composed config, uninterpolated) and ``choices`` (Hydra's config
    group choices, e.g. ``likelihood: gaussian``).
    """
    job_dir = Path(job_dir)
    sweep = Path(sweep) if sweep is not None else job_dir
    rel = job_dir.relative_to(sweep).as_posix() if job_dir != sweep and job_dir.is_relative_to(sweep) else job_dir.name
    record: dict[str, Any] = {
        "job": rel,
        "path": str(job_dir.absolute()),
        "sweep": str(sweep),
        "status": "started",
        "message": "",
    }
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
    own = read(job_dir / job_record.NAME, lambda p: job_record.read(p.parent), None)
    overrides_list = own.get("overrides") if own is not None else None
    if not isinstance(overrides_list, list):
        overrides_list = read(hydra_dir / "overrides.yaml", _read_yaml, None) or []
    hydra_cfg = read(hydra_dir / "hydra.yaml", _read_yaml, None)
    choices = config_value(hydra_cfg, "hydra.runtime.choices") if isinstance(hydra_cfg, dict) else None
    record["overrides"] = dict(parse_override(str(o)) for o in overrides_list if isinstance(o, str))
    record["config"] = config
    record["choices"] = choices if isinstance(choices, dict) else {}

    # what was trained, as the job states it (run.json, else an older metrics.json)
    summary = read(job_dir / "metrics.json", lambda p: json.loads(p.read_text()), None)
    summary = summary if isinstance(summary, dict) else None
    run = own.get("run") if own is not None else None
    if not isinstance(run, dict):
        run = summary.get("run") if summary is not None and isinstance(summary.get("run"), dict) else {}
    kind = run.get("likelihood") or _likelihood_of_config(config)
    record["likelihood"] = kind
    record["sigma"] = sigma_label(run)
    record["decoder"] = decoder_label(kind, record["sigma"], run)
    record["beta"] = _float(run["beta"] if run.get("beta") is not None else config_value(config, "model.beta"))
    record["seed"] = run.get("seed", config.get("seed"))
    record["data"] = run.get("data") or record["choices"].get("data") or ""
    record["data_model"] = run.get("data_model") or ""
    record["comparable"] = comparable_group(record["data"], record["data_model"])

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

    beta_eff = next(
        (
            record[k]
            for k in ("test/beta_eff", "val/beta_eff", "train/beta_eff_epoch", "train/beta_eff")
            if record.get(k) is not None
        ),
        None,
    )
    record["beta_eff"] = beta_eff if kind != "bernoulli" else None
    if record.get("test/nll_iw") is not None:
        record["nll"], record["nll_source"], record["bpd"] = (
            record["test/nll_iw"],
            "test/nll_iw",
            record.get("test/bpd_iw"),
        )
    elif record.get("test/elbo") is not None:
        record["nll"], record["nll_source"], record["bpd"] = -record["test/elbo"], "-test/elbo", record.get("test/bpd")
    else:
        record["nll"], record["nll_source"], record["bpd"] = None, "", None
    record["active_units"] = record.get("test/active_units")
    record["collapsed"] = (
        is_collapsed(record["active_units"], record.get("test/kl")) if record.get("test/kl") is not None else None
    )
    images = job_dir / "images"
    record["has_samples"] = (images / "samples.png").is_file()
    record["has_sigma_map"] = (images / "sigma_map.png").is_file()

    record["status"], record["message"] = job_status(job_dir, own, summary, csv_rows)
    if problems:
        record["message"] = "; ".join(filter(None, [record["message"], *problems]))
    return record


def load_sweep(sweep: str | Path) -> list[dict[str, Any]]:
    """:func:`load_job` for every job of :func:`~vaelab.compare.records.find_jobs`, in folder order."""
    sweep = Path(sweep)
    return [load_job(job, sweep) for job in find_jobs(sweep)]
