"""Entry point `vaelab-train`: compose -> instantiate -> fit -> test -> return the metric.

    vaelab-train                                   # MLP VAE on bundled digits
    vaelab-train model=conv likelihood.sigma=optimal model.beta=2
    vaelab-train ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt   # resume
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vaelab import ddp, sweeps
from vaelab.accelerators import check_gpus_exist, trains_on_gpu
from vaelab.checkpoints import (
    check_training_left,
    check_weights_fit,
    read_checkpoint,
    validate_where_training_stopped,
)
from vaelab.config import config_dir, instantiate_dict
from vaelab.errors import remove_unstarted_run_dir, report_user_errors, run_cli
from vaelab.model.collapse import is_collapsed
from vaelab.schema import ConfigError, validate
from vaelab.wandb_runs import finish_experiment_trackers, use_offline_wandb_without_key

log = logging.getLogger("vaelab.train")


def build_model(cfg: DictConfig, datamodule: Any, **overrides: Any) -> pl.LightningModule:
    """The VAE of a composed config, sized for ``datamodule``'s images."""
    likelihood = instantiate(cfg.likelihood, image_shape=datamodule.image_shape)
    if getattr(likelihood, "binarize", None) == "none" and datamodule.levels > 2:
        raise ConfigError(
            f"likelihood.binarize=none needs binary data, but these images have {datamodule.levels} intensity "
            "levels; use likelihood.binarize=dynamic, static or threshold"
        )
    return instantiate(
        cfg.model,
        likelihood=likelihood,
        image_shape=datamodule.image_shape,
        levels=datamodule.levels,
        **overrides,
    )


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list, overrides: dict[str, Any]) -> pl.Trainer:
    """The Trainer of ``cfg.trainer``. Lightning's MisconfigurationException while it is
    built is a setting the user chose (devices, strategy, precision on this machine),
    so it is a one-line ConfigError; raised later it may be a bug and keeps its traceback."""
    try:
        return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)
    except InstantiationException as error:
        if isinstance(error.__cause__, MisconfigurationException):
            raise ConfigError(f"trainer: {error.__cause__}") from error
        raise


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in sorted(metrics.items())}


def refuse_to_overwrite(output_dir: Path) -> None:
    """A run folder that already holds a run's results is never written over."""
    taken = [name for name in ("metrics.json", "checkpoints", "csv", "images") if (output_dir / name).exists()]
    if taken:
        raise ConfigError(
            f"hydra.run.dir={output_dir} already holds a run ({', '.join(taken)}); choose another folder "
            "(to continue that run, pass its checkpoint as ckpt_path=)"
        )


def load_data_now(datamodule: pl.LightningDataModule) -> None:
    """Read (and if asked, download) the data before loggers and the trainer write
    anything, so missing or corrupt files fail at start-up. Lightning's own calls
    later find the data module already set up."""
    if rank_zero_only.rank == 0:
        datamodule.prepare_data()
    datamodule.setup("fit")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test one model; returns the final metrics (val and test).

    Inside a sweep, a job that already finished returns its recorded metrics and an
    interrupted one continues from its last checkpoint (see :mod:`vaelab.sweeps`);
    a job folder is trained by one process at a time.
    """
    validate(cfg)
    check_sweeper_metric(cfg)
    ddp_strategy = "DDP" in str(OmegaConf.select(cfg, "trainer.strategy._target_", default=""))
    check_gpus_exist(cfg.trainer.get("accelerator"), cfg.trainer.get("devices"),
                     cpu_hint="trainer=ddp_cpu" if ddp_strategy else "trainer=cpu")
    output_dir = Path(cfg.paths.output_dir)
    holds_job_folder = sweeps.in_multirun() and not ddp.is_extra_rank() and rank_zero_only.rank == 0
    with sweeps.JobFolderLock(output_dir) if holds_job_folder else nullcontext():
        return train_in_folder(cfg, output_dir)


def train_in_folder(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    ckpt_path = cfg.get("ckpt_path")
    resuming_interrupted_job = False
    if ddp.is_extra_rank():
        pass  # a DDP rank > 0 of a job that rank zero has checked and set up
    elif sweeps.in_multirun():
        finished = sweeps.finished_result(output_dir)
        if finished is not None:
            print(f"Job already finished, reusing its result: {output_dir / 'metrics.json'}", flush=True)
            return finished["metrics"]
        (output_dir / "FAILED").unlink(missing_ok=True)  # an earlier try's; this one may succeed
        if not ckpt_path:
            ckpt_path = sweeps.interrupted_checkpoint(output_dir)
            resuming_interrupted_job = ckpt_path is not None
        if ckpt_path:
            print(f"Job was interrupted, continuing from {ckpt_path}", flush=True)
    else:
        refuse_to_overwrite(output_dir)
    checkpoint = read_checkpoint(ckpt_path) if ckpt_path else None
    if cfg.get("seed") is not None:
        # one stream per DDP rank (weights are broadcast from rank zero; the data order
        # has generators of its own), so that ranks do not draw the same noise
        pl.seed_everything(cfg.seed + rank_zero_only.rank, workers=True)

    n_jobs = sweeps.parallel_jobs()
    threads = sweeps.limit_threads(n_jobs)
    with device_slot(cfg, n_jobs) as claim:
        devices = claim.devices
        datamodule = instantiate(cfg.data)
        load_data_now(datamodule)
        model = build_model(cfg, datamodule)
        if checkpoint is not None:
            check_weights_fit(checkpoint, model, ckpt_path)
        resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        # set after construction: passed through instantiate, its _target_ keys would be built
        model.run_config = resolved
        callbacks = instantiate_dict(cfg.get("callbacks"))
        use_offline_wandb_without_key(cfg)
        loggers = instantiate_dict(cfg.get("logger"))
        trainer_overrides = {"devices": devices} if devices is not None and trains_on_gpu(cfg) else {}
        trainer = build_trainer(cfg, callbacks, loggers, trainer_overrides)
        if checkpoint is not None and not resuming_interrupted_job:
            check_training_left(checkpoint, trainer, ckpt_path)
        del checkpoint  # Lightning reads the file again when it resumes
        if hasattr(datamodule, "per_process_batch_size"):
            datamodule.per_process_batch_size(trainer.world_size)  # fails now, not at the first epoch
        # what any extra DDP ranks of this job train with: this job's config, exactly
        rank_config = {**resolved, "ckpt_path": str(ckpt_path) if ckpt_path else None}
        rank_config["trainer"] = {**resolved["trainer"], **trainer_overrides}
        failed = True
        try:
            for logger in trainer.loggers:
                logger.log_hyperparams(resolved)
            with ddp.job_processes(trainer, rank_config):
                metrics = fit_and_test(cfg, trainer, model, datamodule, ckpt_path)
            failed = False
        finally:
            finish_experiment_trackers(trainer, None if failed else metrics)

    if trainer.fast_dev_run:
        report_fast_dev_run(metrics, output_dir)
        return metrics
    extra = {
        "threads": threads,
        "parallel_jobs": n_jobs,
        "devices": devices,
        "devices_held": claim.held,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "world_size": trainer.world_size,
        "ddp_pids": ddp.rank_pids(trainer),
        "run": describe_run(cfg, model, datamodule),
        "latents": model.latent_report,
    }
    write_summary(cfg, trainer, metrics, output_dir, extra)
    warn_if_collapsed(metrics, model.latent_dim)
    return metrics


@rank_zero_only
def report_fast_dev_run(metrics: dict[str, Any], output_dir: Path) -> None:
    """debug=fast checks that a config runs and leaves no files: its numbers (of one
    batch) are printed, and the run folder, which holds only start-up files, goes."""
    shown = {k: v for k, v in metrics.items() if k in ("val/elbo", "test/elbo", "test/nll_iw")}
    print("debug=fast ran one batch of each stage; nothing was saved. "
          + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()), flush=True)
    if not sweeps.in_multirun():
        remove_unstarted_run_dir(output_dir)


def describe_run(cfg: DictConfig, model: Any, datamodule: Any) -> dict[str, Any]:
    """What a run trained, stated in metrics.json so that vaelab-compare reads it
    instead of guessing from config keys: the likelihood, what its numbers are a
    density or mass of (runs compare by NLL and bits/dim only within one data set and
    data model), the sigma mode, beta and seed."""
    likelihood = model.likelihood
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    except Exception:  # noqa: BLE001 - outside a Hydra run (an extra DDP rank): no choices
        choices = {}
    source = getattr(datamodule, "source", None)
    return {
        "likelihood": type(likelihood).__name__.removesuffix("Likelihood").lower(),
        "sigma": getattr(likelihood, "sigma_mode", None),
        "data": getattr(source, "name", None) or choices.get("data") or type(source).__name__.lower(),
        "data_model": likelihood.data_model(),
        "beta": model.beta,
        "seed": cfg.get("seed"),
        "init_output_bias": model.init_output_bias,
    }


def warn_if_collapsed(metrics: dict[str, Any], latent_dim: int) -> None:
    """One clear warning when the tested posterior collapsed (the decoder ignores z)."""
    active, kl = metrics.get("test/active_units"), metrics.get("test/kl")
    if is_collapsed(active, kl):
        log.warning(
            "Posterior collapse: %s of %d latent dimensions are active and the test KL is %.3g nats, so the decoder "
            "ignores z (its reconstructions and samples are one mean image). Lower model.beta, or try "
            "model.kl_warmup_steps or model.free_bits.",
            int(active or 0), latent_dim, kl if kl is not None else float("nan"),
        )


def fit_and_test(cfg: DictConfig, trainer: pl.Trainer, model: pl.LightningModule, datamodule: Any, ckpt_path: Any) -> dict:
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    validate_where_training_stopped(trainer, model, datamodule)
    metrics = scalar_metrics(trainer.callback_metrics)
    if cfg.get("test"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best and not trainer.fast_dev_run:
            log.warning("No best checkpoint was saved; testing the weights at the end of training.")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
        metrics.update(scalar_metrics(trainer.callback_metrics))
        metrics["best_checkpoint"] = best  # type: ignore[assignment]
    return metrics


@dataclass
class DeviceClaim:
    """The devices a job holds (None: leave trainer.devices alone) and when it held them."""

    devices: list[int] | None = None
    held: list[float] | None = None  # wall-clock [start, end], recorded in metrics.json


@contextmanager
def device_slot(cfg: DictConfig, n_jobs: int) -> Iterator[DeviceClaim]:
    """The devices this job trains on when the launcher runs jobs in parallel: a slot
    of its own among the machine's GPUs (``VAELAB_DEVICE_COUNT`` overrides how many
    there are), ``trainer.devices`` GPUs per slot. None: leave trainer.devices alone.
    On CPU the slot is still taken and recorded (that is how it is tested without GPUs)
    but the trainer's devices are left as they are."""
    count = int(os.environ.get("VAELAB_DEVICE_COUNT", "0")) or (torch.cuda.device_count() if trains_on_gpu(cfg) else 0)
    claim = DeviceClaim()
    if n_jobs <= 1 or count == 0:
        yield claim
        return
    per_job = cfg.trainer.get("devices")
    per_job = per_job if isinstance(per_job, int) and per_job > 0 else 1
    slots = max(1, count // per_job)
    with sweeps.DeviceSlot(slots) as slot:
        claim.devices = list(range(slot * per_job, (slot + 1) * per_job))
        print(f"Job takes device slot {slot} of {slots}: devices {claim.devices}", flush=True)
        start = time.time()
        try:
            yield claim
        finally:
            claim.held = [start, time.time()]


@rank_zero_only
def write_summary(
    cfg: DictConfig, trainer: pl.Trainer, metrics: dict[str, Any], output_dir: Path, extra: dict[str, Any] | None = None
) -> None:
    """metrics.json in the run folder, and a note of where everything is."""
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, float)},
        "best_checkpoint": metrics.get("best_checkpoint") or None,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        **(extra or {}),
    }
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"Run folder: {output_dir}"]
    ckpt_dir = output_dir / "checkpoints"
    if ckpt_dir.is_dir():
        lines.append(f"  checkpoints: {ckpt_dir} ({', '.join(sorted(p.name for p in ckpt_dir.glob('*.ckpt')))})")
    lines.append(f"  metrics:     {output_dir / 'metrics.json'}")
    for logger in trainer.loggers:
        if logger.log_dir:
            lines.append(f"  {type(logger).__name__}: {logger.log_dir}")
    images = output_dir / "images"
    if images.is_dir():
        finals = sorted(p.name for p in images.glob("*.png") if "_epoch" not in p.name)
        lines.append(f"  images:      {images} ({', '.join(finals)})")
    shown = {k: v for k, v in summary["metrics"].items() if k.startswith("test/")}
    if shown:
        lines.append("  test: " + ", ".join(f"{k.removeprefix('test/')}={v:.4g}" for k, v in shown.items()))
    print("\n".join(lines), flush=True)


def check_sweeper_metric(cfg: DictConfig) -> None:
    """An optimising sweeper needs ``optimized_metric`` from every trial: a val/ metric
    with validation switched off can never be there, so say so before training."""
    name = str(cfg.get("optimized_metric") or "").lstrip("-")
    no_validation = cfg.trainer.get("limit_val_batches") in (0, 0.0)
    if sweeps.sweeper_optimises() and name.startswith("val/") and no_validation:
        raise ConfigError(
            f"optimized_metric={cfg.optimized_metric} needs validation, but trainer.limit_val_batches=0 switches it "
            "off; let validation run or optimise a test/ metric"
        )


def metric_for_sweeper(metrics: dict[str, Any], name: str | None) -> float | None:
    """The value of ``optimized_metric`` (``-name``: the metric negated)."""
    if not name:
        return None
    sign, key = (-1.0, name[1:]) if name.startswith("-") else (1.0, name)
    if key not in metrics:
        raise ConfigError(f"optimized_metric={name} was not logged by this trial; it logged {', '.join(sorted(metrics))}")
    return sign * float(metrics[key])


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
@report_user_errors
def hydra_main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # a single run or a grid sweep ignores the value: no job fails over a missing one
    return metric_for_sweeper(metrics, cfg.get("optimized_metric")) if sweeps.sweeper_optimises() else None


def main() -> None:
    """Console entry point (vaelab-train)."""
    run_cli(hydra_main)


if __name__ == "__main__":
    main()
