"""The Trainer's profiler when nothing is being profiled.

Lightning wraps every hook it calls in ``trainer.profiler.profile(name)``, 94 times
a training step of vaelab's trainer. Its default, ``PassThroughProfiler``, records
nothing, but its ``profile`` is a generator-based context manager: each use builds a
generator and a context object and makes several Python calls, 1.37 us against
0.27 us for a shared ``nullcontext`` (timeit, the 2-core CPU). That is ~0.1 ms of
every step, 1.4% of the MLP's step at batch 128 (bench/throughput.py). ``NoProfiler``
hands back the one ``nullcontext``: the same nothing, without the cost.

Profiling stays one override away: ``trainer.profiler=simple`` (or ``advanced``,
``pytorch``) replaces it with one of Lightning's.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from lightning.pytorch.profilers import PassThroughProfiler

_NOTHING = nullcontext()  # reusable and reentrant: it holds no state


class NoProfiler(PassThroughProfiler):
    """Lightning's pass-through profiler with a context manager that costs nothing."""

    def profile(self, action_name: str) -> AbstractContextManager:  # type: ignore[override]
        return _NOTHING
