"""Data for vaelab: dataset sources, in-memory batching and the Lightning data module.

Every dataset is loaded whole into uint8 tensors (:class:`ImageArrays`) and
served as batches gathered straight from those tensors (:class:`TensorBatches`),
optionally on the GPU; :class:`ImageDataModule` ties a source to a Trainer.
"""

from .arrays import DatasetFormatError, DatasetNotFoundError, ImageArrays
from .batches import TensorBatches
from .datamodule import ImageDataModule
from .download import ChecksumError, download_file
from .sources import CIFAR10, MNIST, Digits, FashionMNIST, ImageFolder

__all__ = [
    "CIFAR10",
    "MNIST",
    "ChecksumError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "Digits",
    "FashionMNIST",
    "ImageArrays",
    "ImageDataModule",
    "ImageFolder",
    "TensorBatches",
    "download_file",
]
