"""Speed options and the lean training step: model.compile, mixed precision, channels_last,
the training metrics summed on the device, data held on the training device, lazy imports.

Each option trains a few real steps on the bundled digits; `-m slow` marks the ones
that wait for torch.compile.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from test_configs import composed

from vaelab import accelerators
from vaelab.build import build_model
from vaelab.data import ImageDataModule
from vaelab.data.sources import Digits
from vaelab.model import maths
from vaelab.schema import ConfigError, validate


class Record(pl.Callback):
    """What the training steps produced: the loss, and the VAE forward's outputs."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.forward_outputs: list[dict[str, torch.Tensor]] = []
        self.batch_sizes: list[int] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def keep(module, args, out):
            if module.training:
                self.forward_outputs.append({k: v.detach() for k, v in out.items()})

        pl_module.register_forward_hook(keep)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach())
        self.batch_sizes.append(batch[0].shape[0])


def train_steps(tmp_path, *overrides: str, steps: int = 3, **trainer_kwargs):
    """A few training steps of the composed config on digits; returns (model, record, trainer)."""
    cfg = composed(*overrides, tmp_path=tmp_path)
    validate(cfg)
    pl.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data)
    model = build_model(cfg, datamodule)
    record = Record()
    options = dict(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    extra = trainer_kwargs.pop("callbacks", [])
    options.update(trainer_kwargs)
    trainer = instantiate(cfg.trainer, callbacks=[record, *extra], **options)
    trainer.fit(model, datamodule=datamodule)
    return model, record, trainer


def assert_float32_and_finite(record: Record) -> None:
    assert record.losses and record.forward_outputs
    for loss in record.losses:
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
    for out in record.forward_outputs:
        for name in ("log_px", "kl_per_dim", "decoder_out"):
            assert out[name].dtype == torch.float32, name
            assert torch.isfinite(out[name]).all(), name


def built(tmp_path, *overrides: str):
    """The data module (set up) and the VAE of a composed config."""
    cfg = composed(*overrides, tmp_path=tmp_path)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    return datamodule, build_model(cfg, datamodule)


def one_batch(datamodule, model, n: int = 32) -> torch.Tensor:
    torch.manual_seed(0)
    return model.likelihood.prepare(datamodule.train_images[:n], model.levels)


def loss_of(model, x: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """The training loss of ``x`` with a fixed reparameterisation noise."""
    torch.manual_seed(seed)
    out = model(x)
    return -out["log_px"].mean() + maths.free_bits_kl(out["kl_per_dim"], model.free_bits)


# -- config keys and their checks -------------------------------------------------------------
def test_the_options_are_off_by_default_and_typed(tmp_path):
    for model in ("mlp", "conv"):
        cfg = composed(f"model={model}", tmp_path=tmp_path)
        assert cfg.model.compile is False and cfg.model.channels_last is False
        assert cfg.trainer.precision == "32-true"
    with pytest.raises(ConfigCompositionException):
        composed("model.compile=maybe", tmp_path=tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.channels_last=true"], "model.channels_last=true is for convolutional networks"),
        (["trainer.precision=64-true"], "trainer.precision='64-true' is not allowed"),
        (["trainer.precision=bf16-true"], "trainer.precision='bf16-true' is not allowed"),
    ],
)
def test_bad_combinations_fail_at_start_up_with_one_line(overrides, message, tmp_path):
    cfg = composed(*overrides, tmp_path=tmp_path)
    with pytest.raises(ConfigError, match=message) as error:
        validate(cfg)
    assert "\n" not in str(error.value)


def test_good_combinations_pass(tmp_path):
    for overrides in (
        ["model=conv", "model.channels_last=true"],
        ["trainer.precision=bf16-mixed"],
        ["trainer.precision=16-mixed"],
        ["model.compile=true"],
    ):
        validate(composed(*overrides, tmp_path=tmp_path))


# -- mixed precision -------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_under_autocast_the_networks_run_in_bf16_and_the_maths_in_float32(model, tmp_path):
    datamodule, vae = built(tmp_path, f"model={model}", "likelihood.sigma=predicted")
    first = next(m for m in vae.encoder.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    seen = []
    first.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    x = one_batch(datamodule, vae)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vae(x)
        nll_iw = -vae.importance_weighted_log_likelihood(x, 3)
    assert seen and set(seen) == {torch.bfloat16}  # autocast was on inside the networks
    for name, value in [*out.items(), ("nll_iw", nll_iw)]:
        assert value.dtype == torch.float32 and torch.isfinite(value).all(), name


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])  # 16-mixed runs as bf16-mixed on a CPU
def test_mixed_precision_trains_with_float32_losses(precision, tmp_path):
    model, record, trainer = train_steps(tmp_path, f"trainer.precision={precision}")
    assert trainer.precision == "bf16-mixed"
    assert_float32_and_finite(record)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32


def test_mixed_precision_loss_is_close_to_float32(tmp_path):
    datamodule, vae = built(tmp_path)
    x = one_batch(datamodule, vae)
    exact = loss_of(vae, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss_of(vae, x)
    assert mixed.dtype == torch.float32
    assert torch.isclose(mixed, exact, rtol=0.02), (float(mixed), float(exact))


def test_the_bfloat16_probe_says_what_the_processor_reports():
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    assert accelerators.cpu_has_bfloat16() == bool({"avx512_bf16", "amx_bf16"} & set(flags))


def test_mixed_precision_on_a_cpu_that_emulates_bfloat16_is_warned_about(monkeypatch, caplog, tmp_path):
    """Without bfloat16 instructions, bf16-mixed on a CPU is 2.4 to 2.9x slower than
    float32 (BENCHMARKS.md): a run that asks for it is told so at start-up."""
    mixed, plain = composed("trainer.precision=bf16-mixed", tmp_path=tmp_path), composed(tmp_path=tmp_path)
    caplog.set_level(logging.WARNING, logger="vaelab.accelerators")
    for has_bfloat16, cfg, warned in [(False, mixed, True), (True, mixed, False), (False, plain, False)]:
        monkeypatch.setattr(accelerators, "cpu_has_bfloat16", lambda has=has_bfloat16: has)
        caplog.clear()
        accelerators.warn_if_bfloat16_is_emulated(cfg)
        assert ("trainer.precision=bf16-mixed on a CPU without bfloat16" in caplog.text) == warned, caplog.text
        assert ("32-true" in caplog.text) == warned


# -- channels_last -----------------------------------------------------------------------------
def test_channels_last_conv_trains_and_gives_the_same_loss(tmp_path):
    model, record, _ = train_steps(tmp_path, "model=conv", "model.channels_last=true")
    assert_float32_and_finite(record)
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)

    datamodule, plain = built(tmp_path, "model=conv")
    plain.load_state_dict(model.state_dict())
    x = one_batch(datamodule, plain)
    model.eval(), plain.eval()
    assert torch.allclose(loss_of(model, x), loss_of(plain, x), rtol=1e-5, atol=1e-4)


# -- torch.compile -----------------------------------------------------------------------------
def test_compile_wraps_the_networks_and_keeps_parameter_names(tmp_path):
    datamodule, compiled = built(tmp_path, "model.compile=true")
    _, eager = built(tmp_path)
    assert compiled.compile_networks and not eager.compile_networks
    assert compiled.encoder._compiled_call_impl is not None and compiled.decoder._compiled_call_impl is not None
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints load either way


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_compiled_model_trains_and_matches_eager_loss(model, tmp_path):
    compiled, record, _ = train_steps(tmp_path, f"model={model}", "model.compile=true")
    assert_float32_and_finite(record)
    datamodule, eager = built(tmp_path, f"model={model}")
    eager.load_state_dict(compiled.state_dict())
    x = one_batch(datamodule, eager)
    compiled.train(), eager.train()
    assert torch.allclose(loss_of(compiled, x), loss_of(eager, x), rtol=1e-4, atol=1e-3)


# -- the training step's metrics ------------------------------------------------------------------
def test_epoch_metrics_are_the_image_weighted_means_of_the_steps(tmp_path):
    """One epoch of digits (1437 images, the last batch short): train/loss_epoch is the
    mean over images of every step's loss, although nothing is read per step."""
    model, record, trainer = train_steps(tmp_path, steps=-1, max_epochs=1)
    losses = torch.stack(record.losses)
    sizes = torch.tensor(record.batch_sizes, dtype=torch.float32)
    assert sizes[-1] < sizes[0]  # a short last batch, weighted by its size
    expected = float((losses * sizes).sum() / sizes.sum())
    logged = trainer.callback_metrics
    assert abs(float(logged["train/loss_epoch"]) - expected) < 1e-4 * abs(expected)
    assert float(logged["train/elbo_epoch"]) == pytest.approx(
        float(logged["train/recon_epoch"] - logged["train/kl_epoch"]), rel=1e-6
    )
    for name in ("bpd", "sigma_mean", "sigma_min", "sigma_max", "beta_eff"):
        assert torch.isfinite(logged[f"train/{name}_epoch"])


def test_step_metrics_reach_the_loggers_every_log_every_n_steps(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="csv", version="")
    _, _, trainer = train_steps(tmp_path, steps=25, logger=logger, log_every_n_steps=10)
    logger.save()
    import csv

    rows = [r for r in csv.DictReader(open(tmp_path / "csv" / "metrics.csv")) if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == [9, 19]  # Lightning's own step numbering
    for name in ("elbo", "loss", "recon", "kl", "bpd", "sigma_mean", "beta_eff", "kl_weight"):
        assert all(r[f"train/{name}"] for r in rows), name
    assert set(trainer.progress_bar_metrics) == {"train/elbo_epoch"}  # step metrics bypass self.log


# -- data on the training device --------------------------------------------------------------
def test_the_data_module_holds_uint8_tensors_on_the_trainers_device():
    """Without a GPU here, the 'meta' device stands in for one: setup() moves the whole
    uint8 splits to the trainer's root device, and batches are index slices of them."""
    datamodule = ImageDataModule(Digits(), batch_size=64)
    datamodule.setup("fit")
    assert datamodule.train_images.dtype == torch.uint8 and datamodule.train_images.device.type == "cpu"
    datamodule.trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("meta")), global_rank=0, world_size=1, current_epoch=0
    )
    datamodule.setup("fit")
    for split in ("train", "val", "test"):
        assert getattr(datamodule, f"{split}_images").device.type == "meta"
        assert getattr(datamodule, f"{split}_images").dtype == torch.uint8
    assert datamodule.train_dataloader().images is datamodule.train_images  # no copy per loader
    # (a shuffled order needs a random generator, which the meta device lacks)
    images, labels = next(iter(datamodule.val_dataloader()))
    assert (
        images.device.type == "meta"
        and images.dtype == torch.uint8
        and images.shape[0] == min(64, len(datamodule.val_images))
    )


# -- imports -------------------------------------------------------------------------------------
def test_heavy_optional_packages_load_only_when_used():
    code = (
        "import sys, vaelab.train, vaelab.evaluate, vaelab.image_grids, vaelab.panels, vaelab.progress, vaelab.timings, vaelab.model.vae; "
        "print(sorted(m for m in ('wandb', 'optuna', 'tensorboard', 'tensorboardX') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_progress_bar_factory_switches_off(tmp_path):
    from vaelab.config import instantiate_dict
    from vaelab.progress import RichProgressBar, progress_bar

    assert progress_bar(enabled=False) is None
    cfg = composed("trainer.enable_progress_bar=false", tmp_path=tmp_path)
    callbacks = instantiate_dict(cfg.callbacks)
    assert not any(isinstance(c, pl.callbacks.ProgressBar) for c in callbacks)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)  # no clash with enable_progress_bar=false
    assert trainer.progress_bar_callback is None
    cfg = composed(tmp_path=tmp_path)
    trainer = instantiate(cfg.trainer, callbacks=instantiate_dict(cfg.callbacks), logger=False)
    assert isinstance(trainer.progress_bar_callback, RichProgressBar)
    assert trainer.progress_bar_callback.refresh_rate == cfg.callbacks.progress_bar.refresh_per_second == 4


def test_the_rich_bar_updates_the_training_bar_at_its_refresh_rate(tmp_path, monkeypatch):
    """Between updates the bar does nothing per batch; it is exact at each epoch's end."""
    from vaelab.progress import RichProgressBar

    bar = RichProgressBar(refresh_rate=4)  # an update every 0.25 s: every third batch
    ticks = iter(range(10**6))
    bar.clock = lambda: 0.1 * next(ticks)  # read once at every batch's end: 0.1 s a batch
    updates: list[int] = []
    original = bar._update

    def update(task, current, *args, **kwargs):
        if task is not None and task == bar.train_progress_bar_id:
            updates.append(current)
        return original(task, current, *args, **kwargs)

    monkeypatch.setattr(bar, "_update", update)
    _, _, trainer = train_steps(tmp_path, steps=10**6, callbacks=[bar], enable_progress_bar=True, max_epochs=2)
    batches = trainer.num_training_batches
    assert batches > 6
    expected = [b for b in range(1, batches + 1) if (b - 1) % 3 == 0 or b == batches]
    assert updates == expected * 2  # the same in each epoch: the schedule restarts with the epoch
    assert bar.progress.tasks[bar.train_progress_bar_id].completed == batches


def test_the_trainer_profiles_nothing_by_default_and_profiles_on_request(tmp_path):
    from lightning.pytorch.profilers import SimpleProfiler

    from vaelab.profiler import NoProfiler

    trainer = instantiate(composed(tmp_path=tmp_path).trainer, logger=False)
    assert isinstance(trainer.profiler, NoProfiler)
    outer = trainer.profiler.profile("a")
    with outer, trainer.profiler.profile("b") as inner:  # nested, as Lightning nests hooks
        assert inner is None
    assert trainer.profiler.profile("c") is outer  # one shared context: nothing built per hook

    cfg = composed("trainer.profiler=simple", tmp_path=tmp_path)
    _, _, trainer = train_steps(tmp_path, "trainer.profiler=simple", steps=3)
    assert cfg.trainer.profiler == "simple" and isinstance(trainer.profiler, SimpleProfiler)
    assert len(trainer.profiler.recorded_durations["run_training_batch"]) == 3


def test_the_hook_name_fast_path_leaves_module_attributes_alone(tmp_path):
    """VAE.__setattr__ stores Lightning's _current_fx_name directly; everything else
    still goes through nn.Module (submodules and parameters are registered)."""
    _, model = built(tmp_path)
    model._current_fx_name = "training_step"
    assert model._current_fx_name == model.__dict__["_current_fx_name"] == "training_step"
    model.extra = torch.nn.Linear(2, 2)
    model.scale = torch.nn.Parameter(torch.ones(1))
    assert "extra" in model._modules and "scale" in model._parameters
    assert "extra.weight" in model.state_dict() and "scale" in model.state_dict()


def test_timings_callback_marks_the_first_step_and_writes_its_file(tmp_path, capsys):
    from vaelab.timings import Timings

    timings = Timings(dirpath=str(tmp_path / "run"))
    train_steps(tmp_path, steps=4, callbacks=[timings])
    assert "vaelab: first training step at " in capsys.readouterr().out
    import json

    t = json.loads((tmp_path / "run" / "timings.json").read_text())
    assert t["fit_start"] <= t["first_step_start"] <= t["first_step_end"] <= t["fit_end"]
    assert t["global_step"] == 4 and t["train_s"] > 0 and t["max_rss_mb_at_fit_end"] >= t["max_rss_mb_at_fit_start"] > 0


def test_timings_callback_times_each_epoch_without_its_validation(tmp_path):
    from vaelab.timings import Timings

    skipped = {"s": 0.0}  # seconds the fake clock has been moved on by validations

    class SlowValidation(pl.Callback):  # every validation "takes" 100 s more, inside the epoch
        def on_validation_start(self, trainer, pl_module):
            skipped["s"] += 100.0

    timings = Timings(dirpath=str(tmp_path / "run"), announce=False)
    timings.clock = lambda: time.perf_counter() + skipped["s"]
    callbacks = [timings, SlowValidation()]  # Timings' clock starts before the jump
    _, _, trainer = train_steps(tmp_path, steps=10**6, callbacks=callbacks, max_epochs=3, limit_val_batches=None)
    t = timings.times
    assert trainer.current_epoch == 3 and len(t["epoch_train_s"]) == 3
    assert t["validation_s"] >= 300.0
    # none of the 100 s of any validation is counted in an epoch's training seconds
    assert all(0 < s < 100.0 for s in t["epoch_train_s"]), t["epoch_train_s"]
    assert sum(t["epoch_train_s"]) <= t["train_s"]
