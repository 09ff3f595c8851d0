"""Where a run's wall-clock time and memory go: the ``Timings`` callback (not in the
default callbacks; bench/startup.py and users add it with
``+callbacks.timings._target_=vaelab.timings.Timings``) and the process readings it
takes."""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


def max_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_start_time() -> float | None:
    """When this process started (seconds since the epoch), from /proc on Linux; else None."""
    try:
        fields = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None


class Timings(pl.Callback):
    """Wall-clock times of a run, written to ``dirpath/timings.json`` when fit ends
    (rank zero): when the process and fit started, when the first training step started
    and ended, the seconds spent in fit, in training (fit without validation and
    sanity checks) and in validation, each epoch's training seconds (``epoch_train_s``,
    its validation left out), and the process's peak memory at fit start and end. With ``announce``, the first step's start is also
    printed as one line, ``vaelab: first training step at <unix time>``, for tools that
    time a command (bench/startup.py).

    Inside a sweep whose launcher reuses worker processes, the process started before
    the job did; ``fit_start`` is the job's own clock then.
    """

    #: the clock that durations are measured on (tests give it one that they advance)
    clock = staticmethod(time.perf_counter)

    def __init__(self, dirpath: str, filename: str = "timings.json", announce: bool = True):
        self.path = Path(dirpath) / filename
        self.announce = announce
        self.times: dict[str, Any] = {}
        self._validation_start: float | None = None
        self.validation_s = 0.0
        self._epoch_start: tuple[float, float] | None = None  # (clock, validation_s) at its start

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.times = {
            "process_start": process_start_time(),
            "fit_start": time.time(),
            "max_rss_mb_at_fit_start": max_rss_mb(),
        }
        self._fit_start = self.clock()
        self.times["epoch_train_s"] = []
        self.validation_s = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = (self.clock(), self.validation_s)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning validates inside the training epoch, before this hook: that time is taken out
        if self._epoch_start is not None:
            start, validation_before = self._epoch_start
            self.times["epoch_train_s"].append(self.clock() - start - (self.validation_s - validation_before))
            self._epoch_start = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if "first_step_start" not in self.times:
            self.times["first_step_start"] = now = time.time()
            if self.announce and trainer.is_global_zero:
                print(f"vaelab: first training step at {now:.6f}", flush=True)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.times.setdefault("first_step_end", time.time())

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_start = self.clock()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validation_start is not None:
            self.validation_s += self.clock() - self._validation_start
            self._validation_start = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        t = self.times
        t["fit_end"] = time.time()
        t["fit_s"] = self.clock() - self._fit_start
        t["validation_s"] = self.validation_s  # sanity checks included
        t["train_s"] = t["fit_s"] - self.validation_s
        if "first_step_start" in t:
            t["fit_start_to_first_step_s"] = t["first_step_start"] - t["fit_start"]
            if t["process_start"] is not None:
                t["process_start_to_first_step_s"] = t["first_step_start"] - t["process_start"]
        t["max_rss_mb_at_fit_end"] = max_rss_mb()
        t["global_step"] = trainer.global_step
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(t, indent=2) + "\n")
