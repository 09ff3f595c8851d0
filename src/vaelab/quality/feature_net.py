"""The feature network of the FID: a small classifier of the data set's own.

Inception weights cannot be downloaded here, and Inception features of 28x28 digits
mean little anyway, so each data set gets a small convolutional classifier trained
once on its training split (labels come with every reader) and cached under the
checksum of the images and labels it was trained and tested on, with its own test
accuracy: a feature space is only as good as the classifier behind it, so the
accuracy is reported beside every FID made with it. The FID's features are the
classifier's penultimate layer.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.locks import holder, try_lock, unlock

log = logging.getLogger(__name__)

#: bump when the network or its training changes: old cache files are then not used
FORMAT = 2


class FeatureClassifier(nn.Module):
    """Three 3x3 convolutions (the last two with stride 2) with ReLU, an average to a
    4x4 grid (so any image size works, 8x8 digits to 32x32 CIFAR) and a dense layer:
    ``features`` (B, feature_dim) are that layer's ReLU outputs, ``forward`` the class
    logits. About 160k weights."""

    def __init__(self, channels: int, num_classes: int, width: int = 16, feature_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(16 * 4 * width, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class Features(nn.Module):
    """The classifier's features as torchmetrics' FID wants a custom feature network:
    float images in [0, 1] in, (B, feature_dim) out."""

    def __init__(self, classifier: FeatureClassifier):
        super().__init__()
        self.classifier = classifier.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x.float())


@dataclass
class TrainedClassifier:
    network: FeatureClassifier
    accuracy: float  # on the test split
    checksum: str
    path: Path | None  # the cache file (None when not cached)


def intensities(images: Tensor, levels: int) -> Tensor:
    """uint8 images -> float intensities in [0, 1] (what the classifier sees)."""
    return images.float() / (levels - 1)


#: the most features an FID gets, and how many test images each of them needs
MAX_FEATURES = 128
IMAGES_PER_FEATURE = 10


def features_for(num_images: int) -> int:
    """How many features the FID of ``num_images`` test images uses: 128, or for a small
    test set one per 10 images (at least 8). An FID estimates two covariance matrices
    of the features from the images; with few images per feature its small-sample
    bias swamps what it measures. On digits (397 test images in tests/test_sample_quality.py),
    with 128 features other real digits scored 696 and the same digits blurred 310;
    with 39, real 30 and blurred once, twice, three times 511, 891, 1167."""
    return max(8, min(MAX_FEATURES, num_images // IMAGES_PER_FEATURE))


def data_checksum(*tensors: Tensor) -> str:
    """sha256 of the tensors' shapes and bytes: the images and labels a classifier
    was trained and tested on (a changed split or file trains a new one)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.contiguous().cpu()
        digest.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def train_classifier(
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    levels: int,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    feature_dim: int | None = None,
) -> tuple[FeatureClassifier, float]:
    """A classifier trained for ``steps`` Adam steps on random minibatches, and its
    test accuracy. Its random numbers are its own (forked), so a run that trains one
    at test time draws the same numbers afterwards as one that found it cached."""
    from tqdm.auto import tqdm

    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    # called at the end of a test, where Lightning has switched autograd off
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(seed)
        network = FeatureClassifier(
            train_images.shape[1], num_classes, feature_dim=feature_dim or features_for(test_images.shape[0])
        )
        optimizer = torch.optim.Adam(network.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        network.train()
        for _ in tqdm(range(steps), desc="FID classifier", unit="step", disable=None, leave=False):
            index = torch.randint(0, train_images.shape[0], (batch_size,))
            loss = F.cross_entropy(network(intensities(train_images[index], levels)), train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    network.eval()
    return network, accuracy(network, test_images, test_labels, levels)


@torch.no_grad()
def accuracy(network: FeatureClassifier, images: Tensor, labels: Tensor, levels: int, chunk: int = 2000) -> float:
    correct = 0
    for start in range(0, images.shape[0], chunk):
        logits = network(intensities(images[start : start + chunk], levels))
        correct += int((logits.argmax(dim=1) == labels[start : start + chunk]).sum())
    return correct / max(1, images.shape[0])


@contextmanager
def _cache_lock(path: Path, poll_s: float = 0.2) -> Iterator[None]:
    """One process trains a data set's classifier; jobs of a sweep that test at the
    same moment wait for it, then load the cached file (the OS drops the lock of a
    process that dies)."""
    said = False
    while (handle := try_lock(path)) is None:
        if not said:
            log.info("Waiting for %s, which is training the FID classifier (%s)", holder(path), path)
            said = True
        time.sleep(poll_s)
    try:
        yield
    finally:
        unlock(handle)


def load_or_train(
    name: str,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    levels: int,
    cache_dir: str | Path | None,
    steps: int = 2000,
) -> TrainedClassifier:
    """The data set's classifier from ``cache_dir`` (``<name>-<checksum>.pt``), or
    trained now and written there; ``cache_dir=None`` trains without caching."""
    checksum = data_checksum(train_images, train_labels, test_images, test_labels)
    if cache_dir is None:
        network, acc = train_classifier(train_images, train_labels, test_images, test_labels, levels, steps)
        return TrainedClassifier(network, acc, checksum, None)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{name}-{checksum[:16]}-s{steps}-v{FORMAT}.pt"
    with _cache_lock(cache / f".{path.stem}.lock"):
        if path.is_file():
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("checksum") == checksum:
                network = FeatureClassifier(
                    stored["channels"], stored["num_classes"], feature_dim=stored["feature_dim"]
                )
                network.load_state_dict(stored["state_dict"])
                return TrainedClassifier(network.eval(), float(stored["accuracy"]), checksum, path)
        started = time.perf_counter()
        network, acc = train_classifier(train_images, train_labels, test_images, test_labels, levels, steps)
        log.info(
            "Trained the FID classifier of %s in %.0f s: test accuracy %.4f -> %s",
            name,
            time.perf_counter() - started,
            acc,
            path,
        )
        stored = {
            "state_dict": network.state_dict(),
            "channels": int(train_images.shape[1]),
            "num_classes": int(network.head.out_features),
            "feature_dim": network.feature_dim,
            "accuracy": acc,
            "checksum": checksum,
            "steps": steps,
            "format": FORMAT,
        }
        partial = path.with_suffix(".part")
        torch.save(stored, partial)
        partial.replace(path)  # never a half-written cache file
    return TrainedClassifier(network, acc, checksum, path)
