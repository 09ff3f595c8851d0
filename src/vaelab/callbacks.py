"""Image panels a researcher looks at: reconstructions, prior samples, sigma maps.

Written as PNG files into the run folder (and to image-capable loggers) by rank
zero only. Small images (8x8 digits) are upscaled with nearest neighbours so the
files are readable at a glance.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import RichProgressBar as _RichProgressBar
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor


def make_grid(images: Tensor, nrow: int | None = None, padding: int = 2, min_cell: int = 56, fill: float = 0.5) -> Tensor:
    """Tile (N, C, H, W) images in [0, 1] into one (H', W', C) uint8 array, upscaled
    by an integer factor so that each cell is at least ``min_cell`` pixels high, on a
    mid-grey ``fill`` that stays visible against both black backgrounds and white strokes."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = images.shape
    scale = max(1, math.ceil(min_cell / h))
    if scale > 1:
        images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
        h, w = h * scale, w * scale
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.full((c, ncol * (h + padding) + padding, nrow * (w + padding) + padding), fill)
    for i in range(n):
        r, q = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return (grid.permute(1, 2, 0) * 255).round().to(torch.uint8)


def interleave_rows(inputs: Tensor, outputs: Tensor, nrow: int) -> Tensor:
    """Rows of ``nrow`` inputs, each followed by the row of their reconstructions."""
    rows = []
    for start in range(0, inputs.shape[0], nrow):
        rows += [inputs[start : start + nrow], outputs[start : start + nrow]]
    return torch.cat(rows)


def save_png(grid: Tensor, path: Path) -> Path:
    from PIL import Image

    array = grid.numpy()
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def save_sigma_map(sigma: Tensor, path: Path, title: str) -> Path:
    """A heat map of sigma per pixel (channels side by side), with a colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sigma = sigma.detach().float().cpu()
    if sigma.dim() == 4:  # per-example maps (predicted sigma): show the first few
        sigma = sigma[:8]
        panels = [(sigma[i, c], f"image {i}, channel {c}") for i in range(sigma.shape[0]) for c in range(sigma.shape[1])]
    else:
        panels = [(sigma[c], f"channel {c}") for c in range(sigma.shape[0])]
    vmin, vmax = float(sigma.min()), float(sigma.max())
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols + 1, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (panel, label) in zip(axes.flat, panels):
        im = ax.imshow(panel.numpy(), cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_title(label, fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), label="decoder sigma")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_latent_usage(report: dict[str, list[float]], path: Path, threshold: float, title: str = "") -> Path:
    """Two bar charts over the latent dimensions, sorted by KL: the test KL per
    dimension, and the variance over the data of its posterior mean with the active-unit
    threshold drawn in (a dimension below it carries nothing about x)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kl, variance = report["kl_per_dim"], report["posterior_mean_variance"]
    order = sorted(range(len(kl)), key=lambda i: -kl[i])
    active = [variance[i] > threshold for i in order]
    colours = ["C0" if a else "C3" for a in active]
    fig = Figure(figsize=(max(6.0, 0.32 * len(kl) + 2), 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    positions = range(len(order))
    top.bar(positions, [kl[i] for i in order], color=colours)
    top.set_ylabel("KL(q(z_i|x) || p(z_i))\n[nats per image]")
    bottom.bar(positions, [max(variance[i], 1e-6) for i in order], color=colours)
    bottom.axhline(threshold, color="k", linestyle="--", linewidth=1)
    bottom.set_yscale("log")
    bottom.set_ylabel("Var_x of E_q[z_i|x]\n(log scale)")
    bottom.set_xticks(list(positions), [str(i) for i in order], fontsize=7)
    bottom.set_xlabel("latent dimension (sorted by KL); red: inactive (variance below the dashed line)")
    fig.suptitle(title or f"Latent usage on the test set: {sum(active)} of {len(kl)} dimensions active, total KL {sum(kl):.2f} nats")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, facecolor="white")
    return path


class RichProgressBar(_RichProgressBar):
    """Lightning's Rich progress bar, brought up to date at most ``refresh_rate`` times
    a second while training (and at an epoch's last batch).

    Lightning's own redraws at that rate, but on every batch it updates the bar's task
    and re-reads every progress-bar metric (a dict built from the trainer's metrics,
    each converted to a float). Validation and test bars are Lightning's, unchanged.
    """

    #: the clock the updates are spaced on (tests give the bar one of their own)
    clock = staticmethod(time.monotonic)

    def __init__(self, refresh_rate: int = 4, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self._next_train_update = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._next_train_update = 0.0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = self.clock()
        if now < self._next_train_update and batch_idx + 1 < trainer.num_training_batches:
            return
        self._next_train_update = now + 1.0 / max(1, self.refresh_rate)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def progress_bar(enabled: bool = True, refresh_per_second: int = 4) -> pl.Callback | None:
    """The training progress bar, brought up to date ``refresh_per_second`` times a
    second: :class:`RichProgressBar` when Rich is installed, else Lightning's tqdm bar
    (whose refresh rate counts batches); None when ``enabled`` is false
    (``trainer.enable_progress_bar=false``), so that the trainer gets none.

    Lightning's default Rich bar redraws 100 times a second from a thread of its own,
    which competes with the training loop for the interpreter: about 5% of a small
    MLP's CPU step (bench/throughput.py), against under 1% at 4 redraws a second.
    """
    if not enabled:
        return None
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

    if _RICH_AVAILABLE:
        return RichProgressBar(refresh_rate=refresh_per_second)
    # tqdm's refresh_rate counts batches, not redraws a second
    return TQDMProgressBar(refresh_rate=max(1, 100 // max(1, refresh_per_second)))


class ImageGrids(pl.Callback):
    """Every ``every_n_epochs`` validation epochs and at the end of training, write
    ``reconstructions`` (each row of inputs followed by its row of reconstructions), ``samples`` from the
    prior and, when sigma varies by pixel, ``sigma_map`` into ``dirpath``.

    Per-epoch files carry the epoch in their name; the final panels have plain names.
    """

    def __init__(self, dirpath: str, num_images: int = 64, every_n_epochs: int = 10, seed: int = 0):
        self.dirpath = Path(dirpath)
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.written: list[Path] = []

    def _inputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor | None:
        datamodule = trainer.datamodule
        if datamodule is None:
            return None
        loader = datamodule.val_dataloader()
        if len(loader) == 0:
            loader = datamodule.test_dataloader()
        images, _ = next(iter(loader))
        images = images[: self.num_images].to(pl_module.device)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)  # the same dequantisation/binarisation noise every time
        x = pl_module.likelihood.prepare(images, pl_module.levels)
        torch.random.set_rng_state(generator_state)
        return x

    @rank_zero_only
    def write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, suffix: str = "") -> list[Path]:
        x = self._inputs(trainer, pl_module)
        if x is None:
            return []
        was_training = pl_module.training
        pl_module.eval()
        try:
            recon = pl_module.reconstruct(x)
            generator = torch.Generator().manual_seed(self.seed)
            samples = pl_module.sample(self.num_images, generator=generator)
            mu, _ = pl_module.encode(x)
            sigma = pl_module.likelihood.sigma_map(pl_module.decode(mu))
        finally:
            pl_module.train(was_training)
        nrow = math.ceil(math.sqrt(x.shape[0]))
        full_rows = (x.shape[0] // nrow) * nrow or x.shape[0]  # whole rows keep pairs aligned
        x, recon = x[:full_rows], recon[:full_rows]
        paths = [
            save_png(make_grid(interleave_rows(x, recon, nrow), nrow=nrow), self.dirpath / f"reconstructions{suffix}.png"),
            save_png(make_grid(samples, nrow=nrow), self.dirpath / f"samples{suffix}.png"),
        ]
        if sigma is not None:
            mode = getattr(pl_module.likelihood, "sigma_mode", "")
            paths.append(save_sigma_map(sigma, self.dirpath / f"sigma_map{suffix}.png", f"sigma ({mode})"))
        self._log_images(trainer, paths, suffix)
        self.written = paths
        return paths

    def _log_images(self, trainer: pl.Trainer, paths: list[Path], suffix: str) -> None:
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # W&B
                logger.log_image(key="images", images=[str(p) for p in paths], caption=[p.stem for p in paths])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs > 0 and epoch % self.every_n_epochs == 0:
            self.write(trainer, pl_module, suffix=f"_epoch{epoch:03d}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.fast_dev_run:
            self.write(trainer, pl_module)

    @rank_zero_only
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        report = getattr(pl_module, "latent_report", None)
        if report and not trainer.fast_dev_run:
            from vaelab.model.collapse import ACTIVE_UNIT_THRESHOLD

            path = save_latent_usage(report, self.dirpath / "latents.png", ACTIVE_UNIT_THRESHOLD)
            self._log_images(trainer, [path], "")


def max_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_start_time() -> float | None:
    """When this process started (seconds since the epoch), from /proc on Linux; else None."""
    try:
        fields = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None


class Timings(pl.Callback):
    """Wall-clock times of a run, written to ``dirpath/timings.json`` when fit ends
    (rank zero): when the process and fit started, when the first training step started
    and ended, the seconds spent in fit, in training (fit without validation and
    sanity checks) and in validation, each epoch's training seconds (``epoch_train_s``,
    its validation left out), and the process's peak memory at fit start and end. With ``announce``, the first step's start is also
    printed as one line, ``vaelab: first training step at <unix time>``, for tools that
    time a command (bench/startup.py).

    Inside a sweep whose launcher reuses worker processes, the process started before
    the job did; ``fit_start`` is the job's own clock then.
    """

    #: the clock that durations are measured on (tests give it one that they advance)
    clock = staticmethod(time.perf_counter)

    def __init__(self, dirpath: str, filename: str = "timings.json", announce: bool = True):
        self.path = Path(dirpath) / filename
        self.announce = announce
        self.times: dict[str, Any] = {}
        self._validation_start: float | None = None
        self.validation_s = 0.0
        self._epoch_start: tuple[float, float] | None = None  # (clock, validation_s) at its start

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.times = {"process_start": process_start_time(), "fit_start": time.time(), "max_rss_mb_at_fit_start": max_rss_mb()}
        self._fit_start = self.clock()
        self.times["epoch_train_s"] = []
        self.validation_s = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = (self.clock(), self.validation_s)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning validates inside the training epoch, before this hook: that time is taken out
        if self._epoch_start is not None:
            start, validation_before = self._epoch_start
            self.times["epoch_train_s"].append(self.clock() - start - (self.validation_s - validation_before))
            self._epoch_start = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if "first_step_start" not in self.times:
            self.times["first_step_start"] = now = time.time()
            if self.announce and trainer.is_global_zero:
                print(f"vaelab: first training step at {now:.6f}", flush=True)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.times.setdefault("first_step_end", time.time())

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_start = self.clock()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validation_start is not None:
            self.validation_s += self.clock() - self._validation_start
            self._validation_start = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        t = self.times
        t["fit_end"] = time.time()
        t["fit_s"] = self.clock() - self._fit_start
        t["validation_s"] = self.validation_s  # sanity checks included
        t["train_s"] = t["fit_s"] - self.validation_s
        if "first_step_start" in t:
            t["fit_start_to_first_step_s"] = t["first_step_start"] - t["fit_start"]
            if t["process_start"] is not None:
                t["process_start_to_first_step_s"] = t["first_step_start"] - t["process_start"]
        t["max_rss_mb_at_fit_end"] = max_rss_mb()
        t["global_step"] = trainer.global_step
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(t, indent=2) + "\n")
