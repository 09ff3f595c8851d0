"""The GPUs a job of a parallel sweep trains on: a slot of its own among the
machine's devices, held for as long as the job runs (:class:`vaelab.sweeps.DeviceSlot`)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from vaelab import sweeps
from vaelab.accelerators import trains_on_gpu


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
