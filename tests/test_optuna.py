"""`hparams_search=optuna`: Optuna's TPE over beta, learning rate, latent size and sigma mode."""

from __future__ import annotations

import math
import re

import pytest
import yaml
from conftest import read_metrics
from test_sweeps import assert_sweep_reported

from vaelab.compare import load_sweep
from vaelab.compare.records import swept_keys
from vaelab.exceptions import ConfigError
from vaelab.optimized_metric import metric_for_sweeper

QUICK = ["debug=short", "trainer.enable_progress_bar=false"]


def test_the_sweeper_metric_can_be_negated_and_must_exist():
    metrics = {"val/elbo": -90.5, "test/nll_iw": 88.0}
    assert metric_for_sweeper(metrics, "-val/elbo") == 90.5
    assert metric_for_sweeper(metrics, "test/nll_iw") == 88.0
    assert metric_for_sweeper(metrics, None) is None
    with pytest.raises(ConfigError, match="optimized_metric=-val/nll was not logged"):
        metric_for_sweeper(metrics, "-val/nll")


def trials(folder):
    return sorted(p for p in folder.iterdir() if (p / ".hydra").is_dir())


def results(folder):
    return yaml.safe_load((folder / "optimization_results.yaml").read_text())


@pytest.mark.slow
def test_optuna_minimises_the_validation_negative_elbo(train, tmp_path):
    command = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", *QUICK]
    proc = train(*command)
    (folder,) = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    jobs = trials(folder)
    assert len(jobs) == 3
    values = {}
    for job in jobs:
        summary = read_metrics(job)
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        # each trial sets the four searched keys, and its folder is named after them
        assert {o.partition("=")[0] for o in overrides} >= {
            "model.beta",
            "model.optimizer.lr",
            "model.latent_dim",
            "likelihood",
        }
        assert job.name.startswith("likelihood=gaussian_")
        values[job.name] = -summary["metrics"]["val/elbo"]
    best = results(folder)
    assert best["best_value"] == pytest.approx(min(values.values()))
    assert "Best value" in proc.stdout + proc.stderr

    # what the user sees: the folder is named after the searched keys; a long job name
    # keeps whole overrides before its hash; the sweep is reported as a grid one is, and
    # has the multirun.yaml that vaelab-compare and the notebook find sweeps by
    assert folder.name.rpartition("_")[0] == "likelihood+model.beta+model.latent_dim+model.optimizer.lr"
    for job in jobs:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        kept = re.sub(r"-[0-9a-f]{8}$", "", job.name)
        assert set(kept.split(",")) <= set(overrides), job.name
    assert assert_sweep_reported(proc, folder).endswith("(3 jobs: 3 done)")
    assert sorted(p.parent for p in folder.parent.glob("*/multirun.yaml")) == [folder]  # the notebook's listing
    swept, _ = swept_keys(load_sweep(folder))
    assert set(swept) == {"likelihood", "model.beta", "model.latent_dim", "model.optimizer.lr"}

    # the sampler is seeded: the same command proposes the same trials and reuses them
    again = train(*command)
    assert again.stdout.count("Job already finished, reusing its result") == 3
    assert trials(folder) == jobs
    assert results(folder)["best_value"] == best["best_value"]


@pytest.mark.slow
def test_a_failed_trial_is_recorded_and_the_study_goes_on(train, tmp_path):
    # a search space of the user's own, found through hydra.searchpath; sigma = 1e-30
    # overflows the Gaussian log-density, so those trials diverge at the first step
    extra = tmp_path / "my_configs" / "hparams_search"
    extra.mkdir(parents=True)
    (extra / "diverging.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - optuna\n"
        "hydra:\n  sweeper:\n    params:\n"
        "      likelihood.sigma_value: choice(1e-30, 0.1)\n"
        "      model.beta: interval(0.5, 2.0)\n"
    )
    proc = train(
        "-m",
        "hparams_search=diverging",
        f"hydra.searchpath=[file://{extra.parent}]",
        "hydra.sweeper.n_trials=4",
        "likelihood=gaussian_fixed",
        *QUICK,
    )
    (folder,) = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    jobs = trials(folder)
    failed = [job for job in jobs if (job / "FAILED").exists()]
    finished = [job for job in jobs if (job / "metrics.json").exists()]
    assert failed and finished and len(failed) + len(finished) == len(jobs) == 4
    assert all("sigma_value=1e-30" in job.name for job in failed)
    assert "reported to the sweeper as inf" in proc.stderr
    best = results(folder)
    assert best["best_params"]["likelihood.sigma_value"] == 0.1
    assert math.isfinite(best["best_value"])
    assert best["best_value"] == pytest.approx(min(-read_metrics(job)["metrics"]["val/elbo"] for job in finished))
