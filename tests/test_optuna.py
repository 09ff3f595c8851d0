"""`hparams_search=optuna`: Optuna's TPE over beta, learning rate, latent size and sigma mode."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import time

import pytest
import yaml
from conftest import read_metrics, run_cli, script, without_packages
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


def test_the_search_space_is_read_in_hydras_sweep_syntax():
    optuna = pytest.importorskip("optuna")
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from vaelab.optuna_space import search_space

    space = search_space(
        [
            "model.beta=tag(log, interval(0.25, 4.0))",
            "model.optimizer.lr=interval(1e-4, 3e-3)",
            "model.latent_dim=range(4, 17, 4)",
            "likelihood=choice(gaussian_fixed, bernoulli)",
            "+model.extra=1,2",
            "trainer.max_epochs=interval(1, 3)",
            "debug=short",
            "seed=choice(1, 2)",
            "seed=3",
        ]
    )
    assert space.distributions == {
        "model.beta": FloatDistribution(0.25, 4.0, log=True),
        "model.optimizer.lr": FloatDistribution(1e-4, 3e-3),
        "model.latent_dim": IntDistribution(4, 16, step=4),  # Hydra's range leaves its end out
        "likelihood": CategoricalDistribution(["gaussian_fixed", "bernoulli"]),
        "model.extra": CategoricalDistribution([1, 2]),
        "trainer.max_epochs": FloatDistribution(1.0, 3.0),  # Hydra intervals are of floats: range() for ints
    }  # seed: the later, fixed override wins
    assert space.fixed == ["debug=short", "seed=3"]
    overrides = space.trial_overrides({"model.extra": 2, "model.beta": 0.5})
    assert overrides == ["+model.extra=2", "model.beta=0.5", "debug=short", "seed=3"]
    with pytest.raises(ConfigError, match="log interval needs a start above 0"):
        search_space(["model.beta=tag(log, interval(0, 1))"])
    assert optuna.__version__.split(".")[0] in ("4", "5")


def trials(folder):
    return sorted(p for p in folder.iterdir() if (p / ".hydra").is_dir())


def results(folder):
    return yaml.safe_load((folder / "optimization_results.yaml").read_text())


def stored_study(folder):
    """The sweep's study, read from its storage (the default: <sweep>/optuna.db)."""
    optuna = pytest.importorskip("optuna")
    assert (folder / "optuna.db").is_file()
    return optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'optuna.db'}")


def search_space(tmp_path, name, params, extra="", base="optuna"):
    """A search space of the test's own (``hparams_search=<name>``, found through
    hydra.searchpath), added to the shipped one (``base``) or, with ``base=None``, alone."""
    folder = tmp_path / "my_configs" / "hparams_search"
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"      {key}: {space}\n" for key, space in params.items())
    defaults = f"  - {base}\n" if base else "  - override /hydra/sweeper: vaelab_optuna\n"
    (folder / f"{name}.yaml").write_text(
        f"# @package _global_\ndefaults:\n{defaults}hydra:\n  sweeper:\n" + extra + "    params:\n" + lines
    )
    return [f"hparams_search={name}", f"hydra.searchpath=[file://{folder.parent}]"]


def prunable_search(tmp_path):
    """Overrides of a study with a hopeless trial and a pruner that stops it: a fixed sigma
    of 0.001 makes digits' negative ELBO hundreds of thousands of nats, above the
    ThresholdPruner's 20000 at the first epoch; sigma 0.1 stays far below it. The
    brute-force sampler tries both values (in an order of its own; the threshold does
    not depend on it)."""
    space = search_space(
        tmp_path,
        "prunable",
        {"likelihood.sigma_value": "choice(0.1, 0.001)"},
        extra="    sampler:\n      _target_: optuna.samplers.BruteForceSampler\n      seed: 0\n",
        base=None,
    )
    return [
        *space,
        "+hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
        "+hydra.sweeper.pruner.upper=20000",
    ]


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

    # the study is stored in the sweep folder, one trial per job, each told its job's value
    study = stored_study(folder)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(values.values()))
    assert study.best_trial.params == best["best_params"]
    first = [t.params for t in study.trials]

    # the same command again continues the stored study: its 3 trials are done, nothing runs
    again = train(*command)
    assert "3 of 3 trials done" in again.stdout and "Launching" not in again.stdout + again.stderr
    assert trials(folder) == jobs
    assert results(folder)["best_value"] == best["best_value"]

    # a larger n_trials continues the same study in the same folder: one trial more, the others not retrained
    more = train("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=4", *QUICK)
    assert "3 of 4 trials done" in more.stdout and "Job already finished" not in more.stdout
    assert more.stdout.count("Launching 1 jobs") + more.stderr.count("Launching 1 jobs") == 1
    assert list((tmp_path / "logs" / "train" / "multiruns").iterdir()) == [folder]
    assert set(jobs) < set(trials(folder)) and len(trials(folder)) == 4
    study = stored_study(folder)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert [t.params for t in study.trials[:3]] == first
    assert study.trials[3].params not in first  # a new proposal, not the seeded sampler's first one again


@pytest.mark.slow
def test_a_failed_trial_is_recorded_and_the_study_goes_on(train, tmp_path):
    # a search space of the user's own, found through hydra.searchpath; sigma = 1e-30
    # overflows the Gaussian log-density, so those trials diverge at the first step
    space = search_space(
        tmp_path, "diverging", {"likelihood.sigma_value": "choice(1e-30, 0.1)", "model.beta": "interval(0.5, 2.0)"}
    )
    proc = train("-m", *space, "hydra.sweeper.n_trials=4", "likelihood=gaussian_fixed", *QUICK)
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
    # the study records the failed trials as failed (not as a value) and went on to n_trials
    study = stored_study(folder)
    states = {t.number: t.state.name for t in study.trials}
    assert len(states) == 4 and set(states.values()) == {"FAIL", "COMPLETE"}
    assert all((t.state.name == "FAIL") == (t.params["likelihood.sigma_value"] == 1e-30) for t in study.trials)


@pytest.mark.slow
def test_a_sweep_killed_mid_trial_reruns_that_trial_when_run_again(tmp_path):
    """The sweep process is killed while its first trial trains: the trial stays RUNNING in
    the study. The same command again marks it failed (interrupted, not counted), runs
    its values again in the same job folder, from that folder's last checkpoint."""
    optuna = pytest.importorskip("optuna")
    command = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", *QUICK, "trainer.max_epochs=15"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [script("vaelab-train"), *command],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    multiruns = tmp_path / "logs" / "train" / "multiruns"
    try:
        deadline = time.monotonic() + 240
        while not list(multiruns.glob("*/*/checkpoints/last.ckpt")):  # the first trial has trained an epoch
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before it could be killed"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (folder,) = list(multiruns.iterdir())
    (killed,) = trials(folder)
    assert [t.state.name for t in stored_study(folder).trials] == ["RUNNING"]

    again = run_cli("vaelab-train", *command, cwd=tmp_path)
    assert "Trials 0 were interrupted" in again.stdout
    assert f"Job was interrupted, continuing from {killed / 'checkpoints' / 'last.ckpt'}" in again.stdout
    study = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[0].user_attrs["vaelab.interrupted"] is True
    assert study.trials[1].params == study.trials[0].params and study.trials[1].user_attrs["vaelab.rerun_of"] == 0
    assert len(trials(folder)) == 2 and killed in trials(folder)
    assert read_metrics(killed)["metrics"]["val/elbo"] == pytest.approx(-study.trials[1].value)


@pytest.mark.slow
def test_a_pruner_stops_a_hopeless_trial_and_the_study_records_it_pruned(train, tmp_path):
    """Each trial reports -val/elbo after every validation epoch. A fixed sigma of 0.001
    makes the negative ELBO of digits hundreds of thousands of nats, above the pruner's
    threshold at the first epoch; sigma 0.1 stays far below it. The brute-force sampler
    tries both values in two trials (in an order of its own; the threshold does not
    depend on it)."""
    space = prunable_search(tmp_path)
    proc = train(
        "-m",
        *space,
        "hydra.sweeper.n_trials=2",
        "likelihood=gaussian_fixed",
        *QUICK,
    )
    (folder,) = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    study = stored_study(folder)
    by_sigma = {t.params["likelihood.sigma_value"]: t for t in study.trials}
    pruned, complete = by_sigma[0.001], by_sigma[0.1]
    assert (pruned.state.name, complete.state.name) == ("PRUNED", "COMPLETE")
    assert sorted(pruned.intermediate_values) == [0] and pruned.intermediate_values[0] > 20000
    assert sorted(complete.intermediate_values) == [0, 1] and complete.value < 20000  # debug=short: 2 epochs
    assert pruned.user_attrs["vaelab.pruned_at_epoch"] == 0
    assert f"Trial {pruned.number} pruned at epoch 0" in proc.stdout
    # the pruned job stopped like an early-stopped one: tested, its folder complete
    job = next(job for job in trials(folder) if "sigma_value=0.001" in job.name)
    assert read_metrics(job)["metrics"]["val/elbo"] == pytest.approx(-pruned.intermediate_values[0])
    assert results(folder)["best_params"] == {"likelihood.sigma_value": 0.1}


@pytest.mark.slow
def test_trials_asked_together_run_in_parallel_workers_that_report_to_the_study(train, tmp_path):
    """n_jobs=2 with the joblib launcher: both trials are one batch of two worker processes,
    each reporting its epochs to the SQLite study (the pruner stops the hopeless one)."""
    space = prunable_search(tmp_path)
    proc = train(
        "-m",
        *space,
        "hydra/launcher=parallel",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=2",
        "likelihood=gaussian_fixed",
        *QUICK,
    )
    assert (proc.stdout + proc.stderr).count("is launching 2 jobs") == 1  # one batch of two (joblib)
    (folder,) = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    study = stored_study(folder)
    assert {t.params["likelihood.sigma_value"]: t.state.name for t in study.trials} == {
        0.1: "COMPLETE",
        0.001: "PRUNED",
    }
    assert all(read_metrics(job)["parallel_jobs"] == 2 for job in trials(folder))


def test_without_the_optuna_extra_a_search_says_what_to_install(tmp_path):
    """The core install has no Optuna: hparams_search=optuna ends with one line naming the extra."""
    env = without_packages(tmp_path, "optuna")
    proc = subprocess.run(
        [script("vaelab-train"), "-m", "hparams_search=optuna", "debug=fast"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    expected = (
        "error: hparams_search=optuna (Hydra's sweeper vaelab_optuna) needs optuna, which the core install "
        "leaves out: pip install 'vaelab[optuna]'"
    )
    assert errors == [expected], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
