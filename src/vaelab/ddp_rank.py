"""``python -m vaelab.ddp_rank``: one extra DDP rank of a job, started by
:class:`vaelab.ddp.JobScriptLauncher` with the job's resolved config in the
environment. It trains that config without Hydra (see :mod:`vaelab.ddp`)."""

from __future__ import annotations

import json
import logging
import os

from omegaconf import OmegaConf

from vaelab.console import quiet_library_noise
from vaelab.ddp import JOB_CONFIG_ENV
from vaelab.training import train


def main() -> None:
    quiet_library_noise()
    logging.basicConfig(level=logging.WARNING, format=f"[rank {os.environ.get('LOCAL_RANK', '?')}] %(message)s")
    train(OmegaConf.create(json.loads(os.environ[JOB_CONFIG_ENV])))


if __name__ == "__main__":
    main()
