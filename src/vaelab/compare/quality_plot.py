"""The figure of the trade-off between a likely model and a sharp one: likelihood
(test bits/dim) against sample quality (:mod:`vaelab.compare.quality`), one point per
job.

One panel per quality metric some job logged: FID (with the data set's own
classifier) of prior samples and of reconstructions in one row, their sharpness in
the next; those rows for each comparable group, since bits/dim of different data share
no axis. A decoder keeps its colour and marker across panels,
as in :mod:`vaelab.compare.plots`. Seeds are points of their own: the scatter of one
decoder's points is its seed noise. Settings (:func:`vaelab.compare.seeds.
aggregate_seeds`) are drawn with error bars of one sd instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import vaelab.compare.quality as quality
from vaelab.compare.plots import (
    _MARKERS,
    _count,
    _decoder_legend,
    _done,
    _figure,
    _line,
    _ring_collapsed,
    _save,
    comparable_groups,
    line_groups,
)

#: the panels of one comparable group: a row per kind of quality metric (FID, sharpness),
#: a column for samples and one for reconstructions
GRID = ((quality.FID_SAMPLES, quality.FID_RECON), (quality.SHARPNESS_SAMPLES, quality.SHARPNESS_RECON))
#: the y axis of each metric's panel, and the panel's title
AXES = {
    quality.FID_SAMPLES: (f"{quality.FID_LABEL}  (lower is better)", "Prior samples: FID (own classifier)"),
    quality.FID_RECON: (f"{quality.FID_LABEL}  (lower is better)", "Reconstructions: FID (own classifier)"),
    quality.SHARPNESS_SAMPLES: (
        "sharpness  (1 = as sharp as the data)",
        "Prior samples: sharpness (Laplacian variance / test images')",
    ),
    quality.SHARPNESS_RECON: (
        "sharpness  (1 = as sharp as the data)",
        "Reconstructions: sharpness (Laplacian variance / test images')",
    ),
}
X_LABEL = "test bits/dim  (IW NLL, else −ELBO; lower is better)"
DATA_SHARPNESS_LABEL = "as sharp as the test images"


def _plotted(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The done records with bits/dim, and the quality metrics they logged."""
    done = [r for r in _done(records) if isinstance(r.get("bpd"), (int, float)) and math.isfinite(r["bpd"])]
    return done, quality.logged(done)


def _grid(metrics: Sequence[str]) -> list[list[str | None]]:
    """:data:`GRID` without the rows and columns of metrics no job logged (None: a
    panel left empty, where one of a row's two was logged)."""
    rows = [row for row in GRID if any(m in metrics for m in row)]
    columns = [c for c in range(2) if any(row[c] in metrics for row in rows)]
    return [[row[c] if row[c] in metrics else None for c in columns] for row in rows]


def plot_likelihood_vs_quality(records: Sequence[dict[str, Any]], path: str | Path | None = None) -> Any:
    """Test bits/dim (x) against each logged sample-quality metric (y), one point per
    job, coloured and marked by decoder: for each comparable group, a row of FID
    panels and a row of sharpness panels, samples left and reconstructions right (as
    far as jobs logged them). Returns the Figure, or None when no done job has bits/dim
    and a quality metric; saved to ``path`` when given."""
    done, metrics = _plotted(records)
    if not metrics:
        return None
    panels = comparable_groups(done)
    grid = _grid(metrics)
    labels = sorted({label for members in panels.values() for m in metrics for label in line_groups(members, m)})
    style = {
        label: {"marker": _MARKERS[i % len(_MARKERS)], "color": f"C{i % 10}", "label": label}
        for i, label in enumerate(labels)
    }
    n_rows, n_cols = len(panels) * len(grid), len(grid[0])
    fig = _figure(6.2 * n_cols, 4.2 * n_rows + 1.0 + 0.18 * math.ceil(len(labels) / 3))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    by_beta = len({r.get("beta") for r in done}) > 1
    for g, (group, members_of_group) in enumerate(panels.items()):
        prefix = f"{group}: " if len(panels) > 1 else ""
        for k, row in enumerate(grid):
            for ax, metric in zip(axes[g * len(grid) + k], row):
                if metric is None:
                    ax.set_axis_off()
                    continue
                _panel(ax, members_of_group, metric, style, by_beta)
                ax.set_title(prefix + AXES[metric][1], fontsize=10)
    _decoder_legend(fig, axes.flat, max_columns=3)
    title = f"Likelihood against sample quality ({_count(done)})"
    accuracy = quality.classifier_line(done)
    if accuracy and any(not quality.is_sharpness(m) for m in metrics):
        title += (
            f"\nFID features: a classifier trained on the data set's own training split (test accuracy: {accuracy})"
        )
    if by_beta:
        title += "; points labelled with training β"
    fig.suptitle(title, fontsize=11)
    _save(fig, path)
    return fig


def _panel(
    ax: Any, records: Sequence[dict[str, Any]], metric: str, style: dict[str, dict[str, Any]], by_beta: bool
) -> None:
    """One panel: a point per record (error bars where it has a spread), a decoder's
    points in its colour and marker; a dashed line at the data's sharpness."""
    for label, members in line_groups(records, metric).items():
        x, y = [r["bpd"] for r in members], [r[metric] for r in members]
        _line(ax, x, y, members, "bpd", metric, linestyle="none", markersize=7, **style[label])
        if by_beta:  # once per beta: a setting's seeds lie close together
            first = {r["beta"]: (r, xi, yi) for r, xi, yi in reversed(list(zip(members, x, y)))}
            for record, xi, yi in first.values():
                ax.annotate(
                    f"β={record['beta']:g}",
                    (xi, yi),
                    textcoords="offset points",
                    xytext=(5, 4),
                    fontsize=7,
                    color=style[label]["color"],
                )
    if quality.is_sharpness(metric):
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label=DATA_SHARPNESS_LABEL)
    _ring_collapsed(ax, records, lambda r: r.get("bpd"), lambda r: r.get(metric))
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(AXES[metric][0])
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.1, y=0.1)
