"""Every way a run ends leaves the right files: runs shorter than an epoch, the last
and the best checkpoint across a resume, nothing left to train, debug=fast, moved
data at evaluation, a job folder another process holds. Each through the command line."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
from conftest import read_metrics, run_cli, run_folders

pytestmark = pytest.mark.slow

QUIET = ["trainer.enable_progress_bar=false"]


def val_elbos(run_dir: Path) -> list[float]:
    rows = csv.DictReader((run_dir / "csv" / "metrics.csv").open())
    return [float(r["val/elbo"]) for r in rows if r.get("val/elbo")]


def test_a_sweep_of_runs_shorter_than_an_epoch_validates_and_tests_where_they_stop(train, tmp_path):
    # digits: 12 training batches an epoch; 5 steps stop inside the first epoch
    proc = train("-m", "++trainer.max_steps=5", "trainer.max_epochs=1", "model.beta=0.5,1", *QUIET)
    assert "Traceback" not in proc.stderr and "KeyError" not in proc.stderr
    jobs = run_folders(tmp_path)
    assert len(jobs) == 2
    for job in jobs:
        assert not (job / "FAILED").exists()
        summary = read_metrics(job)
        assert summary["global_step"] == 5
        assert "val/elbo" in summary["metrics"] and "test/elbo" in summary["metrics"]
        best = Path(summary["best_checkpoint"])
        assert best.name == "best_epoch000.ckpt" and best.is_file()
        assert torch.load(best, weights_only=False)["global_step"] == 5
        assert torch.load(job / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 5
        assert len(val_elbos(job)) == 1  # the validation where training stopped, logged once


def test_a_ddp_run_shorter_than_an_epoch_validates_where_it_stops(train, tmp_path):
    train("trainer=ddp_cpu", "trainer.devices=2", "++trainer.max_steps=4", "trainer.max_epochs=1", *QUIET)
    (run,) = run_folders(tmp_path)
    summary = read_metrics(run)
    assert summary["world_size"] == 2 and summary["global_step"] == 4
    assert summary["best_checkpoint"] and Path(summary["best_checkpoint"]).is_file()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4


# a setting whose validation ELBO peaks before the last epoch on digits (seed 42):
# epoch 12 is best of 15, so the last state and the best state differ
PEAKING = ["likelihood=bernoulli", "likelihood.binarize=threshold", "model.optimizer.lr=0.01", *QUIET]


def test_last_ckpt_is_the_final_state_and_a_resume_keeps_the_best_of_the_whole_history(train, tmp_path):
    train(*PEAKING, "trainer.max_epochs=14", "hydra.run.dir=first")
    first = tmp_path / "first"
    last = torch.load(first / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == read_metrics(first)["global_step"] == 14 * 11
    assert last["epoch"] == 13

    train(*PEAKING, "trainer.max_epochs=15", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}", "hydra.run.dir=second")
    second = tmp_path / "second"
    summary = read_metrics(second)
    assert summary["global_step"] == 15 * 11
    history = val_elbos(first) + val_elbos(second)  # val/elbo of epochs 0..14
    assert len(history) == 15
    tested = Path(summary["best_checkpoint"])
    assert tested.parent == second / "checkpoints" and tested.is_file()  # copied into the new folder
    state = torch.load(tested, weights_only=False)
    assert float(state["callbacks"][next(k for k in state["callbacks"] if "val/elbo" in k)]["best_model_score"]) == (
        pytest.approx(max(history), abs=1e-4)
    )
    assert state["epoch"] == max(range(len(history)), key=history.__getitem__)


def test_resuming_with_nothing_left_to_train_says_how_to_train_longer(train, tmp_path):
    train("debug=short", "hydra.run.dir=done", *QUIET)
    ckpt = tmp_path / "done" / "checkpoints" / "last.ckpt"
    proc = train("debug=short", f"ckpt_path={ckpt}", "hydra.run.dir=again", *QUIET, check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "nothing is left to train" in last and "trainer.max_epochs=4" in last
    assert not (tmp_path / "again").exists()
    proc = train("model=conv", f"ckpt_path={ckpt}", "hydra.run.dir=other", *QUIET, check=False)
    assert proc.returncode == 2 and "holds a different model than this config builds" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "other").exists()
    train("debug=short", f"ckpt_path={ckpt}", "hydra.run.dir=longer", "trainer.max_epochs=3", *QUIET)
    assert read_metrics(tmp_path / "longer")["global_step"] == 9


def test_vaelab_eval_overrides_any_key_of_the_stored_data_config(train, tmp_path):
    from test_data import write_mnist

    write_mnist(tmp_path / "mnist", n_train=40, n_test=12)
    train(
        "data=mnist",
        f"data.root={tmp_path / 'mnist'}",
        "data.batch_size=16",
        "debug=short",
        "hydra.run.dir=run",
        *QUIET,
    )
    (tmp_path / "mnist").rename(tmp_path / "moved")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval.json"
    eval_args = [f"ckpt_path={ckpt}", "iw_samples=2", f"output_file={out}"]
    run_cli("vaelab-eval", *eval_args, f"data.root={tmp_path / 'moved'}", "data.eval_batch_size=5", cwd=tmp_path)
    assert out.is_file()
    proc = run_cli("vaelab-eval", *eval_args, f"data.rot={tmp_path / 'moved'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "data.rot is not a key of the data config stored in" in proc.stderr and "data.root" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_debug_fast_writes_no_files(train, tmp_path):
    proc = train("debug=fast", *QUIET)
    assert "nothing was saved" in proc.stdout
    assert "No best checkpoint" not in proc.stdout + proc.stderr
    written = [p for p in (tmp_path / "logs").rglob("*") if p.is_file()] if (tmp_path / "logs").exists() else []
    assert not written, written


def test_a_job_folder_another_process_holds_is_left_to_it(train, tmp_path, monkeypatch):
    """The same sweep started twice: the job the other process holds (here the test
    holds its folder's lock, as a running vaelab-train does) is left alone, without a
    FAILED mark, and the others train; run again, the sweep trains the job it left."""
    from vaelab import sweeps

    args = ["-m", "trainer.max_epochs=3,2", *QUIET]
    monkeypatch.setenv(sweeps.COMMAND_ENV, "")
    sweeps.record_command(args)
    sweep = tmp_path / "logs" / "train" / "multiruns" / sweeps.sweep_name()
    held, other = sweep / "trainer.max_epochs=3", sweep / "trainer.max_epochs=2"
    with sweeps.JobFolderLock(held):
        proc = train(*args)
    assert f"error: {held} is being trained by another process (pid {os.getpid()}" in proc.stderr
    assert not (held / "metrics.json").exists() and not (held / "FAILED").exists()
    assert len(val_elbos(other)) == 2
    proc = train(*args)
    assert "Job already finished, reusing its result" in proc.stdout
    assert len(val_elbos(held)) == 3 and not (held / "FAILED").exists()


def test_a_single_runs_record_says_how_it_ended_and_a_refused_run_leaves_it_alone(train, tmp_path):
    """run.json (vaelab.job_record) of single runs: done with what it trained; failed
    with its one-line error once training started; a run refused the folder of a
    finished one does not write over that one's record."""
    from vaelab import compare, job_record

    train("debug=short", "likelihood.sigma=fixed", "hydra.run.dir=done", *QUIET)
    record = job_record.read(tmp_path / "done")
    assert record["status"] == "done" and record["attempt"] == 1 and record["folder_lock"] is False
    assert record["run"]["likelihood"] == "gaussian" and record["run"]["sigma_value"] == 0.1
    assert record["overrides"] == ["debug=short", "likelihood.sigma=fixed", *QUIET]
    loaded = compare.load_job(tmp_path / "done")
    assert loaded["status"] == "done" and loaded["sigma"] == "fixed 0.1"
    proc = train("debug=short", "hydra.run.dir=done", *QUIET, check=False)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    assert job_record.read(tmp_path / "done") == record

    proc = train(
        "debug=short",
        "likelihood.sigma=fixed",
        "likelihood.sigma_value=1e-30",
        "hydra.run.dir=diverged",
        *QUIET,
        check=False,
    )
    assert proc.returncode == 2
    record = job_record.read(tmp_path / "diverged")
    assert record["status"] == "failed" and record["message"].startswith(
        "NonFiniteLossError: training stopped: the loss became"
    )
    loaded = compare.load_job(tmp_path / "diverged")
    assert loaded["status"] == "failed" and loaded["message"] == record["message"]
    assert loaded["likelihood"] == "gaussian" and loaded["comparable"] == "digits, integer pixel values"
