"""Sweeps on a real SLURM cluster through Hydra's submitit launcher (hydra/launcher=slurm).

The cluster is the one-node SLURM of this machine that `.ci/slurm-cluster.sh` sets up
(CI runs it before the tests). Where SLURM is not installed the tests are skipped
and say so; where it is installed but not running, the fixture starts it (as root).
The tests look only at the jobs they submitted (other jobs may share the queue).
The fast tests at the end check vaelab.slurm_requests' decisions on SLURM's own
text, without a cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import read_metrics, run_cli
from test_data import MNIST_STEMS, CountingServer, md5, write_mnist
from test_optuna import prunable_search

from vaelab.exceptions import UserError
from vaelab.slurm_requests import (
    Node,
    Partition,
    Request,
    SlurmRequestError,
    gpu_count,
    is_permanent,
    megabytes,
    message,
    minutes,
    never_starts,
    parse_records,
    reason_code,
    shortfalls,
)
from vaelab.slurm_watch import PendingWatch, refusal, submitit_root

CLUSTER_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "slurm-cluster.sh"
# one CPU per job so that the 2-core CI machine runs two jobs at once
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=20",
]
QUICK = ["debug=short", "trainer.enable_progress_bar=false"]
PROXIES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def node_state() -> str:
    proc = subprocess.run(
        ["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, timeout=30, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


@pytest.fixture(scope="module")
def slurm_cluster():
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        pytest.skip(
            "SLURM is not installed here (no sbatch/sinfo); `bash .ci/slurm-cluster.sh` (as root) installs and starts a one-node cluster"
        )
    if node_state() not in ("idle", "mix", "alloc"):
        if os.geteuid() != 0:
            pytest.skip(
                "SLURM is installed but not running, and starting it needs root: run `sudo bash .ci/slurm-cluster.sh`"
            )
        subprocess.run(["bash", str(CLUSTER_SCRIPT)], check=True, timeout=600)
    assert node_state() in ("idle", "mix", "alloc"), f"SLURM node is not usable: {node_state()!r}"


def sweep_dir(root: Path) -> Path:
    (folder,) = list((root / "logs" / "train" / "multiruns").iterdir())
    return folder


def submitted_jobs(sweep: Path) -> list[str]:
    """The SLURM job (array) ids a sweep submitted: submitit names a folder of
    .submitit/ after each (<id>/<id>_submission.sh), beside its tasks' <id>_<task>/."""
    return sorted(
        p.name
        for p in (sweep / ".submitit").iterdir()
        if p.name.isdigit() and (p / f"{p.name}_submission.sh").is_file()
    )


def jobs_left(job_ids: list[str], wait_s: float = 60.0) -> list[str]:
    """Which of these jobs are still in the queue once it has had ``wait_s`` to drain
    them (a finished job may show as completing, CG, for a few seconds). Other
    people's jobs are none of the tests' business."""
    assert job_ids, "no job ids to look for"
    deadline = time.monotonic() + wait_s
    while True:
        proc = subprocess.run(
            ["squeue", "--noheader", "--array", f"--jobs={','.join(job_ids)}", "--format=%i %T"],
            capture_output=True,
            text=True,
            check=False,
        )
        # squeue exits 1 ("Invalid job id") once SLURM has forgotten the only job asked about
        forgotten = proc.returncode != 0 and "Invalid job id" in proc.stderr
        assert proc.returncode == 0 or forgotten, f"squeue failed: {proc.stderr}"
        left = [line for line in proc.stdout.splitlines() if line.strip()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1)


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
    (array,) = submitted_jobs(folder)  # one job array for the three jobs
    assert {p.parent.name.split("_")[0] for p in logs} == {array}
    assert jobs_left([array]) == [], "the sweep's jobs, the failed one included, must all leave the queue"

    stamps = [(job / "metrics.json").stat().st_mtime_ns for job in ok]
    again = run_cli("vaelab-train", *command, cwd=tmp_path, check=False)
    assert again.returncode != 0  # the diverging job fails again
    assert [(job / "metrics.json").stat().st_mtime_ns for job in ok] == stamps, "finished jobs were re-run"
    reused = [
        p
        for p in (folder / ".submitit").glob("*_*/*_log.out")
        if "Job already finished, reusing its result" in p.read_text()
    ]
    assert len(reused) == 2
    assert sweep_dir(tmp_path) == folder and len([p for p in folder.iterdir() if (p / ".hydra").is_dir()]) == 3
    again_arrays = [job for job in submitted_jobs(folder) if job != array]
    assert len(again_arrays) == 1 and jobs_left(again_arrays) == []


@pytest.mark.slow
def test_an_optuna_study_runs_its_trials_as_slurm_jobs_that_report_to_its_storage(slurm_cluster, tmp_path):
    """Two trials asked at once (n_jobs=2) go to SLURM as one job array; each job reports its
    epochs to the study's SQLite file from the node, and the pruner stops the hopeless one."""
    optuna = pytest.importorskip("optuna")
    space = prunable_search(tmp_path)
    run_cli(
        "vaelab-train",
        "-m",
        *space,
        *SLURM,
        *QUICK,
        "likelihood=gaussian_fixed",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        cwd=tmp_path,
    )
    folder = sweep_dir(tmp_path)
    (array,) = submitted_jobs(folder)  # both trials in one job array
    study = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'optuna.db'}")
    states = {t.params["likelihood.sigma_value"]: t.state.name for t in study.trials}
    assert states == {0.1: "COMPLETE", 0.001: "PRUNED"}
    assert all(t.intermediate_values for t in study.trials), "each SLURM job reported to the storage"
    job_ids = {read_metrics(job)["slurm_job_id"] for job in folder.iterdir() if (job / ".hydra").is_dir()}
    assert None not in job_ids and len(job_ids) == 2, "each trial ran as a SLURM job of its own"
    assert jobs_left([array]) == []


def served_mnist(tmp_path: Path, url: str) -> list[str]:
    """Overrides for a data config `served_mnist`: small MNIST files fetched from ``url``
    (data.download=true) into tmp_path/data/mnist, checked against their own md5s."""
    conf = tmp_path / "conf" / "data"
    conf.mkdir(parents=True)
    checksums = "\n".join(f"    {stem}.gz: {md5(tmp_path / 'www' / f'{stem}.gz')}" for stem in MNIST_STEMS)
    (conf / "served_mnist.yaml").write_text(
        f"defaults:\n  - mnist\n  - _self_\nroot: {tmp_path / 'data' / 'mnist'}\ndownload: true\n"
        f"source:\n  mirror: {url}\n  checksums:\n{checksums}\n"
    )
    return [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "data=served_mnist"]


@pytest.mark.slow
def test_each_job_of_a_sweep_trains_as_two_slurm_tasks_with_ddp(slurm_cluster, tmp_path, monkeypatch):
    """SLURM starts one task per device and Lightning reads the ranks from SLURM's
    environment: no process is re-executed, and each job's two tasks are its two ranks.
    Both ranks start at once with data.download=true: one downloads, the other waits
    for it, and each file is fetched from the server exactly once."""
    for var in PROXIES:
        monkeypatch.delenv(var, raising=False)
    write_mnist(tmp_path / "www", n_train=300, n_test=50)
    # each response is held back 1 s, so that the two ranks' downloads would overlap
    server = CountingServer(tmp_path / "www", delay_s=1.0)
    server.start()
    try:
        run_cli(
            "vaelab-train",
            "-m",
            "hydra/launcher=slurm_ddp",
            "hydra.launcher.gpus_per_node=null",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=2",
            "trainer=ddp_cpu",
            "trainer.devices=2",
            *served_mnist(tmp_path, server.url),
            *QUICK,
            "logger=wandb",
            "model.beta=0.5,2",
            cwd=tmp_path,
        )
    finally:
        server.stop()
    folder = sweep_dir(tmp_path)
    jobs = sorted(p for p in folder.iterdir() if (p / ".hydra").is_dir())
    assert [job.name for job in jobs] == ["model.beta=0.5", "model.beta=2"]
    assert sorted(p.parent for p in (tmp_path / "logs").rglob(".hydra")) == jobs, "stray folders"
    for job in jobs:
        summary = read_metrics(job)
        assert summary["world_size"] == 2 and summary["ddp_pids"] == [] and summary["slurm_job_id"]
        assert summary["run"]["data"] == "mnist"
        assert summary["metrics"]["test/elbo"] < 0
        assert len(list(job.glob("wandb/offline-run-*/run-*.wandb"))) == 1
    # two tasks per job, rank 0 and rank 1, each with a log of its own
    array_tasks = [p for p in (folder / ".submitit").glob("*_*") if p.is_dir()]
    assert len(array_tasks) == 2
    waited = 0
    for task_logs in array_tasks:
        ranks = sorted(p.name for p in task_logs.glob("*_log.err"))
        assert len(ranks) == 2
        text = "".join(p.read_text() for p in task_logs.glob("*_log.*"))
        assert "GLOBAL_RANK: 0, MEMBER: 1/2" in text and "GLOBAL_RANK: 1, MEMBER: 2/2" in text
        waited += text.count("which is downloading into")
    # the data were fetched once for the whole sweep, while another rank waited for them
    assert server.requests == {f"/{stem}.gz": 1 for stem in MNIST_STEMS}
    assert waited >= 1, "no rank waited for another's download: the test did not make them overlap"
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(f"{s}.gz" for s in MNIST_STEMS)
    assert jobs_left(submitted_jobs(folder)) == []


@pytest.mark.slow
def test_a_request_no_node_can_hold_is_cancelled_and_stops_the_sweep_in_one_line(slurm_cluster, tmp_path):
    """64 CPUs per job on a node with a few: sbatch accepts it, SLURM would keep it
    pending for ever (PartitionConfig). vaelab-train cancels it and says why."""
    started = time.monotonic()
    proc = run_cli(
        "vaelab-train",
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.cpus_per_task=64",
        *QUICK,
        "model.beta=1,2",
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    ended = time.time()
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]) and "Traceback" not in proc.stderr
    node_cpus = max(
        int(c.rstrip("+"))
        for c in subprocess.run(
            ["sinfo", "--noheader", "--format=%c"], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert "never start job array" in errors[0] and "reason PartitionConfig" in errors[0]
    assert f"64 CPUs per node (nodes here have at most {node_cpus})" in errors[0]
    assert "hydra.launcher.cpus_per_task" in errors[0] and "cancelled" in errors[0]
    (array,) = submitted_jobs(sweep_dir(tmp_path))
    assert f"scancel {array}" in errors[0]
    assert jobs_left([array], wait_s=10) == [], "the job that can never start is still queued"
    submitted = (sweep_dir(tmp_path) / ".submitit" / array / f"{array}_submission.sh").stat().st_mtime
    print(
        f"unsatisfiable request: command {time.monotonic() - started:.1f} s, submission to exit {ended - submitted:.1f} s"
    )
    assert ended - submitted < 60


# -- vaelab.slurm_requests' decisions, on SLURM's own text (no cluster needed) -------
NODE = (
    "NodeName=vm Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=2 CPUTot=2 CPULoad=0.44 AvailableFeatures=(null) "
    "ActiveFeatures=(null) Gres=(null) NodeAddr=127.0.0.1 NodeHostName=vm Version=22.05.8 OS=Linux 6.18.44-fc-v1045 "
    "#1 SMP PREEMPT_DYNAMIC @0  RealMemory=23081 AllocMem=0 FreeMem=22562 Sockets=2 Boards=1 State=IDLE "
    "ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=debug  BootTime=2026-12-01T20:36:01 "
    "CfgTRES=cpu=2,mem=23081M,billing=2 AllocTRES= CapWatts=n/a"
)
GPU_NODE = "NodeName=g1 CPUTot=32 RealMemory=256000 Gres=gpu:a100:4(S:0-1) State=MIXED Partitions=gpu,all"
PARTITION = (
    "PartitionName=debug AllowGroups=ALL Default=YES QoS=N/A DefaultTime=NONE MaxNodes=UNLIMITED "
    "MaxTime=UNLIMITED MinNodes=0 Nodes=vm State=UP TotalCPUs=2 TotalNodes=1 TRES=cpu=2,mem=23081M,node=1"
)
PENDING_JOB = (
    "JobId=39 ArrayJobId=39 ArrayTaskId=0-2%2 ArrayTaskThrottle=2 JobName=train JobState=PENDING "
    "Reason=PartitionConfig Dependency=(null) TimeLimit=04:00:00 Partition=debug NodeList= NumNodes=1 "
    "NumCPUs=64 NumTasks=1 CPUs/Task=64 ReqB:S:C:T=0:0:*:* TRES=cpu=64,mem=2G,node=1,billing=64 "
    "Socks/Node=* NtasksPerN:B:S:C=0:0:*:* MinCPUsNode=64 MinMemoryNode=2G MinTmpDiskNode=0 "
    "Command=/tmp/j.sh WorkDir=/tmp StdErr=/dev/null"
)


def test_pending_reasons_that_never_clear_and_those_that_do():
    for reason in (
        "PartitionConfig",
        "PartitionTimeLimit",
        "BadConstraints",
        "DependencyNeverSatisfied",
        "InvalidQOS",
        "QOSMaxCpuPerJobLimit",
        "QOSMaxMemoryPerJob",
        "QOSMaxWallDurationPerJobLimit",
        "QOSMaxGRESPerNode",
        "AssocMaxNodePerJobLimit",
        "QOSMinCpuNotSatisfied",
    ):
        assert is_permanent(reason), reason
    for reason in (
        "Resources",
        "Priority",
        "JobArrayTaskLimit",
        "Dependency",
        "BeginTime",
        "None",
        "Reservation",
        "QOSMaxJobsPerUserLimit",
        "QOSMaxCpuPerUserLimit",
        "QOSMaxSubmitJobPerUserLimit",
        "AssocMaxJobsLimit",
        "AssocGrpCpuLimit",
        "QOSGrpGRES",
        "PartitionDown",
        "NodeDown",
        "JobHeldUser",
        "ReqNodeNotAvail, UnavailableNodes:vm",
        "PartitionNodeLimit",
    ):
        assert not is_permanent(reason), reason
    # these also stand for nodes that are down, drained or reserved: permanent only when
    # the partition's nodes could never hold the job
    partition = Partition.from_records(parse_records(PARTITION)[0], parse_records(NODE))
    for reason in ("ReqNodeNotAvail, UnavailableNodes:vm", "PartitionNodeLimit"):
        assert not never_starts(reason, Request("debug", cpus_per_node=2), partition)  # vm comes back
        assert never_starts(reason, Request("debug", cpus_per_node=3), partition)
        assert never_starts(reason, Request("debug", nodes=2), partition)
    assert never_starts("PartitionConfig", None, None) and not never_starts("Resources", None, None)


def test_request_and_offer_read_from_scontrol_and_the_one_line_message():
    (job,) = parse_records(PENDING_JOB)
    assert job["CPUs/Task"] == "64" and job["Command"] == "/tmp/j.sh"
    request = Request.from_job(job)
    assert request == Request(
        "debug", nodes=1, cpus_per_node=64, memory_mb_per_node=2048, gpus_per_node=0, time_min=240
    )
    (node,) = parse_records(NODE)
    assert node["OS"] == "Linux 6.18.44-fc-v1045 #1 SMP PREEMPT_DYNAMIC @0" and node["RealMemory"] == "23081"
    partition = Partition.from_records(parse_records(PARTITION)[0], parse_records(NODE + "\n" + GPU_NODE))
    assert partition.nodes == (Node("vm", 2, 23081, 0),) and partition.max_time_min is None and partition.default
    text = message(request, partition, job_id="39", tasks=3, reason="PartitionConfig")
    assert text == (
        "SLURM can never start job array 39 of this sweep (3 jobs pending with reason PartitionConfig): each asks for "
        "64 CPUs per node (nodes here have at most 2); partition debug has 1 node with 2 CPUs, 22.5 GB memory, no GPU, "
        "and no time limit. The jobs were cancelled (scancel 39); lower hydra.launcher.cpus_per_task (x tasks_per_node) "
        "or choose another hydra.launcher.partition"
    )
    assert "\n" not in text
    # memory, GPUs, nodes and time, each named with its setting
    gpu = Partition("gpu", (Node.from_record(parse_records(GPU_NODE)[0]),), max_time_min=2880)
    assert gpu.nodes[0] == Node("g1", 32, 256000, 4)
    big = Request("gpu", nodes=2, cpus_per_node=8, memory_mb_per_node=512 * 1024, gpus_per_node=8, time_min=4320)
    found = dict(shortfalls(big, gpu))
    assert set(found) == {"memory", "gpus", "time"}
    assert found["memory"] == "512 GB memory per node (nodes here have at most 250 GB)"
    assert found["gpus"] == "8 GPUs per node (nodes here have at most 4)"
    assert found["time"] == "a time limit of 4320 min (the partition allows at most 2880)"
    assert dict(shortfalls(Request("gpu", nodes=2, gpus_per_node=4), gpu)) == {
        "nodes": "2 nodes (the partition has 1 that could run it)"
    }
    assert shortfalls(Request("gpu", nodes=1, cpus_per_node=32, gpus_per_node=4, time_min=60), gpu) == []


def test_units_of_scontrol_fields():
    assert [megabytes(t) for t in ("2000M", "16G", "1T", "23081", "512K", "UNLIMITED", None)] == [
        2000,
        16384,
        1048576,
        23081,
        0.5,
        None,
        None,
    ]
    assert [minutes(t) for t in ("04:00:00", "1-00:00:00", "2-12", "30:00", "90", "UNLIMITED", "Partition_Limit")] == [
        240,
        1440,
        3600,
        30,
        90,
        None,
        None,
    ]
    assert [
        gpu_count(t)
        for t in ("gpu:2", "gpu:a100:4(S:0-1)", "gres:gpu:1", "gres/gpu=2", "(null)", "gpu:a100:2,gpu:v100:1")
    ] == [2, 4, 1, 2, 0, 3]
    assert reason_code("ReqNodeNotAvail, UnavailableNodes:vm") == "ReqNodeNotAvail"


def test_sbatch_refusal_and_launcher_settings_make_the_same_kind_of_line():
    request = Request.from_launcher(
        {
            "partition": None,
            "nodes": 1,
            "tasks_per_node": 2,
            "cpus_per_task": 2,
            "mem_gb": 64,
            "gpus_per_node": None,
            "timeout_min": 240,
        }
    )
    assert request == Request(None, 1, 4, 65536.0, 0, 240.0)
    partition = Partition.from_records(parse_records(PARTITION)[0], parse_records(NODE))
    text = message(request, partition, refused="Memory specification can not be satisfied")
    assert text.startswith(
        "sbatch refused this sweep's jobs (Memory specification can not be satisfied): each asks "
        "for 4 CPUs per node (nodes here have at most 2) and 64 GB memory per node"
    )
    assert text.endswith(
        "Lower hydra.launcher.cpus_per_task (x tasks_per_node), hydra.launcher.mem_gb or choose "
        "another hydra.launcher.partition"
    )
    gone = Request("gpu")
    assert message(gone, None, refused="invalid partition specified: gpu", partitions=["debug"]).endswith(
        "partition gpu does not exist here (partitions: debug). Set hydra.launcher.partition to one of them"
    )
    assert refusal(RuntimeError("Job (task=0) failed during processing"), {}) is None
    assert issubclass(SlurmRequestError, UserError)  # reported as one line, exit code 2


def test_the_watch_sees_only_jobs_submitted_after_it_began(tmp_path):
    root = tmp_path / ".submitit"
    (root / "12").mkdir(parents=True)
    old = root / "12" / "12_submission.sh"
    old.write_text("#!/bin/bash\n")
    (root / "12_0").mkdir()
    watch = PendingWatch(root / "%j")
    assert watch.root == root and watch.job_ids() == []
    (root / "15").mkdir()
    (root / "15" / "15_submission.sh").write_text("#!/bin/bash\n")
    (root / "15" / "not_a_submission.sh").write_text("")
    assert watch.job_ids() == ["15"]
    os.utime(old, ns=(old.stat().st_atime_ns, old.stat().st_mtime_ns + 10**9))  # job id 12 again (a new cluster)
    assert watch.job_ids() == ["15", "12"]
    assert submitit_root("/a/b/.submitit/%j") == Path("/a/b/.submitit")
