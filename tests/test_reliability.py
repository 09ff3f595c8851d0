"""A dying run loses nothing: divergence stops cleanly, checkpoints are whole, resumes are exact."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time

import pytest
import torch
from conftest import quiet_trainer, read_metrics, run_folders, script
from hydra.utils import instantiate
from lightning.fabric.utilities.cloud_io import _atomic_save
from lightning.pytorch.callbacks import ModelCheckpoint
from test_configs import composed

from vaelab.build import build_model
from vaelab.errors import NonFiniteLossError


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = composed(tmp_path=tmp_path)
    datamodule = instantiate(cfg.data)
    model = build_model(cfg, datamodule)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, monitor="val/elbo", mode="max")
    trainer = quiet_trainer(max_epochs=1, callbacks=[checkpoints])
    trainer.fit(model, datamodule=datamodule)
    last = tmp_path / "ckpt" / "last.ckpt"
    before = digest(last)

    with torch.no_grad():  # what a diverged optimiser leaves behind
        next(model.decoder.parameters()).fill_(float("nan"))
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, monitor="val/elbo", mode="max")
    trainer = quiet_trainer(max_epochs=2, callbacks=[checkpoints], num_sanity_val_steps=0)
    checkpoints.last_model_path = str(last)
    with pytest.raises(NonFiniteLossError) as error:
        trainer.fit(model, datamodule=datamodule)
    message = str(error.value)
    assert "the loss became nan at step 0 (epoch 0)" in message and str(last) in message
    assert "raise likelihood.log_sigma_min or" in message  # the default Gaussian's floor
    assert digest(last) == before  # nothing was written over it


def test_an_interrupted_save_leaves_the_previous_checkpoint_whole(tmp_path):
    """Checkpoints go through Lightning's atomic save: serialise first, then write and rename."""
    path = tmp_path / "last.ckpt"
    _atomic_save({"weights": torch.arange(10.0)}, path)
    before = digest(path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed half-way through the save")

    with pytest.raises(RuntimeError, match="half-way"):
        _atomic_save({"weights": torch.zeros(10**6), "state": Unpicklable()}, path)
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.load(path)["weights"].tolist() == list(range(10))


RESUMABLE = [
    "trainer.enable_progress_bar=false",
    "trainer.deterministic=true",
    # a digits epoch takes ~0.05 s on a quiet machine: enough epochs after the kill at
    # epoch 2 that the run cannot finish before the signal lands
    "trainer.max_epochs=20",
    "model.test_iw_samples=8",
    "callbacks.image_grids.every_n_epochs=0",
    "seed=7",
]


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(train, tmp_path):
    train(*RESUMABLE, "task_name=whole")
    (whole,) = run_folders(tmp_path, "whole")

    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [script("vaelab-train"), *RESUMABLE, "task_name=killed"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs = tmp_path / "logs" / "killed" / "runs"

    def past_epoch_two() -> bool:
        """A best checkpoint of epoch 2 or later exists, and last.ckpt was written after it
        (ModelCheckpoint saves the best, then the last, at the end of an epoch)."""
        for best in runs.glob("*/checkpoints/best_epoch*.ckpt"):
            epoch = re.fullmatch(r"best_epoch(\d+)\.ckpt", best.name)
            last = best.with_name("last.ckpt")
            try:
                if epoch and int(epoch.group(1)) >= 2 and last.stat().st_mtime_ns >= best.stat().st_mtime_ns:
                    return True
            except FileNotFoundError:  # replaced by a newer best while we looked
                continue
        return False

    deadline = time.time() + 300
    while time.time() < deadline and not past_epoch_two():
        assert proc.poll() is None, "the run finished before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (killed,) = list(runs.iterdir())
    assert not (killed / "metrics.json").exists()
    last = killed / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] >= 2

    train(*RESUMABLE, "task_name=resumed", f"ckpt_path={last}")
    (resumed,) = run_folders(tmp_path, "resumed")
    expected, got = read_metrics(whole), read_metrics(resumed)
    assert got["global_step"] == expected["global_step"]
    for name, value in expected["metrics"].items():
        if name.startswith(("test/", "val/")):
            assert got["metrics"][name] == pytest.approx(value, rel=1e-5, abs=1e-5), name


@pytest.mark.slow
def test_a_sweep_job_killed_mid_training_reads_interrupted_and_its_retry_finishes_it(tmp_path):
    """SIGKILL leaves run.json saying running; with the folder lock gone vaelab-compare
    reads the job as interrupted. The sweep run again continues it: attempt 2, done."""
    from vaelab import compare, job_record

    args = ["-m", *RESUMABLE, "model.beta=0.5,1"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [script("vaelab-train"), *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    sweeps = tmp_path / "logs" / "train" / "multiruns"
    deadline = time.time() + 300
    job = None
    while time.time() < deadline and job is None:
        assert proc.poll() is None, "the sweep finished before it could be killed"
        job = next((p.parents[1] for p in sweeps.glob("*/*/checkpoints/last.ckpt")), None)
        time.sleep(0.02)
    assert job is not None
    record = compare.load_job(job)
    assert (
        record["status"] in ("running", "started") and record["likelihood"] == "gaussian"
    )  # its process holds the lock
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert job_record.read(job)["status"] == "running" and not (job / "metrics.json").exists()
    record = compare.load_job(job)
    assert record["status"] == "interrupted" and "the sweep run again continues it" in record["message"]

    subprocess.run([script("vaelab-train"), *args], cwd=tmp_path, env=env, check=True, capture_output=True)
    record = job_record.read(job)
    assert record["status"] == "done" and record["attempt"] == 2 and record["first_started"] <= record["started"]
    assert compare.load_job(job)["status"] == "done"


def test_every_user_error_survives_pickling():
    """What a parallel sweep's worker sends back: message, type and attributes intact,
    whatever the error's __init__ takes."""
    import pickle

    from vaelab import exceptions

    errors = [
        NonFiniteLossError(float("nan"), 3, 1, "last.ckpt"),
        exceptions.BadFileError("a.ckpt", "empty"),
        exceptions.ChecksumError("http://x", "md5", "aa", "bb"),
        exceptions.MissingExtraError("optuna", "the Optuna sweeper", "optuna"),
        exceptions.ConfigError("model.beta=-1 is not allowed"),
    ]
    for error in errors:
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error) and again.__dict__ == error.__dict__
