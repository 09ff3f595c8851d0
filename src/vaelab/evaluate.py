"""Entry point `vaelab-eval`: checkpoint -> test ELBO and importance-weighted NLL, as JSON.

    vaelab-eval ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt iw_samples=5000

This module imports only Hydra and OmegaConf (a config that does not compose fails
before torch loads); the evaluation itself is :mod:`vaelab.evaluation`.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from vaelab.config import config_dir
from vaelab.errors import report_user_errors, run_cli


def data_overrides_of_stored_config(args: list[str]) -> list[str]:
    """``data.<key>=<value>`` sets a key of the data config stored in the checkpoint,
    which this command's own config cannot list in advance (the keys depend on the data
    set), so Hydra gets it as ``++data.<key>=<value>`` (set or add); :func:`evaluate`
    then refuses keys that the stored config does not have."""
    return [f"++{arg}" if arg.startswith("data.") and "=" in arg else arg for arg in args]


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
@report_user_errors
def hydra_main(cfg: DictConfig) -> None:
    from vaelab.evaluation import evaluate

    evaluate(cfg)


def main() -> None:
    """Console entry point (vaelab-eval)."""
    sys.argv[1:] = data_overrides_of_stored_config(sys.argv[1:])
    run_cli(hydra_main)


if __name__ == "__main__":
    main()
