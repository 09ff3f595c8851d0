"""Multirun sweeps: folder names, resuming, failures, parallel jobs, W&B per job."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import time

import pytest
from conftest import read_metrics, run_cli, script
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from wandb_records import read_run

from vaelab import overrides, sweeps
from vaelab.device_slots import DeviceSlot

QUICK = ["debug=short", "trainer.enable_progress_bar=false"]


def _hold_slot(lock_dir, count, hold_s, queue):
    with DeviceSlot(count, lock_dir=lock_dir) as slot:
        start = time.monotonic()
        time.sleep(hold_s)
        queue.put((slot, start, time.monotonic()))


def test_device_slots_are_never_shared_by_running_jobs(tmp_path):
    """Six jobs, two devices: whatever the timing, no two jobs hold one device at once."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_hold_slot, args=(tmp_path, 2, 0.3 + 0.1 * (i % 3), queue)) for i in range(6)]
    for p in procs:
        p.start()
    held = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert {slot for slot, _, _ in held} == {0, 1}
    for i, (slot_a, start_a, end_a) in enumerate(held):
        for slot_b, start_b, end_b in held[i + 1 :]:
            if slot_a == slot_b:
                assert end_a <= start_b or end_b <= start_a, "two jobs held one device at once"


def test_a_dead_job_releases_its_device(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    holder = ctx.Process(target=_hold_slot, args=(tmp_path, 1, 60, ctx.Queue()))
    holder.start()
    time.sleep(1.0)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    with DeviceSlot(1, lock_dir=tmp_path) as slot:
        assert slot == 0


def test_long_job_names_keep_whole_overrides_before_their_hash():
    trial = [
        "model.beta=0.7062057512530174",
        "model.optimizer.lr=0.0016967533607196547",
        "model.latent_dim=32",
        "likelihood=gaussian_learned_shared",
    ]
    name = sweeps.job_folder_name(trial)
    kept, _, digest = name.rpartition("-")
    assert len(name) <= sweeps.MAX_NAME and len(digest) == 8
    assert kept == "likelihood=gaussian_learned_shared,model.beta=0.7062057512530174"  # whole items, sorted
    assert sweeps.job_folder_name(trial[:1]) == "model.beta=0.7062057512530174"  # short: no hash
    assert sweeps.job_folder_name(["data.root=/a/b"]).startswith("data.root=_a_b-")  # a replaced character: a hash


def test_a_sweep_folder_is_named_after_the_keys_its_sweeper_sweeps_too(monkeypatch):
    """Optuna's search space (hydra.sweeper.params) names the folder as a command's swept keys do."""
    monkeypatch.setenv(sweeps.COMMAND_ENV, "")
    sweeps.register_resolvers()
    sweeps.record_command(["-m", "hparams_search=optuna", "seed=1,2"])
    params = {
        "model.beta": "tag(log, interval(0.25, 4.0))",
        "model.latent_dim": "choice(4, 8)",
        "likelihood": "choice(a, b)",
        "trainer.max_epochs": "3",
    }
    cfg = OmegaConf.create({"sweep_name": "${vaelab.sweep_name:}", "hydra": {"sweeper": {"params": params}}})
    name = cfg.sweep_name
    assert name.rpartition("_")[0] == "seed+likelihood+model.beta+model.latent_dim"  # a fixed param is not swept
    assert name.endswith(sweeps.sweep_name().rpartition("_")[2])  # one hash: of the command
    sweeps.record_command(["-m", *(f"key.number_{i}=1,2" for i in range(9))])
    prefix = sweeps.sweep_name().rpartition("_")[0]
    assert prefix.endswith("+more") and all(k.startswith("key.number_") for k in prefix.split("+")[:-1])


@pytest.mark.parametrize(
    ("override", "key", "swept"),
    [
        ("model.beta=0.5,2", "model.beta", True),
        ("model.beta=choice(0.5, 2)", "model.beta", True),
        ("model.latent_dim=range(4, 17, 4)", "model.latent_dim", True),
        ("likelihood=glob(gaussian_*)", "likelihood", True),
        ("model.beta=tag(log, interval(0.25, 4.0))", "model.beta", True),
        ("+model.extra=[1,2],[3,4]", "model.extra", True),  # two lists
        ("+model.extra={a:1,b:2}", "model.extra", False),  # one dict
        ("data.root='a,b'", "data.root", False),  # one quoted string
        ('data.root="a,b"', "data.root", False),
        ("model.hidden=[[1,2],[3,4]]", "model.hidden", False),  # one nested list
        ("model.hidden=[64,32]", "model.hidden", False),
        ("data.root=${oc.env:DATA,/tmp}", "data.root", False),  # an interpolation
        ("++trainer.max_epochs=3", "trainer.max_epochs", False),
        ("~callbacks.panels", "callbacks.panels", False),
        ("hydra/launcher=slurm", "hydra/launcher", False),
        ("train", "train", False),  # not an override (-cn train's value): swept by nothing
    ],
)
def test_an_override_is_swept_as_hydra_reads_it(override, key, swept):
    assert overrides.parse(override) == (key, swept)
    assert overrides.override_key(override) == key and overrides.is_swept(override) is swept


def test_a_dict_or_quoted_value_with_commas_does_not_name_the_sweep_or_its_jobs(monkeypatch):
    """A value that only looks like a sweep sets one value for every job: it names neither
    the sweep's folder nor the job's."""
    monkeypatch.setenv(sweeps.COMMAND_ENV, "")
    command = ["model.beta=0.5,2", "+model.extra={a:1,b:2}", "data.root='a,b'", "model.hidden=[[1,2],[3,4]]"]
    sweeps.record_command(["-m", *command])
    assert sweeps.sweep_name().rpartition("_")[0] == "model.beta"
    cfg = OmegaConf.create({"hydra": OmegaConf.structured(HydraConf)})
    cfg.hydra.overrides.task = [
        "model.beta=2",
        "+model.extra={a:1,b:2}",
        "data.root='a,b'",
        "model.hidden=[[1,2],[3,4]]",
    ]
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    HydraConfig.instance().set_config(cfg)
    assert sweeps.job_name() == "model.beta=2"
    # compare reads the swept keys of a sweep's command the same way
    assert overrides.swept_keys(["model.beta=0.5,2", *command[1:], "seed=range(3)"]) == ["model.beta", "seed"]


def test_the_sweep_summary_counts_job_states_and_names_the_compare_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "logs" / "sweep_x"
    for name, marker in (("a", "metrics.json"), ("b", "FAILED"), ("c", None)):
        (folder / name / ".hydra").mkdir(parents=True)
        if marker:
            (folder / name / marker).write_text("{}")
    assert sweeps.sweep_summary(folder) == (
        "Sweep folder: logs/sweep_x (3 jobs: 1 done, 1 failed, 1 not finished)\nCompare its jobs: vaelab-compare logs/sweep_x"
    )


def assert_sweep_reported(proc, folder):
    """The sweep's folder at its start, and at its end how its jobs ended and the compare command."""
    shown = folder.relative_to(folder.parents[3])  # logs/train/multiruns/<sweep>, run from tmp_path
    lines = proc.stdout.splitlines()
    assert lines.count(f"Sweep folder: {shown} (the same command again resumes it)") == 1
    assert lines[-1] == f"Compare its jobs: vaelab-compare {shown}"
    assert lines[-2].startswith(f"Sweep folder: {shown} (")
    return lines[-2]


def sweep_dir(tmp_path):
    (folder,) = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    return folder


def jobs(folder):
    return sorted(p for p in folder.iterdir() if (p / ".hydra").is_dir())


@pytest.mark.slow
def test_sweep_folders_are_named_after_overrides_and_rerunning_resumes(train, tmp_path):
    command = ["-m", *QUICK, "trainer.max_epochs=3", "likelihood.sigma=fixed,optimal", "model.beta=0.5,2"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    # interrupt the sweep for real: SIGKILL once the last job has a checkpoint
    proc = subprocess.Popen(
        [script("vaelab-train"), *command], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last_job = "likelihood.sigma=optimal,model.beta=2"
    deadline = time.time() + 300
    while time.time() < deadline and not list(
        tmp_path.glob(f"logs/train/multiruns/*/{last_job}/checkpoints/last.ckpt")
    ):
        assert proc.poll() is None, "the sweep finished before it could be interrupted"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    folder = sweep_dir(tmp_path)
    assert folder.name.startswith("likelihood.sigma+model.beta_")
    names = [p.name for p in jobs(folder)]
    assert names == [
        "likelihood.sigma=fixed,model.beta=0.5",
        "likelihood.sigma=fixed,model.beta=2",
        "likelihood.sigma=optimal,model.beta=0.5",
        "likelihood.sigma=optimal,model.beta=2",
    ]
    finished = {p.name: (p / "metrics.json").stat().st_mtime_ns for p in jobs(folder) if (p / "metrics.json").exists()}
    assert len(finished) == 3 and last_job not in finished

    proc = train(*command)  # the same command again: resume
    assert proc.stdout.count("Job already finished, reusing its result") == 3
    assert assert_sweep_reported(proc, folder).endswith("(4 jobs: 4 done)")
    assert (folder / "multirun.yaml").is_file()
    assert f"continuing from {folder / last_job / 'checkpoints' / 'last.ckpt'}" in proc.stdout
    for job in jobs(folder):
        summary = read_metrics(job)
        assert summary["epochs"] == 3 and summary["global_step"] == 9
        if job.name in finished:
            assert (job / "metrics.json").stat().st_mtime_ns == finished[job.name]
    assert [p.name for p in jobs(folder)] == names  # nothing new beside them


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_others_finish(train, tmp_path):
    # sigma = 1e-30 overflows the Gaussian log-density: the loss is infinite at once
    proc = train("-m", *QUICK, "likelihood.sigma=fixed", "likelihood.sigma_value=1e-30,0.1", check=False)
    assert proc.returncode != 0
    folder = sweep_dir(tmp_path)
    failed = folder / "likelihood.sigma_value=1e-30"
    ok = folder / "likelihood.sigma_value=0.1"
    assert "NonFiniteLossError: training stopped: the loss became" in (failed / "FAILED").read_text()
    assert not (failed / "metrics.json").exists()
    assert read_metrics(ok)["metrics"]["test/elbo"] < 0 and not (ok / "FAILED").exists()
    # the sweep ends with an error, and still says where it is and how its jobs ended
    assert assert_sweep_reported(proc, folder).endswith("(2 jobs: 1 done, 1 failed)")


@pytest.mark.slow
def test_a_failing_job_of_a_parallel_sweep_fails_alone(train, tmp_path):
    """The worker sends its job's error back pickled: an error that could not be
    rebuilt there once stopped every job not yet finished (an MNIST sweep lost 4)."""
    proc = train(
        "-m",
        *QUICK,
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        "likelihood.sigma=fixed",
        "likelihood.sigma_value=1e-30,0.1,0.2",
        check=False,
    )
    assert proc.returncode != 0
    folder = sweep_dir(tmp_path)
    assert "NonFiniteLossError" in (folder / "likelihood.sigma_value=1e-30" / "FAILED").read_text()
    for value in ("0.1", "0.2"):
        assert read_metrics(folder / f"likelihood.sigma_value={value}")["metrics"]["test/elbo"] < 0
    assert assert_sweep_reported(proc, folder).endswith("(3 jobs: 2 done, 1 failed)")


@pytest.mark.slow
def test_parallel_jobs_share_threads_and_take_their_own_device(tmp_path):
    env_devices = {"VAELAB_DEVICE_COUNT": "2"}
    os.environ.update(env_devices)
    try:
        proc = run_cli(
            "vaelab-train",
            "-m",
            "hydra/launcher=parallel",
            "hydra.launcher.n_jobs=2",
            *QUICK,
            "model.beta=0.5,2",
            cwd=tmp_path,
        )
    finally:
        for key in env_devices:
            os.environ.pop(key)
    # the same report as a sweep run one job after another (a Hydra callback, whatever the launcher)
    assert assert_sweep_reported(proc, sweep_dir(tmp_path)).endswith("(2 jobs: 2 done)")
    summaries = [read_metrics(job) for job in jobs(sweep_dir(tmp_path))]
    assert len(summaries) == 2
    cpus = os.cpu_count() or 1
    for summary in summaries:
        assert summary["parallel_jobs"] == 2 and summary["threads"] == max(1, cpus // 2)
        assert summary["devices"] in ([0], [1])
    (start_a, end_a), (start_b, end_b) = (s["devices_held"] for s in summaries)
    if start_a < end_b and start_b < end_a:  # the jobs ran at the same time
        assert summaries[0]["devices"] != summaries[1]["devices"]


@pytest.mark.slow
def test_wandb_offline_one_run_per_job_with_its_config_and_summary(train, tmp_path):
    train("-m", *QUICK, "logger=wandb", "model.beta=0.5,2")
    folder = sweep_dir(tmp_path)
    runs = {}
    for job in jobs(folder):
        (run_file,) = list(job.glob("wandb/offline-run-*/run-*.wandb"))
        runs[job.name] = read_run(run_file)
    assert set(runs) == {"model.beta=0.5", "model.beta=2"}
    for name, run in runs.items():
        beta = float(name.split("=")[1])
        assert run["name"] == name and run["group"] == folder.name
        assert run["config"]["model"]["beta"] == beta and run["config"]["likelihood"]["sigma"] == "learned_shared"
        expected = read_metrics(folder / name)["metrics"]
        assert run["summary"]["test/elbo"] == pytest.approx(expected["test/elbo"])
        assert run["summary"]["test/beta_eff"] == pytest.approx(expected["test/beta_eff"])
        assert run["exit_code"] == 0 and run["media"] >= 2  # reconstructions and samples
