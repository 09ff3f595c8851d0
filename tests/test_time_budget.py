"""The learning-rate schedule over the wall-time budget (callbacks.time_budget_lr):
its shapes, the rate a real Trainer's steps get as Lightning's Timer runs down, and the
end-to-end run whose last epoch trains at the bottom of the schedule."""

from __future__ import annotations

import math
import time

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer, read_metrics, run_cli, run_folders
from lightning.pytorch.demos.boring_classes import BoringModel

from vaelab.exceptions import ConfigError
from vaelab.time_budget import TimeBudgetLR, lr_factor, time_budget_lr


def test_the_shapes_start_at_the_base_rate_and_end_at_the_final_fraction():
    for shape in ("cosine", "linear"):
        assert lr_factor(shape, 0.0, 0.1) == pytest.approx(1.0)
        assert lr_factor(shape, 1.0, 0.1) == pytest.approx(0.1)
        assert lr_factor(shape, 1.7, 0.1) == pytest.approx(0.1)  # past the budget: clipped
    assert lr_factor("cosine", 0.5) == pytest.approx(0.5)
    assert lr_factor("linear", 0.25) == pytest.approx(0.75)
    # Burda et al.: stage i (3^i of 3280 epochs) at 10^(-i/7); stages 0-5 end at 364/3280
    assert lr_factor("burda", 0.0) == 1.0
    assert lr_factor("burda", 0.2) == pytest.approx(10 ** (-6 / 7))
    assert lr_factor("burda", 0.5) == pytest.approx(0.1)
    assert lr_factor("burda", 1.0) == pytest.approx(0.1)
    steps = [lr_factor("burda", p / 1000) for p in range(1001)]
    assert all(a >= b for a, b in zip(steps, steps[1:])) and len(set(steps)) == 8


def test_a_bad_shape_or_fraction_is_refused_when_the_config_is_built():
    with pytest.raises(ConfigError, match="cosine, linear, burda"):
        TimeBudgetLR("exponential")
    with pytest.raises(ConfigError, match="final_fraction"):
        TimeBudgetLR("cosine", 1.5)
    assert time_budget_lr(None) is None


class RecordLR(pl.Callback):
    """The rate each step trains at, and the fraction of the budget spent then."""

    def __init__(self, schedule: TimeBudgetLR) -> None:
        self.schedule, self.seen = schedule, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append((self.schedule.progress(), trainer.optimizers[0].param_groups[0]["lr"]))


class SlowAdam(BoringModel):
    """Lightning's boring model with Adam at 0.01, each step made to take ~5 ms so a
    2-second budget holds some hundreds of steps on any machine."""

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)

    def training_step(self, batch, batch_idx):
        time.sleep(0.005)
        return super().training_step(batch, batch_idx)


def timed_trainer(root, seconds: float, epochs: int, callbacks: list) -> pl.Trainer:
    """A quiet Trainer with a wall-time budget: training steps only, nothing written."""
    return quiet_trainer(
        max_time={"seconds": seconds},
        max_epochs=epochs,
        callbacks=callbacks,
        default_root_dir=root,
        limit_val_batches=0,
    )


def test_every_step_trains_at_the_rate_of_the_budget_spent_and_the_last_near_the_end(tmp_path):
    schedule = TimeBudgetLR("cosine", final_fraction=0.0)
    record = RecordLR(schedule)
    trainer = timed_trainer(tmp_path, seconds=2, epochs=-1, callbacks=[schedule, record])
    trainer.fit(SlowAdam())
    progress, lrs = zip(*record.seen)
    assert len(lrs) > 20
    # each step's rate is the shape at the budget spent as that step starts
    for p, lr in record.seen:
        assert lr == pytest.approx(0.01 * lr_factor("cosine", p), rel=0.05, abs=2e-5)
    assert lrs[0] == pytest.approx(0.01, rel=0.01)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    # Lightning's Timer stops at the first step that ends past the budget
    assert progress[-1] > 0.9 and lrs[-1] < 0.01 * 0.03


def test_the_schedule_refuses_a_run_without_a_budget_or_with_an_epoch_schedule(tmp_path):
    trainer = quiet_trainer(max_epochs=1, callbacks=[TimeBudgetLR()], default_root_dir=tmp_path)
    with pytest.raises(ConfigError, match="trainer.max_time"):
        trainer.fit(BoringModel())

    class WithScheduler(BoringModel):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1)]

    trainer = quiet_trainer(max_time={"seconds": 5}, callbacks=[TimeBudgetLR()], default_root_dir=tmp_path)
    with pytest.raises(ConfigError, match="model.scheduler=null"):
        trainer.fit(WithScheduler())


def test_a_run_from_the_command_line_ends_at_the_bottom_of_its_schedule(tmp_path):
    run_cli(
        "vaelab-train",
        "debug=short",
        "trainer.max_epochs=-1",
        "trainer.max_time=00:00:00:06",
        "model.scheduler=null",
        "model.optimizer.lr=0.002",
        "callbacks.time_budget_lr.shape=linear",
        "callbacks.time_budget_lr.final_fraction=0.1",
        "trainer.enable_progress_bar=false",
        cwd=tmp_path,
    )
    (run,) = run_folders(tmp_path)
    metrics = read_metrics(run)["metrics"]
    # the last rate logged is the last step's, which started within a step and an
    # epoch's validation of the 6 s budget's end: near the floor, never below it (float32)
    assert 0.002 * 0.1 * (1 - 1e-6) <= metrics["train/lr"] <= 0.002 * lr_factor("linear", 0.75, 0.1)
    assert math.isfinite(metrics["test/elbo"])


def test_the_command_line_says_what_to_set_when_the_budget_is_missing(tmp_path):
    proc = run_cli("vaelab-train", "debug=short", "callbacks.time_budget_lr.shape=cosine", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "trainer.max_time" in proc.stderr + proc.stdout


def test_the_plain_loop_stops_after_the_budget_on_the_same_schedule(tmp_path):
    from hydra.utils import instantiate
    from test_configs import composed

    from vaelab.reference import train_reference

    cfg = composed("likelihood=bernoulli", tmp_path=tmp_path)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    result = train_reference(cfg, datamodule, epochs=100_000, seed=1, time_budget_s=1.5, schedule="cosine")
    # stopped by the budget, after the first step that ended past it, that epoch validated
    assert result.train_seconds >= 1.5 and result.steps > 0 and 1 <= len(result.val_elbo) < 100_000
    assert math.isfinite(result.elbo)
    with pytest.raises(ValueError, match="time_budget_s"):
        train_reference(cfg, datamodule, epochs=1, seed=1, schedule="cosine")


def test_a_resumed_run_goes_on_from_the_budget_and_base_rate_it_stopped_at(tmp_path):
    """Lightning's Timer saves its clock in the checkpoint and the optimiser keeps
    ``initial_lr``: a run resumed from a checkpoint continues the schedule where it
    stopped, instead of starting the budget again or taking the decayed rate as its base."""

    first_schedule = TimeBudgetLR("cosine")
    first = RecordLR(first_schedule)
    # 9 epochs of 32 steps of ~5 ms: about a quarter of the budget
    trainer = timed_trainer(tmp_path, seconds=6, epochs=9, callbacks=[first_schedule, first])
    trainer.fit(SlowAdam())
    trainer.save_checkpoint(tmp_path / "stopped.ckpt")
    stopped_at, stopped_lr = first.seen[-1]
    assert 0.05 < stopped_at < 0.9 and stopped_lr < 0.01 * lr_factor("cosine", 0.05)

    schedule = TimeBudgetLR("cosine")
    resumed = RecordLR(schedule)
    trainer = timed_trainer(tmp_path, seconds=6, epochs=10, callbacks=[schedule, resumed])
    trainer.fit(SlowAdam(), ckpt_path=tmp_path / "stopped.ckpt")
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == 0.01
    progress, lr = resumed.seen[0]
    assert progress > stopped_at  # the clock went on from the checkpoint's
    assert lr == pytest.approx(0.01 * lr_factor("cosine", progress), rel=0.05)
    assert lr <= stopped_lr


@pytest.mark.slow
def test_the_burda_experiment_runs_its_rate_down_over_its_budget(tmp_path):
    """experiment=burda_mnist has no epoch scheduler: its rate is a cosine over
    trainer.max_time (here 4 s of MNIST-shaped data), 0 when the budget ends; without a
    budget it says what to set instead of training on an unfinished schedule."""
    from test_data import write_mnist

    write_mnist(tmp_path / "mnist", n_train=600, n_test=100)
    common = ("experiment=burda_mnist", f"data.root={tmp_path / 'mnist'}", "trainer.enable_progress_bar=false")
    run_cli("vaelab-train", *common, "trainer.max_time=00:00:00:04", cwd=tmp_path)
    (run,) = run_folders(tmp_path, "burda_mnist")
    metrics = read_metrics(run)["metrics"]
    # the last rate logged is the last epoch's last step's: within an epoch of the end
    assert metrics["train/lr"] < 2e-3 * lr_factor("cosine", 0.75)
    proc = run_cli("vaelab-train", *common, "trainer.max_time=null", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "trainer.max_time" in proc.stderr + proc.stdout


class WriteRates(pl.Callback):
    """Writes the rate of every step of this process to ``<folder>/rates_rank<r>.txt``."""

    def __init__(self, folder) -> None:
        self.folder, self.rates = folder, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_end(self, trainer, pl_module) -> None:
        (self.folder / f"rates_rank{trainer.global_rank}.txt").write_text("\n".join(map(repr, self.rates)))


@pytest.mark.slow
def test_every_ddp_process_steps_at_the_same_rate(tmp_path):
    """DDP keeps its replicas equal only if every process applies the same update. Each
    process's Timer has its own clock, started when that process reached training, so
    rates read from it differ in their last digits from process to process; the
    schedule takes rank zero's budget spent instead, and the rates agree exactly."""
    trainer = quiet_trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_time={"seconds": 2},
        max_epochs=-1,
        callbacks=[TimeBudgetLR("cosine"), WriteRates(tmp_path)],
        default_root_dir=tmp_path,
        limit_val_batches=0,
    )
    trainer.fit(SlowAdam())
    rates = [(tmp_path / f"rates_rank{rank}.txt").read_text().split() for rank in (0, 1)]
    assert len(rates[0]) > 20 and float(rates[0][-1]) < 0.01 * 0.1
    assert rates[0] == rates[1]
