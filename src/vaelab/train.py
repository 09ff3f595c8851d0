"""Entry point `vaelab-train`: compose -> instantiate -> fit -> test -> return the metric.

    vaelab-train                                   # MLP VAE on bundled digits
    vaelab-train model=conv likelihood.sigma=optimal model.beta=2
    vaelab-train ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt   # resume

This module imports only Hydra and OmegaConf: a config that does not compose fails
before torch and Lightning are imported. The training itself is :mod:`vaelab.training`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from vaelab.config import config_dir
from vaelab.errors import report_user_errors, run_cli


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
@report_user_errors
def hydra_main(cfg: DictConfig) -> float | None:
    from vaelab.optimized_metric import sweeper_value
    from vaelab.training import train

    return sweeper_value(cfg, train(cfg))


def main() -> None:
    """Console entry point (vaelab-train)."""
    run_cli(hydra_main)


if __name__ == "__main__":
    main()
