"""The image panels of a run, written while it trains and tests: reconstructions,
prior samples, sigma maps, latent usage (conf/callbacks/default.yaml,
``image_grids``).

Written as PNG files into the run folder (and to W&B) by rank zero only; the
drawing itself is vaelab.panels.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from vaelab.panels import compose_panel, make_grid, paired_rows, save_latent_usage, save_png, save_sigma_map


class ImageGrids(pl.Callback):
    """Every ``every_n_epochs`` validation epochs and at the end of training, write
    ``reconstructions`` (row pairs: inputs, and below them their reconstructions,
    labelled), ``samples`` from the prior, ``px_samples`` (the decoder's mean at prior
    draws of z, each above a draw of p(x|z) at the same z: what the likelihood adds
    to the mean, independent noise for a diagonal Gaussian, correlated for a low-rank
    one, a binary image for a Bernoulli) and, when sigma varies by pixel,
    ``sigma_map`` into ``dirpath``; after the test, ``latents``. W&B loggers get
    each panel under its own key, ``images/<panel>``, at the global step it was
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
            means, draws = self.likelihood_draws(pl_module, samples.shape[0])
        finally:
            pl_module.train(was_training)
        nrow = math.ceil(math.sqrt(x.shape[0]))
        full_rows = (x.shape[0] // nrow) * nrow or x.shape[0]  # whole rows keep pairs aligned
        pairs, labels = paired_rows(shown[:full_rows], recon[:full_rows], nrow)
        recon_title = f"Reconstructions, {when}\ninput: {what}\nreconstruction: decoder mean at z = E[z|x]"
        panels = {
            "reconstructions": compose_panel(pairs, recon_title, labels)[0],
            "samples": compose_panel(
                make_grid(samples, nrow=nrow), f"Prior samples, {when}\ndecoder mean at z ~ N(0, I)"
            )[0],
        }
        px_pairs, px_labels = paired_rows(
            means[:full_rows], draws[:full_rows], nrow, names=("decoder mean", "draw of p(x|z)")
        )
        panels["px_samples"] = compose_panel(
            px_pairs,
            f"The decoder's mean and a draw of p(x|z) at the same z ~ N(0, I), {when}\n"
            "(the draw shows what the likelihood adds to the mean; clipped to [0, 1])",
            px_labels,
        )[0]
        paths = {name: save_png(page, self.dirpath / f"{name}{suffix}.png") for name, page in panels.items()}
        if sigma is not None:
            # a low-rank Gaussian has no sigma mode: its map is each pixel's marginal std
            mode = getattr(pl_module.likelihood, "sigma_mode", None) or "marginal, diagonal + low rank"
            paths["sigma_map"] = save_sigma_map(
                sigma, self.dirpath / f"sigma_map{suffix}.png", f"Decoder sigma ({mode})\n{when}"
            )
        self._log_images(trainer, paths)
        self.written = list(paths.values())
        return self.written

    @torch.no_grad()
    def likelihood_draws(self, pl_module: pl.LightningModule, num_images: int) -> tuple[Tensor, Tensor]:
        """(means, draws): the decoder's mean at ``num_images`` prior draws of z (seed
        ``seed + 1``), and one draw of p(x|z) at each, with random streams of their own
        (forked), so drawing changes nothing the run draws afterwards."""
        device = pl_module.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed + 1)
            z = torch.randn(num_images, pl_module.latent_dim, device=device)
            decoder_out = pl_module.decode(z)
            return pl_module.likelihood.mean(decoder_out), pl_module.likelihood.sample(decoder_out)

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
                if isinstance(logger, WandbLogger):  # Lightning's one logger with log_image
                    logger.log_image(key=key, images=[str(path)], step=step, caption=[path.stem])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs > 0 and epoch % self.every_n_epochs == 0:
            self.write(
                trainer, pl_module, suffix=f"_epoch{epoch:03d}", when=f"epoch {epoch} (step {trainer.global_step})"
            )

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
