"""Benchmark: does starting the decoder at the mean image collapse the posterior?

Trains the plain PyTorch loop of :mod:`vaelab.reference` (no Lightning) with the
decoder's output bias at PyTorch's default and at the mean training input
(``model.init_output_bias``), for every Gaussian sigma mode and Bernoulli, betas
0.25 to 4 and several seeds, and prints the test KL, active units and ELBO of each
pair. A cell where one start collapses (fewer active units, KL near 0) and the other
does not is a start of training that decides the result, not the objective.

    python bench/init_bias.py --data digits --epochs 30 --seeds 1 2 3
    python bench/init_bias.py --data mnist --mnist ../shared/data/mnist --epochs 1 --workers 2

Writes the JSON records to bench/results/init_bias_<data>_<time>.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

LIKELIHOODS = (
    "gaussian_fixed",
    "gaussian_learned_shared",
    "gaussian_learned_pixel",
    "gaussian_predicted",
    "gaussian_optimal",
    "bernoulli",
)
BETAS = (0.25, 0.5, 1.0, 2.0, 4.0)


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from vaelab.config import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def one(job: tuple[str, float, int, bool, int, list[str]]) -> dict:
    likelihood, beta, seed, init_bias, epochs, data_overrides = job
    import torch
    from hydra.utils import instantiate

    from vaelab.reference import train_reference

    torch.set_num_threads(1)
    cfg = compose([f"likelihood={likelihood}", f"model.beta={beta}", f"seed={seed}", *data_overrides])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    started = time.perf_counter()
    result = train_reference(cfg, datamodule, epochs=epochs, seed=seed, init_output_bias=init_bias)
    return {
        "likelihood": likelihood,
        "beta": beta,
        "seed": seed,
        "init_output_bias": init_bias,
        "epochs": epochs,
        "test_elbo": result.elbo,
        "test_kl": result.kl,
        "active_units": result.active_units,
        "best_epoch": result.best_epoch,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits", choices=("digits", "mnist"))
    parser.add_argument("--mnist", default="../shared/data/mnist")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--likelihoods", nargs="+", default=list(LIKELIHOODS))
    parser.add_argument("--betas", type=float, nargs="+", default=list(BETAS))
    parser.add_argument("--workers", type=int, default=1, help="processes, one thread each")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()

    data = ["data=mnist", f"data.root={Path(args.mnist).resolve()}"] if args.data == "mnist" else []
    jobs = [
        (lik, beta, seed, init, args.epochs, data)
        for lik, beta, seed, init in itertools.product(args.likelihoods, args.betas, args.seeds, (True, False))
    ]
    started = time.perf_counter()
    records = []
    print(f"{len(jobs)} runs of {args.epochs} epochs on {args.data}, {args.workers} at a time", flush=True)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for i, record in enumerate(pool.map(one, jobs), 1):
            records.append(record)
            print(
                f"[{i}/{len(jobs)}] {record['likelihood']:24s} beta={record['beta']:<5g} seed={record['seed']} "
                f"bias={'mean' if record['init_output_bias'] else 'default':7s} KL={record['test_kl']:7.2f} "
                f"AU={record['active_units']:2d} ELBO={record['test_elbo']:9.2f} ({record['seconds']} s)",
                flush=True,
            )
    wall = time.perf_counter() - started

    print("\n| likelihood | beta | mean-image bias: KL / AU / ELBO | default bias: KL / AU / ELBO |")
    print("|---|---:|---|---|")
    for lik, beta in itertools.product(args.likelihoods, args.betas):
        cells = []
        for init in (True, False):
            rs = [r for r in records if r["likelihood"] == lik and r["beta"] == beta and r["init_output_bias"] == init]
            kl = [r["test_kl"] for r in rs]
            au = [r["active_units"] for r in rs]
            elbo = [r["test_elbo"] for r in rs]
            sd = statistics.stdev(elbo) if len(elbo) > 1 else 0.0
            cells.append(f"{statistics.mean(kl):.1f} / {min(au)}-{max(au)} / {statistics.mean(elbo):.1f} ± {sd:.1f}")
        print(f"| {lik} | {beta:g} | {cells[0]} | {cells[1]} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"init_bias_{args.data}_{time.strftime('%Y%m%d_%H%M%S')}.json"
    meta = {
        "date": date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "wall_seconds": round(wall, 1),
        "args": vars(args),
    }
    path.write_text(json.dumps({"meta": meta, "records": records}, indent=1) + "\n")
    print(f"\n{wall:.0f} s; records: {path}")


if __name__ == "__main__":
    main()
