"""The comparison's figures: rate-distortion, ELBO and NLL against beta, a sample montage.

Each function takes records (jobs', or settings' from :func:`vaelab.compare.seeds.
aggregate_seeds`, whose ``<key>_sd`` become error bars of one standard deviation) and
returns a matplotlib Figure drawn on the Agg canvas (no pyplot, no global backend), or
None when there is nothing to draw. Collapsed posteriors are ringed in red.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vaelab.compare.records import setting, short_names, swept_keys
from vaelab.compare.seeds import SEED_KEY

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
COLLAPSE_LABEL = "posterior collapsed (ringed)"


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _decoder_legend(fig: Any, axes: Any, max_columns: int) -> None:
    """One legend of the decoders below the figure, each label once across its panels."""
    handles = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncols=min(max_columns, len(handles)),
        title="decoder",
        fontsize=8,
        title_fontsize=9,
    )


def _save(fig: Any, path: str | Path | None, dpi: int = 110) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, facecolor="white")


def line_groups(records: Sequence[dict[str, Any]], value: str) -> dict[str, list[dict[str, Any]]]:
    """Records that have ``value`` and a beta, grouped into lines across beta: one line
    per decoder (sigma mode, or Bernoulli), and per value of any other swept key."""
    swept, _ = swept_keys(records)
    others = [k for k in swept if k not in ("model.beta", SEED_KEY) and not k.startswith("likelihood")]
    names = short_names(others)
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record.get(value) is None or record.get("beta") is None:
            continue
        label = ", ".join([record["decoder"], *(f"{names[k]}={setting(record, k)}" for k in others)])
        groups.setdefault(label, []).append(record)
    for members in groups.values():
        members.sort(key=lambda r: r["beta"])
    return dict(sorted(groups.items()))


def _done(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "done"]


def _count(done: Sequence[dict[str, Any]]) -> str:
    """``12 finished jobs``, or for settings ``6 settings, mean ± sd of 3 seeds``."""
    if any("n" in r for r in done):
        seeds = sorted({r["n"] for r in done})
        each = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
        return f"{len(done)} settings; mean and ±1 sd of {each} seeds each"
    return f"{len(done)} finished jobs"


def _line(
    ax: Any, x: list, y: list, members: Sequence[dict[str, Any]], x_key: str | None, y_key: str, **style: Any
) -> Any:
    """A line through the points, with error bars of one sd where the records have them."""
    xerr = [m.get(f"{x_key}_sd", 0.0) for m in members] if x_key else None
    yerr = [m.get(f"{y_key}_sd", 0.0) for m in members]
    if y_key == "nll" and not any(yerr):  # the NLL's spread is that of its source metric
        yerr = [m.get(f"{m.get('nll_source', '').lstrip('-')}_sd", 0.0) for m in members]
    if any(yerr) or (xerr and any(xerr)):
        container = ax.errorbar(
            x, y, xerr=xerr if xerr and any(xerr) else None, yerr=yerr if any(yerr) else None, capsize=3, **style
        )
        return container.lines[0]
    (line,) = ax.plot(x, y, **style)
    return line


def _ring_collapsed(ax: Any, records: Sequence[dict[str, Any]], x: Any, y: Any) -> None:
    """A red ring around each point whose posterior collapsed (one legend entry)."""
    points = [(x(r), y(r)) for r in records if r.get("collapsed") and x(r) is not None and y(r) is not None]
    if points:
        ax.scatter(
            *zip(*points), s=160, facecolors="none", edgecolors="red", linewidths=1.5, zorder=5, label=COLLAPSE_LABEL
        )


def _likelihood_caption(record: dict[str, Any]) -> str:
    """A montage tile's number: the test NLL, with its bits/dim (what compares a mass of
    integer pixels with a dequantised density), or the job's name when it has none."""
    if record.get("nll") is None:
        return str(record["job"])
    bpd = record.get("bpd")
    return f"NLL {record['nll']:.1f} nats" + (f", {bpd:.3f} bits/dim" if bpd is not None else "")


def comparable_groups(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records by comparable group (data set and data model), the largest group first:
    each group gets panels of its own, since numbers of different data share no axis."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(record.get("comparable") or "", []).append(record)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def plot_rate_distortion(records: Sequence[dict[str, Any]], path: str | Path | None = None) -> Any:
    """Rate (test KL) against distortion (-test recon), one line per decoder across beta,
    each point labelled with its beta; one panel per comparable group. Returns the
    Figure (None when no done job has both numbers); saved to ``path`` when given."""
    done = [r for r in _done(records) if r.get("test/kl") is not None and r.get("test/recon") is not None]
    if not done:
        return None
    panels = comparable_groups(done)
    lines = {label for members in panels.values() for label in line_groups(members, "test/kl")}
    fig = _figure(8 * len(panels) if len(panels) > 1 else 8, 5.5 + 0.18 * math.ceil(len(lines) / 2))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = {label: f"C{i % 10}" for i, label in enumerate(sorted(lines))}
    for ax, (group, members_of_group) in zip(axes, panels.items()):
        xs, ys = [r["test/kl"] for r in members_of_group], [-r["test/recon"] for r in members_of_group]
        span = (max(xs) - min(xs) or 1.0, max(ys) - min(ys) or 1.0)
        for label, members in line_groups(members_of_group, "test/kl").items():
            x = [r["test/kl"] for r in members]
            y = [-r["test/recon"] for r in members]
            style = {
                "marker": _MARKERS[sorted(lines).index(label) % len(_MARKERS)],
                "color": colours[label],
                "label": label,
            }
            line = _line(ax, x, y, members, "test/kl", "test/recon", **style)
            for i, (betas, xi, yi) in enumerate(_merge_close(members, x, y, span)):
                ax.annotate(
                    "β=" + ", ".join(f"{b:g}" for b in betas),
                    (xi, yi),
                    textcoords="offset points",
                    xytext=(5, 5 if i % 2 == 0 else -11),
                    fontsize=8,
                    color=line.get_color(),
                )
        _ring_collapsed(ax, members_of_group, lambda r: r["test/kl"], lambda r: -r["test/recon"])
        ax.set_xlabel("rate: KL(q(z|x) ‖ p(z))  [nats per image]")
        ax.set_ylabel("distortion: −E_q[log p(x|z)]  [nats per image]")
        ax.set_title(
            f"{group}: {_count(members_of_group)}"
            if len(panels) > 1
            else f"{_count(done)}; points labelled with training β",
            fontsize=10,
        )
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.08, y=0.08)
    fig.suptitle("Rate–distortion on the test set" + ("; points labelled with training β" if len(panels) > 1 else ""))
    _decoder_legend(fig, axes, max_columns=2)
    _save(fig, path)
    return fig


def _merge_close(
    members: Sequence[dict[str, Any]],
    x: Sequence[float],
    y: Sequence[float],
    span: tuple[float, float],
    tol: float = 0.02,
) -> list[tuple[list[float], float, float]]:
    """Points of one line that (nearly) coincide get one label listing their betas."""
    labels: list[tuple[list[float], float, float]] = []
    for r, xi, yi in zip(members, x, y):
        for betas, xj, yj in labels:
            if abs(xi - xj) <= tol * span[0] and abs(yi - yj) <= tol * span[1]:
                betas.append(r["beta"])
                break
        else:
            labels.append(([r["beta"]], xi, yi))
    return labels


def _beta_axis(ax: Any, betas: Sequence[float]) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    if any(b <= 0 for b in betas):
        positive = [b for b in betas if b > 0]
        ax.set_xscale("symlog", linthresh=min(positive) if positive else 1e-3)
    else:
        ax.set_xscale("log")
    distinct = sorted(set(betas))
    if len(distinct) <= 12:
        ax.xaxis.set_major_locator(FixedLocator(distinct))
        ax.set_xticklabels([f"{b:g}" for b in distinct])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    ax.set_xlabel("β (KL weight in training; log scale)")


def plot_elbo_nll_vs_beta(records: Sequence[dict[str, Any]], path: str | Path | None = None) -> Any:
    """Two panels against beta (log axis): test ELBO, and test NLL (importance-weighted;
    -ELBO where no NLL was logged); a row of them per comparable group. One line per
    decoder. Returns the Figure, or None when no done job has a test ELBO."""
    done = [r for r in _done(records) if r.get("test/elbo") is not None]
    if not done:
        return None
    panels = comparable_groups(done)
    labels = sorted(
        {label for members in panels.values() for key in ("test/elbo", "nll") for label in line_groups(members, key)}
    )
    fig = _figure(12, 4.6 * len(panels) + 0.6 + 0.18 * math.ceil(len(labels) / 3))
    rows = fig.subplots(len(panels), 2, squeeze=False)
    markers = {label: _MARKERS[i % len(_MARKERS)] for i, label in enumerate(labels)}
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    for (left, right), (group, members_of_group) in zip(rows, panels.items()):
        prefix = f"{group}: " if len(panels) > 1 else ""
        for ax, key, ylabel, title in (
            (
                left,
                "test/elbo",
                "test ELBO  [nats per image]  (higher is better)",
                "ELBO (β = 1 bound) against training β",
            ),
            (
                right,
                "nll",
                "test NLL  [nats per image]  (lower is better)",
                "Importance-weighted NLL against training β",
            ),
        ):
            for label, members in line_groups(members_of_group, key).items():
                _line(
                    ax,
                    [r["beta"] for r in members],
                    [r[key] for r in members],
                    members,
                    None,
                    key,
                    marker=markers[label],
                    color=colours[label],
                    label=label,
                )
            _ring_collapsed(ax, members_of_group, lambda r: r["beta"], lambda r, key=key: r.get(key))
            _beta_axis(ax, [r["beta"] for r in members_of_group if r.get("beta") is not None])
            ax.set_ylabel(ylabel)
            ax.set_title(prefix + title, fontsize=10)
            ax.grid(True, alpha=0.3)
        if any(r.get("nll_source") == "-test/elbo" for r in members_of_group):
            right.set_title(prefix + "NLL against training β (−ELBO where no IW estimate)", fontsize=10)
    _decoder_legend(fig, rows.flat, max_columns=3)
    fig.suptitle(f"Test ELBO and NLL across β ({_count(done)})")
    _save(fig, path)
    return fig


def job_title(record: dict[str, Any], swept: Sequence[str], width: int = 34) -> str:
    """The job's swept values (short key names; keys it does not have left out),
    wrapped to lines of ``width`` characters; its folder when nothing was swept."""
    names = short_names(list(swept))
    parts = [f"{names[k]}={value}" for k in swept if (value := setting(record, k)) != ""]
    return textwrap.fill(", ".join(parts), width, break_on_hyphens=False) if parts else record["job"]


#: the largest side of a montage panel (a job's samples, or its sigma map), in pixels,
#: by the number of jobs: a few jobs are shown at the size vaelab-train wrote them
#: (digits stay sharp), many shrink so that 20+ jobs fit one screen
PANEL_PX = ((4, 540), (12, 360), (10**9, 240))
MONTAGE_DPI = 100


def _fit(image: Any, box: int) -> Any:
    """``image`` fitted into a ``box`` square: shrunk (Lanczos) when larger, blown up by a
    whole factor (nearest neighbours, pixels stay sharp) when at most half the box,
    else as it is."""
    from PIL import Image

    if max(image.size) > box:
        image = image.copy()
        image.thumbnail((box, box), Image.Resampling.LANCZOS)
    factor = int(min(box / image.width, box / image.height))
    if factor >= 2:  # small grids
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    return image


def _tile(record: dict[str, Any], box: int, with_map: bool) -> Any:
    """The job's samples.png fitted into a ``box`` x ``box`` square, and when
    ``with_map``, a second square beside it with its sigma_map.png (blank when it has
    none); one RGB image. None when samples.png cannot be read."""
    from PIL import Image

    images = Path(record["path"]) / "images"
    gap = box // 20
    tile = Image.new("RGB", (2 * box + gap if with_map else box, box), "white")
    for slot, name in enumerate(["samples.png", "sigma_map.png"] if with_map else ["samples.png"]):
        try:
            with Image.open(images / name) as image:
                image = _fit(image.convert("RGB"), box)
                left = slot * (box + gap) + (box - image.width) // 2
                tile.paste(image, (left, (box - image.height) // 2))
        except (OSError, ValueError):
            if slot == 0:
                return None
    return tile


def _panel_px(records: Sequence[dict[str, Any]], cap: int) -> int:
    """The side of a montage panel: the largest samples.png or sigma_map.png side
    among ``records``, at most ``cap`` (at least 64, for unreadable files)."""
    from PIL import Image

    largest = 0
    for record in records:
        for name in ("samples.png", "sigma_map.png"):
            try:
                with Image.open(Path(record["path"]) / "images" / name) as image:
                    largest = max(largest, *image.size)
            except (OSError, ValueError):
                pass
    return max(64, min(cap, largest))


def _grid_shape(n: int, cell_w: float, cell_h: float, max_cols: int, target: float = 1.4) -> tuple[int, int]:
    """Columns and rows for ``n`` cells: a figure close to ``target`` wide:high, with
    few empty cells."""
    best = min(
        range(1, max(1, min(n, max_cols)) + 1),
        key=lambda c: (
            abs(math.log((c * cell_w) / (math.ceil(n / c) * cell_h) / target)) + (c * math.ceil(n / c) - n) / n
        ),
    )
    return best, math.ceil(n / best)


def plot_montage(
    records: Sequence[dict[str, Any]], path: str | Path | None = None, box_px: int | None = None, max_cols: int = 8
) -> Any:
    """One tile per done job, in the given order: its prior samples, with its sigma map
    beside them when any job has one, titled with the job's swept values and its NLL.
    Returns the Figure, or None when no done job has samples.png.

    Each panel is a ``box_px`` square; by default as large as the jobs' own images up
    to :data:`PANEL_PX` for the number of jobs (540 px for a few, down to 240 for 13
    or more), so a small sweep shows its samples at the size they were written. The
    tiles are laid out in pixels, each axes exactly its tile's size at
    :data:`MONTAGE_DPI`, and drawn with nearest neighbours: the figure adds no
    resampling of its own."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    swept, _ = swept_keys(records)
    done = [r for r in _done(records) if r.get("has_samples")]
    with_map = any(r.get("has_sigma_map") for r in done)
    n = len(done)
    if box_px is None:
        box_px = _panel_px(done, next(px for most, px in PANEL_PX if n <= most))
    tiles = [(r, t) for r in done if (t := _tile(r, box_px, with_map)) is not None]
    if not tiles:
        return None
    n, dpi = len(tiles), MONTAGE_DPI
    fontsize = 10 if box_px >= 300 else 7
    tile_w, tile_h = tiles[0][1].size
    width_chars = max(20, int(tile_w / (0.62 * fontsize * dpi / 72)))
    titles = [job_title(r, swept, width_chars) + "\n" + _likelihood_caption(r) for r, _ in tiles]
    lines = max(t.count("\n") + 1 for t in titles)
    pad, header = 16, 44
    title_px = math.ceil(lines * 1.3 * fontsize * dpi / 72) + 6
    cell_w, cell_h = tile_w + pad, tile_h + title_px + pad
    cols, rows = _grid_shape(n, cell_w, cell_h, max_cols)
    width, height = cols * cell_w + pad, header + rows * cell_h
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    for i, ((_record, tile), title) in enumerate(zip(tiles, titles)):
        row, col = divmod(i, cols)
        left, top = pad + col * cell_w, header + row * cell_h + title_px
        ax = fig.add_axes((left / width, 1 - (top + tile_h) / height, tile_w / width, tile_h / height))
        ax.axis("off")
        ax.imshow(tile, interpolation="nearest")
        ax.set_title(title, fontsize=fontsize, fontweight="bold")  # apart from the title inside samples.png
    fig.suptitle(
        f"Prior samples of the {n} finished jobs"
        + (";  right: decoder sigma per pixel (sigma_map.png), where it varies" if with_map else ""),
        fontsize=11,
        y=1 - 12 / height,
        va="top",
    )
    _save(fig, path, dpi=dpi)
    return fig
