"""The in-memory form every dataset source produces, and the errors sources raise.

All datasets used here are small enough to live in memory as uint8 tensors
(MNIST is 55 MB, CIFAR-10 184 MB), so a source's whole job is to turn files
into an :class:`ImageArrays`; batching, splitting and binarisation work on
that one representation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vaelab.exceptions import DOWNLOAD_HINT, DatasetFormatError, DatasetNotFoundError  # noqa: F401 - re-exported


@dataclass(frozen=True, eq=False, repr=False)
class ImageArrays:
    """A dataset's official train and test splits as uint8 images and int64 labels.

    ``levels`` is the number of intensity levels the pixel values can take
    (values lie in ``0 .. levels - 1``); models need it to scale pixels and to
    pick a likelihood, and it is not always 256 (sklearn digits have 17).
    """

    train_images: torch.Tensor  # uint8, (N, C, H, W), contiguous
    train_labels: torch.Tensor  # int64, (N,)
    test_images: torch.Tensor  # uint8, (M, C, H, W), contiguous
    test_labels: torch.Tensor  # int64, (M,)
    levels: int

    def __post_init__(self) -> None:
        # Checked here so that a bug in any source (including user-written
        # ones) fails at load time with a clear message, not deep in a model.
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.ndim != 4:
                raise ValueError(f"{split}_images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
            if not images.is_contiguous():
                raise ValueError(f"{split}_images must be contiguous")
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise ValueError(
                    f"{split}_labels must be int64 of shape ({images.shape[0]},), "
                    f"got {labels.dtype} {tuple(labels.shape)}"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                f"train and test images differ in shape: {tuple(self.train_images.shape[1:])} "
                f"vs {tuple(self.test_images.shape[1:])}"
            )
        if self.levels < 2 or self.levels > 256:
            raise ValueError(f"levels must be in 2..256 for uint8 images, got {self.levels}")
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            if images.numel() and int(images.max()) >= self.levels:
                raise ValueError(f"{split}_images has value {int(images.max())}, beyond levels={self.levels}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_images.shape[1:]
        return (c, h, w)

    def __repr__(self) -> str:
        return (
            f"ImageArrays(train={tuple(self.train_images.shape)}, test={tuple(self.test_images.shape)}, "
            f"levels={self.levels})"
        )
