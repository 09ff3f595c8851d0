"""vaelab-compare: reading a sweep's jobs, the table, the plots, the notebook.

The fast tests write job folders in the real formats (what vaelab-train and Hydra
write); the slow one runs a real sweep through the command line.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_cli
from omegaconf import OmegaConf
from PIL import Image

from vaelab import compare, job_record, locks

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "compare_sweep.ipynb"
PLOTS = ("rate_distortion.png", "elbo_nll_vs_beta.png", "montage.png")


# -- job folders in the formats vaelab-train writes -------------------------------------
#: likelihood classes beyond the Gaussian and the Bernoulli, by the name their runs state
LIKELIHOOD_CLASSES = {
    "gaussian_low_rank": "GaussianLowRankLikelihood",
    "discretized_logistic": "DiscretizedLogisticLikelihood",
    "discretized_logistic_mixture": "DiscretizedLogisticMixtureLikelihood",
    "continuous_bernoulli": "ContinuousBernoulliLikelihood",
}
#: what each states it scores (its data_model)
DATA_MODELS = {
    "gaussian": "dequantised",
    "bernoulli": "binarised (dynamic)",
    "gaussian_low_rank": "dequantised",
    "discretized_logistic": "discrete",
    "discretized_logistic_mixture": "discrete",
    "continuous_bernoulli": "dequantised",
}


def composed_config(
    likelihood: str = "gaussian",
    sigma: str = "fixed",
    beta: float = 1.0,
    sigma_value: float = 0.1,
    latent_dim: int = 16,
    seed: int = 42,
) -> dict:
    if likelihood == "gaussian":
        lik = {
            "_target_": "vaelab.model.likelihoods.GaussianLikelihood",
            "sigma": sigma,
            "sigma_value": sigma_value,
            "sigma_init": 0.1,
            "log_sigma_min": -6.0,
            "log_sigma_max": 2.0,
            "optimal_shape": "shared",
            "dequantize": True,
        }
    elif likelihood == "bernoulli":
        lik = {"_target_": "vaelab.model.likelihoods.BernoulliLikelihood", "binarize": "dynamic"}
    else:  # the likelihoods of issue 15, by the class vaelab-train names them after
        lik = {"_target_": f"vaelab.model.likelihoods.{LIKELIHOOD_CLASSES[likelihood]}"}
    return {
        "task_name": "train",
        "seed": seed,
        "test": True,
        "optimized_metric": "val/elbo",
        "data": {"_target_": "vaelab.data.ImageDataModule", "batch_size": 128, "seed": "${seed}"},
        "model": {"_target_": "vaelab.model.vae.VAE", "latent_dim": latent_dim, "beta": beta, "test_iw_samples": 4},
        "likelihood": lik,
        "paths": {"output_dir": "${hydra:runtime.output_dir}"},
    }


def write_png(path: Path, size: tuple[int, int], mode: str = "L", seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)


def write_csv_log(path: Path, val_elbos: list[float], beta_eff: float | None = None) -> None:
    """Lightning CSVLogger rows: per-step train rows, then one val row per epoch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = ["epoch", "step", "train/elbo", "train/loss", "val/elbo", "val/kl", "val/beta_eff"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, names)
        writer.writeheader()
        step = 0
        for epoch, val in enumerate(val_elbos):
            for _ in range(2):
                writer.writerow({"epoch": epoch, "step": step, "train/elbo": val - 5, "train/loss": 5 - val})
                step += 1
            writer.writerow(
                {
                    "epoch": epoch,
                    "step": step - 1,
                    "val/elbo": val,
                    "val/kl": 1.5,
                    "val/beta_eff": "" if beta_eff is None else beta_eff,
                }
            )


#: folder locks the fake running jobs hold, as a running vaelab-train holds its job's
HELD: list = []


@pytest.fixture(autouse=True)
def release_held_locks():
    yield
    while HELD:
        locks.unlock(HELD.pop())


def hold_folder_lock(job: Path) -> None:
    """Hold ``job``'s folder lock for the rest of the test, as its running process would."""
    handle = locks.try_lock(job / ".lock")
    assert handle is not None
    HELD.append(handle)


def write_run_record(
    job: Path,
    overrides: list[str],
    status: str,
    run: dict | None,
    *,
    message: str = "",
    attempt: int = 1,
    folder_lock: bool = True,
    pid: int | None = None,
    host: str | None = None,
) -> None:
    """run.json as vaelab-train writes it (vaelab.job_record)."""
    ended = None if status == "running" else "2026-11-21T09:20:00+00:00"
    record = {
        "status": status,
        "message": message,
        "attempt": attempt,
        "started": "2026-11-21T09:13:52+00:00",
        "first_started": "2026-11-21T09:00:00+00:00" if attempt > 1 else "2026-11-21T09:13:52+00:00",
        "ended": ended,
        "updated": ended or "2026-11-21T09:14:00+00:00",
        "pid": pid or 4242,
        "host": host or os.uname().nodename,
        "folder_lock": folder_lock,
        "overrides": overrides,
        "run": run,
    }
    (job / job_record.NAME).write_text(json.dumps(record, indent=2) + "\n")


def make_job(
    sweep: Path,
    name: str,
    overrides: list[str],
    *,
    status: str = "done",
    likelihood: str = "gaussian",
    sigma: str = "fixed",
    beta: float = 1.0,
    sigma_value: float = 0.1,
    sigma_mean: float | None = None,
    latent_dim: int = 16,
    nll: float | None = 100.0,
    elbo: float = -110.0,
    kl: float = 5.0,
    images: bool = True,
    sigma_map: bool = False,
    val_elbos: tuple[float, ...] = (-130.0, -120.0, -115.0),
    seed: int = 42,
    active_units: float | None = None,
    data_model: str | None = None,
    states: dict | None = None,
    extra_metrics: dict | None = None,
) -> Path:
    """A sweep's job folder as vaelab-train leaves it: done, running (csv rows, its
    folder lock held), started (running, nothing logged yet), failed (its record says
    why; FAILED marker), failed_log (its record and a log ending in the traceback), or
    interrupted (its record says running, but no process holds its folder lock).
    ``data_model`` overrides what the likelihood states it scores, ``states`` adds to
    what run.json states (a rank...), ``extra_metrics`` to metrics.json (FID...)."""
    job = sweep / name
    hydra_dir = job / ".hydra"
    hydra_dir.mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.create(composed_config(likelihood, sigma, beta, sigma_value, latent_dim, seed)),
        hydra_dir / "config.yaml",
    )
    OmegaConf.save(OmegaConf.create(overrides), hydra_dir / "overrides.yaml")
    choices = {"data": "digits", "model": "mlp", "likelihood": likelihood, "debug": "short"}
    (hydra_dir / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": choices}, "overrides": {"task": overrides}}})
    )
    (job / "train.log").write_text("")
    gaussian = likelihood == "gaussian"
    sigma_mean = sigma_value if sigma_mean is None else sigma_mean
    beta_eff = 2 * sigma_mean**2 * beta if gaussian else None
    # what vaelab-train states about the run: in metrics.json, and in run.json with the likelihood's settings
    stated = {
        "likelihood": likelihood,
        "sigma": sigma if gaussian else None,
        "data": "digits",
        "data_model": data_model or DATA_MODELS[likelihood],
        "beta": beta,
        "seed": seed,
        "init_output_bias": False,
    }
    run = {
        **stated,
        "sigma_value": sigma_value if gaussian and sigma == "fixed" else None,
        "optimal_shape": "shared" if gaussian and sigma == "optimal" else None,
        "binarize": "dynamic" if likelihood == "bernoulli" else None,
        **(states or {}),
    }
    if status in ("running", "started"):
        hold_folder_lock(job)
    if status == "started":
        write_run_record(job, overrides, "running", run)
        return job
    write_csv_log(job / "csv" / "metrics.csv", list(val_elbos), beta_eff)
    if status == "done":
        metrics = {
            "val/elbo": val_elbos[-1],
            "test/elbo": elbo,
            "test/recon": elbo + kl,
            "test/kl": kl,
            "test/bpd": -elbo / 44.0,
        }
        if nll is not None:
            metrics |= {"test/nll_iw": nll, "test/bpd_iw": nll / 44.0}
        if gaussian:
            metrics |= {"test/beta_eff": beta_eff, "test/sigma_mean": sigma_mean, "val/beta_eff": beta_eff}
        if active_units is not None:
            metrics["test/active_units"] = active_units
        metrics |= extra_metrics or {}
        summary = {
            "metrics": metrics,
            "best_checkpoint": str(job / "checkpoints" / "best_epoch002.ckpt"),
            "epochs": len(val_elbos),
            "global_step": 6,
        }
        summary["run"] = stated
        (job / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_run_record(job, overrides, "done", run)
        if images:
            write_png(job / "images" / "samples.png", (457, 457), seed=len(name))
            write_png(job / "images" / "reconstructions.png", (457, 457))
            if sigma_map:
                write_png(job / "images" / "sigma_map.png", (500, 300), "RGB")
    elif status in ("running", "interrupted"):
        write_run_record(job, overrides, "running", run)
    elif status == "failed":
        error = "NonFiniteLossError: training stopped: the loss became nan at step 4"
        (job / "FAILED").write_text(f"{error}\n\nTraceback (most recent call last):\n ...\n")
        write_run_record(job, overrides, "failed", run, message=error)
    elif status == "failed_log":
        (job / "train.log").write_text(
            "[2026-11-21 09:13:52,734][vaelab.train][INFO] - starting\n"
            "Traceback (most recent call last):\n"
            '  File "train.py", line 3, in <module>\n'
            "    raise RuntimeError('CUDA out of memory')\n"
            "RuntimeError: CUDA out of memory\n"
        )
        write_run_record(job, overrides, "failed", run, message="RuntimeError: CUDA out of memory")
    return job


def multirun_yaml(sweep: Path, overrides: list[str], params: dict[str, str] | None = None) -> None:
    hydra = {"overrides": {"task": overrides}, "sweeper": {"params": params}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra}))


@pytest.fixture
def sweep(tmp_path) -> Path:
    """2 sigma modes x 2 betas, done, in folders named neither by number nor in order."""
    root = tmp_path / "sweep"
    root.mkdir()
    multirun_yaml(root, ["debug=short", "likelihood.sigma=fixed,learned_shared", "model.beta=0.5,2"])
    make_job(
        root,
        "sigma=fixed,beta=0.5",
        ["debug=short", "likelihood.sigma=fixed", "model.beta=0.5"],
        beta=0.5,
        nll=120.0,
        elbo=-125.0,
    )
    make_job(
        root,
        "sigma=fixed,beta=2",
        ["debug=short", "likelihood.sigma=fixed", "model.beta=2"],
        beta=2.0,
        nll=118.0,
        elbo=-124.0,
    )
    make_job(
        root,
        "x/sigma=learned,beta=0.5",
        ["debug=short", "likelihood.sigma=learned_shared", "model.beta=0.5"],
        sigma="learned_shared",
        sigma_mean=0.2,
        beta=0.5,
        nll=60.0,
        elbo=-65.0,
        kl=3.0,
    )
    make_job(
        root,
        "x/sigma=learned,beta=2",
        ["debug=short", "likelihood.sigma=learned_shared", "model.beta=2"],
        sigma="learned_shared",
        sigma_mean=0.3,
        beta=2.0,
        nll=70.0,
        elbo=-72.0,
        kl=1.0,
    )
    return root


def column(table: compare.Table, key: str) -> list:
    return [row.get(key) for row in table.rows]


# -- finding and reading jobs ---------------------------------------------------------
def test_jobs_are_found_by_their_config_not_their_folder_name(sweep):
    (sweep / "notes").mkdir()  # no .hydra/config.yaml: not a job
    (sweep / "compare").mkdir()
    (sweep / "job10").mkdir()
    make_job(sweep, "job10/inner", ["model.beta=1"])
    make_job(sweep, "job2", ["model.beta=1"])
    jobs = [p.relative_to(sweep).as_posix() for p in compare.find_jobs(sweep)]
    assert jobs == [
        "job2",
        "job10/inner",
        "sigma=fixed,beta=0.5",
        "sigma=fixed,beta=2",
        "x/sigma=learned,beta=0.5",
        "x/sigma=learned,beta=2",
    ]
    # a single run folder is a sweep of one job
    assert compare.find_jobs(sweep / "job2") == [sweep / "job2"]


def test_a_job_record_is_flat_and_holds_its_numbers(sweep):
    record = compare.load_job(sweep / "x" / "sigma=learned,beta=2", sweep)
    assert record["job"] == "x/sigma=learned,beta=2" and record["status"] == "done"
    assert record["likelihood"] == "gaussian" and record["sigma"] == "learned_shared" and record["beta"] == 2.0
    assert record["test/elbo"] == -72.0 and record["test/kl"] == 1.0 and record["nll"] == 70.0
    assert record["nll_source"] == "test/nll_iw" and record["bpd"] == pytest.approx(70 / 44)
    assert record["beta_eff"] == pytest.approx(2 * 0.3**2 * 2)
    assert record["val_elbo_best"] == -115.0 and record["epochs"] == 3
    assert record["overrides"] == {"debug": "short", "likelihood.sigma": "learned_shared", "model.beta": "2"}
    assert record["has_samples"] and not record["has_sigma_map"]
    nested = {k for k, v in record.items() if isinstance(v, (dict, list))}
    assert nested == set(compare.NESTED)


# -- the table ------------------------------------------------------------------------
def test_rows_are_sorted_by_test_nll_falling_back_to_minus_elbo(sweep):
    make_job(sweep, "no_iw", ["debug=short", "likelihood.sigma=fixed", "model.beta=1"], nll=None, elbo=-90.0)
    table = compare.build_table(compare.load_sweep(sweep))
    assert column(table, "job") == [
        "x/sigma=learned,beta=0.5",
        "x/sigma=learned,beta=2",
        "no_iw",
        "sigma=fixed,beta=2",
        "sigma=fixed,beta=0.5",
    ]
    assert column(table, "nll") == [60.0, 70.0, 90.0, 118.0, 120.0]
    assert "| 90.00* |" in table.markdown() and "-test/elbo is shown" in table.markdown()
    # another metric, and its direction: ELBOs sort highest first
    by_elbo = compare.build_table(compare.load_sweep(sweep), metric="test/elbo")
    assert column(by_elbo, "test/elbo") == sorted(column(by_elbo, "test/elbo"), reverse=True)
    by_kl = compare.build_table(compare.load_sweep(sweep), metric="test/kl")
    assert column(by_kl, "test/kl") == sorted(column(by_kl, "test/kl"))


def test_swept_keys_are_columns_and_shared_overrides_are_noted(sweep):
    # a job that lacks an override another job has: its value comes from its config
    make_job(
        sweep,
        "wide",
        ["debug=short", "likelihood.sigma=fixed", "model.beta=1", "model.latent_dim=32"],
        latent_dim=32,
        nll=200.0,
    )
    table = compare.build_table(compare.load_sweep(sweep))
    assert table.swept == ["likelihood.sigma", "model.beta", "model.latent_dim"]
    assert table.common == {"debug": "short"}
    headers = [c.header for c in table.columns]
    # each quantity once: the sigma mode is in `sigma` and model.beta is `beta`, so only
    # the latent size, which no standard column shows, gets a column of its own
    assert headers[:6] == ["job", "status", "model.latent_dim", "likelihood", "sigma", "beta"]
    assert len(headers) == len(set(headers)) and "model.beta" not in headers and "likelihood.sigma" not in headers
    rows = {row["job"]: row for row in table.rows}
    assert rows["wide"]["set:model.latent_dim"] == "32" and rows["sigma=fixed,beta=2"]["set:model.latent_dim"] == "16"
    assert rows["x/sigma=learned,beta=2"]["set:likelihood.sigma"] == "learned_shared"
    assert "Overrides shared by every job: `debug=short`" in table.markdown()
    out = table.write_csv(sweep / "t.csv")
    read = list(csv.DictReader(out.open()))
    assert read[-1]["model.latent_dim"] == "32" and read[0]["sigma"] == "learned_shared" and read[0]["beta"] == "0.5"
    assert "model.beta" not in read[0] and "likelihood.sigma" not in read[0]


def test_a_swept_key_keeps_its_column_where_the_standard_columns_do_not_tell_it(tmp_path):
    """A sigma value swept beside a learned sigma (where the sigma column does not show
    it), and two likelihood configs whose jobs look alike in likelihood and sigma."""
    root = tmp_path / "mixed"
    root.mkdir()
    multirun_yaml(root, ["likelihood.sigma=fixed,learned_shared", "likelihood.sigma_value=0.1,0.2"])
    for sigma in ("fixed", "learned_shared"):
        for value in (0.1, 0.2):
            make_job(
                root,
                f"{sigma},{value}",
                [f"likelihood.sigma={sigma}", f"likelihood.sigma_value={value}"],
                sigma=sigma,
                sigma_value=value,
            )
    headers = [c.header for c in compare.build_table(compare.load_sweep(root)).columns]
    assert "likelihood.sigma_value" in headers and "likelihood.sigma" not in headers

    root = tmp_path / "own_configs"
    root.mkdir()
    make_job(root, "a", ["likelihood=gaussian", "model.beta=1"], sigma="learned_shared")
    make_job(root, "b", ["likelihood=my_gaussian", "model.beta=1"], sigma="learned_shared")
    headers = [c.header for c in compare.build_table(compare.load_sweep(root)).columns]
    assert "likelihood (override)" in headers and headers.count("likelihood") == 1


def test_a_key_the_command_sweeps_is_a_column_even_while_one_job_exists(tmp_path):
    root = tmp_path / "early"
    root.mkdir()
    multirun_yaml(root, ["debug=short", "model.beta=0.5,1,2"])
    make_job(root, "model.beta=0.5", ["debug=short", "model.beta=0.5"], status="running")
    table = compare.build_table(compare.load_sweep(root))
    assert table.swept == ["model.beta"] and table.common == {"debug": "short"}


def test_keys_an_experiment_sweeps_count_too_and_a_group_choice_is_its_own_column(tmp_path):
    """experiment=beta_sigma_grid sweeps through hydra.sweeper.params, over named
    likelihood choices (gaussian_fixed, ..., bernoulli)."""
    root = tmp_path / "grid"
    root.mkdir()
    multirun_yaml(
        root, ["experiment=beta_sigma_grid"], {"likelihood": "gaussian_fixed,bernoulli", "model.beta": "0.5,2"}
    )
    make_job(
        root,
        "likelihood=gaussian_fixed,model.beta=0.5",
        ["experiment=beta_sigma_grid", "likelihood=gaussian_fixed", "model.beta=0.5"],
        beta=0.5,
    )
    table = compare.build_table(compare.load_sweep(root))
    assert table.swept == ["likelihood", "model.beta"] and table.common == {"experiment": "beta_sigma_grid"}
    headers = [c.header for c in table.columns]
    # likelihood=gaussian_fixed is the likelihood and sigma columns, model.beta is beta: each shown once
    assert headers[2:5] == ["likelihood", "sigma", "beta"] and len(headers) == len(set(headers))
    assert table.rows[0]["set:likelihood"] == "gaussian_fixed" and table.rows[0]["likelihood"] == "gaussian"
    header = next(csv.reader(table.write_csv(tmp_path / "t.csv").open()))
    assert len(header) == len(set(header))


def test_beta_eff_sits_next_to_beta_and_shows_equal_objectives(tmp_path):
    root = tmp_path / "objectives"
    root.mkdir()
    # 2 * 0.1^2 * 2 == 2 * 0.2^2 * 0.5 == 0.04: one objective, two settings
    make_job(root, "a", ["likelihood.sigma_value=0.1", "model.beta=2"], beta=2.0, sigma_value=0.1, nll=110.0)
    make_job(root, "b", ["likelihood.sigma_value=0.2", "model.beta=0.5"], beta=0.5, sigma_value=0.2, nll=90.0)
    make_job(root, "c", ["likelihood=bernoulli", "model.beta=1"], likelihood="bernoulli", beta=1.0, nll=80.0)
    table = compare.build_table(compare.load_sweep(root))
    keys = [c.key for c in table.columns]
    assert keys.index("beta_eff") == keys.index("beta") + 1
    rows = {row["job"]: row for row in table.rows}
    assert rows["a"]["beta_eff"] == pytest.approx(0.04) and rows["b"]["beta_eff"] == pytest.approx(0.04)
    assert rows["c"]["beta_eff"] is None and rows["c"]["sigma"] == "" and rows["c"]["likelihood"] == "bernoulli"
    assert rows["a"]["sigma"] == "fixed 0.1" and rows["b"]["sigma"] == "fixed 0.2"
    lines = {line.split("|")[1].strip(): line for line in table.markdown().splitlines() if line.startswith("| ")}
    assert "| 2 | 0.04 |" in lines["a"] and "| 0.5 | 0.04 |" in lines["b"]
    assert "| bernoulli |  | 1 |  |" in lines["c"]


def test_running_started_and_failed_jobs_are_listed_last_with_partial_numbers(sweep):
    make_job(
        sweep,
        "running",
        ["debug=short", "likelihood.sigma=fixed", "model.beta=1"],
        status="running",
        val_elbos=(-140.0, -135.0),
    )
    make_job(
        sweep,
        "crashed",
        ["debug=short", "likelihood.sigma=fixed", "model.beta=4"],
        status="failed_log",
        val_elbos=(-150.0,),
    )
    make_job(
        sweep,
        "diverged",
        ["debug=short", "likelihood.sigma=fixed", "model.beta=8"],
        status="failed",
        val_elbos=(-160.0,),
    )
    make_job(sweep, "waiting", ["debug=short", "likelihood.sigma=fixed", "model.beta=16"], status="started")
    records = compare.load_sweep(sweep)
    table = compare.build_table(records)
    assert column(table, "status") == ["done"] * 4 + ["running", "started", "failed", "failed"]
    assert column(table, "job")[4:] == ["running", "waiting", "crashed", "diverged"]
    rows = {row["job"]: row for row in table.rows}
    assert (
        rows["running"]["val_elbo_best"] == -135.0 and rows["running"]["epochs"] == 2 and rows["running"]["nll"] is None
    )
    assert rows["running"]["beta_eff"] == pytest.approx(0.02)  # last logged val/beta_eff
    assert rows["crashed"]["message"] == "RuntimeError: CUDA out of memory"
    assert rows["diverged"]["message"].startswith("NonFiniteLossError: training stopped")
    assert table.counts == {"done": 4, "running": 1, "started": 1, "interrupted": 0, "failed": 2, "unknown": 0}
    text = table.markdown()
    assert "8 jobs: 4 done, 1 running, 1 started, 2 failed" in text
    assert (
        "`diverged` (failed): NonFiniteLossError" in text
        and "`crashed` (failed): RuntimeError: CUDA out of memory" in text
    )


def test_a_failure_of_an_earlier_try_does_not_make_a_finished_job_failed(sweep):
    """A FAILED marker an earlier try left beside the result of a later, successful one,
    newer or older: the job's record says done. A retry that failed (no result: a job
    with metrics.json is not run again) says so in its record."""
    job = sweep / "sigma=fixed,beta=2"
    marker = job / "FAILED"
    marker.write_text("RuntimeError: killed\n")
    old = time.time() - 600
    os.utime(marker, (old, old))
    assert compare.load_job(job, sweep)["status"] == "done"
    os.utime(marker, None)  # newer than metrics.json: still the earlier try's
    assert compare.load_job(job, sweep)["status"] == "done"
    (job / "metrics.json").unlink()
    write_run_record(job, [], "failed", None, message="RuntimeError: killed", attempt=2)
    assert compare.load_job(job, sweep)["status"] == "failed"


def test_a_failed_jobs_message_comes_from_its_record(sweep):
    job = make_job(sweep, "oom", ["debug=short", "model.beta=3"], status="failed")
    (job / "FAILED").write_text("something else\n")  # the record, not the marker, says why
    record = compare.load_job(job, sweep)
    assert (
        record["status"] == "failed"
        and record["message"] == "NonFiniteLossError: training stopped: the loss became nan at step 4"
    )
    # what it trained is stated although it never finished
    assert (
        record["likelihood"] == "gaussian"
        and record["sigma"] == "fixed 0.1"
        and record["comparable"] == "digits, integer pixel values"
    )


def test_a_job_killed_while_training_reads_interrupted_not_running(sweep, tmp_path):
    """SIGKILL leaves 'running' in run.json: the job's folder lock, which the OS let go
    of, tells that no process trains it any more; a single run's pid tells the same."""
    job = make_job(
        sweep,
        "killed",
        ["debug=short", "likelihood.sigma=fixed", "model.beta=4"],
        status="interrupted",
        val_elbos=(-140.0,),
    )
    record = compare.load_job(job, sweep)
    assert record["status"] == "interrupted" and "the sweep run again continues it" in record["message"]
    assert record["val_elbo_best"] == -140.0 and record["nll"] is None  # the numbers logged so far
    table = compare.build_table(compare.load_sweep(sweep))
    assert table.counts["interrupted"] == 1 and table.counts["running"] == 0
    assert column(table, "job")[-1] == "killed" and "5 jobs: 4 done, 1 interrupted" in table.markdown()
    hold_folder_lock(job)  # a process trains it again
    assert compare.load_job(job, sweep)["status"] == "running"

    single = make_job(tmp_path / "runs", "one", ["debug=short"], status="interrupted")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_run_record(single, ["debug=short"], "running", None, folder_lock=False, pid=gone.pid)
    record = compare.load_job(single)
    assert record["status"] == "interrupted" and f"pid {gone.pid}" in record["message"]
    write_run_record(single, ["debug=short"], "running", None, folder_lock=False, pid=os.getpid())
    assert compare.load_job(single)["status"] == "running"
    write_run_record(single, ["debug=short"], "running", None, folder_lock=False, host="elsewhere")
    record = compare.load_job(single)
    assert record["status"] == "running" and "cannot be told" in record["message"]


def test_a_retried_job_that_failed_before_reads_running(sweep):
    """The records vaelab-train writes across tries of one sweep job: failed, then a
    sweep run again starts it (attempt 2), then it finishes."""
    job = make_job(sweep, "retried", ["debug=short", "likelihood.sigma=fixed", "model.beta=5"], status="started")
    (job / job_record.NAME).unlink()
    job_record.fail(job, RuntimeError("the node went away"), sweep_job=True)
    record = compare.load_job(job, sweep)
    assert record["status"] == "failed" and record["message"] == "RuntimeError: the node went away"
    job_record.start(job, folder_lock=True)
    write_csv_log(job / "csv" / "metrics.csv", [-150.0])
    record = compare.load_job(job, sweep)
    assert record["status"] == "running" and record["message"] == "" and record["val_elbo_best"] == -150.0
    assert job_record.read(job)["attempt"] == 2
    job_record.state_run(
        job,
        {
            "likelihood": "bernoulli",
            "sigma": None,
            "binarize": "static",
            "data": "digits",
            "data_model": "binarised (static)",
        },
    )
    record = compare.load_job(job, sweep)
    assert record["likelihood"] == "bernoulli" and record["decoder"] == "Bernoulli, binarize=static"
    assert record["comparable"] == "digits, binarised (static)"
    (job / "metrics.json").write_text(json.dumps({"metrics": {"test/elbo": -80.0}}))
    job_record.finish(job)
    written = job_record.read(job)
    assert written["status"] == "done" and written["attempt"] == 2 and written["ended"]
    assert compare.load_job(job, sweep)["status"] == "done"


def test_a_job_folder_without_a_record_is_unknown_unless_it_says_more(tmp_path):
    """Folders an older vaelab wrote (no run.json): metrics.json is done, FAILED is
    failed; the likelihood is the class the config builds."""
    root = tmp_path / "old"
    done = make_job(root, "done", ["model.beta=1"])
    other = make_job(root, "other", ["model.beta=2"], status="interrupted")
    failed = make_job(root, "failed", ["model.beta=3"], status="failed")
    for job in (done, other, failed):
        (job / job_record.NAME).unlink()
    records = {r["job"]: r for r in compare.load_sweep(root)}
    assert (
        records["done"]["status"] == "done" and records["done"]["sigma"] == "fixed"
    )  # metrics.json states the mode only
    assert records["other"]["status"] == "unknown" and records["other"]["likelihood"] == "gaussian"
    assert records["failed"]["status"] == "failed" and records["failed"]["message"].startswith("NonFiniteLossError")


def test_damaged_files_leave_blanks_not_crashes(sweep):
    job = sweep / "sigma=fixed,beta=2"
    (job / "metrics.json").write_text('{"metrics": {"test/el')  # caught half-written
    (job / "csv" / "metrics.csv").write_text("epoch,step,val/elbo\n0,2,abc\n")
    (job / "images" / "samples.png").write_bytes(b"not a png")
    # caught writing metrics.json: its record still says running, its process holds the folder
    write_run_record(job, [], "running", None)
    hold_folder_lock(job)
    result = compare.compare(sweep)
    row = next(r for r in result.table.rows if r["job"] == "sigma=fixed,beta=2")
    assert row["status"] == "running" and "metrics.json unreadable" in row["message"]
    assert {p.name for p in result.written} == {"table.md", "table.csv", *PLOTS}


# -- the command and its files --------------------------------------------------------
def assert_image(path: Path, min_side: int = 300, max_side: int = 3000) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert image.format == "PNG"
    assert min_side <= width <= max_side and min_side <= height <= max_side, (path.name, width, height)
    return width, height


def test_the_command_writes_the_table_and_readable_plots(sweep, capsys):
    make_job(sweep, "bern", ["debug=short", "likelihood=bernoulli", "model.beta=1"], likelihood="bernoulli", nll=80.0)
    make_job(
        sweep,
        "pix",
        ["debug=short", "likelihood.sigma=learned_pixel", "model.beta=1"],
        sigma="learned_pixel",
        sigma_map=True,
        nll=50.0,
    )
    assert compare.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    folder = sweep / "compare"
    for name in ("table.md", "table.csv", *PLOTS):
        assert str(folder / name) in out
    assert "| job | status |" in out and "6 jobs: 6 done" in out
    assert (folder / "table.md").read_text().count("\n| ") == 7  # header + 6 rows
    rows = list(csv.DictReader((folder / "table.csv").open()))
    assert [r["job"] for r in rows][:2] == ["pix", "x/sigma=learned,beta=0.5"]
    for name in PLOTS:
        assert_image(folder / name)
    width, height = assert_image(folder / "elbo_nll_vs_beta.png")
    assert width > height  # two panels side by side


def test_out_and_metric_options(sweep, tmp_path, capsys):
    out = tmp_path / "elsewhere"
    assert compare.main([str(sweep), "--out", str(out), "--metric", "test/bpd"]) == 0
    assert not (sweep / "compare").exists() and (out / "table.md").is_file()
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert "test/bpd" in rows[0] and [float(r["test/bpd"]) for r in rows] == sorted(float(r["test/bpd"]) for r in rows)
    assert "Ranked by test/bpd, lower is better" in capsys.readouterr().out


def test_a_sweep_with_no_finished_job_still_writes_its_table(tmp_path, capsys):
    root = tmp_path / "young"
    make_job(root, "0", ["model.beta=1"], status="running")
    make_job(root, "1", ["model.beta=2"], status="failed")
    assert compare.main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "No finished jobs yet (1 running, 1 failed)" in out
    assert (root / "compare" / "table.md").is_file() and (root / "compare" / "table.csv").is_file()
    assert not any((root / "compare" / name).exists() for name in PLOTS)
    assert "No job has finished yet" in (root / "compare" / "table.md").read_text()


def test_a_folder_without_jobs_is_an_error(tmp_path, capsys):
    assert compare.main([str(tmp_path)]) == 2
    assert "no jobs under" in capsys.readouterr().err
    assert compare.main([str(tmp_path / "missing")]) == 2


def test_the_montage_of_many_jobs_is_a_grid_of_modest_size(tmp_path):
    root = tmp_path / "big"
    for i in range(24):
        sigma = ("fixed", "learned_pixel", "optimal")[i % 3]
        make_job(
            root,
            f"job{i}",
            [f"likelihood.sigma={sigma}", f"model.beta={i}"],
            sigma=sigma,
            beta=float(i + 1),
            sigma_map=sigma == "learned_pixel",
            nll=100.0 - i,
            kl=1.0 + i,
        )
    records = compare.sort_records(compare.load_sweep(root))
    fig = compare.plot_montage(records, root / "montage.png")
    assert len([ax for ax in fig.axes if ax.images]) == 24
    width, height = assert_image(root / "montage.png", min_side=800, max_side=2600)
    assert 0.5 < width / height < 3
    # the rate-distortion plot has one line per sigma mode, one labelled point per beta
    fig = compare.plot_rate_distortion(records)
    assert len(fig.axes[0].lines) == 3 and len(fig.axes[0].texts) == 24
    # points that coincide share one label
    for record in records:
        record["test/kl"], record["test/recon"] = 2.0, -100.0
    fig = compare.plot_rate_distortion(records)
    labels = sorted(text.get_text() for text in fig.axes[0].texts)
    assert labels[0] == "β=" + ", ".join(str(b) for b in range(1, 25, 3)) and len(labels) == 3


def test_importing_the_module_stays_light():
    code = "import sys, vaelab.compare; print(sorted(m for m in ('torch', 'matplotlib', 'lightning', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- end to end: a real sweep, the command, the notebook -------------------------------
def execute_notebook(path: Path, sweep: Path, tmp_path: Path, monkeypatch) -> object:
    """Run the notebook in a kernel of this interpreter (the venv's), with
    VAELAB_SWEEP set; nbclient raises on the first cell that fails. It needs no Jupyter
    server: nbclient, nbformat and ipykernel come with the `test` extra, which `make test`
    and CI install (JupyterLab, for people, is the `notebook` extra: `make notebook`)."""
    import nbformat
    from nbclient import NotebookClient

    kernels = tmp_path / "jupyter" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (venv)",
        "language": "python",
    }
    (kernels / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # searched first: this venv's python3 kernel
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("VAELAB_SWEEP", str(sweep))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        "commit the notebook with outputs cleared"
    )
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


@pytest.mark.slow
def test_a_real_sweep_compared_from_the_command_line_and_the_notebook(tmp_path, monkeypatch):
    run_cli(
        "vaelab-train",
        "-m",
        "debug=short",
        "trainer.enable_progress_bar=false",
        "likelihood.sigma=fixed,optimal",
        "model.beta=0.5,2",
        cwd=tmp_path,
    )
    (sweep,) = [p.parent for p in (tmp_path / "logs" / "train" / "multiruns").glob("*/multirun.yaml")]
    proc = run_cli("vaelab-compare", str(sweep), cwd=tmp_path)
    folder = sweep / "compare"
    for name in ("table.md", "table.csv", *PLOTS, "likelihood_vs_quality.png"):
        assert str(folder / name) in proc.stdout
    rows = list(csv.DictReader((folder / "table.csv").open()))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    # each quantity once: the sigma column tells the sigma mode, beta is model.beta
    assert {(r["sigma"].split()[0], float(r["beta"])) for r in rows} == {
        ("fixed", 0.5),
        ("fixed", 2),
        ("optimal", 0.5),
        ("optimal", 2),
    }
    assert "model.beta" not in rows[0] and "likelihood.sigma" not in rows[0]
    nlls = [float(r["nll"]) for r in rows]
    assert nlls == sorted(nlls) and all(r["nll_source"] == "test/nll_iw" for r in rows)
    for r in rows:  # beta_eff is the logged test/beta_eff: 2 sigma^2 beta
        metrics = json.loads((Path(r["path"]) / "metrics.json").read_text())["metrics"]
        assert float(r["beta_eff"]) == pytest.approx(2 * metrics["test/sigma_mean"] ** 2 * float(r["beta"]), rel=1e-3)
    for name in PLOTS:
        assert_image(folder / name)

    nb = execute_notebook(NOTEBOOK, sweep, tmp_path, monkeypatch)
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    pngs = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(pngs) == 4  # rate-distortion, ELBO/NLL against beta, montage, likelihood against quality
    markdown = [out["data"]["text/markdown"] for out in outputs if "text/markdown" in out.get("data", {})]
    assert len(markdown) == 1 and markdown[0].count("| done |") == 4


# -- comparisons that can be trusted: groups, collapse, seeds ----------------------------
def test_a_mass_and_a_dequantised_density_of_integer_pixels_rank_by_bits_per_dim(tmp_path):
    """A dequantised density's NLL in nats is that of the noisy data, D log(levels) away
    from a mass of the integers: their bits/dim compare, their nats do not."""
    root = tmp_path / "integers"
    root.mkdir()
    multirun_yaml(root, ["likelihood=gaussian,discretized_logistic"])
    make_job(root, "density", ["likelihood=gaussian"], nll=-1000.0, extra_metrics={"test/bpd_iw": 7.0})
    make_job(
        root,
        "mass",
        ["likelihood=discretized_logistic"],
        likelihood="discretized_logistic",
        nll=800.0,
        extra_metrics={"test/bpd_iw": 1.5},
    )
    table = compare.build_table(compare.load_sweep(root))
    assert [(r["job"], r["rank"]) for r in table.rows] == [("mass", 1), ("density", 2)]
    assert len({r["comparable"] for r in table.rows}) == 1
    assert "Ranked by the bits/dim of the test NLL" in table.markdown()


def test_ranks_stay_within_one_data_set_and_data_model(sweep):
    make_job(
        sweep,
        "bern",
        ["debug=short", "likelihood=bernoulli", "model.beta=1"],
        likelihood="bernoulli",
        nll=20.0,
        elbo=-22.0,
    )
    table = compare.build_table(compare.load_sweep(sweep))
    # the Bernoulli mass of binarised digits has the smallest NLL, but ranks only among its own kind
    gaussian = [r for r in table.rows if r["likelihood"] == "gaussian"]
    bernoulli = next(r for r in table.rows if r["likelihood"] == "bernoulli")
    assert [r["rank"] for r in gaussian] == [1, 2, 3, 4] and bernoulli["rank"] == 1
    assert table.rows[-1] is bernoulli  # the larger group first
    assert {r["comparable"] for r in table.rows} == {"digits, integer pixel values", "digits, binarised (dynamic)"}
    text = table.markdown()
    assert "compare only within one `compared as` group" in text and "| compared as |" in text


def test_likelihoods_are_named_alike_in_run_records_and_from_configs(tmp_path):
    """vaelab-train names the likelihood of a run from its class, vaelab-compare the
    likelihood of a job that states none from its config's _target_: one spelling."""
    for name, cls in {
        "gaussian": "GaussianLikelihood",
        "bernoulli": "BernoulliLikelihood",
        **LIKELIHOOD_CLASSES,
    }.items():
        assert job_record.likelihood_name(cls) == name
        job = make_job(tmp_path / "old", name, [f"likelihood={name}"], likelihood=name)
        (job / job_record.NAME).unlink()
        (job / "metrics.json").write_text(json.dumps({"metrics": {"test/elbo": -80.0}}))  # no "run": an older vaelab
        assert compare.load_job(job)["likelihood"] == name


def test_describe_job_states_a_rank_and_components_only_where_the_likelihood_has_them():
    from types import SimpleNamespace

    from vaelab.run_record import describe_job

    class GaussianLowRankLikelihood:
        sigma_mode = None
        rank = 8

        def data_model(self):
            return "dequantised"

    class DiscretizedLogisticMixtureLikelihood:
        components = 5

        def data_model(self):
            return "discrete"

    class GaussianLikelihood:
        sigma_mode = "learned_shared"

        def data_model(self):
            return "dequantised"

    cfg = OmegaConf.create({"seed": 3, "likelihood": {}})
    data = SimpleNamespace(source=SimpleNamespace(name="mnist"))
    runs = {}
    for likelihood in (GaussianLowRankLikelihood(), DiscretizedLogisticMixtureLikelihood(), GaussianLikelihood()):
        model = SimpleNamespace(likelihood=likelihood, beta=1.0, init_output_bias=False)
        run = describe_job(cfg, model, data)
        runs[run["likelihood"]] = run
    assert set(runs) == {"gaussian_low_rank", "discretized_logistic_mixture", "gaussian"}
    assert runs["gaussian_low_rank"]["rank"] == 8 and "components" not in runs["gaussian_low_rank"]
    assert (
        runs["discretized_logistic_mixture"]["components"] == 5 and "rank" not in runs["discretized_logistic_mixture"]
    )
    assert "rank" not in runs["gaussian"] and "components" not in runs["gaussian"]
    assert runs["discretized_logistic_mixture"]["data_model"] == "discrete" and runs["gaussian"]["data"] == "mnist"
    # and the legends vaelab-compare makes of them
    labels = {name: compare.decoder_label(name, compare.sigma_label(run), run) for name, run in runs.items()}
    assert labels == {
        "gaussian_low_rank": "Gaussian, low rank (rank 8)",
        "discretized_logistic_mixture": "discretised logistic mixture (5 components)",
        "gaussian": "Gaussian, sigma learned_shared",
    }


def test_decoder_labels_of_every_likelihood(tmp_path):
    root = tmp_path / "decoders"
    make_job(root, "g", ["likelihood=gaussian"])
    make_job(root, "b", ["likelihood=bernoulli"], likelihood="bernoulli")
    make_job(root, "lr", ["likelihood=gaussian_low_rank"], likelihood="gaussian_low_rank", states={"rank": 4})
    make_job(root, "lr_plain", ["likelihood=gaussian_low_rank"], likelihood="gaussian_low_rank")
    make_job(root, "dl", ["likelihood=discretized_logistic"], likelihood="discretized_logistic")
    make_job(
        root,
        "dlm",
        ["likelihood=discretized_logistic_mixture"],
        likelihood="discretized_logistic_mixture",
        states={"components": 1},
    )
    make_job(root, "cb", ["likelihood=continuous_bernoulli"], likelihood="continuous_bernoulli")
    decoders = {r["job"]: r["decoder"] for r in compare.load_sweep(root)}
    assert decoders == {
        "g": "Gaussian, sigma fixed 0.1",
        "b": "Bernoulli, binarize=dynamic",
        "lr": "Gaussian, low rank (rank 4)",
        "lr_plain": "Gaussian, low rank",
        "dl": "discretised logistic",
        "dlm": "discretised logistic mixture (1 component)",
        "cb": "continuous Bernoulli",
    }
    assert compare.decoder_label("my_own_thing", "", {}) == "my own thing"


def test_a_probability_mass_and_dequantised_densities_of_the_same_integers_rank_together(tmp_path):
    """The discretised logistic's bits/dim (a mass of the integer pixel values) and a
    dequantised Gaussian's, low-rank Gaussian's or continuous Bernoulli's (a bound on
    those of a mass) are of the same data; binarised or undequantised data are not."""
    root = tmp_path / "groups"
    make_job(root, "gauss", ["likelihood=gaussian"], nll=120.0)
    make_job(root, "lowrank", ["likelihood=gaussian_low_rank"], likelihood="gaussian_low_rank", nll=100.0)
    make_job(root, "cb", ["likelihood=continuous_bernoulli"], likelihood="continuous_bernoulli", nll=110.0)
    make_job(root, "logistic", ["likelihood=discretized_logistic"], likelihood="discretized_logistic", nll=90.0)
    make_job(root, "raw", ["likelihood=gaussian", "likelihood.dequantize=false"], data_model="not dequantised", nll=5.0)
    make_job(root, "bern", ["likelihood=bernoulli"], likelihood="bernoulli", nll=30.0)
    table = compare.build_table(compare.load_sweep(root))
    rows = {r["job"]: r for r in table.rows}
    assert {r["comparable"] for r in table.rows} == {
        "digits, integer pixel values",
        "digits, not dequantised",
        "digits, binarised (dynamic)",
    }
    assert [r["job"] for r in table.rows][:4] == ["logistic", "lowrank", "cb", "gauss"]  # one group, ranked together
    assert [rows[j]["rank"] for j in ("logistic", "lowrank", "cb", "gauss")] == [1, 2, 3, 4]
    assert rows["raw"]["rank"] == 1 and rows["bern"]["rank"] == 1  # their own groups
    text = table.markdown()
    assert "In `digits, integer pixel values`, the discrete likelihoods' bits/dim" in text
    # a group of dequantised densities alone needs no such note
    alone = compare.build_table([r for r in compare.load_sweep(root) if r["job"] != "logistic"])
    assert "the discrete likelihoods' bits/dim" not in alone.markdown()


def quality(fid_samples: float, fid_recon: float, sharp_samples: float, sharp_recon: float, accuracy=0.97) -> dict:
    """The sample-quality metrics vaelab-train logs at test (metrics.json's names)."""
    return {
        "test/fid_samples": fid_samples,
        "test/fid_recon": fid_recon,
        "test/sharpness_samples": sharp_samples,
        "test/sharpness_recon": sharp_recon,
        "test/fid_classifier_accuracy": accuracy,
    }


@pytest.fixture
def quality_sweep(tmp_path) -> Path:
    """Four decoders with sample quality logged, and an older job without it."""
    root = tmp_path / "quality"
    root.mkdir()
    multirun_yaml(root, ["likelihood=gaussian,gaussian_low_rank,discretized_logistic,continuous_bernoulli,old"])
    decoders = [  # folder, likelihood, its recorded state, NLL, FID of samples and recon, sharpness
        ("gauss", "gaussian", {}, 120.0, quality(30.0, 8.0, 0.5, 0.9)),
        ("lowrank", "gaussian_low_rank", {"rank": 4}, 100.0, quality(12.0, 3.0, 0.9, 1.3)),
        ("logistic", "discretized_logistic", {}, 90.0, quality(20.0, 2.0, 2.5, 1.05)),
        ("cb", "continuous_bernoulli", {}, 110.0, quality(45.0, 5.0, 1.05, 0.7)),
    ]
    for folder, likelihood, states, nll, metrics in decoders:
        make_job(
            root,
            folder,
            [f"likelihood={likelihood}"],
            likelihood=likelihood,
            states=states,
            nll=nll,
            extra_metrics=metrics,
        )
    make_job(root, "old", ["likelihood=gaussian", "model.beta=2"], beta=2.0, nll=130.0)  # logged none of them
    return root


def test_the_table_shows_sample_quality_beside_bits_per_dim(quality_sweep, sweep):
    table = compare.build_table(compare.load_sweep(quality_sweep))
    headers = [c.header for c in table.columns]
    at = headers.index("bits/dim")
    assert headers[at + 1 : at + 5] == [
        "samples FID (own classifier)",
        "recon FID (own classifier)",
        "samples sharpness",
        "recon sharpness",
    ]
    assert not any(h.startswith("FID") or " FID " in f" {h} " for h in headers if "(own classifier)" not in h)
    rows = {r["job"]: r for r in table.rows}
    fid = next(c for c in table.columns if c.key == "test/fid_samples")
    assert table.cell(rows["lowrank"], fid) == "12.00" and table.cell(rows["old"], fid) == ""  # a blank, not a crash
    text = table.markdown()
    assert "FID (own classifier): Fréchet distance" in text and "test accuracy: digits 97.0%" in text
    assert "closer to 1 is better" in text
    # the classifier accuracy is a note, not a column of its own
    assert "test/fid_classifier_accuracy" not in [c.key for c in table.columns]
    # jobs that logged no quality metric: no quality column, no quality note
    plain = compare.build_table(compare.load_sweep(sweep))
    assert not [c for c in plain.columns if "FID" in c.header or "sharpness" in c.header]
    assert "own classifier" not in plain.markdown() and "sharpness" not in plain.markdown()
    # only the metrics some job logged get a column
    only_fid = [
        {k: v for k, v in r.items() if "sharpness" not in k and "recon" not in k}
        for r in compare.load_sweep(quality_sweep)
    ]
    keys = [c.key for c in compare.build_table(only_fid).columns]
    assert "test/fid_samples" in keys and not [k for k in keys if "sharpness" in k or k == "test/fid_recon"]


def test_fid_sorts_lowest_first_and_sharpness_closest_to_one_first(quality_sweep, capsys):
    records = compare.load_sweep(quality_sweep)
    by = {m: [r["job"] for r in compare.build_table(records, metric=m).rows] for m in compare.quality.QUALITY_METRICS}
    assert by["test/fid_samples"] == ["lowrank", "logistic", "gauss", "cb", "old"]  # the job without it last
    assert by["test/fid_recon"] == ["logistic", "lowrank", "cb", "gauss", "old"]  # a recon metric, yet lowest first
    # |log sharpness|: 1.05 -> 0.05, 0.9 -> 0.11, 0.5 -> 0.69, 2.5 -> 0.92
    assert by["test/sharpness_samples"] == ["cb", "lowrank", "gauss", "logistic", "old"]
    # 1.05 -> 0.05, 1.3 -> 0.26, 0.7 -> 0.36, 0.9 -> 0.11
    assert by["test/sharpness_recon"] == ["logistic", "gauss", "lowrank", "cb", "old"]
    assert [compare.direction(m) for m in ("test/fid_recon", "test/sharpness_samples", "test/recon", "test/kl")] == [
        "lower is better",
        "closer to 1 is better",
        "higher is better",
        "lower is better",
    ]
    assert compare.main([str(quality_sweep), "--metric", "test/sharpness_samples"]) == 0
    out = capsys.readouterr().out
    assert "Ranked by test/sharpness_samples, closer to 1 is better (sorted by |log sharpness|)" in out
    assert compare.main([str(quality_sweep), "--metric", "test/fid_samples"]) == 0
    assert "Ranked by test/fid_samples, FID (own classifier), lower is better" in capsys.readouterr().out


def test_seeds_give_sample_quality_a_mean_and_spread(tmp_path):
    root = tmp_path / "seeded_quality"
    root.mkdir()
    multirun_yaml(root, ["likelihood=gaussian,discretized_logistic", "seed=1,2"])
    for likelihood, fids in (("gaussian", (30.0, 34.0)), ("discretized_logistic", (10.0, 12.0))):
        for seed, fid in zip((1, 2), fids):
            make_job(
                root,
                f"{likelihood},seed={seed}",
                [f"likelihood={likelihood}", f"seed={seed}"],
                likelihood=likelihood,
                seed=seed,
                extra_metrics=quality(fid, fid / 4, 0.5 + seed / 10, 0.9, accuracy=0.97 + seed / 100),
            )
    records = compare.load_sweep(root)
    table = compare.build_settings_table(records, metric="test/fid_samples")
    rows = {r["likelihood"]: r for r in table.rows}
    assert [r["likelihood"] for r in table.rows] == ["discretized_logistic", "gaussian"]
    fid = next(c for c in table.columns if c.key == "test/fid_samples")
    assert table.cell(rows["gaussian"], fid) == "32.00 ± 2.83" and rows["gaussian"]["rank"] == 2
    sharp = next(c for c in table.columns if c.key == "test/sharpness_samples")
    assert table.cell(rows["gaussian"], sharp) == "0.650 ± 0.071"
    text = table.markdown()
    # two classifiers of different accuracy for one data set: said, with the range
    assert "digits 98.0-99.0%" in text and "used FID classifiers of different accuracy" in text
    out = table.write_csv(tmp_path / "settings.csv")
    header = next(csv.reader(out.open()))
    assert "test/fid_samples" in header and "test/fid_samples_sd" in header


def plotted_points(ax) -> list[tuple[float, float]]:
    """The (x, y) of every point of a panel's decoder lines (not the sharpness-1 guide)."""
    lines = [line for line in ax.lines if line.get_label() != compare.quality_plot.DATA_SHARPNESS_LABEL]
    return [(float(x), float(y)) for line in lines for x, y in zip(line.get_xdata(), line.get_ydata())]


def test_likelihood_against_sample_quality_one_point_per_job(quality_sweep, capsys):
    records = compare.sort_records(compare.load_sweep(quality_sweep))
    fig = compare.plot_likelihood_vs_quality(records)
    axes = [ax for ax in fig.axes if ax.get_xlabel()]
    assert len(axes) == 4  # one comparable group, four metrics logged: FID above sharpness, samples left
    assert all(ax.get_xlabel().startswith("test bits/dim") for ax in axes)
    assert [ax.get_ylabel() for ax in axes] == [
        "FID (own classifier)  (lower is better)",
        "FID (own classifier)  (lower is better)",
        "sharpness  (1 = as sharp as the data)",
        "sharpness  (1 = as sharp as the data)",
    ]
    assert [ax.get_title().partition(":")[0] for ax in axes] == ["Prior samples", "Reconstructions"] * 2
    by_job = {r["job"]: r for r in records}
    # four jobs logged quality, the old one did not: four points a panel, at (bits/dim, metric)
    expected = sorted((by_job[j]["bpd"], by_job[j]["test/fid_samples"]) for j in ("gauss", "lowrank", "logistic", "cb"))
    assert sorted(plotted_points(axes[0])) == expected
    assert all(len(plotted_points(ax)) == 4 for ax in axes)
    assert [line.get_label() for line in axes[2].lines].count(compare.quality_plot.DATA_SHARPNESS_LABEL) == 1
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert {"Gaussian, low rank (rank 4)", "discretised logistic", "continuous Bernoulli"} <= set(legend)
    assert "test accuracy: digits 97.0%" in fig._suptitle.get_text()

    # the command writes it beside the other figures and says where
    assert compare.main([str(quality_sweep)]) == 0
    out = capsys.readouterr().out
    path = quality_sweep / "compare" / "likelihood_vs_quality.png"
    assert str(path) in out
    width, height = assert_image(path)
    assert width > height  # the panels side by side


def test_the_quality_plot_shows_only_what_was_logged_and_no_plot_without_it(quality_sweep, sweep, tmp_path):
    # FID alone: its two panels, no sharpness panel; sharpness of samples alone: one panel
    records = compare.sort_records(compare.load_sweep(quality_sweep))
    fid_only = [{k: v for k, v in r.items() if "sharpness" not in k} for r in records]
    fig = compare.plot_likelihood_vs_quality(fid_only)
    assert [ax.get_title() for ax in fig.axes if ax.get_xlabel()] == [
        "Prior samples: FID (own classifier)",
        "Reconstructions: FID (own classifier)",
    ]
    sharp_only = [{k: v for k, v in r.items() if "fid" not in k and k != "test/sharpness_recon"} for r in records]
    fig = compare.plot_likelihood_vs_quality(sharp_only)
    assert [ax.get_ylabel() for ax in fig.axes] == ["sharpness  (1 = as sharp as the data)"]
    assert "FID" not in fig._suptitle.get_text()
    # FID of samples and sharpness of reconstructions: a 2 x 2 grid, two panels left empty
    diagonal = [{k: v for k, v in r.items() if k not in ("test/fid_recon", "test/sharpness_samples")} for r in records]
    fig = compare.plot_likelihood_vs_quality(diagonal)
    assert len(fig.axes) == 4 and [ax.get_title().partition(" (")[0] for ax in fig.axes if ax.axison] == [
        "Prior samples: FID",
        "Reconstructions: sharpness",
    ]
    # two comparable groups: a row of panels each, named by its group
    make_job(
        quality_sweep,
        "bern",
        ["likelihood=bernoulli"],
        likelihood="bernoulli",
        nll=30.0,
        extra_metrics=quality(50.0, 9.0, 0.4, 0.6),
    )
    fig = compare.plot_likelihood_vs_quality(compare.sort_records(compare.load_sweep(quality_sweep)))
    titles = [ax.get_title() for ax in fig.axes if ax.get_xlabel()]
    assert len(titles) == 8 and titles[0] == "digits, integer pixel values: Prior samples: FID (own classifier)"
    assert titles[4] == "digits, binarised (dynamic): Prior samples: FID (own classifier)"
    assert [len(plotted_points(ax)) for ax in fig.axes if ax.get_xlabel()] == [4] * 4 + [1] * 4
    # no job logged sample quality: no figure, and the command neither writes nor mentions it
    assert compare.plot_likelihood_vs_quality(compare.load_sweep(sweep)) is None
    result = compare.compare(sweep, tmp_path / "cmp")
    assert not (tmp_path / "cmp" / "likelihood_vs_quality.png").exists()
    assert "likelihood_vs_quality.png" not in result.skipped and len(result.written) == 5
    # metrics, but no finished job with bits/dim to put them against: nothing to draw
    running = [dict(r, status="running") for r in compare.load_sweep(quality_sweep)]
    assert compare.plot_likelihood_vs_quality(running) is None


def test_collapsed_jobs_are_marked_in_the_table_and_ringed_in_the_plots(sweep, tmp_path):
    make_job(
        sweep,
        "dead",
        ["debug=short", "likelihood.sigma=fixed", "model.beta=4"],
        beta=4.0,
        kl=0.01,
        active_units=0,
        nll=150.0,
    )
    records = compare.load_sweep(sweep)
    dead = next(r for r in records if r["job"] == "dead")
    assert dead["collapsed"] is True and dead["active_units"] == 0
    assert not any(r["collapsed"] for r in records if r["job"] != "dead")
    table = compare.build_table(records)
    row = next(r for r in table.rows if r["job"] == "dead")
    cell = table.cell(row, next(c for c in table.columns if c.key == "active_units"))
    assert cell == "0 (collapsed)" and "(collapsed): no latent dimension is active" in table.markdown()
    fig = compare.plot_rate_distortion(compare.sort_records(records), tmp_path / "rd.png")
    assert compare.plots.COLLAPSE_LABEL in fig.axes[0].get_legend_handles_labels()[1]


@pytest.fixture
def seeded_sweep(tmp_path) -> Path:
    """Two sigma modes x three seeds, and a Bernoulli setting with three seeds."""
    root = tmp_path / "seeded"
    root.mkdir()
    multirun_yaml(root, ["debug=short", "likelihood.sigma=fixed,learned_shared", "seed=1,2,3"])
    nlls = {"fixed": (100.0, 104.0, 102.0), "learned_shared": (101.0, 97.0, 99.0)}
    for sigma, values in nlls.items():
        for seed, nll in zip((1, 2, 3), values):
            make_job(
                root,
                f"{sigma},seed={seed}",
                ["debug=short", f"likelihood.sigma={sigma}", f"seed={seed}"],
                sigma=sigma,
                seed=seed,
                nll=nll,
                elbo=-nll - 5,
                kl=2.0 + seed,
                active_units=4,
            )
    for seed, nll in zip((1, 2, 3), (60.0, 61.0, 59.0)):
        make_job(
            root,
            f"bern,seed={seed}",
            ["debug=short", "likelihood=bernoulli", f"seed={seed}"],
            likelihood="bernoulli",
            seed=seed,
            nll=nll,
            active_units=0 if seed == 1 else 3,
        )
    return root


def test_jobs_that_differ_only_by_seed_are_one_setting_with_its_spread(seeded_sweep):
    records = compare.load_sweep(seeded_sweep)
    assert compare.seeds_swept(records)
    table = compare.build_settings_table(records)
    assert table.per == "settings" and len(table.rows) == 3 and "seed" not in table.swept
    by_sigma = {r["sigma"]: r for r in table.rows}
    fixed, learned = by_sigma["fixed 0.1"], by_sigma["learned_shared"]
    assert fixed["n"] == 3 and sorted(fixed["seeds"]) == [1, 2, 3]
    assert fixed["nll"] == pytest.approx(102.0) and fixed["nll_sd"] == pytest.approx(2.0)
    assert learned["nll"] == pytest.approx(99.0) and learned["nll_sd"] == pytest.approx(2.0)
    assert learned["rank"] == 1 and fixed["rank"] == 2
    # 3 nats apart with sd 2 over 3 seeds: the standard error of the gap is 1.63, so 3 < 2 x 1.63
    assert fixed["vs_best"] == f"{fixed['bpd'] - learned['bpd']:.3g} bits/dim worse, within noise"
    cell = table.cell(fixed, next(c for c in table.columns if c.key == "nll"))
    assert cell == "102.00 ± 2.00"
    text = table.markdown()
    assert "is not distinguishable from" in text and "3 settings of 9 jobs: 9 done" in text
    bern = next(r for r in table.rows if r["likelihood"] == "bernoulli")
    assert bern["collapsed_count"] == 1 and bern["rank"] == 1  # its own group
    assert "(collapsed in 1 of 3)" in table.cell(bern, next(c for c in table.columns if c.key == "active_units"))
    with_more_seeds = compare.seeds.within_noise(
        {"nll": 99.0, "nll_sd": 0.1, "n": 3}, {"nll": 102.0, "nll_sd": 0.1, "n": 3}, "nll"
    )
    assert with_more_seeds is False  # the same gap with little spread is a real difference


def test_the_command_writes_settings_and_error_bars_when_seeds_were_swept(seeded_sweep, capsys):
    assert compare.main([str(seeded_sweep)]) == 0
    out = capsys.readouterr().out
    folder = seeded_sweep / "compare"
    text = (folder / "table.md").read_text()
    assert "## Settings over seeds" in text and "## Every job" in text and "3 settings of 9 jobs" in out
    rows = list(csv.DictReader((folder / "settings.csv").open()))
    assert len(rows) == 3 and "nll_sd" in rows[0] and float(rows[0]["nll_sd"]) == pytest.approx(2.0)
    records = compare.aggregate_seeds(compare.load_sweep(seeded_sweep))
    fig = compare.plot_elbo_nll_vs_beta(compare.sort_records(records))
    caps = [c for ax in fig.axes for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
    assert caps, "settings with a spread are drawn with error bars"
    assert "mean and ±1 sd of 3 seeds" in fig._suptitle.get_text()
