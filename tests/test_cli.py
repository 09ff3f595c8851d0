"""End to end through the command line: vaelab-train and vaelab-eval in subprocesses."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch
from conftest import read_metrics, run_cli, run_folders
from test_data import write_cifar, write_mnist, write_png

from vaelab.compare import quality as compare_quality
from vaelab.model.maths import soft_floor
from vaelab.quality import measure

pytestmark = pytest.mark.slow

SIGMA_MODES = ["fixed", "learned_shared", "learned_pixel", "predicted", "optimal"]
QUICK = ["debug=short", "trainer.enable_progress_bar=false"]


def assert_finite_run(run_dir, stage="test"):
    metrics = read_metrics(run_dir)["metrics"]
    for name in ("elbo", "recon", "kl", "bpd"):
        value = metrics[f"{stage}/{name}"]
        assert math.isfinite(value), (run_dir, name, value)
    return metrics


def test_default_main_job(train, tmp_path):
    """The README's first command: train on digits, write everything, say where."""
    proc = train("trainer.enable_progress_bar=false")
    (run_dir,) = run_folders(tmp_path)
    assert f"Run folder: {run_dir}" in proc.stdout
    metrics = assert_finite_run(run_dir)
    # a trained model is far better than the untrained one (~ -180 nats on digits)
    assert metrics["test/elbo"] > 0 and metrics["val/elbo"] > 0
    assert metrics["test/nll_iw"] <= -metrics["test/elbo"] + 1e-3  # IWAE bound is tighter
    names = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert "last.ckpt" in names and any(n.startswith("best_epoch") for n in names)
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    assert any(r.get("val/elbo") for r in rows) and any(r.get("train/elbo") for r in rows)
    for image in ("reconstructions.png", "samples.png"):
        assert (run_dir / "images" / image).stat().st_size > 1000
    summary = read_metrics(run_dir)
    assert summary["epochs"] == 100
    # what was trained, stated for vaelab-compare; how the latents are used
    assert summary["run"] == {
        "likelihood": "gaussian",
        "sigma": "learned_shared",
        "data": "digits",
        "data_model": "dequantised",
        "beta": 1.0,
        "seed": 42,
        "init_output_bias": False,
    }
    assert len(summary["latents"]["kl_per_dim"]) == 16 and metrics["test/active_units"] >= 8
    # sample quality: a classifier of digits' own (cached for the session), and trained
    # means that are blurrier than the data, reconstructions less so than samples
    assert metrics["test/fid_classifier_accuracy"] > 0.9
    assert 0 < metrics["test/fid_recon"] < metrics["test/fid_samples"]
    assert 0 < metrics["test/sharpness_samples"] < 1 and 0 < metrics["test/sharpness_recon"] < 1
    # vaelab-compare spells these names again (it imports no torch): they are the ones logged
    logged = {name for name in metrics if name.removeprefix("test/") in measure.NAMES}
    assert logged == {f"test/{name}" for name in measure.NAMES}
    assert logged == {*compare_quality.QUALITY_METRICS, compare_quality.FID_CLASSIFIER_ACCURACY}
    assert (run_dir / "images" / "latents.png").stat().st_size > 1000
    assert "Posterior collapse" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_every_sigma_mode_and_bernoulli_train(train, tmp_path, model):
    train("-m", f"model={model}", f"likelihood.sigma={','.join(SIGMA_MODES)}", *QUICK)
    train("-m", f"model={model}", "likelihood=bernoulli", "likelihood.binarize=dynamic,static,threshold", *QUICK)
    runs = run_folders(tmp_path)
    assert len(runs) == len(SIGMA_MODES) + 3
    for run_dir in runs:
        config = json.loads(
            json.dumps(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["vaelab_config"])
        )
        metrics = assert_finite_run(run_dir)
        likelihood = config["likelihood"]
        has_map = likelihood.get("sigma") in ("learned_pixel", "predicted")
        assert (run_dir / "images" / "sigma_map.png").exists() == has_map, run_dir
        if "sigma" in likelihood:
            assert metrics["test/sigma_min"] <= metrics["test/sigma_mean"] <= metrics["test/sigma_max"]
            assert metrics["test/beta_eff"] == pytest.approx(
                2 * config["model"]["beta"] * metrics["test/sigma_mean"] ** 2, rel=0.5
            )
        else:  # Bernoulli: bits/dim carry no dequantisation term
            assert metrics["test/bpd"] == pytest.approx(-metrics["test/elbo"] / (64 * math.log(2)), rel=1e-4)


def test_train_then_eval_from_checkpoint(train, tmp_path):
    train(*QUICK, "likelihood.sigma=optimal")
    (run_dir,) = run_folders(tmp_path)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval.json"
    proc = run_cli(
        "vaelab-eval",
        f"ckpt_path={ckpt}",
        "iw_samples=64",
        "iw_chunk_elements=4096",
        f"output_file={out}",
        cwd=tmp_path,
    )
    result = json.loads(out.read_text())
    metrics = result["metrics"]
    assert result["iw_samples"] == 64 and result["num_images"] == 359
    assert metrics["test/nll_iw"] <= -metrics["test/elbo"] + 1.0
    assert math.isfinite(metrics["test/nll_iw"]) and f"-> {out}" in proc.stdout
    # optimal sigma at test time is the training MSE of the weights tested: measured
    # again by vaelab-eval, it agrees with the one stored with them (other noise draws)
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    sigma = float(soft_floor(0.5 * state["likelihood.train_mse"].log(), -6.0).exp())
    assert metrics["test/sigma_mean"] == pytest.approx(sigma, rel=0.03)
    # sample quality as the training's test measured it, with the classifier it cached
    trained = read_metrics(run_dir)["metrics"]
    assert metrics["test/fid_classifier_accuracy"] == trained["test/fid_classifier_accuracy"]
    assert metrics["test/fid_samples"] > 0 and metrics["test/sharpness_recon"] > 0
    assert "FID (own classifier) samples" in proc.stdout


def test_resume_from_last_checkpoint(train, tmp_path):
    train(*QUICK, "trainer.max_epochs=1")
    (first,) = run_folders(tmp_path)
    assert read_metrics(first)["global_step"] == 3
    train(*QUICK, "trainer.max_epochs=3", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}")
    second = [r for r in run_folders(tmp_path) if r != first][0]
    summary = read_metrics(second)
    assert summary["global_step"] == 9 and summary["epochs"] == 3


def test_mnist_cifar_and_image_folder_train(train, tmp_path):
    write_mnist(tmp_path / "mnist", n_train=40, n_test=12)
    write_cifar(tmp_path / "cifar" / "cifar-10-batches-py", n=8)
    for i in range(24):
        write_png(
            tmp_path / "pictures" / ("cats" if i % 2 else "dogs") / f"{i}.png",
            (10 * i, 255 - 10 * i, 40),
            size=(20, 30),
        )
    # each data set here is new to the FID cache: 2000 classifier steps would be ~55 s of
    # each run's ~65 s, and this test is about the readers (FID: test_default_main_job)
    quick = [*QUICK, "callbacks.sample_quality.classifier_steps=50"]
    train("data=mnist", f"data.root={tmp_path / 'mnist'}", "data.batch_size=16", *quick)
    train("data=cifar10", f"data.root={tmp_path / 'cifar'}", "model=conv", "data.batch_size=16", *quick)
    train("data=image_folder", f"data.root={tmp_path / 'pictures'}", "data.source.size=[16,16]", "model=conv", *quick)
    runs = run_folders(tmp_path)
    assert len(runs) == 3
    for run_dir in runs:
        assert_finite_run(run_dir)


def test_missing_dataset_is_a_clear_error(train, tmp_path):
    proc = train("data=mnist", f"data.root={tmp_path / 'nowhere'}", *QUICK, check=False)
    assert proc.returncode != 0
    assert "data.download=true" in proc.stderr + proc.stdout


#: library messages that say nothing the user can act on (vaelab.console, vaelab.wandb_runs)
CONSOLE_NOISE = [
    "The `srun` command is available",  # SLURM is installed here, but this is no SLURM job
    "litlogger",
    "LeafSpec",
    "You have overridden `on_after_batch_transfer`",
    "FLOPs",
    "Trainer already configured with model summary callbacks",
    "The anonymous setting has no effect",
    "wandb.api and wandb.ensure_configured() are deprecated",
    "Images sizes do not match",
]


def test_csv_tensorboard_and_wandb_offline_together(train, tmp_path):
    # mode=online with no API key: vaelab's key check (wandb.login without prompting) goes offline
    proc = train(*QUICK, "logger=many", "tags=[smoke]", "logger.wandb.mode=online")
    output = proc.stdout + proc.stderr
    assert [noise for noise in CONSOLE_NOISE if noise in output] == [], output
    assert "W&B: no API key found" in output or "WANDB_API_KEY" in os.environ
    assert "Total params" in output  # the model summary is still there, without its FLOPs
    # each of Lightning's messages once, though Lightning is imported after Hydra set up logging
    assert output.count("`Trainer.fit` stopped") == 1 and output.count("Restoring states from the checkpoint") == 1
    (run_dir,) = run_folders(tmp_path)
    assert (run_dir / "csv" / "metrics.csv").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    (wandb_run,) = list((run_dir / "wandb").glob("offline-run-*"))
    assert list(wandb_run.glob("*.wandb"))


def test_a_collapsed_posterior_is_reported_at_the_end_of_the_run(train, tmp_path):
    proc = train("likelihood=bernoulli", "model.beta=20", "trainer.max_epochs=5", "trainer.enable_progress_bar=false")
    (run_dir,) = run_folders(tmp_path)
    metrics = read_metrics(run_dir)["metrics"]
    assert metrics["test/active_units"] == 0 and metrics["test/kl"] < 0.5
    output = proc.stdout + proc.stderr
    assert "Posterior collapse: 0 of 16 latent dimensions are active" in output and "Lower model.beta" in output
