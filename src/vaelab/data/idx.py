"""Read the IDX files MNIST and Fashion-MNIST are distributed in.

IDX layout: a 4-byte big-endian magic ``0x0000TTNN`` (TT = element type,
0x08 for unsigned bytes; NN = number of dimensions), then NN big-endian
uint32 sizes, then the elements.  Only unsigned-byte files are needed here:
``0x00000803`` for (N, rows, cols) images and ``0x00000801`` for (N,) labels.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import torch

from .arrays import DatasetFormatError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def read_bytes(path: Path) -> bytearray:
    """The file's contents, gunzipped when the name ends in ``.gz``.

    A bytearray (not bytes) so that tensors can share its memory writably.
    """
    if path.suffix != ".gz":
        return bytearray(path.read_bytes())
    try:
        with gzip.open(path, "rb") as f:
            return bytearray(f.read())
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DatasetFormatError(path, f"not a complete gzip file ({exc})") from exc


def read_idx(path: Path, magic: int) -> torch.Tensor:
    """Parse an unsigned-byte IDX file into a uint8 tensor shaped as its header says.

    Raises :class:`DatasetFormatError` naming ``path`` when the magic number is
    not ``magic`` or the payload length disagrees with the header.
    """
    data = read_bytes(path)
    if len(data) < 4:
        raise DatasetFormatError(path, f"{len(data)} bytes is too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DatasetFormatError(path, f"IDX magic number is 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFormatError(path, f"IDX header truncated: {len(data)} bytes, need {header}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)
    payload = len(data) - header
    if payload != expected:
        raise DatasetFormatError(
            path, f"IDX header declares shape {dims} ({expected} bytes) but the file holds {payload} bytes of data"
        )
    if expected == 0:
        return torch.empty(dims, dtype=torch.uint8)
    return torch.frombuffer(data, dtype=torch.uint8, offset=header, count=expected).reshape(dims)
