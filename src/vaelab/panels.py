"""Image panels a researcher looks at, drawn: tensors and arrays in, PNG files or
matplotlib Figures out. No Lightning, no trainer, no loggers (vaelab.image_grids
decides what is drawn when, and where it goes).

Small images (8x8 digits) are upscaled with nearest neighbours so the files are
readable at a glance, and every panel says in words what it shows (a title, and
"input" / "reconstruction" beside the rows), so that it reads without the source.

matplotlib draws on Figure objects with an Agg canvas of their own: no pyplot, no
global backend switch, nothing left open between panels (as in vaelab.compare.plots).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: grey between cells: visible against both black backgrounds and white strokes
GRID_FILL = 0.5


def make_grid(
    images: Tensor, nrow: int | None = None, padding: int = 2, min_cell: int = 56, fill: float = GRID_FILL
) -> Tensor:
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


def paired_rows(
    inputs: Tensor,
    outputs: Tensor,
    nrow: int,
    gap: int = 8,
    fill: float = GRID_FILL,
    names: tuple[str, str] = ("input", "reconstruction"),
) -> tuple[Tensor, list[tuple[int, str]]]:
    """A grid of row pairs, ``nrow`` inputs above their ``nrow`` reconstructions, with a
    ``gap`` of white between pairs so that each pair reads as one; and the labels for
    :func:`compose_panel`: (one of ``names``, at the pixel row of its row's middle).
    One (H, W, C) uint8 array, like :func:`make_grid`."""
    blocks, labels, top, padding = [], [], 0, 2
    for start in range(0, inputs.shape[0], nrow):
        pair = interleave_rows(inputs[start : start + nrow], outputs[start : start + nrow], nrow)
        block = make_grid(pair, nrow=nrow, padding=padding, fill=fill)
        if blocks:
            blocks.append(torch.full((gap, block.shape[1], block.shape[2]), 255, dtype=torch.uint8))
            top += gap
        cell = (block.shape[0] - 3 * padding) // 2  # make_grid: padding above, between and below the two rows
        labels += [(top + padding + cell // 2, names[0]), (top + 2 * padding + cell + cell // 2, names[1])]
        blocks.append(block)
        top += block.shape[0]
    return torch.cat(blocks), labels


def compose_panel(
    grid: Tensor | np.ndarray,
    title: str = "",
    row_labels: Sequence[tuple[int, str]] = (),
    fontsize: float = 10,
    dpi: int = 100,
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
    heading = (
        fig.text(0.5, 1.0, title, fontsize=fontsize + 1, ha="center", va="top", linespacing=1.3) if title else None
    )
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
        panels = [
            (sigma[i, c], f"image {i}, channel {c}") for i in range(sigma.shape[0]) for c in range(sigma.shape[1])
        ]
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
    fig.suptitle(
        title
        or f"Latent usage on the test set: {sum(active)} of {len(kl)} dimensions active, total KL {sum(kl):.2f} nats"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, facecolor="white")
    return path
