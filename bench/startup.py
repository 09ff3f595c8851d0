"""Benchmark: start-up time, a parallel digits sweep against its jobs' training time, and
the peak memory of an MNIST run.

1. Start-up: the wall time from launching ``vaelab-train`` to its first training step.
   The run gets one extra callback, ``vaelab.timings.Timings``, which prints the
   first step's wall-clock time as a line (``vaelab: first training step at <t>``) and
   writes ``timings.json`` into the run folder; the bench subtracts the time it
   launched the command. Measured ``--repeats`` times for the default command (MLP on
   digits) and once for MNIST, next to the time of ``python -c 'import vaelab.train'``
   and of a bare interpreter, and with the heavy packages each run imported
   (``-X importtime``, in a separate untimed run).
2. Sweep: ``vaelab-train -m hydra/launcher=parallel hydra.launcher.n_jobs=2`` over 10
   values of model.beta on digits (every job with the defaults otherwise: 100 epochs
   and the final test), timed from launch to exit, against the sum of the jobs' own
   times from their timings.json (fit, training) and folders (job start to metrics.json).
3. Peak memory: the maximum resident set size of the MNIST run (getrusage of the
   finished child).

    python bench/startup.py --mnist ../shared/data/mnist
    python bench/startup.py --skip-sweep --repeats 1

Prints a summary and writes bench/results/startup_<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

BIN = Path(sys.executable).parent
TIMINGS = ["+callbacks.timings._target_=vaelab.timings.Timings", "+callbacks.timings.dirpath=${paths.output_dir}"]
HEAVY = (
    "wandb",
    "matplotlib",
    "optuna",
    "sklearn",
    "scipy",
    "tensorboard",
    "pandas",
    "PIL",
    "torch._dynamo",
    "torchvision",
)


def launch(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``cmd``; returns (launch time, end time, stdout+stderr)."""
    start = time.time()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    end = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return start, end, proc.stdout


def first_step(output: str) -> float:
    match = re.search(r"vaelab: first training step at ([0-9.]+)", output)
    if not match:
        raise SystemExit("the run printed no first-step marker")
    return float(match.group(1))


def run_folder(output: str) -> Path:
    return Path(re.search(r"^Run folder: (.+)$", output, re.M).group(1))


def python_seconds(module: str | None, env: dict[str, str], repeats: int) -> tuple[float, float]:
    """Median seconds to import ``module`` (timed inside the interpreter) and of the
    whole ``python -c 'import module'`` process (interpreter start and exit included)."""
    code = "import time; t = time.perf_counter()\n"
    code += f"import {module}\n" if module else ""
    code += "print(time.perf_counter() - t)"
    imports, processes = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
        processes.append(time.perf_counter() - start)
        imports.append(float(out.strip().splitlines()[-1]))
    return statistics.median(imports), statistics.median(processes)


def heavy_imports(args: list[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Heavy top-level packages a run imports, with their cumulative import seconds."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(BIN / "vaelab-train"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    found: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2].strip()
            if name in HEAVY:
                found[name] = max(found.get(name, 0.0), int(parts[1]) / 1e6)
    return found


def startup(args: list[str], cwd: Path, env: dict[str, str]) -> dict:
    start, end, output = launch([str(BIN / "vaelab-train"), *args, *TIMINGS], cwd, env)
    folder = run_folder(output)
    timings = json.loads((folder / "timings.json").read_text())
    return {
        "command_to_first_step_s": first_step(output) - start,
        "command_to_fit_start_s": timings["fit_start"] - start,
        "fit_start_to_first_step_s": timings["fit_start_to_first_step_s"],
        "command_s": end - start,
        "timings": timings,
        "run_folder": str(folder),
    }


def sweep(cwd: Path, env: dict[str, str], n_jobs: int, name: str, overrides: list[str]) -> dict:
    betas = ["0.25", "0.5", "0.75", "1", "1.25", "1.5", "2", "3", "4", "8"]
    cmd = [
        str(BIN / "vaelab-train"),
        "-m",
        "hydra/launcher=parallel",
        f"hydra.launcher.n_jobs={n_jobs}",
        f"model.beta={','.join(betas)}",
        f"sweep_name={name}",
        "trainer.enable_progress_bar=false",
        *overrides,
        *TIMINGS,
    ]
    start, end, output = launch(cmd, cwd, env)
    folder = cwd / "logs" / "train" / "multiruns" / name
    jobs = []
    for timings_file in sorted(folder.glob("*/timings.json")):
        job = timings_file.parent
        t = json.loads(timings_file.read_text())
        job_start = (job / ".hydra" / "config.yaml").stat().st_mtime
        job_end = (job / "metrics.json").stat().st_mtime
        jobs.append(
            {
                "job": job.name,
                "fit_s": t["fit_s"],
                "train_s": t["train_s"],
                "validation_s": t["validation_s"],
                "job_s": job_end - job_start,
            }
        )
    if len(jobs) != len(betas):
        raise SystemExit(f"{len(jobs)} of {len(betas)} jobs wrote timings in {folder}")
    total = {k: sum(j[k] for j in jobs) for k in ("fit_s", "train_s", "job_s")}
    wall = end - start
    return {
        "command": " ".join(cmd[1:]),
        "jobs": jobs,
        "n_jobs": n_jobs,
        "wall_s": wall,
        "sum_fit_s": total["fit_s"],
        "sum_train_s": total["train_s"],
        "sum_job_s": total["job_s"],
        "ideal_wall_s": total["job_s"] / n_jobs,
        "efficiency": total["job_s"] / n_jobs / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", default="../shared/data/mnist", help="folder with the MNIST IDX files")
    parser.add_argument("--repeats", type=int, default=3, help="start-up measurements of the default command")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the runs (default: unset)")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--sweep-jobs", type=int, default=2)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="vaelab-startup-"))
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    record: dict = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_before": os.getloadavg(),
        "threads": args.threads,
        "scratch": str(scratch),
    }
    quick = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", *args.overrides]

    _, record["python_bare_s"] = python_seconds(None, env, 3)
    record["import_vaelab_train_s"], record["python_import_vaelab_train_process_s"] = python_seconds(
        "vaelab.train", env, 3
    )
    record["heavy_imports_digits"] = heavy_imports(quick, scratch, env)
    print(
        f"bare interpreter: {record['python_bare_s']:.2f} s; import vaelab.train: {record['import_vaelab_train_s']:.2f} s "
        f"(the whole `python -c 'import vaelab.train'` process, exit included: {record['python_import_vaelab_train_process_s']:.2f} s)",
        flush=True,
    )
    print(f"heavy packages a digits run imports (cumulative import s): {record['heavy_imports_digits']}", flush=True)

    runs = [startup(quick, scratch, env) for _ in range(args.repeats)]
    record["digits"] = runs
    median = {
        k: statistics.median(r[k] for r in runs)
        for k in ("command_to_first_step_s", "command_to_fit_start_s", "fit_start_to_first_step_s")
    }
    record["digits_median"] = median
    print(
        f"digits, default model: command -> first training step {median['command_to_first_step_s']:.2f} s "
        f"(command -> fit start {median['command_to_fit_start_s']:.2f} s, fit start -> first step "
        f"{median['fit_start_to_first_step_s']:.2f} s; median of {len(runs)}: "
        f"{', '.join(format(r['command_to_first_step_s'], '.2f') for r in runs)})",
        flush=True,
    )

    mnist = Path(args.mnist).resolve()
    if (mnist / "train-images-idx3-ubyte.gz").exists() or (mnist / "train-images-idx3-ubyte").exists():
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        run = startup(["data=mnist", f"data.root={mnist}", "data.download=false", *quick], scratch, env)
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        run["peak_rss_mb"] = peak_kb / 1024
        run["peak_rss_is_this_run"] = peak_kb > before
        record["mnist"] = run
        print(
            f"mnist, default model, 1 epoch + test: command -> first training step {run['command_to_first_step_s']:.2f} s, "
            f"whole command {run['command_s']:.1f} s (training {run['timings']['train_s']:.1f} s), "
            f"peak RSS {run['peak_rss_mb']:.0f} MB{'' if run['peak_rss_is_this_run'] else ' (an earlier child was larger)'}",
            flush=True,
        )
    else:
        print(f"MNIST not found in {mnist}: skipped the MNIST run", flush=True)

    if not args.skip_sweep:
        result = sweep(scratch, env, args.sweep_jobs, f"startup_bench_{int(time.time())}", args.overrides)
        record["sweep"] = result
        print(
            f"sweep of 10 digits jobs, {args.sweep_jobs} in parallel: wall {result['wall_s']:.1f} s; sum over jobs: "
            f"job {result['sum_job_s']:.1f} s, fit {result['sum_fit_s']:.1f} s, training {result['sum_train_s']:.1f} s; "
            f"sum of job times / {args.sweep_jobs} = {result['ideal_wall_s']:.1f} s = {result['efficiency']:.0%} of the wall time",
            flush=True,
        )
    record["load_after"] = os.getloadavg()
    path = out / f"startup_{int(time.time())}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"record: {path}", flush=True)


if __name__ == "__main__":
    main()
