"""Entry point `vaelab-eval`: checkpoint -> test ELBO and importance-weighted NLL, as JSON.

    vaelab-eval ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt iw_samples=5000

The model, likelihood and data module are rebuilt from the composed config that
training stored inside the checkpoint, so nothing else has to be passed.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vaelab.config import config_dir
from vaelab.errors import report_user_errors, run_cli
from vaelab.train import build_model, scalar_metrics

log = logging.getLogger("vaelab.evaluate")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={str(path)!r}: no such checkpoint file")
    # Our own checkpoints hold plain containers and tensors only.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if "vaelab_config" not in checkpoint:
        raise ValueError(f"ckpt_path={str(path)!r} was not written by vaelab-train (it holds no vaelab_config)")
    return checkpoint


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    pl.seed_everything(cfg.seed, workers=True)
    checkpoint = load_checkpoint(cfg.ckpt_path)
    run_cfg = OmegaConf.create(checkpoint["vaelab_config"])
    run_cfg.data = OmegaConf.merge(run_cfg.data, cfg.get("data") or {})
    run_cfg.data.eval_batch_size = cfg.batch_size

    datamodule = instantiate(run_cfg.data)
    model = build_model(
        run_cfg,
        datamodule,
        test_iw_samples=cfg.iw_samples,
        iw_chunk_elements=cfg.iw_chunk_elements,
    )
    model.load_state_dict(checkpoint["state_dict"])

    trainer = pl.Trainer(accelerator=cfg.accelerator, devices=1, logger=False, enable_checkpointing=False)
    started = time.perf_counter()
    if cfg.split == "test":
        trainer.test(model, datamodule=datamodule, verbose=False)
    else:
        raise ValueError(f"split={cfg.split!r} is not supported; choose test")
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
        f"{metrics['test/bpd_iw']:.4f} bits/dim -> {output_file}",
        flush=True,
    )
    return result


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
@report_user_errors
def hydra_main(cfg: DictConfig) -> None:
    evaluate(cfg)


def main() -> None:
    """Console entry point (vaelab-eval)."""
    run_cli(hydra_main)


if __name__ == "__main__":
    main()
