"""Where a job starts: fresh, from a checkpoint the user passed, from its own last
checkpoint (a sweep job that was interrupted), or not at all (a sweep job that
already finished reuses its result). A single run never writes over a finished one.

The interrupted job's checkpoint is named here (``sweeps.interrupted_checkpoint``)
rather than left to ``trainer.fit(ckpt_path="last")``: Lightning resolves "last" only
inside ``fit``, after the data are loaded and the loggers have started, and vaelab
reads the file before that to check it fits the model (one-line errors) and to say
which file the job continues from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vaelab import ddp, sweeps
from vaelab.exceptions import ConfigError


@dataclass
class JobStart:
    ckpt_path: str | Path | None = None
    #: the recorded metrics of a sweep job that already finished (nothing to train)
    finished_metrics: dict[str, Any] | None = None
    #: continuing its own interrupted run: the epochs left are not checked against max_epochs
    resuming_interrupted_job: bool = False


def refuse_to_overwrite(output_dir: Path) -> None:
    """A run folder that already holds a run's results is never written over."""
    taken = [name for name in ("metrics.json", "checkpoints", "csv", "images") if (output_dir / name).exists()]
    if taken:
        raise ConfigError(
            f"hydra.run.dir={output_dir} already holds a run ({', '.join(taken)}); choose another folder "
            "(to continue that run, pass its checkpoint as ckpt_path=)"
        )


def job_start(cfg: DictConfig, output_dir: Path) -> JobStart:
    start = JobStart(ckpt_path=cfg.get("ckpt_path"))
    if ddp.is_extra_rank():
        return start  # a DDP rank > 0 of a job that rank zero has checked and set up
    if not sweeps.in_multirun():
        refuse_to_overwrite(output_dir)
        return start
    finished = sweeps.finished_result(output_dir)
    if finished is not None:
        print(f"Job already finished, reusing its result: {output_dir / 'metrics.json'}", flush=True)
        return JobStart(finished_metrics=finished["metrics"])
    (output_dir / "FAILED").unlink(missing_ok=True)  # an earlier try's; this one may succeed
    if not start.ckpt_path:
        start.ckpt_path = sweeps.interrupted_checkpoint(output_dir)
        start.resuming_interrupted_job = start.ckpt_path is not None
    if start.ckpt_path:
        print(f"Job was interrupted, continuing from {start.ckpt_path}", flush=True)
    return start
