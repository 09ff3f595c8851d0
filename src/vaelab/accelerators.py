"""Whether a config trains on GPUs, whether this machine has the GPUs it asks for, and
whether its CPU does the bfloat16 arithmetic that mixed precision asks for.

Lightning finds out only while it builds the Trainer, after the data are loaded
and the run folder exists, and says so with a 70-line traceback ending in
"No supported gpu backend found!"; :func:`check_gpus_exist` says it in one line at
start-up.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig

from vaelab.exceptions import ConfigError

GPU_ACCELERATORS = ("gpu", "cuda")
#: trainer.precision values that run the networks in bfloat16 on a CPU (Lightning runs
#: 16-mixed as bf16-mixed there)
CPU_BF16_PRECISIONS = ("bf16-mixed", "16-mixed", "bf16", "16")

log = logging.getLogger(__name__)


def trains_on_gpu(cfg: DictConfig) -> bool:
    accelerator = str(cfg.trainer.get("accelerator"))
    return accelerator in GPU_ACCELERATORS or (accelerator == "auto" and torch.cuda.is_available())


def _gpus_here(accelerator: str) -> int:
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

    if CUDAAccelerator.is_available():
        return CUDAAccelerator.auto_device_count()
    return 1 if accelerator == "gpu" and MPSAccelerator.is_available() else 0


def check_gpus_exist(
    accelerator: Any, devices: Any = 1, key: str = "trainer.accelerator", cpu_hint: str = "trainer=cpu"
) -> None:
    """Raise :class:`ConfigError` when ``accelerator`` asks for GPUs this machine lacks,
    or for more of them (an integer ``devices``) than it has."""
    if str(accelerator) not in GPU_ACCELERATORS:
        return
    count = _gpus_here(str(accelerator))
    if count == 0:
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ConfigError(
            f"{key}={accelerator} asks for a GPU, but torch finds none on this machine (torch {torch.__version__}, "
            f"{build}); run on the CPU with {cpu_hint}"
        )
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > count:
        raise ConfigError(f"trainer.devices={devices} asks for {devices} GPUs, but this machine has {count}")


def cpu_has_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 numbers in hardware (AVX512-BF16 or AMX)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def warn_if_bfloat16_is_emulated(cfg: DictConfig) -> None:
    """A warning when mixed precision would run on a CPU that emulates bfloat16: there it
    is slower than float32, not faster (BENCHMARKS.md, "Throughput")."""
    precision = str(cfg.trainer.get("precision"))
    if precision in CPU_BF16_PRECISIONS and not trains_on_gpu(cfg) and not cpu_has_bfloat16():
        log.warning(
            "trainer.precision=%s on a CPU without bfloat16 instructions (AVX512-BF16 or AMX): its matrix "
            "products are emulated, measured 2.4 to 2.9x slower than trainer.precision=32-true",
            precision,
        )
