"""Exclusive locks between processes on one file (``fcntl.flock``).

Device slots, job folders and data downloads each hold one. The OS drops a lock
when its holder dies, so a crashed process never strands what it held. The holder
writes ``pid <n> on <host>`` into the file, so that whoever waits can say who holds it;
:func:`is_held` asks whether anyone does (vaelab-compare, of a job's folder lock).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


def try_lock(path: str | Path) -> IO[str] | None:
    """The file at ``path`` (created if missing), open and locked by this process; None
    when another process holds it. Keep the handle open for as long as the lock is held."""
    handle = open(path, "a+")  # noqa: SIM115 - held open as the lock; closed by unlock()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    handle.flush()
    return handle


def holder(path: str | Path, unknown: str = "another process") -> str:
    """Who holds the lock at ``path``, as its holder wrote it."""
    try:
        return Path(path).read_text().strip() or unknown
    except OSError:
        return unknown


def unlock(handle: IO[str]) -> None:
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


def is_held(path: str | Path) -> bool:
    """Whether a process holds the lock at ``path`` now. The file is neither created
    nor written: it is opened for reading and locked shared without waiting, then let
    go at once. For that instant a process taking the lock (:func:`try_lock`) would
    find it held, so ask only about a lock whose holder is thought gone or running."""
    try:
        handle = open(path)  # noqa: SIM115 - closed below
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False
