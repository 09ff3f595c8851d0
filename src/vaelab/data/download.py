"""Fetch one file over HTTP(S) with a checksum, never leaving a partial file behind.

Only urllib is used so that the package needs no extra dependency.  The file
is streamed to a temporary file of its own, ``.<name>.<pid>-<random>.part`` in
the same folder (same filesystem, so the final ``os.replace`` is atomic; no two
processes share one), hashed while it streams, and moved into place only once
the checksum matches.  A crash, a Ctrl-C or a bad checksum therefore
never leaves something at ``dest`` that a later run would mistake for data.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from vaelab.exceptions import ChecksumError

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0


def download_file(
    url: str,
    dest: Path,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    ``md5`` / ``sha256`` (hex, either case), when given, must match or
    :class:`ChecksumError` is raised.  Any failure removes the temporary file
    and re-raises; ``dest`` is only ever created complete and verified.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own, so that two processes fetching one file never write into one file
    part = dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    hashes = {}
    if md5 is not None:
        hashes["md5"] = (hashlib.md5(usedforsecurity=False), md5.lower())
    if sha256 is not None:
        hashes["sha256"] = (hashlib.sha256(), sha256.lower())
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(part, "xb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            received = 0
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name, disable=not progress
            ) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    for h, _ in hashes.values():
                        h.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise urllib.error.ContentTooShortError(
                    f"download of {url} ended after {received} of {total} bytes", None
                )
        for algorithm, (h, expected) in hashes.items():
            actual = h.hexdigest()
            if actual != expected:
                raise ChecksumError(url, algorithm, expected, actual)
        os.replace(part, dest)
    except BaseException as exc:
        part.unlink(missing_ok=True)
        if isinstance(exc, OSError) and hasattr(exc, "add_note"):  # add_note: Python 3.11+
            # urllib's messages ("HTTP Error 404: Not Found") omit the URL.
            exc.add_note(f"while downloading {url} to {dest}")
        raise
    return dest
