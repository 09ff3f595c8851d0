"""``run.json``: a job's own record of what it is and how far it got, so that
vaelab-compare reads it instead of guessing from config keys and file times.

vaelab-train (rank zero) writes it into the run folder, through
:mod:`vaelab.run_record`'s wrappers:

- when training starts (:func:`start`): ``status: running``, ``attempt`` (1, and one
  more each time a sweep run again continues the job), ``started`` (this attempt),
  ``first_started``, ``ended: null``, ``pid`` and ``host`` of the training process,
  ``folder_lock`` (whether it holds the job-folder lock: a sweep job) and
  ``overrides`` (the job's Hydra overrides, as ``.hydra/overrides.yaml`` has them);
- as soon as the model is built (:func:`state_run`): ``run``, what it trains
  (:func:`vaelab.run_record.describe_run`: likelihood, sigma, data, data model, beta,
  seed...), so that a running or failed job states it too; the likelihood by
  :func:`likelihood_name`;
- when ``metrics.json`` is written (:func:`finish`): ``status: done``, ``ended``;
- when it fails (:func:`fail`, from :func:`vaelab.errors.report_user_errors`):
  ``status: failed``, ``message`` (the error in one line), ``ended``. A sweep job that
  fails before training starts (a bad value, missing data) writes its record then, as
  it writes ``FAILED``; a single run records the failure only of an attempt it started
  (so a refused run never writes over the folder it was refused).

debug=fast (``trainer.fast_dev_run``) saves nothing, this record included.

A process that is killed (SIGKILL, out of time, Ctrl-C) leaves ``running`` behind.
:func:`still_running` tells whether the job still runs: a sweep job by its folder
lock (held while it trains; the OS lets go of it when the process dies); a single run,
which holds no folder lock, by whether its process is alive (on this host; from
another host it cannot tell, and the record is believed).

This module imports neither torch nor Lightning: vaelab-compare and the error
reporting read and write it.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

NAME = "run.json"
RUNNING, DONE, FAILED = "running", "done", "failed"

#: the record of each run folder this process started an attempt in (by resolved path)
_attempts: dict[str, dict[str, Any]] = {}


def likelihood_name(class_name: str) -> str:
    """How a run names its likelihood: the class name without ``Likelihood``, in snake
    case (``GaussianLikelihood`` -> ``gaussian``, ``GaussianLowRankLikelihood`` ->
    ``gaussian_low_rank``). vaelab-train states it, and vaelab-compare names a job that
    does not state it from its config's ``_target_``, so both must spell it alike."""
    stem = class_name.rpartition(".")[2].removesuffix("Likelihood")
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", stem))
    return words.lower()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _host() -> str:
    return os.uname().nodename


def read(run_dir: str | Path) -> dict[str, Any] | None:
    """The record in ``run_dir``, None when there is none; raises when it is unreadable."""
    path = Path(run_dir) / NAME
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds no record")
    return record


def _write(run_dir: Path, record: dict[str, Any]) -> None:
    """Whole or not at all: a reader never sees a half-written record."""
    run_dir.mkdir(parents=True, exist_ok=True)
    part = run_dir / f".{NAME}.{os.getpid()}.part"
    part.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(part, run_dir / NAME)


def _hydra_overrides() -> list[str] | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return [str(o) for o in HydraConfig.get().overrides.task] if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001 - outside a Hydra run: no overrides to state
        return None


def _new_attempt(run_dir: Path, folder_lock: bool) -> dict[str, Any]:
    try:
        previous = read(run_dir) or {}
    except (OSError, ValueError):
        previous = {}
    now = _now()
    attempt = previous.get("attempt")
    return {
        "status": RUNNING,
        "message": "",
        "attempt": (attempt if isinstance(attempt, int) else 0) + 1,
        "started": now,
        "first_started": previous.get("first_started") or now,
        "ended": None,
        "updated": now,
        "pid": os.getpid(),
        "host": _host(),
        "folder_lock": folder_lock,
        "overrides": _hydra_overrides(),
        "run": previous.get("run"),  # what an earlier attempt trained, until this one builds its model
    }


def start(run_dir: str | Path, folder_lock: bool) -> None:
    """This process starts an attempt at the job in ``run_dir``: status running."""
    run_dir = Path(run_dir)
    record = _new_attempt(run_dir, folder_lock)
    _attempts[str(run_dir.resolve())] = record
    _write(run_dir, record)


def _update(run_dir: Path, **fields: Any) -> bool:
    """Change this process's record of ``run_dir``; False when it started none there."""
    record = _attempts.get(str(run_dir.resolve()))
    if record is None:
        return False
    record.update(fields)
    record["updated"] = _now()
    _write(run_dir, record)
    return True


def state_run(run_dir: str | Path, run: dict[str, Any]) -> None:
    """What the attempt trains (its model is built)."""
    _update(Path(run_dir), run=run)


def finish(run_dir: str | Path) -> None:
    """The attempt finished: its metrics.json is written."""
    run_dir = Path(run_dir)
    _update(run_dir, status=DONE, message="", ended=_now())
    _attempts.pop(str(run_dir.resolve()), None)


def failure_line(error: BaseException) -> str:
    """``Type: message``, first line only: what FAILED starts with."""
    lines = [line.strip() for line in f"{type(error).__name__}: {error}".splitlines() if line.strip()]
    return lines[0]


def fail(run_dir: str | Path, error: BaseException, sweep_job: bool) -> None:
    """The attempt failed with ``error``. A sweep job whose attempt had not started
    yet records one that failed at once; a single run only an attempt it started."""
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key not in _attempts:
        if not sweep_job:
            return
        _attempts[key] = _new_attempt(run_dir, folder_lock=True)
    try:
        _update(run_dir, status=FAILED, message=failure_line(error), ended=_now())
    except OSError:
        pass  # the error being reported matters more than its record (FAILED, the log have it too)
    _attempts.pop(key, None)


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    try:  # a killed process its parent has not reaped yet (a zombie) runs no more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def still_running(run_dir: str | Path, record: dict[str, Any]) -> bool | None:
    """Whether the process of a ``running`` record still trains the job: True, False,
    or None when this host cannot tell (a single run on another host). A sweep job
    is running while its folder lock is held; a single run while its pid is alive
    (a pid the system gave to another process since reads as alive)."""
    if record.get("folder_lock"):
        from vaelab import locks
        from vaelab.sweeps import JobFolderLock

        return locks.is_held(Path(run_dir) / JobFolderLock.NAME)
    if record.get("host") != _host():
        return None
    return _pid_alive(record.get("pid"))
