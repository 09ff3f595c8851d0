"""Sample quality logged with the test metrics (conf/callbacks/default.yaml and
conf/eval.yaml, ``sample_quality``): at the end of every test, the FID (own
classifier) and sharpness of prior samples and of reconstructions, as
``test/fid_samples``, ``test/fid_recon``, ``test/fid_classifier_accuracy``,
``test/sharpness_samples``, ``test/sharpness_recon``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning.pytorch as pl

from vaelab.quality.feature_net import load_or_train
from vaelab.quality.measure import measure_sample_quality

log = logging.getLogger(__name__)


class SampleQuality(pl.Callback):
    """Measured by rank zero alone (logged ``rank_zero_only``), after the test loop.

    ``fid=false`` keeps the sharpness (no classifier is trained); a data set whose
    labels hold one class has no classifier to train and gets sharpness alone.
    """

    def __init__(
        self,
        enabled: bool = True,
        fid: bool = True,
        num_images: int = 10000,
        classifier_steps: int = 2000,
        cache_dir: str | None = None,
        seed: int = 0,
        batch_size: int = 500,
    ):
        self.enabled = bool(enabled)
        self.fid = bool(fid)
        self.num_images = int(num_images)
        self.classifier_steps = int(classifier_steps)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        #: the latest measurement (also in trainer.callback_metrics under test/)
        self.metrics: dict[str, float] = {}

    def classifier(self, datamodule: pl.LightningDataModule):  # type: ignore[no-untyped-def]
        """The data set's feature network, trained on its whole training split (train and
        val): the training split alone is chosen by the seed, and a classifier per seed
        would give the seeds of one setting different feature spaces (and FIDs that do
        not compare)."""
        whole = getattr(datamodule, "whole_training_split", None)
        split = whole() if callable(whole) else None
        images, labels = split if split is not None else (datamodule.train_images, datamodule.train_labels)
        if not self.fid or labels is None or int(labels.max()) == int(labels.min()):
            if self.fid:
                log.warning("No FID: the training labels hold a single class, so no classifier can be trained.")
            return None
        source = getattr(datamodule, "source", None)
        name = getattr(source, "name", None) or type(source).__name__.lower()
        return load_or_train(
            name,
            images,
            labels,
            datamodule.test_images,
            datamodule.test_labels,
            datamodule.levels,
            self.cache_dir,
            self.classifier_steps,
        )

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled or trainer.fast_dev_run or trainer.global_rank != 0:
            return
        datamodule = trainer.datamodule
        if datamodule is None or datamodule.test_images is None or not len(datamodule.test_images):
            return
        started = time.perf_counter()
        was_training = pl_module.training
        pl_module.eval()
        try:
            self.metrics = measure_sample_quality(
                pl_module,
                datamodule.test_images,
                datamodule.levels,
                self.classifier(datamodule),
                self.num_images,
                self.seed,
                self.batch_size,
            )
        finally:
            pl_module.train(was_training)
        for name, value in self.metrics.items():
            pl_module.log(f"test/{name}", value, rank_zero_only=True)
        log.info("Sample quality measured in %.1f s", time.perf_counter() - started)
