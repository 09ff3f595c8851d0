"""Dataset sources: one class per dataset, each turning files into :class:`ImageArrays`.

A source knows its ``name``, ``image_shape`` (C, H, W) and ``levels`` without
touching the disk, so a model can be built before any data is read.  Sources
with downloadable data also have ``prepare()``, which fetches missing files
when ``download=True`` and does nothing else; the data module calls it from
``prepare_data``.  ``load()`` calls ``prepare()`` itself, so a source also works
on its own.  Fetching holds the data folder's download lock (:mod:`.lock`):
when several processes start at once (SLURM's DDP ranks, parallel jobs), one
downloads and the others wait, then find the files.

Downloads go to the canonical mirrors and are checked against the md5 sums
torchvision uses.  Files already present are trusted and not re-hashed:
re-compressed copies (same IDX payload, different .gz bytes) are legitimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from vaelab.exceptions import ConfigError

from .archive import extract_folder
from .arrays import DatasetFormatError, DatasetNotFoundError, ImageArrays
from .cifar import read_cifar_batch
from .download import download_file
from .folder import IMAGE_EXTENSIONS, class_name, list_images, read_images
from .idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from .lock import download_lock
from .splits import FIXED_HOLDOUT_SEED, holdout_split

MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
FASHION_MNIST_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
CIFAR10_MIRROR = "https://www.cs.toronto.edu/~kriz/"
CIFAR10_MD5 = {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}


def _join_url(base: str, filename: str) -> str:
    return base.rstrip("/") + "/" + filename


def _checksum_table(checksums: Mapping[str, str] | None, default: Mapping[str, str]) -> dict[str, str]:
    table = dict(default if checksums is None else checksums)
    missing = sorted(set(default) - set(table))
    if missing:
        raise ValueError(f"checksums lacks an md5 for {missing}")
    return table


class Digits:
    """scikit-learn's bundled 8x8 digits: 1797 images with values 0..16.

    There is no official test split, so a fixed 20% is held out with a seed
    that does not depend on the run seed: every run is scored on the same images.
    """

    name = "digits"
    image_shape = (1, 8, 8)
    levels = 17
    test_fraction = 0.2

    def prepare(self) -> None:
        """Nothing to fetch: the data ships with scikit-learn."""

    def load(self) -> ImageArrays:
        from sklearn.datasets import load_digits  # slow import; only when used

        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.uint8)).reshape(-1, *self.image_shape)
        labels = torch.from_numpy(digits.target.astype(np.int64))
        train, test = holdout_split(len(images), self.test_fraction, FIXED_HOLDOUT_SEED)
        return ImageArrays(images[train], labels[train], images[test], labels[test], self.levels)

    def __repr__(self) -> str:
        return "Digits()"


class _DownloadableSource:
    """A data set in files under ``root`` that can be fetched from ``mirror``, each
    file checked against its md5 in ``checksums`` (by default the real table)."""

    default_mirror: str
    default_checksums: Mapping[str, str]

    def __init__(
        self,
        root: str | Path,
        download: bool = False,
        mirror: str | None = None,
        checksums: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.download = bool(download)
        self.mirror = mirror or self.default_mirror
        self.checksums = _checksum_table(checksums, self.default_checksums)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, download={self.download})"


class MNIST(_DownloadableSource):
    """MNIST from its four IDX files in ``root``, each raw or gzipped."""

    name = "mnist"
    image_shape = (1, 28, 28)
    levels = 256
    default_mirror = MNIST_MIRROR
    default_checksums = MNIST_MD5
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def _find(self, stem: str) -> Path | None:
        for path in (self.root / stem, self.root / f"{stem}.gz"):
            if path.is_file():
                return path
        return None

    def missing(self) -> list[str]:
        """Names of the files present neither raw nor gzipped."""
        return [stem for stem in self.files if self._find(stem) is None]

    def prepare(self) -> None:
        """Download the missing .gz files when ``download`` is set; one process at a
        time (DDP ranks, parallel jobs): the others wait, then find the files."""
        if not self.download or not self.missing():
            return
        with download_lock(self.root):
            for stem in self.missing():
                gz = f"{stem}.gz"
                download_file(_join_url(self.mirror, gz), self.root / gz, md5=self.checksums[gz])

    def load(self) -> ImageArrays:
        self.prepare()
        missing = self.missing()
        if missing:
            raise DatasetNotFoundError.missing_files(
                type(self).__name__, self.root, [f"{self.root / stem} (or {stem}.gz)" for stem in missing]
            )
        train_images, train_labels = self._read_pair("train")
        test_images, test_labels = self._read_pair("t10k")
        return ImageArrays(train_images, train_labels, test_images, test_labels, self.levels)

    def _read_pair(self, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        images_path = self._find(f"{prefix}-images-idx3-ubyte")
        labels_path = self._find(f"{prefix}-labels-idx1-ubyte")
        assert images_path is not None and labels_path is not None
        images = read_idx(images_path, IMAGES_MAGIC)
        labels = read_idx(labels_path, LABELS_MAGIC)
        if tuple(images.shape[1:]) != self.image_shape[1:]:
            raise DatasetFormatError(
                images_path,
                f"images are {images.shape[1]}x{images.shape[2]}, expected {self.image_shape[1]}x{self.image_shape[2]}",
            )
        if labels.shape[0] != images.shape[0]:
            raise DatasetFormatError(
                labels_path, f"holds {labels.shape[0]} labels but {images_path.name} holds {images.shape[0]} images"
            )
        return images.unsqueeze(1).contiguous(), labels.long()


class FashionMNIST(MNIST):
    """Fashion-MNIST: same file names and format as MNIST, different mirror and checksums."""

    name = "fashion_mnist"
    default_mirror = FASHION_MNIST_MIRROR
    default_checksums = FASHION_MNIST_MD5


class CIFAR10(_DownloadableSource):
    """CIFAR-10 from the python batches in ``root/cifar-10-batches-py/``."""

    name = "cifar10"
    image_shape = (3, 32, 32)
    levels = 256
    default_mirror = CIFAR10_MIRROR
    default_checksums = CIFAR10_MD5
    archive = "cifar-10-python.tar.gz"
    folder = "cifar-10-batches-py"
    train_batches = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_batches = ("test_batch",)

    def missing(self) -> list[Path]:
        return [
            self.root / self.folder / name
            for name in self.train_batches + self.test_batches
            if not (self.root / self.folder / name).is_file()
        ]

    def prepare(self) -> None:
        """When ``download`` is set and batches are missing, fetch (unless present) and unpack the archive."""
        if not self.download or not self.missing():
            return
        with download_lock(self.root):  # one process at a time; the others find it done
            if not self.missing():
                return
            archive = self.root / self.archive
            if not archive.is_file():
                download_file(_join_url(self.mirror, self.archive), archive, md5=self.checksums[self.archive])
            extract_folder(archive, self.folder, self.root)

    def load(self) -> ImageArrays:
        self.prepare()
        missing = self.missing()
        if missing:
            raise DatasetNotFoundError.missing_files(type(self).__name__, self.root, missing)
        train = [read_cifar_batch(self.root / self.folder / name) for name in self.train_batches]
        test = [read_cifar_batch(self.root / self.folder / name) for name in self.test_batches]
        return ImageArrays(
            torch.cat([images for images, _ in train]),
            torch.cat([labels for _, labels in train]),
            torch.cat([images for images, _ in test]),
            torch.cat([labels for _, labels in test]),
            self.levels,
        )


class ImageFolder:
    """Any folder of images, converted to ``channels`` (1: greyscale, 3: RGB) and resized to ``size`` (H, W).

    Splits: ``root/train`` and ``root/test`` when both exist, otherwise a fixed
    ``test_fraction`` hold-out (seeded independently of the run).  Labels are
    the index of the file's first-level subfolder among the sorted subfolder
    names of both splits (files directly in the split folder get class "",
    so a flat folder is all label 0).
    """

    name = "image_folder"
    levels = 256

    def __init__(
        self,
        root: str | Path,
        size: tuple[int, int] | Sequence[int] = (32, 32),
        channels: int = 3,
        test_fraction: float = 0.1,
    ) -> None:
        self.root = Path(root).expanduser()
        self.size = tuple(int(s) for s in size)
        if len(self.size) != 2 or min(self.size) < 1:
            raise ConfigError(f"size must be (H, W) with positive entries, got {size}")
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels}")
        if not 0.0 <= test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction}")
        self.channels = channels
        self.test_fraction = float(test_fraction)
        self.classes: list[str] | None = None  # filled by load()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size[0], self.size[1])

    def prepare(self) -> None:
        """Nothing to fetch: the images are the user's."""

    def _images_in(self, folder: Path) -> list[Path]:
        files = list_images(folder) if folder.is_dir() else []
        if not files:
            raise DatasetNotFoundError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}; put image files there, "
                f"optionally in one subfolder per class, or in {self.root / 'train'} and {self.root / 'test'}."
            )
        return files

    def load(self) -> ImageArrays:
        train_dir, test_dir = self.root / "train", self.root / "test"
        if train_dir.is_dir() and test_dir.is_dir():
            train_files, test_files = self._images_in(train_dir), self._images_in(test_dir)
            train_names = [class_name(p, train_dir) for p in train_files]
            test_names = [class_name(p, test_dir) for p in test_files]
        else:
            files = self._images_in(self.root)
            names = [class_name(p, self.root) for p in files]
            keep, held_out = (t.tolist() for t in holdout_split(len(files), self.test_fraction, FIXED_HOLDOUT_SEED))
            train_files, train_names = [files[i] for i in keep], [names[i] for i in keep]
            test_files, test_names = [files[i] for i in held_out], [names[i] for i in held_out]
        self.classes = sorted(set(train_names) | set(test_names))
        index = {name: i for i, name in enumerate(self.classes)}
        return ImageArrays(
            read_images(train_files, self.size, self.channels),
            torch.tensor([index[n] for n in train_names], dtype=torch.int64),
            read_images(test_files, self.size, self.channels),
            torch.tensor([index[n] for n in test_names], dtype=torch.int64),
            self.levels,
        )

    def __repr__(self) -> str:
        return (
            f"ImageFolder(root={str(self.root)!r}, size={self.size}, channels={self.channels}, "
            f"test_fraction={self.test_fraction})"
        )
