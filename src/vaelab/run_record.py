"""What a run says about itself in its folder: run.json (what the job is and how far
it got: :mod:`vaelab.job_record`), metrics.json (the numbers, what was trained, where
the run held its devices) and the closing note of where its files are.

vaelab-compare reads these records instead of guessing from config keys.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vaelab import job_record
from vaelab.model.collapse import is_collapsed

log = logging.getLogger("vaelab.train")


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in sorted(metrics.items())}


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
        "likelihood": job_record.likelihood_name(type(likelihood).__name__),
        "sigma": getattr(likelihood, "sigma_mode", None),
        "data": getattr(source, "name", None) or choices.get("data") or type(source).__name__.lower(),
        "data_model": likelihood.data_model(),
        "beta": model.beta,
        "seed": cfg.get("seed"),
        "init_output_bias": model.init_output_bias,
    }


def describe_job(cfg: DictConfig, model: Any, datamodule: Any) -> dict[str, Any]:
    """What run.json states the job trains: :func:`describe_run`, and what its
    likelihood's mode alone does not say (a fixed sigma's value, an optimal sigma's
    shape, a Bernoulli likelihood's binarisation; a low-rank Gaussian's ``rank`` and a
    mixture's number of ``components``, stated only by likelihoods that have them), for
    vaelab-compare's labels."""
    likelihood = model.likelihood
    sigma = getattr(likelihood, "sigma_mode", None)
    structure = {"rank": getattr(likelihood, "rank", None), "components": getattr(likelihood, "components", None)}
    return {
        **describe_run(cfg, model, datamodule),
        "sigma_value": OmegaConf.select(cfg, "likelihood.sigma_value") if sigma == "fixed" else None,
        "optimal_shape": getattr(likelihood, "optimal_shape", None) if sigma == "optimal" else None,
        "binarize": getattr(likelihood, "binarize", None),
        **{key: int(value) for key, value in structure.items() if value is not None},
    }


@rank_zero_only
def record_start(cfg: DictConfig, output_dir: Path, folder_lock: bool) -> None:
    """run.json says the job is running (nothing for debug=fast, which saves nothing)."""
    if not cfg.trainer.get("fast_dev_run"):
        job_record.start(output_dir, folder_lock)


@rank_zero_only
def record_run(output_dir: Path, run: dict[str, Any]) -> None:
    """run.json says what the job trains (:func:`describe_job`)."""
    job_record.state_run(output_dir, run)


@rank_zero_only
def record_done(output_dir: Path) -> None:
    """run.json says the job is done (after metrics.json is written)."""
    job_record.finish(output_dir)


@rank_zero_only
def write_summary(
    trainer: pl.Trainer, metrics: dict[str, Any], output_dir: Path, extra: dict[str, Any] | None = None
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


@rank_zero_only
def report_fast_dev_run(metrics: dict[str, Any], output_dir: Path) -> None:
    """debug=fast checks that a config runs and leaves no files: its numbers (of one
    batch) are printed, and the run folder, which holds only start-up files, goes."""
    from vaelab import sweeps
    from vaelab.errors import remove_unstarted_run_dir

    shown = {k: v for k, v in metrics.items() if k in ("val/elbo", "test/elbo", "test/nll_iw")}
    print(
        "debug=fast ran one batch of each stage; nothing was saved. "
        + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()),
        flush=True,
    )
    if not sweeps.in_multirun():
        remove_unstarted_run_dir(output_dir)


def warn_if_collapsed(metrics: dict[str, Any], latent_dim: int) -> None:
    """One clear warning when the tested posterior collapsed (the decoder ignores z)."""
    active, kl = metrics.get("test/active_units"), metrics.get("test/kl")
    if is_collapsed(active, kl):
        log.warning(
            "Posterior collapse: %s of %d latent dimensions are active and the test KL is %.3g nats, so the decoder "
            "ignores z (its reconstructions and samples are one mean image). Lower model.beta, or try "
            "model.kl_warmup_steps or model.free_bits.",
            int(active or 0),
            latent_dim,
            kl if kl is not None else float("nan"),
        )
