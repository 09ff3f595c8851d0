"""What ``vaelab-eval`` does: checkpoint -> test ELBO and importance-weighted NLL, as JSON.

The model, likelihood and data module are rebuilt from the composed config that
training stored inside the checkpoint, so nothing else has to be passed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vaelab.accelerators import check_gpus_exist
from vaelab.build import build_model
from vaelab.checkpoints import check_weights_fit, read_checkpoint
from vaelab.exceptions import ConfigError
from vaelab.run_record import scalar_metrics

log = logging.getLogger("vaelab.evaluate")


def stored_data_config(checkpoint: dict[str, Any], overrides: DictConfig | None, ckpt_path: str) -> DictConfig:
    """The data config the checkpoint was trained with, with this command's ``data.*``
    overrides applied (every key must be one the stored config has)."""
    stored = OmegaConf.create(checkpoint["vaelab_config"]["data"])
    overrides = overrides or OmegaConf.create({})
    for key in _leaf_keys(overrides):
        if OmegaConf.select(stored, key, default=_ABSENT) is _ABSENT:
            raise ConfigError(
                f"data.{key} is not a key of the data config stored in {ckpt_path}; its keys are "
                + ", ".join(f"data.{k}" for k in _leaf_keys(stored))
            )
    return OmegaConf.merge(stored, overrides)


_ABSENT = object()


def _leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        value = node[key] if not OmegaConf.is_missing(node, key) else None
        if isinstance(value, DictConfig):
            keys += _leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def quality_line(metrics: dict[str, float]) -> str:
    """``, FID (own classifier) samples 12.3 / recon 4.5, sharpness ...`` where measured."""
    parts = []
    if "test/fid_samples" in metrics:
        parts.append(
            f"FID (own classifier) samples {metrics['test/fid_samples']:.2f} / recon {metrics['test/fid_recon']:.2f}"
        )
    if "test/sharpness_samples" in metrics:
        parts.append(
            f"sharpness samples {metrics['test/sharpness_samples']:.3f} / recon {metrics['test/sharpness_recon']:.3f}"
        )
    return "".join(f", {part}" for part in parts)


def newest_checkpoint(log_dir: Path) -> Path | None:
    """The most recently written best checkpoint of any training run under ``log_dir``."""
    found = [
        *log_dir.glob("*/runs/*/checkpoints/best_*.ckpt"),
        *log_dir.glob("*/multiruns/*/*/checkpoints/best_*.ckpt"),
    ]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def require_checkpoint(cfg: DictConfig) -> None:
    """ckpt_path has no default: say what to pass, with this machine's newest run as the example."""
    if not OmegaConf.is_missing(cfg, "ckpt_path"):
        return
    newest = newest_checkpoint(Path(cfg.paths.log_dir))
    example = "logs/train/runs/<run>/checkpoints/best_epochNNN.ckpt"
    if newest is not None:
        relative = Path(os.path.relpath(newest))
        example = str(newest if relative.parts[0] == ".." else relative)
    where = "the newest here" if newest is not None else "a training run's"
    raise ConfigError(
        f"ckpt_path must be set: the checkpoint to evaluate, e.g. {where}: vaelab-eval ckpt_path={example}"
    )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    require_checkpoint(cfg)
    check_gpus_exist(cfg.accelerator, key="accelerator", cpu_hint="accelerator=cpu")
    pl.seed_everything(cfg.seed, workers=True)
    checkpoint = read_checkpoint(cfg.ckpt_path)
    run_cfg = OmegaConf.create(checkpoint["vaelab_config"])
    run_cfg.data = stored_data_config(checkpoint, cfg.get("data"), cfg.ckpt_path)
    run_cfg.data.eval_batch_size = cfg.batch_size

    datamodule = instantiate(run_cfg.data)
    model = build_model(
        run_cfg,
        datamodule,
        test_iw_samples=cfg.iw_samples,
        iw_chunk_elements=cfg.iw_chunk_elements,
    )
    check_weights_fit(checkpoint, model, cfg.ckpt_path)
    model.load_state_dict(checkpoint["state_dict"])

    callbacks = [instantiate(cfg.sample_quality)] if cfg.get("sample_quality") else []
    trainer = pl.Trainer(
        accelerator=cfg.accelerator, devices=1, logger=False, enable_checkpointing=False, callbacks=callbacks
    )
    started = time.perf_counter()
    if cfg.split == "test":
        trainer.test(model, datamodule=datamodule, verbose=False)
    else:
        raise ConfigError(f"split={cfg.split!r} is not supported; choose test")
    seconds = time.perf_counter() - started

    result = {
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "iw_samples": int(cfg.iw_samples),
        "split": cfg.split,
        "num_images": int(datamodule.test_images.shape[0]),
        "seconds": round(seconds, 2),
        "metrics": scalar_metrics(trainer.callback_metrics),
    }
    output_file = Path(cfg.output_file)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    output_file.write_text(json.dumps(result, indent=2) + "\n")
    metrics = result["metrics"]
    print(
        f"test ELBO {metrics['test/elbo']:.3f} nats, IW NLL (K={cfg.iw_samples}) {metrics['test/nll_iw']:.3f} nats, "
        f"{metrics['test/bpd_iw']:.4f} bits/dim{quality_line(metrics)} -> {output_file}",
        flush=True,
    )
    return result
