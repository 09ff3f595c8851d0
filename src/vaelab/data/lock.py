"""One process at a time downloads into a data folder; the others wait, then find the files.

When SLURM starts one task per DDP rank, every rank builds the data module at
once: rank zero's ``prepare_data`` downloads, and the other ranks' ``setup`` loads,
which would download the same missing files again at the same moment.
:func:`download_lock` makes the fetching exclusive: an ``fcntl`` lock on
``<root>/.vaelab-download.lock``, held while a source checks what is missing and
fetches it (downloads are verified and moved into place atomically, see
:mod:`.download`). A process that finds the lock held waits for it, then checks
again and finds nothing missing. The lock is released by the OS if its holder
dies, and the lock file is removed by its holder when it is done, so a data
folder holds only data. A folder on NFS works too (Linux implements ``flock``
there with NFS locks); every process must see the same folder.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vaelab.locks import holder as locks_holder
from vaelab.locks import try_lock, unlock

from .arrays import DatasetNotFoundError

log = logging.getLogger(__name__)

LOCK_NAME = ".vaelab-download.lock"
#: how long a process waits for another one's download before giving up
WAIT_S = 3600.0
POLL_S = 0.2


class DownloadWaitError(DatasetNotFoundError):
    """Another process held the data folder's download lock for longer than we wait."""


@contextmanager
def download_lock(root: str | Path, wait_s: float | None = None, poll_s: float = POLL_S) -> Iterator[None]:
    """Hold the download lock of data folder ``root`` (created if missing), waiting up
    to ``wait_s`` seconds (default :data:`WAIT_S`) for another holder, then raising
    :class:`DownloadWaitError`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    wait_s = WAIT_S if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        handle = try_lock(path)
        if handle is None:
            holder = locks_holder(path)
            if time.monotonic() >= deadline:
                raise DownloadWaitError(
                    f"gave up after {wait_s:g} s waiting for {holder} to finish "
                    f"downloading into {root} (it holds {path}); let it finish or stop it, then run again"
                ) from None
            if not said:
                log.info("Waiting for %s, which is downloading into %s", holder, root)
                said = True
            time.sleep(poll_s)
            continue
        # The holder before us removes the file as it lets go: a lock on a file that is
        # no longer at `path` guards nothing, so take the one that is there now.
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        unlock(handle)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        unlock(handle)
