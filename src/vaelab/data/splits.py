"""Deterministic hold-out splits.

Uses numpy's legacy ``RandomState``, whose stream numpy promises never to
change, rather than ``torch.randperm`` or ``numpy.random.Generator``, whose
outputs may differ across library versions.  A fixed-seed test split must
stay the same set of images on every machine and every future install, or
test scores stop being comparable.
"""

from __future__ import annotations

import numpy as np
import torch

# Seed of the hold-outs that stand in for a missing official test split
# (sklearn digits, image folders). Deliberately not the run seed.
FIXED_HOLDOUT_SEED = 20240601


def holdout_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into (kept, held_out) int64 index tensors, each ascending.

    ``round(n * fraction)`` indices are held out, chosen by a permutation
    seeded with ``seed`` (0 <= seed < 2**32).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"hold-out fraction must be in [0, 1), got {fraction}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    n_out = int(round(n * fraction))
    perm = np.random.RandomState(seed).permutation(n)
    held_out = np.sort(perm[:n_out])
    kept = np.sort(perm[n_out:])
    return torch.from_numpy(kept).long(), torch.from_numpy(held_out).long()
