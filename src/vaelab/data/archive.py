"""Unpack one folder out of a .tar.gz archive without leaving half of it behind."""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from .arrays import DatasetFormatError


def extract_folder(archive: Path, folder: str, root: Path) -> Path:
    """Extract ``folder/`` from ``archive`` into ``root/folder`` and return that path.

    The archive is unpacked into a temporary folder inside ``root`` first
    (with tarfile's "data" filter, which rejects absolute paths, links out of
    the target and device files), and its files are moved into place only
    when the whole archive has been read; a truncated archive leaves nothing.
    """
    if not hasattr(tarfile, "data_filter"):
        raise RuntimeError("extracting archives safely needs Python 3.10.12+ or 3.11.4+ (tarfile filters)")
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise DatasetFormatError(archive, f"not a complete .tar.gz archive ({type(exc).__name__}: {exc})") from exc
        source = tmp / folder
        if not source.is_dir():
            raise DatasetFormatError(archive, f"archive holds no {folder}/ folder")
        dest = root / folder
        dest.mkdir(exist_ok=True)
        for item in source.iterdir():
            os.replace(item, dest / item.name)
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
