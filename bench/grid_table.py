"""Benchmark helper: a beta x decoder grid of a seeded sweep, as BENCHMARKS.md shows it.

One row per decoder (sigma mode, or Bernoulli), one column per beta; each cell the
test NLL (nats) and bits/dim as mean ± sd over the setting's seeds, its KL, and how
many seeds collapsed. Then, per beta and over all betas, the best Gaussian decoder
and which others are within noise of it (vaelab.compare.seeds.within_noise), and the
sigma-VAE comparison: fixed sigma at its best beta against learned and optimal sigma
at beta = 1.

    python bench/grid_table.py logs/beta_sigma_grid/multiruns/<sweep>
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelab.compare import aggregate_seeds, load_sweep, within_noise


def fmt(record: dict, key: str, digits: int) -> str:
    value, sd = record.get(key), record.get(f"{key}_sd")
    if value is None:
        return "—"
    return f"{value:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path)
    args = parser.parse_args()
    records = load_sweep(args.sweep)
    done = [r for r in records if r["status"] == "done"]
    settings = [s for s in aggregate_seeds(done) if s.get("nll") is not None]
    betas = sorted({s["beta"] for s in settings})
    decoders = sorted({s["decoder"] for s in settings}, key=lambda d: (d.startswith("Bernoulli"), d))
    cell = {(s["decoder"], s["beta"]): s for s in settings}
    print(f"{len(done)} finished jobs of {len(records)}; {len(settings)} settings\n")
    print("| decoder | " + " | ".join(f"beta={b:g}" for b in betas) + " |")
    print("|---|" + "---:|" * len(betas))
    for decoder in decoders:
        cells = []
        for beta in betas:
            s = cell.get((decoder, beta))
            if s is None:
                cells.append("—")
                continue
            text = f"{fmt(s, 'nll', 0)} / {fmt(s, 'bpd', 3)} / KL {s['test/kl']:.1f}"
            if s.get("collapsed_count"):
                text += f" / **collapsed {s['collapsed_count']}/{s['n']}**"
            cells.append(text + ("" if s["n"] >= 3 else f" (n={s['n']})"))
        print(f"| {decoder} | " + " | ".join(cells) + " |")

    gaussian = [s for s in settings if s["likelihood"] == "gaussian"]
    print("\nBest Gaussian decoder (lowest mean test NLL) and the settings within noise of it:")
    for beta in [*betas, None]:
        pool = [s for s in gaussian if beta is None or s["beta"] == beta]
        if not pool:
            continue
        best = min(pool, key=lambda s: s["nll"])
        close = [s for s in pool if s is not best and within_noise(s, best, "nll")]
        runner = sorted((s for s in pool if s is not best), key=lambda s: s["nll"])[:1]
        gap = (
            f"; next: {runner[0]['decoder']} beta={runner[0]['beta']:g}, {runner[0]['nll'] - best['nll']:.1f} nats worse"
            if runner
            else ""
        )
        where = f"beta={beta:g}" if beta is not None else "any beta"
        print(
            f"- {where}: {best['decoder']} beta={best['beta']:g}, NLL {fmt(best, 'nll', 1)}{gap}; within noise: "
            + (", ".join(f"{s['decoder']} beta={s['beta']:g}" for s in close) or "none")
        )

    def best_of(name: str, beta: float | None = None) -> dict | None:
        pool = [s for s in gaussian if s["decoder"].endswith(name) and (beta is None or s["beta"] == beta)]
        return min(pool, key=lambda s: s["nll"]) if pool else None

    tuned = best_of("fixed 0.1")
    print(
        "\nsigma-VAE (Rybkin et al., 2021): fixed sigma with a tuned beta against learned/optimal shared sigma at beta = 1"
    )
    if tuned:
        print(f"- fixed 0.1, best beta={tuned['beta']:g}: NLL {fmt(tuned, 'nll', 1)}")
        for name in ("learned_shared", "optimal (shared)"):
            s = best_of(name, 1.0)
            if s:
                verdict = within_noise(s, tuned, "nll")
                print(
                    f"- {name} at beta=1: NLL {fmt(s, 'nll', 1)} ({s['nll'] - tuned['nll']:+.1f} nats; "
                    + {True: "within noise", False: "a real difference", None: "no spread"}[verdict]
                    + ")"
                )


if __name__ == "__main__":
    main()
