"""Lightning data module: a source's arrays, split, optionally binarised, batched from memory."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Protocol

import lightning.pytorch as pl
import torch

from vaelab.exceptions import ConfigError
from vaelab.settings import DataSchema, check_range

from .arrays import ImageArrays
from .batches import TensorBatches
from .binarize import bernoulli, check_mode, threshold
from .splits import holdout_split


class Source(Protocol):
    """What the data module needs from a dataset source (see :mod:`vaelab.data.sources`)."""

    name: str
    image_shape: tuple[int, int, int]
    levels: int

    def load(self) -> ImageArrays: ...


def complete_source(source: Source | Callable[..., Source], root: str | None, download: bool) -> Source:
    """A source object as is, or a source factory (a config with ``_partial_: true``)
    called with the data module's ``root`` and ``download``: this is what lets users
    type ``data.root=...`` and ``data.download=true`` for any file-based data set."""
    if hasattr(source, "load"):
        return source  # type: ignore[return-value]
    if root is None and _requires(source, "root"):
        raise ConfigError(
            "data.root must be set: the folder that holds this data set's files (data.root=/path/to/folder)"
        )
    kwargs: dict[str, object] = {} if root is None else {"root": str(root)}
    if download:  # only sources that can download take the flag
        kwargs["download"] = True
    return source(**kwargs)


def _requires(factory: Callable[..., object], name: str) -> bool:
    """Whether calling ``factory`` without ``name`` would fail (it has no default)."""
    parameter = inspect.signature(factory).parameters.get(name)
    return parameter is not None and parameter.default is inspect.Parameter.empty


def _interleaved(kept: torch.Tensor, held_out: torch.Tensor, keep: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """The tensor that :func:`holdout_split`'s ``keep`` and ``val`` indices split into
    ``kept`` and ``held_out``, put back together."""
    whole = kept.new_empty((keep.numel() + val.numel(), *kept.shape[1:]))
    whole[keep], whole[val] = kept, held_out
    return whole


def _split_tensor(key: str) -> property:
    def get(self: ImageDataModule) -> torch.Tensor | None:
        return None if self._splits is None else self._splits[key]

    return property(get, doc=f"The {key.replace('_', ' ')} after setup(), else None.")


class ImageDataModule(pl.LightningDataModule):
    """Serves ``(uint8 images, int64 labels)`` batches of a source's train/val/test splits.

    - val is ``val_fraction`` of the official train split, chosen by ``seed``;
      test is the source's own test split.
    - ``binarize``: None, "none" or "dynamic" leave pixels as they are (with
      "dynamic" the model samples binary pixels per batch); "static" draws one Bernoulli
      sample per pixel once, from a generator seeded by ``seed``; "threshold"
      keeps pixels at or above half intensity.  Both store 0/1 and make
      ``levels`` 2.
    - ``source`` is a source, or a factory that takes ``root`` and ``download``
      (see :func:`complete_source`).
    - ``data_on_device``: move all splits to the trainer's device in ``setup``,
      so batches are gathered on the GPU and nothing is copied per step.

    - ``batch_size`` is the global batch, what one optimiser step sees: under DDP
      each of the N processes takes ``batch_size / N`` images per step (N must
      divide it), so a config means the same thing on any number of devices.
      ``eval_batch_size`` is per process (it only bounds memory). Evaluation
      splits are sharded across processes without padding: every image is scored
      exactly once, and the metrics are reduced across processes.

    After ``setup``, the splits are available as ``train_images``,
    ``train_labels``, ``val_images``, ... (e.g. to initialise a decoder bias
    from the mean training image).  Scaling to float is the model's job.
    """

    def __init__(
        self,
        source: Source | Callable[..., Source],
        root: str | None = DataSchema.root,
        download: bool = DataSchema.download,
        batch_size: int = DataSchema.batch_size,
        eval_batch_size: int | None = DataSchema.eval_batch_size,
        val_fraction: float = DataSchema.val_fraction,
        seed: int = DataSchema.seed,
        binarize: str | None = DataSchema.binarize,
        data_on_device: bool = DataSchema.data_on_device,
    ) -> None:
        """Defaults and ranges are vaelab.settings's (DataSchema, RANGES)."""
        super().__init__()
        check_range("data.batch_size", batch_size)
        check_range("data.eval_batch_size", eval_batch_size)
        check_range("data.val_fraction", val_fraction)
        self.source = complete_source(source, root, download)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.binarize = check_mode(binarize)
        self.data_on_device = bool(data_on_device)
        self._splits: dict[str, torch.Tensor] | None = None

    train_images = _split_tensor("train_images")
    train_labels = _split_tensor("train_labels")
    val_images = _split_tensor("val_images")
    val_labels = _split_tensor("val_labels")
    test_images = _split_tensor("test_images")
    test_labels = _split_tensor("test_labels")

    def whole_training_split(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The source's whole training split, train and val together, in the source's
        order: the same images and labels whatever ``seed`` and ``val_fraction`` choose
        for validation (None before ``setup``). For what must be one thing across the
        seeds of a sweep, such as the classifier whose features the FID compares."""
        if self._splits is None:
            return None
        train_images, val_images = self._splits["train_images"], self._splits["val_images"]
        n = train_images.shape[0] + val_images.shape[0]
        keep, val = holdout_split(n, self.val_fraction, self.seed)
        keep, val = keep.to(train_images.device), val.to(train_images.device)
        return tuple(  # type: ignore[return-value]
            _interleaved(self._splits[f"train_{kind}"], self._splits[f"val_{kind}"], keep, val)
            for kind in ("images", "labels")
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.source.image_shape)  # type: ignore[return-value]

    @property
    def levels(self) -> int:
        return 2 if self.binarize in ("static", "threshold") else self.source.levels

    def prepare_data(self) -> None:
        """Download if the source was asked to; Lightning runs this on one process per node."""
        prepare = getattr(self.source, "prepare", None)
        if callable(prepare):
            prepare()

    def setup(self, stage: str | None = None) -> None:
        """Load, split and binarise once; on every call, follow the trainer's device."""
        if self._splits is None:
            self._splits = self._build()
        if self.data_on_device and self.trainer is not None:
            device = self.trainer.strategy.root_device
            self._splits = {k: v.to(device) for k, v in self._splits.items()}

    def _build(self) -> dict[str, torch.Tensor]:
        arrays = self.source.load()
        train_images, test_images = arrays.train_images, arrays.test_images
        if self.binarize == "static":
            # One generator, train first then test: the draws depend only on
            # the seed and the official splits, not on val_fraction.
            generator = torch.Generator().manual_seed(self.seed)
            train_images = bernoulli(train_images, arrays.levels, generator)
            test_images = bernoulli(test_images, arrays.levels, generator)
        elif self.binarize == "threshold":
            train_images = threshold(train_images, arrays.levels)
            test_images = threshold(test_images, arrays.levels)
        keep, val = holdout_split(train_images.shape[0], self.val_fraction, self.seed)
        return {
            "train_images": train_images[keep],
            "train_labels": arrays.train_labels[keep],
            "val_images": train_images[val],
            "val_labels": arrays.train_labels[val],
            "test_images": test_images,
            "test_labels": arrays.test_labels,
        }

    def _split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self._splits is None:
            raise RuntimeError("call setup() before asking for dataloaders")
        return self._splits[f"{name}_images"], self._splits[f"{name}_labels"]

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def per_process_batch_size(self, world_size: int | None = None) -> int:
        """``batch_size / world_size`` (the trainer's world size by default)."""
        world_size = world_size or self._rank()[1]
        if self.batch_size % world_size:
            raise ConfigError(
                f"data.batch_size={self.batch_size} is the global batch and must divide evenly among the "
                f"{world_size} DDP processes; use a multiple of {world_size}"
            )
        return self.batch_size // world_size

    def train_dataloader(self) -> TensorBatches:
        images, labels = self._split("train")
        rank, world_size = self._rank()
        return TensorBatches(
            images,
            labels,
            self.per_process_batch_size(),
            shuffle=True,
            drop_last=False,
            seed=self.seed,
            epoch_fn=(lambda: self.trainer.current_epoch) if self.trainer is not None else None,
            rank=rank,
            world_size=world_size,
        )

    def _eval_batches(self, split: str) -> TensorBatches:
        images, labels = self._split(split)
        rank, world_size = self._rank()
        return TensorBatches(
            images, labels, self.eval_batch_size, shuffle=False, rank=rank, world_size=world_size, pad=False
        )

    def val_dataloader(self) -> TensorBatches:
        return self._eval_batches("val")

    def test_dataloader(self) -> TensorBatches:
        return self._eval_batches("test")
