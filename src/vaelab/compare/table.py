"""The comparison table: one row per job, or per setting when seeds were swept.

Rows are ranked *within* a comparable group, jobs of one data set and one kind of
data (:data:`vaelab.compare.job.COMPARED_AS`): an NLL in nats is a probability mass of
binarised images for a Bernoulli decoder, and of the integer pixel values for a
discretised logistic one; a Gaussian, low-rank Gaussian or continuous Bernoulli
decoder's is a density of those integers dequantised, whose bits/dim bound the
integers' from above. So the discretised logistic and the dequantised densities share
one group (``mnist, integer pixel values``: bits/dim of the same data, the density's a
bound), while binarised and undequantised data are groups of their own, different
data, and no rank or bits/dim crosses that line. Groups are listed one after the other.

When jobs logged sample quality (:mod:`vaelab.compare.quality`: FID with a classifier
of the data set's own, sharpness), its columns follow bits/dim, and a note gives the
classifier's accuracy.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vaelab.compare.quality as quality
from vaelab.compare.records import NESTED, STATUS_ORDER, _float, natural_key, setting, swept_keys
from vaelab.compare.seeds import NOISE_STANDARD_ERRORS, SEED_KEY, aggregate_seeds, within_noise

DEFAULT_METRIC = "test/nll_iw"
#: metrics of higher-is-better kind (everything else sorts ascending)
_HIGHER_IS_BETTER = ("elbo", "recon", "active_units")


def direction(metric: str) -> str:
    """Which way ``metric`` is better: ``higher is better`` for an ELBO, a
    reconstruction term or a count of active units, ``closer to 1 is better`` for a
    sharpness ratio, ``lower is better`` for everything else (NLL, KL, FID...)."""
    own = quality.direction(metric)
    if own is not None:
        return own
    name = metric.rpartition("/")[2]
    return quality.HIGHER if any(word in name for word in _HIGHER_IS_BETTER) else quality.LOWER


def higher_is_better(metric: str) -> bool:
    return direction(metric) == quality.HIGHER


def sort_value(metric: str, value: float) -> float:
    """What :func:`sort_records` puts first when smallest: the value, its negative when
    higher is better, a sharpness's distance from the data's 1."""
    way = direction(metric)
    if way == quality.CLOSER_TO_ONE:
        return quality.distance_from_data(value)
    return -value if way == quality.HIGHER else value


def default_key(record: dict[str, Any]) -> str:
    """What the default metric ranks by: the bits/dim of the test NLL (``bpd``, of
    test/nll_iw, else of -test/elbo) where the job has them, else the NLL in nats.
    Within one data model the two order jobs alike; a group of integer pixel values
    also holds probability masses (the discretised logistic) beside dequantised
    densities, whose nats differ from a mass's by D log(levels) and whose bits/dim
    do not."""
    return "bpd" if _float(record.get("bpd")) is not None else "nll"


def metric_value(record: dict[str, Any], metric: str = DEFAULT_METRIC) -> float | None:
    """The record's ``metric``; for the default, the test NLL's bits/dim
    (:func:`default_key`; the NLL falls back to ``-test/elbo``)."""
    if metric == DEFAULT_METRIC:
        return _float(record.get(default_key(record)))
    value = record.get(metric)
    return _float(value) if not isinstance(value, (dict, list, bool)) else None


def sort_records(records: Iterable[dict[str, Any]], metric: str = DEFAULT_METRIC) -> list[dict[str, Any]]:
    """Done jobs first, in their comparable groups (the largest group first, then in
    the order groups appear), best ``metric`` first within a group (:func:`direction`:
    lower is better unless the metric is an ELBO, a reconstruction term or a count of
    active units; a sharpness closest to 1 first); then running, started and failed
    jobs; jobs without the metric after those with it, in folder order."""
    records = list(records)
    sizes: dict[str, int] = {}
    for record in records:
        sizes[record.get("comparable") or ""] = sizes.get(record.get("comparable") or "", 0) + 1
    groups = sorted(sizes, key=lambda g: -sizes[g])  # the largest group first (stable: then as they appear)

    def key(record: dict[str, Any]) -> tuple:
        value = metric_value(record, metric)
        missing = value is None or math.isnan(value)
        status = STATUS_ORDER.get(record.get("status", ""), 9)
        group = groups.index(record.get("comparable") or "")
        return (
            status > 0,
            status,
            group,
            missing,
            0.0 if missing else sort_value(metric, value),
            natural_key(record.get("job", "")),
        )

    return sorted(records, key=key)


def rank_within_groups(rows: Sequence[dict[str, Any]], metric: str) -> None:
    """``rank`` (1 = best) of each done row with the metric, among the rows of its
    comparable group; rows must be in :func:`sort_records` order."""
    seen: dict[str, int] = {}
    for row in rows:
        value = metric_value(row, metric)
        if row.get("status") != "done" or value is None or math.isnan(value):
            row["rank"] = None
            continue
        group = row.get("comparable") or ""
        seen[group] = seen.get(group, 0) + 1
        row["rank"] = seen[group]


@dataclass
class Column:
    key: str  # the record's key (and the CSV header)
    header: str  # the Markdown header
    fmt: str = "{}"
    #: show ``<key>_sd`` after the value as ``± sd`` where the row has one (and a
    #: ``<key>_sd`` CSV column)
    spread: bool = False


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
    #: what a row is: "jobs", or "settings" (jobs that differ only by seed, folded)
    per: str = "jobs"

    def cell(self, row: dict[str, Any], column: Column) -> str:
        value = row.get(column.key)
        if value is None or value == "":
            return ""
        if isinstance(value, float):
            if math.isnan(value) or math.isinf(value):
                return str(value)
            text = column.fmt.format(value)
            sd = row.get(f"{column.key}_sd")
            if column.spread and isinstance(sd, float) and math.isfinite(sd):
                text += " ± " + column.fmt.format(sd)
        else:
            text = str(value)
        if column.key == "nll" and row.get("nll_source") == "-test/elbo":
            text += "*"
        if column.key == "active_units" and row.get("collapsed"):
            text += " (collapsed)"
        elif column.key == "active_units" and row.get("collapsed_count"):
            text += f" (collapsed in {row['collapsed_count']} of {row.get('n')})"
        return text.replace("|", "\\|").replace("\n", " ")

    def summary(self) -> str:
        parts = [f"{n} {status}" for status, n in self.counts.items() if n]
        jobs = sum(self.counts.values())
        if self.per == "settings":
            return f"{len(self.rows)} settings of {jobs} jobs: " + ", ".join(parts)
        return f"{len(self.rows)} jobs: " + ", ".join(parts)

    def markdown(self, title: str | None = None, level: int = 1) -> str:
        lines = [f"{'#' * level} {title}", ""] if title else []
        way = direction(self.metric)
        if way == quality.CLOSER_TO_ONE:
            way += " (sorted by |log sharpness|)"
        what = (
            "the bits/dim of the test NLL (test/nll_iw, else -test/elbo)"
            if self.metric == DEFAULT_METRIC
            else self.metric
        )
        if self.metric in quality.LABELS and not quality.is_sharpness(self.metric):
            what += f", {quality.FID_LABEL}"
        lines += [
            f"{self.summary()}. Ranked by {what}, {way}, within each data set and data model (the `compared as` "
            f"column: numbers of different data do not compare); {self.per} not done are listed last.",
            "",
        ]
        if self.common:
            lines += [
                "Overrides shared by every job: " + ", ".join(f"`{k}={v}`" for k, v in self.common.items()) + ".",
                "",
            ]
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
        keys = [
            k
            for c in self.columns
            for k in ([c.key, f"{c.key}_sd"] if c.spread and self.per == "settings" else [c.key])
        ]
        keys += ["nll_source", "message", "path"]
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            # swept columns by their override key (unless that is a column's name too)
            names = [k.removeprefix("set:") if k.removeprefix("set:") not in keys else k for k in keys]
            writer.writerow(names)
            for row in self.rows:
                writer.writerow(["" if row.get(k) is None else row.get(k) for k in keys])
        return path


def _standard_columns(per: str) -> list[Column]:
    spread = per == "settings"
    columns = [
        Column("likelihood", "likelihood"),
        Column("sigma", "sigma"),
        Column("beta", "beta", "{:g}"),
    ]
    if spread:
        columns.append(Column("n", "seeds", "{:g}"))
    columns += [
        Column("beta_eff", "beta_eff", "{:.3g}", spread),
        Column("test/elbo", "test ELBO", "{:.2f}", spread),
        Column("test/recon", "recon", "{:.2f}", spread),
        Column("test/kl", "KL", "{:.2f}", spread),
        Column("active_units", "active units", "{:.3g}"),
        Column("nll", "NLL", "{:.2f}", spread),
        Column("bpd", "bits/dim", "{:.3f}", spread),
        Column("rank", "rank", "{:g}"),
    ]
    if spread:
        columns.append(Column("vs_best", "vs best of group"))
    else:
        columns += [Column("val_elbo_best", "best val ELBO", "{:.2f}"), Column("epochs", "epochs", "{:g}")]
    columns.append(Column("comparable", "compared as"))
    return columns


def build_table(records: Sequence[dict[str, Any]], metric: str | None = None) -> Table:
    """One row per job, sorted by :func:`sort_records` and ranked within comparable
    groups. Columns: job, status, the swept keys, likelihood, sigma, beta, beta_eff,
    test ELBO, recon, KL, active units, NLL, bits/dim, the sample-quality metrics jobs
    logged (:mod:`vaelab.compare.quality`), rank, best val ELBO, epochs, the
    comparable group (and ``metric`` when it is none of these)."""
    metric = metric or DEFAULT_METRIC
    swept, common = swept_keys(records)
    columns = _layout(records, swept, "jobs", metric)
    rows = _ranked_rows(records, swept, metric)
    counts = {status: sum(r["status"] == status for r in records) for status in STATUS_ORDER}
    notes = _notes(records, rows, metric, counts)
    return Table(columns, rows, metric, swept, common, counts, notes)


def build_settings_table(records: Sequence[dict[str, Any]], metric: str | None = None) -> Table:
    """One row per setting (jobs that differ only by seed, :mod:`vaelab.compare.seeds`):
    each number the mean over the setting's finished seeds ``± standard deviation``,
    ranked within comparable groups, and in ``vs best of group`` the gap to the best
    setting of the group, marked when it is within noise."""
    metric = metric or DEFAULT_METRIC
    swept, common = swept_keys(records)
    swept = [k for k in swept if k != SEED_KEY]
    settings = aggregate_seeds(records)
    columns = _layout(settings, swept, "settings", metric)
    rows = _ranked_rows(settings, swept, metric)
    best: dict[str, dict[str, Any]] = {}
    indistinct: dict[str, list[str]] = {}
    for row in rows:
        if row.get("rank") is None:
            continue
        group = row.get("comparable") or ""
        if row["rank"] == 1:
            best[group] = row
            row["vs_best"] = "best"
            continue
        if metric != DEFAULT_METRIC:
            key = metric
        else:  # bits/dim where both have them (default_key)
            key = "bpd" if default_key(row) == default_key(best[group]) == "bpd" else "nll"
        gap = abs(row[key] - best[group][key])
        close = within_noise(row, best[group], key)
        unit = {"bpd": " bits/dim", "nll": " nats"}.get(key, "") if metric == DEFAULT_METRIC else ""
        row["vs_best"] = f"{gap:.3g}{unit} worse" + {True: ", within noise", False: "", None: " (no spread)"}[close]
        if close:
            indistinct.setdefault(group, []).append(_setting_name(row, swept))
    counts = {status: sum(r["status"] == status for r in records) for status in STATUS_ORDER}
    notes = [
        f"Mean ± sample standard deviation over the finished seeds of each setting (the `seeds` column). "
        f'"Within noise": the gap to the group\'s best mean is under {NOISE_STANDARD_ERRORS:g} standard errors of '
        f"the gap, sqrt(sd1^2/n1 + sd2^2/n2), so these seeds cannot tell the two settings apart."
    ]
    for group, names in indistinct.items():
        notes.append(
            f"{group}: the best setting, {_setting_name(best[group], swept)}, is not distinguishable from "
            + ", ".join(names)
            + "."
        )
    collapsed = [r for r in rows if r.get("collapsed_count")]
    if collapsed:
        notes.append(
            f"Posterior collapse (no active latent unit, or test KL under 0.5 nats) in {len(collapsed)} of {len(rows)} "
            "settings: their decoders ignore z."
        )
    notes += [n for n in _notes(records, rows, metric, counts) if not n.startswith("`")]
    return Table(columns, rows, metric, swept, common, counts, notes, per="settings")


def _ranked_rows(records: Sequence[dict[str, Any]], swept: Sequence[str], metric: str) -> list[dict[str, Any]]:
    """The table's rows: records without their nested keys, with their swept values
    (``set:<key>``), in :func:`sort_records` order and ranked within their groups."""
    rows = []
    for record in sort_records(records, metric):
        row = {k: v for k, v in record.items() if k not in NESTED}
        row.update({f"set:{k}": setting(record, k) for k in swept})
        if metric != DEFAULT_METRIC:
            row[metric] = metric_value(record, metric)
        rows.append(row)
    rank_within_groups(rows, metric)
    return rows


def _setting_name(row: dict[str, Any], swept: Sequence[str]) -> str:
    parts = [f"{k}={row.get(f'set:{k}')}" for k in swept if row.get(f"set:{k}") not in (None, "")]
    return "`" + (", ".join(parts) or row.get("decoder") or row.get("job", "")) + "`"


#: swept keys that standard columns show: ``model.beta`` is the ``beta`` column, the sigma
#: mode (and a fixed sigma's value, an optimal sigma's shape) the ``sigma`` column, a
#: likelihood config choice (``gaussian_fixed``, ``bernoulli``) the two together
SHOWN_BY = {
    "model.beta": ("beta",),
    "likelihood.sigma": ("sigma",),
    "likelihood.sigma_value": ("sigma",),
    "likelihood.optimal_shape": ("sigma",),
    "likelihood": ("likelihood", "sigma"),
    "likelihood.binarize": ("comparable",),
}


def shown_by_columns(records: Sequence[dict[str, Any]], key: str, columns: Sequence[str]) -> bool:
    """Whether ``columns`` already tell every job's value of the swept ``key``: jobs
    that agree on those columns agree on the key. (A user's own likelihood config whose
    jobs look alike in them, or a sigma value swept beside a learned sigma, keeps its
    own column.)"""
    seen: dict[tuple, str] = {}
    for record in records:
        value = setting(record, key)
        if seen.setdefault(tuple(str(record.get(c) or "") for c in columns), value) != value:
            return False
    return True


def _quality_columns(records: Sequence[dict[str, Any]], per: str) -> list[Column]:
    """A column for each sample-quality metric some job logged (none when none did)."""
    return [
        Column(m, quality.LABELS[m], "{:.3f}" if quality.is_sharpness(m) else "{:.2f}", per == "settings")
        for m in quality.logged(records)
    ]


def _layout(records: Sequence[dict[str, Any]], swept: list[str], per: str, metric: str) -> list[Column]:
    """The columns of a table. Each quantity is shown once: a swept key gets a column
    of its own unless a standard column shows it (``SHOWN_BY``: ``model.beta`` is
    ``beta``, ``likelihood.sigma`` is in ``sigma``...). The table's ``swept`` and its
    rows' ``set:<key>`` values keep every swept key."""
    standard = _standard_columns(per)
    names = {c.key for c in standard} | {"job", "status"}

    def shown(key: str) -> bool:
        columns = SHOWN_BY.get(key, (key,) if key in names else None)
        return columns is not None and shown_by_columns(records, key, columns)

    columns = [Column("job", "job" if per == "jobs" else "first job"), Column("status", "status")]
    columns += [Column(f"set:{k}", k if k not in names else f"{k} (override)") for k in swept if not shown(k)]
    after_bpd = next(i for i, c in enumerate(standard) if c.key == "bpd") + 1
    columns += standard[:after_bpd] + _quality_columns(records, per) + standard[after_bpd:]
    if metric != DEFAULT_METRIC and metric not in {c.key for c in columns}:
        columns.append(Column(metric, metric, "{:.4g}", per == "settings"))
    return columns


def _notes(
    records: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], metric: str, counts: dict[str, int]
) -> list[str]:
    notes = []
    groups = list(dict.fromkeys(r.get("comparable") for r in rows if r.get("rank") is not None))
    if len(groups) > 1:
        notes.append(
            "Ranks and bits/dim compare only within one `compared as` group: "
            + "; ".join(f"`{g}`" for g in groups)
            + ". A Gaussian density of dequantised images and a Bernoulli mass of binarised ones model different data."
        )
    for group in groups:
        models = {r.get("data_model") for r in records if r.get("comparable") == group}
        if {"discrete", "dequantised"} <= models:
            notes.append(
                f"In `{group}`, the discrete likelihoods' bits/dim are of a probability mass of the integer pixel "
                "values and the dequantised densities' are an upper bound on those of a mass: they compare, but a gap "
                "in favour of the mass may be partly the bound's."
            )
    notes += quality.notes(records)
    if any(r.get("nll_source") == "-test/elbo" for r in records):
        notes.append("NLL* : no test/nll_iw was logged, -test/elbo is shown (an upper bound on the NLL).")
    if any(r.get("collapsed") for r in records):
        notes.append(
            "(collapsed): no latent dimension is active (Var_x E_q[z|x] <= 0.01) or the test KL is under 0.5 nats."
        )
    if any(r["status"] != "done" for r in records):
        notes.append(
            "Jobs not done show the last values logged in csv/metrics.csv (beta_eff, best val ELBO, epochs so far)."
        )
    for row in rows:
        if row.get("message"):
            notes.append(f"`{row['job']}` ({row['status']}): {row['message']}")
    if not counts["done"]:
        notes.append("No job has finished yet: no test numbers.")
    if metric != DEFAULT_METRIC and all(metric_value(r, metric) is None for r in records):
        logged = sorted({k for r in records for k in r if "/" in k and isinstance(r[k], float)})
        notes.append(f"No job logged {metric}, so the rows are in folder order; logged metrics: {', '.join(logged)}.")
    return notes
