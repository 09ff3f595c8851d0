"""Watching the SLURM jobs a sweep submits: cancel those that can never start.

Hydra's submitit launcher would wait silently for a job that pends for ever (one
that asks for more than any node of its partition has). ``vaelab-train -m
hydra/launcher=slurm`` instead watches the jobs it submitted (:class:`PendingWatch`,
driven by the launcher in ``hydra_plugins.vaelab_slurm_launcher`` at the pace of
:func:`poll_intervals`): it finds them by submitit's submission files, asks
``squeue`` for their state and reason and ``scontrol`` for what they asked for and
what their partition offers; a job pending for a reason that never clears is
cancelled and the sweep stops with a one-line
:class:`~vaelab.slurm_requests.SlurmRequestError`. A request that ``sbatch``
refuses outright is reported the same way (:func:`refusal`).

What decides (which reasons are permanent, what a request needs, what a partition
offers, the message) lives in :mod:`vaelab.slurm_requests`, as plain functions of
SLURM's text; this module only runs the commands and keeps track of the jobs.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from vaelab.slurm_requests import (
    IF_NO_NODE_FITS,
    Partition,
    Request,
    SlurmRequestError,
    is_permanent,
    message,
    never_starts,
    parse_records,
    reason_code,
)


# -- talking to the cluster ---------------------------------------------------------
def _call(*command: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _run(*command: str) -> str | None:
    """A SLURM command's output; None when it failed (SLURM busy, not reachable)."""
    proc = _call(*command)
    return proc.stdout if proc is not None and proc.returncode == 0 else None


def queue(job_id: str) -> list[tuple[str, str, str]] | None:
    """``(task id, state, reason)`` of each task of a job still in the queue ([] when
    it has left it); None when squeue failed."""
    proc = _call("squeue", "--noheader", "--array", f"--jobs={job_id}", "--format=%i|%T|%r")
    if proc is None or proc.returncode != 0:
        # a job SLURM has forgotten (MinJobAge after it ended) is an "invalid job id"
        return [] if proc is not None and "Invalid job id" in proc.stderr else None
    return [tuple(line.split("|", 2)) for line in proc.stdout.splitlines() if line.count("|") >= 2]  # type: ignore[misc]


def partition_of(name: str | None) -> Partition | None:
    """The named partition (the default one for None) with its nodes, or None if unknown."""
    partitions = parse_records(_run("scontrol", "show", "partition", "--oneliner") or "")
    nodes = parse_records(_run("scontrol", "show", "node", "--oneliner") or "")
    for record in partitions:
        if (name is None and record.get("Default", "").upper() == "YES") or record.get("PartitionName") == name:
            return Partition.from_records(record, nodes)
    return None


def job_request(job_id: str) -> Request | None:
    records = parse_records(_run("scontrol", "show", "job", "--oneliner", job_id) or "")
    return Request.from_job(records[0]) if records else None


def cancel(job_ids: Iterable[str]) -> None:
    ids = list(job_ids)
    if ids:
        _run("scancel", *ids)


def refusal(error: BaseException, params: Mapping[str, Any]) -> SlurmRequestError | None:
    """The one-line error for a submission that sbatch refused (submitit raises its
    stderr), else None."""
    text = str(error)
    if not text.lstrip().startswith("sbatch: error"):
        return None
    why = "; ".join(
        line.removeprefix("sbatch: error: ").strip() for line in text.splitlines() if line.startswith("sbatch: error")
    )
    request = Request.from_launcher(params)
    partitions = parse_records(_run("scontrol", "show", "partition", "--oneliner") or "")
    return SlurmRequestError(
        message(
            request,
            partition_of(request.partition),
            refused=why,
            partitions=[p.get("PartitionName", "?") for p in partitions],
        )
    )


def poll_intervals() -> Iterator[float]:
    """Seconds between looks at the queue: often while a job is new (SLURM sets a
    never-clearing reason at submission or at its first scheduling pass), then rarely."""
    yield from (1, 1, 1, 2, 2, 3, 5, 5, 10, 10, 10, 10)
    while True:
        yield 30


# -- watching one launch ------------------------------------------------------------
_SUBMISSION = re.compile(r"^(\d+)_submission\.sh$")
#: states of a job that has left the queue or got past it: nothing more to watch
_STARTED = {
    "RUNNING",
    "COMPLETING",
    "COMPLETED",
    "CANCELLED",
    "FAILED",
    "TIMEOUT",
    "PREEMPTED",
    "SUSPENDED",
    "OUT_OF_MEMORY",
}


def submitit_root(folder: str | Path) -> Path:
    """The folder under which submitit writes a sweep's job folders (the part of
    ``hydra.launcher.submitit_folder`` before its first ``%`` placeholder)."""
    parts = Path(folder).parts
    for i, part in enumerate(parts):
        if "%" in part:
            return Path(*parts[:i])
    return Path(folder)


def submission_files(root: Path) -> dict[Path, int]:
    """submitit's ``<job id>_submission.sh`` files under ``root`` (one per sbatch
    call: a job or a whole job array), with their modification times."""
    found: dict[Path, int] = {}
    for pattern in ("*_submission.sh", "*/*_submission.sh"):
        for path in root.glob(pattern):
            if _SUBMISSION.match(path.name):
                try:
                    found[path] = path.stat().st_mtime_ns
                except FileNotFoundError:
                    continue
    return found


class PendingWatch:
    """The jobs one launch submits (found by their submission files, new or rewritten
    since the watch began), checked for pending reasons that never clear."""

    def __init__(self, submitit_folder: str | Path) -> None:
        self.root = submitit_root(submitit_folder)
        self.before = submission_files(self.root) if self.root.is_dir() else {}
        self.watching: list[str] = []
        self.done: set[str] = set()

    def job_ids(self) -> list[str]:
        """Ids of the jobs (or job arrays) submitted since the watch began."""
        for path, mtime in submission_files(self.root).items() if self.root.is_dir() else ():
            if self.before.get(path) != mtime:
                job_id = _SUBMISSION.match(path.name).group(1)  # type: ignore[union-attr]
                if job_id not in self.watching:
                    self.watching.append(job_id)
        return list(self.watching)

    def check(self) -> SlurmRequestError | None:
        """Look at the queue once; cancel jobs that can never start and return the
        error that says why (None while all is well)."""
        for job_id in self.job_ids():
            if job_id in self.done:
                continue
            tasks = queue(job_id)
            if tasks is None:
                continue  # squeue failed this time; look again later
            if not tasks or any(state in _STARTED for _, state, _ in tasks):
                self.done.add(job_id)  # it ran (so it fits), or it left the queue
                continue
            pending = [(task, reason) for task, state, reason in tasks if state == "PENDING"]
            if not pending:
                continue
            reason = next((r for _, r in pending if is_permanent(r) or reason_code(r) in IF_NO_NODE_FITS), None)
            if reason is None:
                continue
            request = job_request(job_id)
            partition = partition_of(request.partition) if request is not None else None
            if not never_starts(reason, request, partition):
                continue
            cancel([job_id])
            self.done.add(job_id)
            return SlurmRequestError(
                message(request or Request(None), partition, job_id=job_id, tasks=len(tasks), reason=reason)
            )
        return None
