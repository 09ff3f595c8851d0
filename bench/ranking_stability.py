"""Benchmark helper: is a sweep's ranking of settings stable, or would more epochs reorder it?

Reads every job's validation ELBO per epoch (csv/metrics.csv) from a sweep folder,
averages it over the seeds of each setting (vaelab.compare.seeds), and at every epoch
ranks the settings within each comparable group (data set and data model) and within
each beta. Prints, for each epoch, Kendall's tau between that epoch's ranking and the
last epoch's, and whether the best setting is the same: a ranking that stopped moving
in the last epochs is one more epochs are unlikely to change.

    python bench/ranking_stability.py logs/beta_sigma_grid/multiruns/<sweep>
"""

from __future__ import annotations

import argparse
import csv
import itertools
import statistics
from pathlib import Path

from vaelab.compare import group_by_setting, load_sweep


def val_elbo_per_epoch(job_path: str) -> dict[int, float]:
    values: dict[int, float] = {}
    path = Path(job_path) / "csv" / "metrics.csv"
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("val/elbo"):
                values[int(float(row["epoch"]))] = float(row["val/elbo"])
    return values


def kendall_tau(a: list[str], b: list[str]) -> float:
    """Kendall's tau between two orderings of the same items."""
    position = {item: i for i, item in enumerate(b)}
    pairs = list(itertools.combinations(a, 2))
    if not pairs:
        return 1.0
    concordant = sum(1 if position[x] < position[y] else -1 for x, y in pairs)
    return concordant / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path)
    args = parser.parse_args()
    records = [r for r in load_sweep(args.sweep) if r["status"] == "done"]
    settings = {}
    for key, members in group_by_setting(records).items():
        curves = [val_elbo_per_epoch(m["path"]) for m in members]
        epochs = sorted(set.intersection(*(set(c) for c in curves)))
        first = members[0]
        settings[key] = {
            "name": first["decoder"],
            "beta": first["beta"],
            "group": first["comparable"],
            "curve": {e: statistics.fmean(c[e] for c in curves) for e in epochs},
        }
    epochs = sorted(set.intersection(*(set(s["curve"]) for s in settings.values())))
    last = epochs[-1]
    blocks = {}
    for s in settings.values():
        blocks.setdefault((s["group"], s["beta"]), []).append(s)
        blocks.setdefault((s["group"], "all betas"), []).append(s)
    print(f"{len(records)} finished jobs, {len(settings)} settings, epochs {epochs[0] + 1}..{last + 1}")
    print("| ranking of | " + " | ".join(f"epoch {e + 1}: tau / same best" for e in epochs[:-1]) + " |")
    print("|---|" + "---|" * (len(epochs) - 1))
    for (group, beta), members in sorted(blocks.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        if len(members) < 2:
            continue

        def order(epoch: int, members=members) -> list[str]:
            ranked = sorted(members, key=lambda s: -s["curve"][epoch])
            return [f"{s['name']}|{s['beta']}" for s in ranked]

        final = order(last)
        cells = [
            f"{kendall_tau(order(e), final):+.2f} / {'yes' if order(e)[0] == final[0] else 'no'}" for e in epochs[:-1]
        ]
        label = f"{group}, beta={beta:g}" if isinstance(beta, float) else f"{group}, {beta}"
        print(f"| {label} ({len(members)} settings) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
