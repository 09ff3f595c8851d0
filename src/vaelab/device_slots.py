"""The GPUs a job of a parallel sweep trains on: a slot of its own among the
machine's devices, held for as long as the job runs (:class:`DeviceSlot`)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from vaelab import locks
from vaelab.accelerators import trains_on_gpu


class DeviceSlot:
    """An exclusive claim on one of ``count`` device slots, held with a file lock for
    as long as the job runs: parallel jobs on one machine never share a slot (a GPU),
    whatever order they start and finish in. The lock is released by the OS if the job
    dies, so a crashed job never strands its GPU."""

    def __init__(self, count: int, lock_dir: str | Path | None = None, group: str = "devices"):
        if count < 1:
            raise ValueError("DeviceSlot needs at least one device")
        self.count = count
        self.lock_dir = Path(lock_dir or Path(tempfile.gettempdir()) / "vaelab-locks")
        self.group = group
        self.index: int | None = None
        self._handle: Any = None

    def acquire(self, poll_s: float = 0.2, timeout_s: float = 24 * 3600) -> int:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        while True:
            for index in range(self.count):
                handle = locks.try_lock(self.lock_dir / f"{self.group}-{index}.lock")
                if handle is not None:
                    self.index, self._handle = index, handle
                    return index
            if time.monotonic() > deadline:
                raise TimeoutError(f"no free device slot among {self.count} after {timeout_s} s")
            time.sleep(poll_s)

    def release(self) -> None:
        if self._handle is not None:
            locks.unlock(self._handle)
            self._handle, self.index = None, None

    def __enter__(self) -> int:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


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
    with DeviceSlot(slots) as slot:
        claim.devices = list(range(slot * per_job, (slot + 1) * per_job))
        print(f"Job takes device slot {slot} of {slots}: devices {claim.devices}", flush=True)
        start = time.time()
        try:
            yield claim
        finally:
            claim.held = [start, time.time()]
