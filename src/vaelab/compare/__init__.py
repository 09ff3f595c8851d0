"""Entry point `vaelab-compare`: one table and a few plots for the jobs of a sweep.

    vaelab-compare logs/train/multiruns/<sweep>                 # writes <sweep>/compare/
    vaelab-compare logs/train/multiruns/<sweep> --out /tmp/cmp --metric test/bpd

A job is any folder under the sweep that holds ``.hydra/config.yaml`` (its name does
not matter). Each job is read into one flat record (:func:`load_job`): its status,
the overrides that made it, its likelihood, sigma mode and beta, and its metrics
(``metrics.json``; for a job still running or failed, the last values logged in
``csv/metrics.csv``). :func:`build_table` ranks the records by the bits/dim of their
test NLL within each
data set and data model and lays them out as ``table.md`` and ``table.csv``; when
seeds were swept (``-m seed=1,2,3 ...``), :func:`build_settings_table` folds the jobs
that differ only by seed into one row per setting (mean ± sd, and which settings are
within noise of the best), written first in ``table.md`` and as ``settings.csv``, and
the plots show those means with error bars. :func:`plot_rate_distortion`,
:func:`plot_elbo_nll_vs_beta` and :func:`plot_montage` draw the figures, and when jobs
logged sample quality (FID with the data set's own classifier, sharpness:
:mod:`~vaelab.compare.quality`), the table shows it beside bits/dim and
:func:`plot_likelihood_vs_quality` puts the two against each other, one point per job
(``likelihood_vs_quality.png``). The notebook ``notebooks/compare_sweep.ipynb`` calls
the same functions.

The package: :mod:`~vaelab.compare.job` (one job folder -> one record: what the job
states in its run.json and metrics.json), :mod:`~vaelab.compare.records` (finding jobs,
what a sweep varied), :mod:`~vaelab.compare.seeds`
(settings over seeds), :mod:`~vaelab.compare.table`, :mod:`~vaelab.compare.plots`,
:mod:`~vaelab.compare.quality` (the sample-quality metrics) and
:mod:`~vaelab.compare.quality_plot`, and this module (the command line).

Works on a sweep that is still running or partly failed: missing files leave blanks
(job status: :mod:`vaelab.compare.job`).

Numbers are nats per image, as everywhere in vaelab (see README, "What is logged").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaelab.compare import quality
from vaelab.compare.job import (
    COMPARED_AS,
    FAILURE_MARKER,
    comparable_group,
    decoder_label,
    job_status,
    load_job,
    load_sweep,
    read_csv_metrics,
    sigma_label,
)
from vaelab.compare.plots import (
    job_title,
    line_groups,
    plot_elbo_nll_vs_beta,
    plot_montage,
    plot_rate_distortion,
)
from vaelab.compare.quality_plot import plot_likelihood_vs_quality
from vaelab.compare.records import (
    NESTED,
    STATUS_ORDER,
    config_value,
    find_jobs,
    format_value,
    is_job,
    natural_key,
    parse_override,
    setting,
    short_names,
    sweep_overrides,
    swept_keys,
)
from vaelab.compare.seeds import aggregate_seeds, group_by_setting, seeds_swept, within_noise
from vaelab.compare.table import (
    DEFAULT_METRIC,
    Column,
    Table,
    build_settings_table,
    build_table,
    direction,
    higher_is_better,
    metric_value,
    rank_within_groups,
    sort_records,
)

__all__ = [
    "COMPARED_AS",
    "DEFAULT_METRIC",
    "FAILURE_MARKER",
    "NESTED",
    "OUT_DIR_NAME",
    "STATUS_ORDER",
    "Column",
    "Comparison",
    "Table",
    "aggregate_seeds",
    "build_settings_table",
    "build_table",
    "comparable_group",
    "compare",
    "config_value",
    "decoder_label",
    "direction",
    "find_jobs",
    "format_value",
    "group_by_setting",
    "higher_is_better",
    "is_job",
    "job_status",
    "job_title",
    "line_groups",
    "load_job",
    "load_sweep",
    "main",
    "metric_value",
    "natural_key",
    "parse_override",
    "quality",
    "plot_elbo_nll_vs_beta",
    "plot_likelihood_vs_quality",
    "plot_montage",
    "plot_rate_distortion",
    "rank_within_groups",
    "read_csv_metrics",
    "seeds_swept",
    "setting",
    "short_names",
    "sigma_label",
    "sort_records",
    "sweep_overrides",
    "swept_keys",
    "within_noise",
]

OUT_DIR_NAME = "compare"


@dataclass
class Comparison:
    records: list[dict[str, Any]]
    table: Table
    written: list[Path]
    skipped: list[str]
    #: one row per setting, when seeds were swept
    settings: Table | None = None


def compare(sweep: str | Path, out: str | Path | None = None, metric: str | None = None) -> Comparison:
    """Read every job of ``sweep`` and write table.md, table.csv and (when jobs have
    finished) rate_distortion.png, elbo_nll_vs_beta.png and montage.png into ``out``
    (default ``<sweep>/compare``); likelihood_vs_quality.png too when jobs logged
    sample quality (one point per job, seeds apart: it is neither written nor listed
    as skipped for jobs that logged none)."""
    sweep = Path(sweep)
    records = load_sweep(sweep)
    if not records:
        raise FileNotFoundError(f"no jobs under {sweep} (a job is a folder holding .hydra/config.yaml)")
    out = Path(out) if out is not None else sweep / OUT_DIR_NAME
    out.mkdir(parents=True, exist_ok=True)
    table = build_table(records, metric)
    written = [out / "table.md", table.write_csv(out / "table.csv")]
    markdown = table.markdown(title=f"Sweep {sweep.resolve()}")
    ordered = sort_records(records, table.metric)
    settings = None
    if seeds_swept(records):
        settings = build_settings_table(records, metric)
        written.append(settings.write_csv(out / "settings.csv"))
        markdown = (
            f"# Sweep {sweep.resolve()}\n\n"
            + settings.markdown(title="Settings over seeds", level=2)
            + "\n"
            + table.markdown(title="Every job", level=2)
        )
        ordered = sort_records(aggregate_seeds(records), table.metric)
    written[0].write_text(markdown)
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
    if quality.logged(records):
        name = "likelihood_vs_quality.png"
        if plot_likelihood_vs_quality(sort_records(records, table.metric), out / name) is None:
            skipped.append(name)
        else:
            written.append(out / name)
    return Comparison(records, table, written, skipped, settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (vaelab-compare)."""
    parser = argparse.ArgumentParser(
        prog="vaelab-compare",
        description="Compare the jobs of a vaelab sweep: a table sorted by test NLL, rate-distortion and "
        "ELBO/NLL-vs-beta plots, a montage of samples, and where jobs logged sample quality (FID with the data "
        "set's own classifier, sharpness) a plot of bits/dim against it. Writes into <sweep>/compare/ unless --out "
        "is given.",
    )
    parser.add_argument(
        "sweep", type=Path, help="a sweep folder (logs/train/multiruns/<sweep>), or any folder of job folders"
    )
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: <sweep>/compare)")
    parser.add_argument(
        "--metric",
        default=DEFAULT_METRIC,
        help=f"metric to sort by (default {DEFAULT_METRIC}, falling back to -test/elbo); "
        "ELBO and recon metrics sort highest first, sharpness (test/sharpness_samples, test/sharpness_recon) "
        "closest to 1 first, others (FID: test/fid_samples, test/fid_recon) lowest first",
    )
    args = parser.parse_args(argv)
    try:
        result = compare(args.sweep, args.out, args.metric)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = result.table
    print((result.settings or table).markdown(title=f"Sweep {args.sweep.resolve()}"))
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
