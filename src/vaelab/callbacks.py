"""Image panels a researcher looks at: reconstructions, prior samples, sigma maps.

Written as PNG files into the run folder (and to image-capable loggers) by rank
zero only. Small images (8x8 digits) are upscaled with nearest neighbours so the
files are readable at a glance, and every panel says in words what it shows (a
title, and "input" / "reconstruction" beside the rows), so that it reads without
the source.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import RichProgressBar as _RichProgressBar
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

#: grey between cells: visible against both black backgrounds and white strokes
GRID_FILL = 0.5


def make_grid(images: Tensor, nrow: int | None = None, padding: int = 2, min_cell: int = 56, fill: float = GRID_FILL) -> Tensor:
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


def paired_rows(inputs: Tensor, outputs: Tensor, nrow: int, gap: int = 8, fill: float = GRID_FILL) -> tuple[Tensor, list[tuple[int, str]]]:
    """A grid of row pairs, ``nrow`` inputs above their ``nrow`` reconstructions, with a
    ``gap`` of white between pairs so that each pair reads as one; and the labels for
    :func:`compose_panel`: ("input" or "reconstruction", at the pixel row of its row's
    middle). One (H, W, C) uint8 array, like :func:`make_grid`."""
    blocks, labels, top, padding = [], [], 0, 2
    for start in range(0, inputs.shape[0], nrow):
        pair = interleave_rows(inputs[start : start + nrow], outputs[start : start + nrow], nrow)
        block = make_grid(pair, nrow=nrow, padding=padding, fill=fill)
        if blocks:
            blocks.append(torch.full((gap, block.shape[1], block.shape[2]), 255, dtype=torch.uint8))
            top += gap
        cell = (block.shape[0] - 3 * padding) // 2  # make_grid: padding above, between and below the two rows
        labels += [(top + padding + cell // 2, "input"), (top + 2 * padding + cell + cell // 2, "reconstruction")]
        blocks.append(block)
        top += block.shape[0]
    return torch.cat(blocks), labels


def compose_panel(
    grid: Tensor | np.ndarray, title: str = "", row_labels: Sequence[tuple[int, str]] = (), fontsize: float = 10, dpi: int = 100
) -> tuple[np.ndarray, tuple[int, int]]:
    """The uint8 (H, W, C) ``grid`` on a white page, with ``title`` (one or more lines)
    above it and ``row_labels`` ((pixel row of the grid, text), right-aligned) at its
    left. Returns the page, (H', W', C) uint8, and (top, left): where the grid sits.

    matplotlib draws only the text; the grid is pasted into the page pixel for pixel,
    never resampled, so an upscaled 8x8 digit stays a crisp block of squares."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid = np.asarray(grid)
    if grid.ndim == 2:
        grid = grid[..., None]
    h, w, c = grid.shape
    margin = 6
    fig = Figure(dpi=dpi, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    heading = fig.text(0.5, 1.0, title, fontsize=fontsize + 1, ha="center", va="top", linespacing=1.3) if title else None
    labels = [(y, fig.text(0, 0, text, fontsize=fontsize, ha="right", va="center")) for y, text in row_labels]

    def extent(artist: Any) -> tuple[int, int]:
        box = artist.get_window_extent(renderer)
        return math.ceil(box.width), math.ceil(box.height)

    label_w = max((extent(t)[0] for _, t in labels), default=0)
    title_w, title_h = extent(heading) if heading else (0, 0)
    content_w = (label_w + margin if labels else 0) + w
    width = max(content_w, title_w) + 2 * margin
    left = (width - content_w) // 2 + (label_w + margin if labels else 0)
    top = margin + (title_h + margin if heading else 0)
    height = top + h + margin
    fig.set_size_inches(width / dpi, height / dpi)
    if heading:
        heading.set_position((0.5, 1 - margin / height))
    for y, text in labels:
        text.set_position(((left - margin) / width, 1 - (top + y + 0.5) / height))
    canvas.draw()
    rendered = np.asarray(canvas.buffer_rgba())[..., :3]
    page = np.full((height, width, 3), 255, dtype=np.uint8)  # the canvas may round its size by a pixel
    rows, cols = min(height, rendered.shape[0]), min(width, rendered.shape[1])
    page[:rows, :cols] = rendered[:rows, :cols]
    if c == 1:
        page = page[..., :1]  # black text on white: every channel is the same
    elif c != 3:
        raise ValueError(f"a grid has 1 or 3 channels, not {c}")
    page[top : top + h, left : left + w] = grid
    return page, (top, left)


def save_png(grid: Tensor | np.ndarray, path: Path) -> Path:
    """Write a uint8 (H, W, 1) or (H, W, 3) array as a grey or RGB PNG."""
    from PIL import Image

    array = np.asarray(grid)
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def save_sigma_map(sigma: Tensor, path: Path, title: str) -> Path:
    """:func:`sigma_map_figure` as a PNG."""
    fig = sigma_map_figure(sigma, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def sigma_map_figure(sigma: Tensor, title: str) -> Any:
    """A heat map of sigma per pixel (channels side by side; for a predicted sigma, the
    first few images' maps), one colour bar for all, and a caption with its range: a
    matplotlib Figure on the Agg canvas.

    Constrained layout keeps the title, the panels' labels, the colour bar and the
    caption apart (a suptitle over plain subplots lands on the first panel's label)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sigma = sigma.detach().float().cpu()
    if sigma.dim() == 4:  # per-example maps (predicted sigma): show the first few
        sigma = sigma[:8]
        panels = [(sigma[i, c], f"image {i}, channel {c}") for i in range(sigma.shape[0]) for c in range(sigma.shape[1])]
    else:
        panels = [(sigma[c], f"channel {c}") for c in range(sigma.shape[0])]
    vmin, vmax = float(sigma.min()), float(sigma.max())
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(max(4.4, 2.6 * cols + 1.4), 2.6 * rows + 1.3), layout="constrained", facecolor="white")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (panel, label) in zip(axes.flat, panels):
        im = ax.imshow(panel.numpy(), cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(label, fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), label="decoder sigma", shrink=0.9)
    fig.suptitle(title, fontsize=11)
    fig.supxlabel(f"sigma per pixel, from {vmin:.4g} to {vmax:.4g} (mean {float(sigma.mean()):.4g})", fontsize=9)
    return fig


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
    ``reconstructions`` (row pairs: inputs, and below them their reconstructions,
    labelled), ``samples`` from the prior and, when sigma varies by pixel,
    ``sigma_map`` into ``dirpath``; after the test, ``latents``. Image loggers (W&B)
    get each panel under its own key, ``images/<panel>``, at the global step it was
    made at.

    Per-epoch files carry the epoch in their name; the final panels have plain names.
    """

    def __init__(self, dirpath: str, num_images: int = 64, every_n_epochs: int = 10, seed: int = 0):
        self.dirpath = Path(dirpath)
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.written: list[Path] = []
        self._logged: dict[str, int] = {}  # logger key -> the global step it was last logged at

    def _inputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[Tensor, Tensor, str] | None:
        """(shown, x, what): the input row's images, what the model encodes, and what
        the input row shows in words.

        ``x`` is the batch as training sees it (``likelihood.prepare``: scaled, and
        dequantised or binarised with a fixed seed, the same draw every time), so the
        reconstruction is of what the model encodes and the ELBO scores. The input
        row shows the data themselves, scaled to [0, 1]: dequantisation noise (up to
        1/levels per pixel, 1/17 for digits) is how a density is fitted to integers,
        not part of the image, and drawn it turns black backgrounds into speckle.
        Dynamic binarisation is the exception: the model encodes one 0/1 draw of the
        grey image and reconstructs that draw, so the row shows the draw. (Static and
        threshold binarisation happen in the data module: there the data are 0/1.)
        """
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
        binarize = getattr(pl_module.likelihood, "binarize", None)
        if binarize == "dynamic":
            return x, x, "a binarised draw of the data (what the model encodes)"
        if getattr(pl_module.likelihood, "dequantize", False):
            what = "the data (the model's input adds dequantisation noise)"
        else:
            what = f"the data, binarised ({binarize})" if binarize in ("static", "threshold") else "the data"
        return images.float() / (pl_module.levels - 1), x, what

    @rank_zero_only
    def write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, suffix: str = "", when: str = "") -> list[Path]:
        inputs = self._inputs(trainer, pl_module)
        if inputs is None:
            return []
        shown, x, what = inputs
        when = when or f"step {trainer.global_step}"
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
        pairs, labels = paired_rows(shown[:full_rows], recon[:full_rows], nrow)
        recon_title = f"Reconstructions, {when}\ninput: {what}\nreconstruction: decoder mean at z = E[z|x]"
        panels = {
            "reconstructions": compose_panel(pairs, recon_title, labels)[0],
            "samples": compose_panel(make_grid(samples, nrow=nrow), f"Prior samples, {when}\ndecoder mean at z ~ N(0, I)")[0],
        }
        paths = {name: save_png(page, self.dirpath / f"{name}{suffix}.png") for name, page in panels.items()}
        if sigma is not None:
            mode = getattr(pl_module.likelihood, "sigma_mode", "")
            paths["sigma_map"] = save_sigma_map(sigma, self.dirpath / f"sigma_map{suffix}.png", f"Decoder sigma ({mode})\n{when}")
        self._log_images(trainer, paths)
        self.written = list(paths.values())
        return self.written

    def _log_images(self, trainer: pl.Trainer, paths: dict[str, Path]) -> None:
        """Each panel under a key of its own (``images/reconstructions``, ...), at the
        global step it was made at: the number of optimiser steps behind the weights
        that drew it (Lightning stamps the validation metrics of that epoch one lower,
        with the index of the epoch's last batch). One panel a key, because W&B lays
        out the images of one key side by side and warns ("Images sizes do not
        match") when their sizes differ, as reconstructions and samples do. A panel
        already logged at this step (the last epoch's, again at the end of training)
        is not logged twice."""
        step = trainer.global_step
        for name, path in paths.items():
            key = f"images/{name}"
            if self._logged.get(key) == step:
                continue
            self._logged[key] = step
            for logger in trainer.loggers:
                if hasattr(logger, "log_image"):  # W&B
                    logger.log_image(key=key, images=[str(path)], step=step, caption=[path.stem])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs > 0 and epoch % self.every_n_epochs == 0:
            self.write(trainer, pl_module, suffix=f"_epoch{epoch:03d}", when=f"epoch {epoch} (step {trainer.global_step})")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.fast_dev_run:
            self.write(trainer, pl_module, when=f"end of training (step {trainer.global_step})")

    @rank_zero_only
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        report = getattr(pl_module, "latent_report", None)
        if report and not trainer.fast_dev_run:
            from vaelab.model.collapse import ACTIVE_UNIT_THRESHOLD

            path = save_latent_usage(report, self.dirpath / "latents.png", ACTIVE_UNIT_THRESHOLD)
            self._log_images(trainer, {"latents": path})


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
