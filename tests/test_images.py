"""The image panels as a reader sees them: reconstructions.png shows the data (not the
noised model input) above the reconstructions of what the model encodes, labelled;
the sigma map's texts do not overlap; the montage shows each job's samples large and
unresampled; W&B gets each panel under its own key at the step it was made at.

The panels come from a real Trainer run of a small model on the bundled digits.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import quiet_trainer, read_metrics, run_folders
from hydra.utils import instantiate
from PIL import Image
from test_compare import make_job
from test_configs import composed

from vaelab import compare
from vaelab.build import build_model
from vaelab.image_grids import ImageGrids
from vaelab.panels import make_grid, sigma_map_figure


def find(haystack: np.ndarray, needle: np.ndarray) -> tuple[int, int] | None:
    """(row, column) where ``needle`` occurs pixel for pixel in ``haystack``, or None."""
    haystack, needle = np.ascontiguousarray(haystack), np.ascontiguousarray(needle)
    if haystack.ndim == 2:
        haystack, needle = haystack[..., None], needle[..., None] if needle.ndim == 2 else needle
    channels = haystack.shape[2]
    first = needle[0].tobytes()
    for y in range(haystack.shape[0] - needle.shape[0] + 1):
        row = haystack[y].tobytes()
        at = row.find(first)
        while at != -1:
            if at % channels == 0:
                x = at // channels
                if np.array_equal(haystack[y : y + needle.shape[0], x : x + needle.shape[1]], needle):
                    return y, x
            at = row.find(first, at + 1)
    return None


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L") if image.mode in ("L", "LA") else image.convert("RGB"))


def fit_with_images(tmp_path, *overrides: str):
    """A model trained for two batches with the ImageGrids callback; returns what it wrote
    with the model and data module."""
    cfg = composed("trainer.enable_progress_bar=false", *overrides, tmp_path=tmp_path)
    pl.seed_everything(0)
    datamodule = instantiate(cfg.data)
    model = build_model(cfg, datamodule)
    grids = ImageGrids(str(tmp_path / "images"), num_images=64, every_n_epochs=0)
    trainer = quiet_trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[grids], num_sanity_val_steps=0
    )
    trainer.fit(model, datamodule=datamodule)
    return grids, model, datamodule


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_reconstructions_show_the_data_above_reconstructions_of_the_model_input(tmp_path, likelihood):
    overrides = [] if likelihood == "gaussian" else ["likelihood=bernoulli", "likelihood.binarize=dynamic"]
    grids, model, datamodule = fit_with_images(tmp_path, *overrides)
    assert {p.name for p in grids.written} == {"reconstructions.png", "samples.png", "px_samples.png"}
    page = read_png(tmp_path / "images" / "reconstructions.png")

    images = next(iter(datamodule.val_dataloader()))[0][:64]
    levels = datamodule.levels
    torch.manual_seed(grids.seed)
    x = model.likelihood.prepare(images, levels)  # what the model encodes: noised, or a 0/1 draw
    clean = images.float() / (levels - 1)
    recon = model.reconstruct(x)
    # Gaussian: the data; dynamic binarisation: the draw the model encodes
    shown = clean if likelihood == "gaussian" else x
    for start in range(0, 64, 8):
        assert find(page, make_grid(shown[start : start + 8], nrow=8)[..., 0].numpy()) is not None, start
        assert find(page, make_grid(recon[start : start + 8], nrow=8)[..., 0].numpy()) is not None, start
    if likelihood == "gaussian":  # dequantisation noise is not drawn
        assert not torch.equal(make_grid(x[:8], nrow=8), make_grid(clean[:8], nrow=8))
        assert find(page, make_grid(x[:8], nrow=8)[..., 0].numpy()) is None
    else:  # the draw differs from the grey image
        assert find(page, make_grid(clean[:8], nrow=8)[..., 0].numpy()) is None

    # rows of input, each above its row of reconstructions, a label at the left of each
    row_grid = make_grid(shown[:8], nrow=8)[..., 0].numpy()
    top, left = find(page, row_grid)
    cell = row_grid.shape[0] - 4
    assert left >= 60  # room for "reconstruction" at the left
    recon_top, recon_left = find(page, make_grid(recon[:8], nrow=8)[..., 0].numpy())
    assert (recon_top, recon_left) == (top + cell + 2, left)
    for y in (top + 2 + cell // 2, recon_top + 2 + cell // 2):
        assert (page[y - 5 : y + 5, : left - 2] < 100).any()  # text drawn beside the row
    assert (page[:top, :] < 100).any()  # a title above the grid
    assert page.shape[0] >= 16 * cell and page.shape[1] >= left + row_grid.shape[1]

    samples = read_png(tmp_path / "images" / "samples.png")
    generator = torch.Generator().manual_seed(grids.seed)
    assert find(samples, make_grid(model.sample(64, generator=generator), nrow=8)[..., 0].numpy()) is not None


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8), (8, 1, 8, 8)])
def test_the_sigma_maps_title_caption_and_colour_bar_do_not_overlap(shape):
    torch.manual_seed(0)
    fig = sigma_map_figure(0.1 + 0.01 * torch.rand(shape), "Decoder sigma (learned_pixel)\nend of training (step 22)")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [fig._suptitle.get_window_extent(renderer), fig._supxlabel.get_window_extent(renderer)]
    for ax in fig.axes:
        if ax.images:  # a panel: its picture and its title
            boxes += [ax.get_window_extent(renderer), ax.title.get_window_extent(renderer)]
        else:  # the colour bar, with its ticks and label
            boxes.append(ax.get_tightbbox(renderer))
    page = fig.bbox
    for i, a in enumerate(boxes):
        assert page.x0 <= a.x0 and a.x1 <= page.x1 + 1 and page.y0 <= a.y0 and a.y1 <= page.y1 + 1, (i, a, page)
        for j, b in enumerate(boxes[:i]):
            overlap_w = min(a.x1, b.x1) - max(a.x0, b.x0)
            overlap_h = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert overlap_w <= 1 or overlap_h <= 1, (i, j, a, b)


def test_a_small_sweeps_montage_shows_each_jobs_samples_unresampled(tmp_path):
    root = tmp_path / "small"
    for beta in (0.5, 2.0):
        job = make_job(root, f"model.beta={beta:g}", [f"model.beta={beta:g}"], beta=beta)
        rng = np.random.default_rng(int(beta * 10))  # a samples.png of the size vaelab-train writes for digits
        samples = make_grid(torch.from_numpy(rng.integers(0, 17, (64, 1, 8, 8))).float() / 16, nrow=8)[..., 0].numpy()
        Image.fromarray(np.pad(samples, ((50, 6), (6, 6)), constant_values=255)).save(job / "images" / "samples.png")
    records = compare.sort_records(compare.load_sweep(root))
    fig = compare.plot_montage(records, root / "montage.png")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2
    montage = read_png(root / "montage.png")
    for ax in panels:
        box = ax.get_window_extent()
        assert box.width >= 300 and box.height >= 300
    for record in records:
        samples = read_png(Path(record["path"]) / "images" / "samples.png")
        # the whole samples.png, pixel for pixel: no blur, no dropped rows
        assert find(montage[..., 0], samples) is not None, record["job"]
    assert montage.shape[1] >= 2 * 300 and montage.shape[0] >= 300


@pytest.mark.slow
def test_wandb_gets_each_panel_under_its_own_key_at_the_step_it_was_made(train, tmp_path):
    from wandb_records import records

    proc = train("logger=wandb", "debug=short", "trainer.enable_progress_bar=false", "likelihood.sigma=learned_pixel")
    assert "Images sizes do not match" not in proc.stdout + proc.stderr
    (run_dir,) = run_folders(tmp_path)
    steps_per_epoch = read_metrics(run_dir)["global_step"] // 2
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    logged: dict[str, list[tuple[int, str]]] = {}
    for record in records(run_file):
        if record.WhichOneof("record_type") != "history":
            continue
        items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        for key in {k.rsplit("/", 1)[0] for k in items if k.startswith("images/") and k.endswith("/_type")}:
            assert items[f"{key}/count"] == 1, key  # one image a key: nothing for W&B to mismatch
            logged.setdefault(key, []).append((items["trainer/global_step"], items[f"{key}/captions"][0]))
    epochs = [(steps_per_epoch * e, f"_epoch{e:03d}") for e in (1, 2)]
    for name in ("reconstructions", "samples", "px_samples", "sigma_map"):
        # each epoch's panels at that epoch's step; the end of training's are the same
        # weights at the same step as the last epoch's, logged once
        assert logged.pop(f"images/{name}") == [(step, name + suffix) for step, suffix in epochs]
    assert logged == {"images/latents": [(2 * steps_per_epoch, "latents")]}


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli", "gaussian_low_rank"])
def test_px_samples_show_the_decoder_mean_above_a_draw_of_the_likelihood(tmp_path, likelihood):
    """The mean image and a draw of p(x|z) at the same z, row above row: the draw is
    what the likelihood adds to the mean (noise, or a binary image)."""
    grids, model, _ = fit_with_images(tmp_path, f"likelihood={likelihood}")
    page = read_png(tmp_path / "images" / "px_samples.png")
    model.eval()
    means, draws = grids.likelihood_draws(model, 64)
    again_means, again_draws = grids.likelihood_draws(model, 64)
    assert torch.equal(means, again_means) and torch.equal(draws, again_draws)  # its own seeded streams
    assert not torch.equal(means, draws)
    for start in range(0, 64, 8):
        assert find(page, make_grid(means[start : start + 8], nrow=8)[..., 0].numpy()) is not None, start
        assert find(page, make_grid(draws[start : start + 8], nrow=8)[..., 0].numpy()) is not None, start
    if likelihood == "bernoulli":
        assert set(draws.unique().tolist()) <= {0.0, 1.0}
