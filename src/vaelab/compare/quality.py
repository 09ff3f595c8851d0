"""Sample quality beside likelihood: the metric names vaelab-train and vaelab-eval log at
test, how the table labels and orders them, and what its notes say about them.

- ``test/fid_samples``, ``test/fid_recon``: the Fréchet distance between the features of
  prior samples (decoder means; ``callbacks.sample_quality.num_images`` of them), or of
  the reconstructions of the test images, and those of the test images, with the
  features of a small classifier trained on the data set's own training split, not
  Inception's: numbers of their own, comparable between jobs that used the same
  classifier and with no published FID. Hence "FID (own classifier)" wherever one is
  shown, and the classifier's test accuracy (``test/fid_classifier_accuracy``) beside
  it. Lower is better.
- ``test/sharpness_samples``, ``test/sharpness_recon``: the mean variance of the
  Laplacian of the images over that of the test images: 1 is as sharp as the data,
  below 1 blurrier, above 1 noisier than the data. Closer to 1 is better, so a sort by
  it puts the smallest ``|log sharpness|`` first (0.5 and 2 are equally far from the
  data).

:data:`vaelab.quality.measure.NAMES` logs them; they are spelled again here because
vaelab-compare imports no torch (tests/test_cli.py checks that they are the names a run
logs). Runs that logged none of them (older runs, runs with
the metrics switched off) show no quality column and no quality figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

FID_SAMPLES = "test/fid_samples"
FID_RECON = "test/fid_recon"
FID_CLASSIFIER_ACCURACY = "test/fid_classifier_accuracy"
SHARPNESS_SAMPLES = "test/sharpness_samples"
SHARPNESS_RECON = "test/sharpness_recon"
FID_LABEL = "FID (own classifier)"

#: the quality metrics in the order tables and figures show them, with their short labels
LABELS = {
    FID_SAMPLES: f"samples {FID_LABEL}",
    FID_RECON: f"recon {FID_LABEL}",
    SHARPNESS_SAMPLES: "samples sharpness",
    SHARPNESS_RECON: "recon sharpness",
}
QUALITY_METRICS = tuple(LABELS)
_SHARPNESS = (SHARPNESS_SAMPLES, SHARPNESS_RECON)

HIGHER, LOWER, CLOSER_TO_ONE = "higher is better", "lower is better", "closer to 1 is better"


def is_sharpness(metric: str) -> bool:
    return metric in _SHARPNESS


def direction(metric: str) -> str | None:
    """Which way a quality metric is better; None for any other metric."""
    if is_sharpness(metric):
        return CLOSER_TO_ONE
    if metric in (FID_SAMPLES, FID_RECON):
        return LOWER
    return None


def distance_from_data(sharpness: float) -> float:
    """How far a sharpness ratio is from the data's 1, in either direction:
    ``|log sharpness|`` (infinite for a ratio of 0, an image without edges)."""
    return abs(math.log(sharpness)) if sharpness > 0 else math.inf


def _has(record: dict[str, Any], metric: str) -> bool:
    value = record.get(metric)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def logged(records: Sequence[dict[str, Any]]) -> list[str]:
    """The quality metrics that some record holds, in :data:`QUALITY_METRICS` order."""
    return [m for m in QUALITY_METRICS if any(_has(r, m) for r in records)]


def _accuracies(records: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """The distinct FID classifier accuracies of the done jobs, by data set."""
    by_data: dict[str, set[float]] = {}
    for record in records:
        if record.get("status") == "done" and _has(record, FID_CLASSIFIER_ACCURACY):
            by_data.setdefault(record.get("data") or "?", set()).add(round(float(record[FID_CLASSIFIER_ACCURACY]), 4))
    return {data: sorted(values) for data, values in by_data.items()}


def classifier_line(records: Sequence[dict[str, Any]]) -> str:
    """The FID classifier's test accuracy per data set, in words (``mnist 98.9%``; a
    range where jobs of one data set used classifiers of different accuracy); empty
    when no job recorded it."""
    parts = []
    for data, values in _accuracies(records).items():
        shown = f"{100 * values[0]:.1f}%" if len(values) == 1 else f"{100 * values[0]:.1f}-{100 * values[-1]:.1f}%"
        parts.append(f"{data} {shown}")
    return ", ".join(parts)


def notes(records: Sequence[dict[str, Any]]) -> list[str]:
    """The table's notes on the quality columns it shows (none when it shows none)."""
    shown = logged(records)
    lines = []
    if any(not is_sharpness(m) for m in shown):
        accuracy = classifier_line(records)
        lines.append(
            f"{FID_LABEL}: Fréchet distance of the features of a small classifier trained on the data set's own "
            "training split, not Inception's, between prior samples (decoder means) or reconstructions and the test "
            "images; lower is better, and not comparable with published (Inception) FIDs"
            + (f". The classifier's test accuracy: {accuracy}" if accuracy else "")
            + "."
        )
        mixed = [data for data, values in _accuracies(records).items() if len(values) > 1]
        if mixed:
            lines.append(
                f"Jobs of {', '.join(mixed)} used FID classifiers of different accuracy: their FIDs do not compare."
            )
    if any(is_sharpness(m) for m in shown):
        lines.append(
            "sharpness: mean variance of the Laplacian of the images over that of the test images (1 = as sharp as "
            "the data, below 1 blurrier); closer to 1 is better."
        )
    return lines
