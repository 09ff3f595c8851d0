"""What ``vaelab-train`` does with a composed config: check it, build the data, model
and Trainer, fit, test, and record the run. Each concern lives in its own module;
this one puts them in order."""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vaelab import ddp, sweeps
from vaelab.accelerators import check_gpus_exist, trains_on_gpu, warn_if_bfloat16_is_emulated
from vaelab.build import build_model, build_trainer, load_data_now
from vaelab.checkpoints import check_training_left, check_weights_fit, read_checkpoint, validate_where_training_stopped
from vaelab.config import instantiate_dict
from vaelab.device_slots import device_slot
from vaelab.job_start import JobStart, job_start
from vaelab.optimized_metric import check_sweeper_metric
from vaelab.run_record import (
    describe_job,
    describe_run,
    record_done,
    record_run,
    record_start,
    report_fast_dev_run,
    scalar_metrics,
    warn_if_collapsed,
    write_summary,
)
from vaelab.schema import validate
from vaelab.wandb_runs import finish_experiment_trackers, use_offline_wandb_without_key

log = logging.getLogger("vaelab.train")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test one model; returns the final metrics (val and test).

    Inside a sweep, a job that already finished returns its recorded metrics and an
    interrupted one continues from its last checkpoint (see :mod:`vaelab.job_start`);
    a job folder is trained by one process at a time.
    """
    validate(cfg)
    check_sweeper_metric(cfg)
    ddp_strategy = "DDP" in str(OmegaConf.select(cfg, "trainer.strategy._target_", default=""))
    check_gpus_exist(
        cfg.trainer.get("accelerator"),
        cfg.trainer.get("devices"),
        cpu_hint="trainer=ddp_cpu" if ddp_strategy else "trainer=cpu",
    )
    warn_if_bfloat16_is_emulated(cfg)
    output_dir = Path(cfg.paths.output_dir)
    holds_job_folder = sweeps.in_multirun() and not ddp.is_extra_rank() and rank_zero_only.rank == 0
    with sweeps.JobFolderLock(output_dir) if holds_job_folder else nullcontext():
        start = job_start(cfg, output_dir)
        if start.finished_metrics is not None:
            return start.finished_metrics
        return train_job(cfg, output_dir, start)


def train_job(cfg: DictConfig, output_dir: Path, start: JobStart) -> dict[str, float]:
    record_start(cfg, output_dir, folder_lock=sweeps.in_multirun())  # run.json: running
    checkpoint = read_checkpoint(start.ckpt_path) if start.ckpt_path else None
    if cfg.get("seed") is not None:
        # one stream per DDP rank (weights are broadcast from rank zero; the data order
        # has generators of its own), so that ranks do not draw the same noise
        pl.seed_everything(cfg.seed + rank_zero_only.rank, workers=True)
    n_jobs = sweeps.parallel_jobs()
    threads = sweeps.limit_threads(n_jobs)
    with device_slot(cfg, n_jobs) as claim:
        datamodule = instantiate(cfg.data)
        load_data_now(datamodule)
        model = build_model(cfg, datamodule)
        record_run(output_dir, describe_job(cfg, model, datamodule))
        if checkpoint is not None:
            check_weights_fit(checkpoint, model, start.ckpt_path)
        job = JobTrainer.build(cfg, model, datamodule, claim.devices)
        if checkpoint is not None and not start.resuming_interrupted_job:
            check_training_left(checkpoint, job.trainer, start.ckpt_path)
        del checkpoint  # Lightning reads the file again when it resumes
        metrics = fit_and_test(cfg, job, model, datamodule, start.ckpt_path)

    trainer = job.trainer
    if trainer.fast_dev_run:
        report_fast_dev_run(metrics, output_dir)
        return metrics
    where = {"threads": threads, "parallel_jobs": n_jobs, "devices": claim.devices, "devices_held": claim.held}
    write_summary(trainer, metrics, output_dir, {**where, **job_facts(cfg, trainer, model, datamodule)})
    record_done(output_dir)
    warn_if_collapsed(metrics, model.latent_dim)
    return metrics


@dataclass
class JobTrainer:
    """The job's Trainer, the resolved config its loggers record, and the config any
    extra DDP ranks of this job train with (this job's, exactly, with the devices it
    holds; :func:`fit_and_test` adds the checkpoint it resumes from)."""

    trainer: pl.Trainer
    resolved: dict[str, Any]
    rank_config: dict[str, Any]

    @classmethod
    def build(cls, cfg: DictConfig, model: Any, datamodule: Any, devices: list[int] | None) -> JobTrainer:
        resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        # set after construction: passed through instantiate, its _target_ keys would be built
        model.run_config = resolved
        use_offline_wandb_without_key(cfg)
        overrides = {"devices": devices} if devices is not None and trains_on_gpu(cfg) else {}
        callbacks, loggers = instantiate_dict(cfg.get("callbacks")), instantiate_dict(cfg.get("logger"))
        trainer = build_trainer(cfg, callbacks, loggers, overrides)
        if hasattr(datamodule, "per_process_batch_size"):
            datamodule.per_process_batch_size(trainer.world_size)  # fails now, not at the first epoch
        return cls(trainer, resolved, {**resolved, "trainer": {**resolved["trainer"], **overrides}})


def job_facts(cfg: DictConfig, trainer: pl.Trainer, model: Any, datamodule: Any) -> dict[str, Any]:
    """What metrics.json says about where and what the job trained."""
    return {
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "world_size": trainer.world_size,
        "ddp_pids": ddp.rank_pids(trainer),
        "run": describe_run(cfg, model, datamodule),
        "latents": model.latent_report,
    }


def fit_and_test(cfg: DictConfig, job: JobTrainer, model: Any, datamodule: Any, ckpt_path: Any) -> dict[str, Any]:
    """Fit (resuming from ``ckpt_path``), then test the best checkpoint; the job's W&B
    run ends with the test numbers, or as failed when anything here raises."""
    trainer, metrics = job.trainer, None
    try:
        for logger in trainer.loggers:
            logger.log_hyperparams(job.resolved)
        with ddp.job_processes(trainer, {**job.rank_config, "ckpt_path": str(ckpt_path) if ckpt_path else None}):
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
            validate_where_training_stopped(trainer, model, datamodule)
            fitted = scalar_metrics(trainer.callback_metrics)
            if cfg.get("test"):
                fitted.update(test_best(trainer, model, datamodule))
            metrics = fitted
    finally:
        finish_experiment_trackers(trainer, metrics)
    return metrics


def test_best(trainer: pl.Trainer, model: pl.LightningModule, datamodule: Any) -> dict[str, Any]:
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if not best and not trainer.fast_dev_run:
        log.warning("No best checkpoint was saved; testing the weights at the end of training.")
    trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
    return {**scalar_metrics(trainer.callback_metrics), "best_checkpoint": best}
