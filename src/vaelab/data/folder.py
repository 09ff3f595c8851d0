"""Find and decode the image files of a folder-of-images dataset.

Files are discovered recursively by extension; hidden files and folders
(names starting with ".") are skipped, since they are typically macOS
``._name.png`` resource forks or ``.ipynb_checkpoints`` rather than data.
Other non-image files (README.txt, labels.csv) are ignored; a file with an
image extension that Pillow cannot decode is an error, not silently dropped.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .arrays import DatasetFormatError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

# Exceptions Pillow raises for undecodable or truncated files.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def list_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted by relative path for a stable order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(
            Path(dirpath, f)
            for f in filenames
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        )
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def class_name(path: Path, root: Path) -> str:
    """The first-level subfolder of ``root`` holding ``path``; "" for files directly in ``root``."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else ""


def read_image(path: Path, size: tuple[int, int], channels: int) -> torch.Tensor:
    """Decode one file to a uint8 (channels, H, W) tensor resized to ``size`` = (H, W).

    Animated files contribute their first frame; RGBA loses its alpha channel.
    """
    mode = {1: "L", 3: "RGB"}[channels]
    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            if img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BICUBIC)
            array = np.array(img, dtype=np.uint8)
    except _DECODE_ERRORS as exc:
        raise DatasetFormatError(path, f"not a readable image ({type(exc).__name__}: {exc})") from exc
    if channels == 1:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1)


def read_images(paths: Sequence[Path], size: tuple[int, int], channels: int) -> torch.Tensor:
    """Decode ``paths`` into one contiguous uint8 (N, channels, H, W) tensor.

    Threads help because Pillow releases the GIL while decoding and resizing.
    """
    out = torch.empty((len(paths), channels, size[0], size[1]), dtype=torch.uint8)
    workers = min(8, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for i, image in enumerate(pool.map(lambda p: read_image(p, size, channels), paths)):
            out[i] = image
    finally:
        # On a bad file, stop instead of decoding the rest of the folder first.
        pool.shutdown(cancel_futures=True)
    return out
