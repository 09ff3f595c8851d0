"""Benchmark: does each job of a finished sweep reach what a plain PyTorch loop reaches?

For every done job of a ``vaelab-train -m`` sweep, trains the same config (the job's
own overrides, composed again) with the plain loop of :mod:`vaelab.reference` (no
Lightning, PyTorch's default initialisation; the decoder starts at the mean image
only where vaelab's default does, ``Likelihood.init_output_bias_by_default``) for the
job's epochs and seed (a job with ``trainer.max_time`` gives the loop the same
wall-time budget, and one with ``callbacks.time_budget_lr.shape`` the same learning-
rate schedule over it, each loop on one thread as each job of two was; a job with
``callbacks.ema_weights.decay`` has the loop score the same moving average of its
weights), and prints, per setting (the job's overrides without the seed),
the test ELBO of vaelab and of the loop, mean ± sd over seeds, their gap and the
test KL of each: a setting whose gap is far outside the seeds' spread trains
differently in vaelab than the objective does in a plain loop.

    python bench/reference_gap.py logs/likelihood_quality/multiruns/<sweep> --workers 2
    python bench/reference_gap.py <sweep> --only low_rank discretized   # some settings only
    python bench/reference_gap.py logs/burda_mnist/multiruns/<sweep> --workers 2  # timed jobs
    python bench/reference_gap.py <folder of single runs> --workers 2   # settings: what differs

Writes the JSON records to bench/results/reference_gap_<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

import yaml


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from vaelab.config import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def done_jobs(sweep: Path) -> list[dict]:
    """Each done job's overrides and test numbers (a job: a folder with metrics.json)."""
    jobs = []
    for metrics_file in sorted(sweep.rglob("metrics.json")):
        folder = metrics_file.parent
        summary = json.loads(metrics_file.read_text())
        metrics = summary.get("metrics", {})
        if "test/elbo" not in metrics:
            continue
        overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
        jobs.append(
            {
                "job": folder.name,
                "overrides": overrides,
                "epochs": int(summary["epochs"]),
                "vaelab_elbo": metrics["test/elbo"],
                "vaelab_kl": metrics.get("test/kl"),
            }
        )
    swept = _swept(sweep, [job["overrides"] for job in jobs])
    for job in jobs:
        setting = [o for o in job["overrides"] if "=" in o and o.split("=")[0] in swept]
        job["setting"] = ", ".join(setting) or "all"
    return jobs


def _swept(sweep: Path, overrides: list[list[str]]) -> set[str]:
    """The keys the sweep varied, seed aside: from its multirun.yaml, or for a folder of
    single runs (no multirun.yaml), the keys whose overrides differ between the runs."""
    if not (sweep / "multirun.yaml").exists():
        given = [dict(o.partition("=")[::2] for o in job if "=" in o) for job in overrides]
        keys = set().union(*given) if given else set()
        return {key for key in keys if key != "seed" and len({job.get(key) for job in given}) > 1}
    config = yaml.safe_load((sweep / "multirun.yaml").read_text())
    params = dict(config["hydra"]["sweeper"].get("params") or {})
    for override in config["hydra"]["overrides"]["task"]:
        key, _, value = override.partition("=")
        if "," in value:
            params[key] = value
    return {key for key in params if key != "seed"}


def one(job: dict) -> dict:
    import torch
    from hydra.utils import instantiate

    from vaelab.config import instantiate_likelihood
    from vaelab.reference import train_reference

    torch.set_num_threads(1)
    cfg = compose([o for o in job["overrides"] if not o.startswith("hydra")])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    start = cfg.model.get("init_output_bias")
    if start is None:
        likelihood = instantiate_likelihood(cfg.likelihood, tuple(datamodule.image_shape), int(datamodule.levels))
        start = likelihood.init_output_bias_by_default
    budget = time_budget_seconds(cfg)
    lr_over_budget = (cfg.get("callbacks") or {}).get("time_budget_lr") or {}
    averaging = (cfg.get("callbacks") or {}).get("ema_weights") or {}
    started = time.perf_counter()
    result = train_reference(
        cfg,
        datamodule,
        # a timed job's epochs are what fit its budget: the loop gets the budget instead
        epochs=job["epochs"] if budget is None else int(cfg.trainer.max_epochs),
        seed=int(cfg.seed),
        init_output_bias=bool(start),
        time_budget_s=budget,
        schedule=lr_over_budget.get("shape"),
        final_fraction=float(lr_over_budget.get("final_fraction", 0.0)),
        ema_decay=averaging.get("decay"),
        ema_start_step=int(averaging.get("update_starting_at_step", 0)),
        ema_every_n_steps=int(averaging.get("update_every_n_steps", 1)),
    )
    return {
        **job,
        "seed": int(cfg.seed),
        "init_output_bias": bool(start),
        "reference_elbo": result.elbo,
        "reference_kl": result.kl,
        "reference_active_units": result.active_units,
        "reference_epochs": len(result.val_elbo),
        "reference_steps": result.steps,
        "seconds": round(time.perf_counter() - started, 1),
    }


def time_budget_seconds(cfg) -> float | None:
    """``trainer.max_time`` in seconds (None without one), parsed by Lightning's Timer."""
    max_time = cfg.trainer.get("max_time")
    if max_time is None:
        return None
    from lightning.pytorch.callbacks import Timer

    return Timer(duration=max_time).time_remaining()


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {sd:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--workers", type=int, default=1, help="processes, one thread each")
    parser.add_argument("--only", nargs="+", default=None, help="settings containing one of these strings")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()

    jobs = [j for j in done_jobs(args.sweep) if args.only is None or any(o in j["setting"] for o in args.only)]
    if not jobs:
        raise SystemExit(f"no done job under {args.sweep}")
    print(f"{len(jobs)} done jobs of {args.sweep}; the plain loop, {args.workers} at a time", flush=True)
    started = time.perf_counter()
    records = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for i, record in enumerate(pool.map(one, jobs), 1):
            records.append(record)
            print(
                f"[{i}/{len(jobs)}] {record['setting']:40s} seed={record['seed']} vaelab ELBO={record['vaelab_elbo']:9.2f} "
                f"loop ELBO={record['reference_elbo']:9.2f} (loop KL {record['reference_kl']:.1f}, {record['seconds']} s)",
                flush=True,
            )
    wall = time.perf_counter() - started

    print(
        "\n| setting | seeds | vaelab test ELBO | plain loop test ELBO | gap | vaelab KL | loop KL | vaelab epochs | loop epochs |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for setting in dict.fromkeys(r["setting"] for r in records):
        rs = [r for r in records if r["setting"] == setting]
        ours, loop = [r["vaelab_elbo"] for r in rs], [r["reference_elbo"] for r in rs]
        gap = statistics.fmean(ours) - statistics.fmean(loop)
        print(
            f"| {setting} | {len(rs)} | {_mean_sd(ours)} | {_mean_sd(loop)} | {gap:+.1f} | "
            f"{statistics.fmean(r['vaelab_kl'] for r in rs):.1f} | {statistics.fmean(r['reference_kl'] for r in rs):.1f} | "
            f"{statistics.fmean(r['epochs'] for r in rs):.1f} | {statistics.fmean(r['reference_epochs'] for r in rs):.1f} |"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"reference_gap_{time.strftime('%Y%m%d_%H%M%S')}.json"
    meta = {
        "date": date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "wall_seconds": round(wall, 1),
        "sweep": str(args.sweep.resolve()),
    }
    path.write_text(json.dumps({"meta": meta, "records": records}, indent=1) + "\n")
    print(f"\n{wall:.0f} s; records: {path}")


if __name__ == "__main__":
    main()
