"""Sweeps on a real SLURM cluster through Hydra's submitit launcher (hydra/launcher=slurm).

The cluster is the one-node SLURM of this machine that `.ci/slurm-cluster.sh` sets up
(CI runs it before the tests). Where SLURM is not installed the tests are skipped
and say so; where it is installed but not running, the fixture starts it (as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import read_metrics, run_cli

CLUSTER_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "slurm-cluster.sh"
# one CPU per job so that the 2-core CI machine runs two jobs at once
SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=20"]
QUICK = ["debug=short", "trainer.enable_progress_bar=false"]


def node_state() -> str:
    proc = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, timeout=30)
    return proc.stdout.strip() if proc.returncode == 0 else ""


@pytest.fixture(scope="module")
def slurm_cluster():
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        pytest.skip("SLURM is not installed here (no sbatch/sinfo); `bash .ci/slurm-cluster.sh` (as root) installs and starts a one-node cluster")
    if node_state() not in ("idle", "mix", "alloc"):
        if os.geteuid() != 0:
            pytest.skip("SLURM is installed but not running, and starting it needs root: run `sudo bash .ci/slurm-cluster.sh`")
        subprocess.run(["bash", str(CLUSTER_SCRIPT)], check=True, timeout=600)
    assert node_state() in ("idle", "mix", "alloc"), f"SLURM node is not usable: {node_state()!r}"


def sweep_dir(root: Path) -> Path:
    (folder,) = list((root / "logs" / "train" / "multiruns").iterdir())
    return folder


def no_jobs_left(wait_s: float = 60.0) -> bool:
    """The queue empties (a finished job may show as completing, CG, for a few seconds)."""
    deadline = time.monotonic() + wait_s
    while subprocess.run(["squeue", "--noheader"], capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


@pytest.mark.slow
def test_a_sweep_runs_as_slurm_jobs_and_resumes(slurm_cluster, tmp_path):
    # sigma = 1e-30 overflows the Gaussian log-density: that job fails, the others finish
    command = ["-m", *SLURM, *QUICK, "likelihood.sigma=fixed", "likelihood.sigma_value=0.1,0.2,1e-30"]
    first = run_cli("vaelab-train", *command, cwd=tmp_path, check=False)
    assert first.returncode != 0, "the failing job should make the sweep exit non-zero"
    assert "Submitit 'slurm' sweep output dir" in first.stdout + first.stderr

    folder = sweep_dir(tmp_path)
    ok = [folder / "likelihood.sigma_value=0.1", folder / "likelihood.sigma_value=0.2"]
    failed = folder / "likelihood.sigma_value=1e-30"
    assert "NonFiniteLossError" in (failed / "FAILED").read_text()
    summaries = [read_metrics(job) for job in ok]
    job_ids = {s["slurm_job_id"] for s in summaries}
    assert None not in job_ids and len(job_ids) == 2, "each job ran as a SLURM job of its own"
    for summary in summaries:
        assert summary["threads"] == 1  # cpus_per_task
        assert summary["metrics"]["test/elbo"] < 0
    # SLURM's own logs are kept beside the jobs, one folder per array task
    logs = sorted((folder / ".submitit").glob("*_*/*_log.out"))
    assert len(logs) == 3
    assert no_jobs_left()

    stamps = [(job / "metrics.json").stat().st_mtime_ns for job in ok]
    again = run_cli("vaelab-train", *command, cwd=tmp_path, check=False)
    assert again.returncode != 0  # the diverging job fails again
    assert [(job / "metrics.json").stat().st_mtime_ns for job in ok] == stamps, "finished jobs were re-run"
    reused = [p for p in (folder / ".submitit").glob("*_*/*_log.out") if "Job already finished, reusing its result" in p.read_text()]
    assert len(reused) == 2
    assert sweep_dir(tmp_path) == folder and len([p for p in folder.iterdir() if (p / ".hydra").is_dir()]) == 3


@pytest.mark.slow
def test_each_job_of_a_sweep_trains_as_two_slurm_tasks_with_ddp(slurm_cluster, tmp_path):
    """SLURM starts one task per device and Lightning reads the ranks from SLURM's
    environment: no process is re-executed, and each job's two tasks are its two ranks."""
    run_cli("vaelab-train", "-m", "hydra/launcher=slurm_ddp", "hydra.launcher.gpus_per_node=null",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "trainer=ddp_cpu", "trainer.devices=2",
            *QUICK, "logger=wandb", "model.beta=0.5,2", cwd=tmp_path)
    folder = sweep_dir(tmp_path)
    jobs = sorted(p for p in folder.iterdir() if (p / ".hydra").is_dir())
    assert [job.name for job in jobs] == ["model.beta=0.5", "model.beta=2"]
    assert sorted(p.parent for p in (tmp_path / "logs").rglob(".hydra")) == jobs, "stray folders"
    for job in jobs:
        summary = read_metrics(job)
        assert summary["world_size"] == 2 and summary["ddp_pids"] == [] and summary["slurm_job_id"]
        assert summary["metrics"]["test/elbo"] < 0
        assert len(list(job.glob("wandb/offline-run-*/run-*.wandb"))) == 1
    # two tasks per job, rank 0 and rank 1, each with a log of its own
    array_tasks = [p for p in (folder / ".submitit").glob("*_*") if p.is_dir()]
    assert len(array_tasks) == 2
    for task_logs in array_tasks:
        ranks = sorted(p.name for p in task_logs.glob("*_log.err"))
        assert len(ranks) == 2
        text = "".join(p.read_text() for p in task_logs.glob("*_log.err"))
        assert "GLOBAL_RANK: 0, MEMBER: 1/2" in text and "GLOBAL_RANK: 1, MEMBER: 2/2" in text
    assert no_jobs_left()
