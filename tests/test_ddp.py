"""DDP with 2 CPU processes (gloo): a single run, a grid multirun and an Optuna sweep.

Each asserts that the extra rank ran that job only: exactly one folder per job and
none stray, one W&B offline run per job with that job's config, test metrics, and
that the extra processes exited.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import yaml
from conftest import read_metrics, run_folders
from test_optuna import prunable_search, stored_study
from wandb_records import read_run

from vaelab.data import Digits, ImageDataModule
from vaelab.data.batches import TensorBatches

QUICK = ["debug=short", "trainer.enable_progress_bar=false", "logger=wandb"]
DDP = ["trainer=ddp_cpu", "trainer.devices=2"]


def test_evaluation_shards_cover_every_image_exactly_once():
    images = torch.arange(11, dtype=torch.uint8).view(11, 1, 1, 1)
    labels = torch.arange(11)
    seen = []
    for rank in range(3):
        batches = TensorBatches(images, labels, batch_size=2, shuffle=False, rank=rank, world_size=3, pad=False)
        got = [label for _, batch_labels in batches for label in batch_labels.tolist()]
        assert len(batches) == math.ceil(len(got) / 2)
        seen += got
    assert sorted(seen) == list(range(11))


def test_training_shards_are_padded_to_equal_length():
    images = torch.zeros(11, 1, 1, 1, dtype=torch.uint8)
    lengths = {
        len(list(TensorBatches(images, torch.arange(11), 2, shuffle=True, rank=r, world_size=3))) for r in range(3)
    }
    assert lengths == {2}  # 4 samples per rank (one repeated), in batches of 2


class FakeTrainer:
    """What the data module reads of its trainer."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.global_rank, self.world_size, self.current_epoch = rank, world_size, 0


def test_batch_size_is_global_and_every_process_takes_its_share():
    datamodule = ImageDataModule(Digits(), batch_size=64, eval_batch_size=100, val_fraction=0.1)
    datamodule.setup("fit")
    train_seen, val_seen = [], []
    for rank in range(2):
        datamodule.trainer = FakeTrainer(rank, 2)
        train = datamodule.train_dataloader()
        assert train.batch_size == 32 and len(train) == math.ceil(math.ceil(len(datamodule.train_images) / 2) / 32)
        train_seen.append(len(train))
        val_seen += [len(labels) for _, labels in datamodule.val_dataloader()]
    assert train_seen[0] == train_seen[1]  # equal steps on every process
    assert sum(val_seen) == len(datamodule.val_images)  # each validation image once
    datamodule.trainer = FakeTrainer(0, 3)
    with pytest.raises(ValueError, match="global batch and must divide evenly among the 3 DDP processes"):
        datamodule.train_dataloader()


def process_exited(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie is exited too (its parent has not reaped it)
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] == "Z"


def all_job_folders(root):
    """Every folder under logs/ that Hydra made for a run or a job (its .hydra/)."""
    return sorted(p.parent for p in (root / "logs").rglob(".hydra"))


def check_ddp_job(job, **config):
    summary = read_metrics(job)
    assert summary["world_size"] == 2
    assert len(summary["ddp_pids"]) == 1 and all(process_exited(pid) for pid in summary["ddp_pids"])
    assert math.isfinite(summary["metrics"]["test/elbo"]) and summary["metrics"]["test/elbo"] < 0
    (run_file,) = list((job / "wandb").glob("offline-run-*/run-*.wandb"))  # one W&B run per job
    run = read_run(run_file)
    for key, value in config.items():
        node = run["config"]
        for part in key.split("."):
            node = node[part]
        assert node == value
    assert run["summary"]["test/elbo"] == pytest.approx(summary["metrics"]["test/elbo"]) and run["exit_code"] == 0
    return summary


@pytest.mark.slow
def test_a_single_run_trains_on_two_processes(train, tmp_path):
    train(*DDP, *QUICK, "data.batch_size=64")
    (run,) = all_job_folders(tmp_path)
    assert run_folders(tmp_path) == [run]
    summary = check_ddp_job(run, **{"data.batch_size": 64})
    # 3 steps of the global batch 64 per epoch (limit_train_batches=3), 2 epochs
    assert summary["global_step"] == 6


@pytest.mark.slow
def test_a_grid_multirun_trains_each_job_with_ddp(train, tmp_path):
    proc = train("-m", *DDP, *QUICK, "model.beta=0.5,2")
    assert proc.stdout.count("Launching 2 jobs") + proc.stderr.count("Launching 2 jobs") == 1
    jobs = all_job_folders(tmp_path)
    assert [job.name for job in jobs] == ["model.beta=0.5", "model.beta=2"]
    assert (
        len({job.parent for job in jobs}) == 1 and len(list((tmp_path / "logs" / "train" / "multiruns").iterdir())) == 1
    )
    assert not (tmp_path / "logs" / "train" / "runs").exists()
    pids = [check_ddp_job(job, **{"model.beta": beta})["ddp_pids"][0] for job, beta in zip(jobs, [0.5, 2.0])]
    assert pids[0] != pids[1], "each job starts processes of its own"


@pytest.mark.slow
def test_an_optuna_sweep_trains_each_trial_with_ddp(train, tmp_path):
    train("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", *DDP, *QUICK)
    jobs = all_job_folders(tmp_path)
    assert len(jobs) == 2 and len({job.parent for job in jobs}) == 1
    values = []
    for job in jobs:
        beta = next(
            float(o.split("=")[1])
            for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
            if o.startswith("model.beta=")
        )
        values.append(-check_ddp_job(job, **{"model.beta": beta})["metrics"]["val/elbo"])
    results = yaml.safe_load((jobs[0].parent / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(values))


@pytest.mark.slow
def test_a_pruned_ddp_trial_stops_on_every_rank(train, tmp_path):
    """Rank zero asks the pruner and broadcasts the answer: both ranks of the hopeless trial
    stop after its first epoch (a rank that went on would hang the job's collectives)."""
    pytest.importorskip("optuna")
    space = prunable_search(tmp_path)
    proc = train(
        "-m",
        *space,
        *DDP,
        *QUICK,
        "likelihood=gaussian_fixed",
        "hydra.sweeper.n_trials=2",
        timeout=400,
    )
    (folder,) = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    states = {t.params["likelihood.sigma_value"]: t.state.name for t in stored_study(folder).trials}
    assert states == {0.1: "COMPLETE", 0.001: "PRUNED"}
    assert proc.stdout.count("pruned at epoch 0") == 1  # said once, by rank zero


@pytest.mark.slow
def test_a_diverging_ddp_job_fails_alone_and_its_processes_end(train, tmp_path):
    # sigma = 1e-30 overflows the Gaussian log-density on every rank at the first step
    proc = train("-m", *DDP, *QUICK, "likelihood.sigma=fixed", "likelihood.sigma_value=1e-30,0.1", check=False)
    assert proc.returncode != 0
    jobs = {job.name: job for job in all_job_folders(tmp_path)}
    assert set(jobs) == {"likelihood.sigma_value=1e-30", "likelihood.sigma_value=0.1"}
    assert "NonFiniteLossError" in (jobs["likelihood.sigma_value=1e-30"] / "FAILED").read_text()
    check_ddp_job(jobs["likelihood.sigma_value=0.1"], **{"likelihood.sigma_value": 0.1})
    assert "Started 1 extra DDP process" in proc.stdout + proc.stderr
