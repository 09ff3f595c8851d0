"""Benchmark: the Burda et al. (2016) MLP VAE on dynamically binarised MNIST.

Trains `experiment=burda_mnist` through `vaelab-train` for at most --minutes of
wall time, then scores the best checkpoint with `vaelab-eval` (IWAE bound, K=5000)
and prints one Markdown table row for BENCHMARKS.md, plus a JSON record.

    python bench/burda_mnist.py --mnist ../shared/data/mnist --minutes 20

Published reference: 86.76 nats test NLL (K=5000) after 3280 epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

PUBLISHED_NLL = 86.76


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run ``cmd``, echoing its output as it comes (so progress is visible), and return it."""
    print("+", " ".join(cmd), flush=True)
    lines = []
    with subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed with exit code {proc.returncode}")
    return "".join(lines)


def cpu_model() -> str:
    """The processor's name as Linux reports it (platform.processor() is often empty), and
    whether it has bfloat16 instructions: they decide what trainer.precision=bf16-mixed costs."""
    from vaelab.accelerators import cpu_has_bfloat16

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    return f"{name or platform.machine()}, {'with' if cpu_has_bfloat16() else 'no'} bfloat16 instructions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", default="../shared/data/mnist", help="folder with the MNIST IDX files")
    parser.add_argument("--minutes", type=float, default=20.0, help="training wall-time budget")
    parser.add_argument("--iw-samples", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for training")
    parser.add_argument("--eval-threads", type=int, default=os.cpu_count() or 1, help="torch threads for vaelab-eval")
    parser.add_argument("--out", default="bench/results", help="folder for the JSON record and the runs")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for vaelab-train")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "VAELAB_ROOT": str(out), "WANDB_MODE": "offline"}
    total = int(args.minutes * 60)
    max_time = f"00:{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"  # DD:HH:MM:SS

    started = time.perf_counter()
    train_log = run(
        [
            str(bin_dir / "vaelab-train"),
            "experiment=burda_mnist",
            f"data.root={Path(args.mnist).resolve()}",
            f"trainer.max_time={max_time}",
            "trainer.enable_progress_bar=false",
            *args.overrides,
        ],
        env,
        Path.cwd(),
    )
    train_seconds = time.perf_counter() - started
    run_dir = Path(next(line for line in train_log.splitlines() if line.startswith("Run folder: ")).split(": ", 1)[1])
    summary = json.loads((run_dir / "metrics.json").read_text())
    best = summary["best_checkpoint"]

    started = time.perf_counter()
    eval_file = run_dir / "eval_k5000.json"
    run(
        [
            str(bin_dir / "vaelab-eval"),
            f"ckpt_path={best}",
            f"iw_samples={args.iw_samples}",
            f"output_file={eval_file}",
        ],
        {**env, "OMP_NUM_THREADS": str(args.eval_threads)},
        Path.cwd(),
    )
    eval_seconds = time.perf_counter() - started
    result = json.loads(eval_file.read_text())["metrics"]

    record = {
        "date": date.today().isoformat(),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "train_threads": args.threads,
        "eval_threads": args.eval_threads,
        "epochs": summary["epochs"],
        "steps": summary["global_step"],
        "train_wall_s": round(train_seconds, 1),
        "eval_wall_s": round(eval_seconds, 1),
        "test_elbo": result["test/elbo"],
        "test_nll_iw": result["test/nll_iw"],
        "iw_samples": args.iw_samples,
        "published_nll": PUBLISHED_NLL,
        "gap_to_published": result["test/nll_iw"] - PUBLISHED_NLL,
        "run_dir": str(run_dir),
        "overrides": args.overrides,
    }
    (out / f"burda_mnist_{int(time.time())}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(
        f"| {record['date']} | {record['epochs']} | {train_seconds / 60:.1f} min | {record['test_elbo']:.2f} | "
        f"{record['test_nll_iw']:.2f} | {PUBLISHED_NLL} | {record['gap_to_published']:+.2f} |"
    )


if __name__ == "__main__":
    main()
