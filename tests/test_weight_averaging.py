"""The moving average of the weights (callbacks.ema_weights): what it averages, and
that validation, the best checkpoint, the test after training and vaelab-eval all
score the average while a resumed run continues from the raw weights."""

from __future__ import annotations

import json
import math

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer, read_metrics, run_cli, run_folders
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from test_configs import composed

from vaelab.build import build_model
from vaelab.exceptions import ConfigError
from vaelab.model.maths import soft_floor
from vaelab.weight_averaging import EMAWeights, ema_weights


def test_the_switch_and_its_errors():
    assert ema_weights(None) is None
    assert isinstance(ema_weights(0.99), EMAWeights)
    with pytest.raises(ConfigError, match="decay=1.0"):
        ema_weights(1.0)
    with pytest.raises(ConfigError, match="update_starting_at_step"):
        ema_weights(0.9, update_starting_at_step=-1)
    with pytest.raises(ConfigError, match="update_every_n_steps=0"):
        ema_weights(0.9, update_every_n_steps=0)


@pytest.mark.parametrize(("every", "updates"), [(1, 10), (4, 3)])
def test_the_average_takes_every_nth_step(tmp_path, every, updates):
    """update_every_n_steps reaches Lightning's callback: 10 steps averaged every 4th
    are 3 updates (steps 0, 4 and 8)."""
    from lightning.pytorch.demos.boring_classes import BoringModel

    averaging = ema_weights(0.9, update_every_n_steps=every)
    trainer = quiet_trainer(
        max_epochs=1, limit_train_batches=10, limit_val_batches=0, callbacks=[averaging], default_root_dir=tmp_path
    )
    trainer.fit(BoringModel())
    assert int(averaging._average_model.n_averaged) == updates


def parameters_of(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.flatten().float() for k, v in sorted(state.items()) if v.is_floating_point()])


def test_the_test_after_training_scores_the_average_that_validation_chose(tmp_path):
    cfg = composed("likelihood=bernoulli", "trainer.enable_progress_bar=false", tmp_path=tmp_path)
    pl.seed_everything(0)
    datamodule = instantiate(cfg.data)
    model = build_model(cfg, datamodule)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    decay = 0.9
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/elbo", mode="max")
    trainer = quiet_trainer(
        max_epochs=2,
        limit_train_batches=5,
        limit_val_batches=1,
        limit_test_batches=1,
        callbacks=[ema_weights(decay), best],
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    checkpoint = torch.load(best.best_model_path, weights_only=False)
    average, raw = parameters_of(checkpoint["state_dict"]), parameters_of(checkpoint["current_model_state"])
    # the average lags the raw weights: between the start and where training got
    initial = parameters_of(start)
    assert not torch.allclose(average, raw)
    assert (average - raw).norm() < (initial - raw).norm()

    trainer.test(model, datamodule=datamodule, ckpt_path="best", verbose=False)
    # Lightning's own callback would have loaded current_model_state here
    assert torch.equal(parameters_of(model.state_dict()), average)


def test_the_average_is_what_a_run_validates_tests_and_vaelab_eval_scores(tmp_path):
    run_cli(
        "vaelab-train",
        "debug=short",
        "callbacks.ema_weights.decay=0.95",
        "trainer.enable_progress_bar=false",
        "callbacks.sample_quality.enabled=false",
        cwd=tmp_path,
    )
    (run,) = run_folders(tmp_path)
    trained = read_metrics(run)["metrics"]
    (best,) = (run / "checkpoints").glob("best_*.ckpt")
    checkpoint = torch.load(best, weights_only=False)
    assert not torch.allclose(parameters_of(checkpoint["state_dict"]), parameters_of(checkpoint["current_model_state"]))
    # resuming continues from the raw weights and the average
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert {"current_model_state", "averaging_state"} <= set(last)
    run_cli("vaelab-eval", f"ckpt_path={best}", "sample_quality.enabled=false", cwd=tmp_path)
    (scored_file,) = (tmp_path / "logs" / "eval").rglob("eval_metrics.json")
    scored = json.loads(scored_file.read_text())["metrics"]
    # the learned sigma is a weight: the test after training and vaelab-eval report the
    # average's (not the raw weights'), and the KL, a function of the weights alone, agrees
    floor = float(checkpoint["vaelab_config"]["likelihood"]["log_sigma_min"])

    def sigma(state):  # likelihood.sigma=learned_shared's sigma (its soft floor applied)
        return soft_floor(state["likelihood.log_sigma"], floor).exp().item()

    average_sigma, raw_sigma = sigma(checkpoint["state_dict"]), sigma(checkpoint["current_model_state"])
    assert average_sigma != pytest.approx(raw_sigma, rel=1e-4)
    assert trained["test/sigma_mean"] == pytest.approx(average_sigma, rel=1e-5)
    assert scored["test/sigma_mean"] == pytest.approx(average_sigma, rel=1e-5)
    assert scored["test/kl"] == pytest.approx(trained["test/kl"], rel=0.01)
    assert math.isfinite(trained["test/elbo"]) and math.isfinite(scored["test/elbo"])


def test_the_plain_loop_scores_its_moving_average(tmp_path):
    """vaelab.reference's loop with ema_decay tests PyTorch's AveragedModel of its weights:
    with a decay so close to 1 that the average stays at the first step's weights, the
    loop scores a model that has barely trained."""
    from vaelab.reference import train_reference

    cfg = composed("likelihood=bernoulli", tmp_path=tmp_path)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    trained = train_reference(cfg, datamodule, epochs=3, seed=1)
    frozen = train_reference(cfg, datamodule, epochs=3, seed=1, ema_decay=1 - 1e-9)
    never_updated = train_reference(cfg, datamodule, epochs=3, seed=1, ema_decay=1 - 1e-9, ema_start_step=10**9)
    assert frozen.steps == trained.steps
    assert frozen.elbo < trained.elbo - 10
    # an average that never started is the model as initialised: worse still
    assert never_updated.elbo <= frozen.elbo + 1
