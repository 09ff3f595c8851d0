"""Read the python-pickle batches of CIFAR-10 (``cifar-10-batches-py``).

Each batch is a pickled dict with ``b"data"``, a (N, 3072) uint8 array whose
rows are 1024 red, then 1024 green, then 1024 blue values of a 32x32 image in
row-major order, and ``b"labels"``, a list of N ints.

Unpickling runs whatever the file names, and these files come from the
internet, so they are read with an unpickler that only resolves the few
numpy globals a batch needs; anything else is refused as a format error.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .arrays import DatasetFormatError

# numpy 2 renamed numpy.core to numpy._core; the original (Python 2) batches
# name the old module, files pickled by numpy 2 the new one.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),  # how Python 3 protocol-2 pickles store bytes
}

if not hasattr(np, "_core"):  # numpy 1.x
    _ALLOWED_GLOBALS = {k: (m.replace("numpy._core", "numpy.core"), n) for k, (m, n) in _ALLOWED_GLOBALS.items()}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(*target)


def _load_pickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the original batches are Python 2 pickles whose
            # str keys and array buffers must come back as bytes.
            return _BatchUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DatasetFormatError(path, f"not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from exc


def read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)``: uint8 (N, 3, 32, 32) and int64 (N,)."""
    obj = _load_pickle(path)
    if not isinstance(obj, dict):
        raise DatasetFormatError(path, f"expected a pickled dict, found {type(obj).__name__}")
    # Accept str keys too, for batches re-pickled by Python 3 code.
    entries = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    missing = [k for k in ("data", "labels") if k not in entries]
    if missing:
        raise DatasetFormatError(path, f"batch dict lacks {missing}; has {sorted(map(str, entries))}")
    data = entries["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetFormatError(path, f"data must be a uint8 (N, 3072) array, found {desc}")
    try:
        labels = torch.as_tensor(np.asarray(entries["labels"], dtype=np.int64))
    except (TypeError, ValueError) as exc:
        raise DatasetFormatError(path, f"labels are not a list of ints ({exc})") from exc
    if labels.shape != (data.shape[0],):
        raise DatasetFormatError(path, f"{data.shape[0]} images but labels of shape {tuple(labels.shape)}")
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return images, labels
