"""Benchmark table: likelihood and sample quality per decoder, mean ± sd over seeds.

Reads one or more sweeps of ``experiment=likelihood_quality`` (or any sweep whose jobs
logged test bits/dim and sample quality) through :mod:`vaelab.compare` and prints one
Markdown row per setting: test bits/dim (of the ELBO, and of the importance-weighted
NLL where the test computed it), KL, active units, the FID (own classifier) of prior
samples and of reconstructions and their sharpness, each mean ± sample sd over the
seeds, sorted by bits/dim.

    python bench/likelihood_quality_table.py logs/likelihood_quality/multiruns/<sweep> [...]

A second sweep of the same settings fills in what the first lacks (for example one
run with the K-sample test bound, one without it): values come from the first sweep
that has them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vaelab import compare

COLUMNS = (
    ("test/bpd", "bits/dim (ELBO)", "{:.3f}"),
    ("test/bpd_iw", "bits/dim (IW NLL)", "{:.3f}"),
    ("test/kl", "KL (nats)", "{:.1f}"),
    ("test/active_units", "active units", "{:.1f}"),
    ("test/fid_samples", "FID samples", "{:.0f}"),
    ("test/fid_recon", "FID recon", "{:.0f}"),
    ("test/sharpness_samples", "sharpness samples", "{:.3f}"),
    ("test/sharpness_recon", "sharpness recon", "{:.3f}"),
)


def cell(setting: dict[str, Any], key: str, fmt: str) -> str:
    value = setting.get(key)
    if value is None:
        return ""
    sd = setting.get(f"{key}_sd")
    return fmt.format(value) + (f" ± {fmt.format(sd)}" if sd is not None and setting.get("n", 1) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="+", type=Path)
    args = parser.parse_args()

    merged: dict[str, dict[str, Any]] = {}
    for sweep in args.sweeps:
        done = [r for r in compare.load_sweep(sweep) if r["status"] == "done"]
        for setting in compare.aggregate_seeds(done):
            name = setting["decoder"]
            into = merged.setdefault(name, {"decoder": name})
            for key, value in setting.items():
                into.setdefault(key, value)
    rows = sorted(merged.values(), key=lambda s: s.get("test/bpd", float("inf")))
    print("| decoder | seeds | " + " | ".join(header for _, header, _ in COLUMNS) + " |")
    print("|---|---:|" + "---:|" * len(COLUMNS))
    for setting in rows:
        cells = [cell(setting, key, fmt) for key, _, fmt in COLUMNS]
        print(f"| {setting['decoder']} | {setting.get('n', 1)} | " + " | ".join(cells) + " |")
    accuracies = sorted({round(r, 4) for s in rows if (r := s.get("test/fid_classifier_accuracy")) is not None})
    print(f"\nFID classifier test accuracy: {', '.join(map(str, accuracies))}")


if __name__ == "__main__":
    main()
