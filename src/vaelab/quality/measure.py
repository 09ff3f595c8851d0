"""Sample quality of a trained VAE against the test images: FID (own classifier) and
sharpness of prior samples and of reconstructions.

Every image set is compared as intensities in [0, 1]: the test images scaled from
their integers (not binarised, not dequantised), and the decoder's mean images
clipped to [0, 1] (a Gaussian mean can stray outside; a Bernoulli mean is a grey
probability image, compared with the grey data it was binarised from).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from vaelab.quality.feature_net import Features, TrainedClassifier, intensities
from vaelab.quality.fid import FrechetDistance
from vaelab.quality.sharpness import laplacian_variance

#: the names logged under test/ (vaelab-compare reads them)
NAMES = ("fid_samples", "fid_recon", "fid_classifier_accuracy", "sharpness_samples", "sharpness_recon")


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


@torch.no_grad()
def generated_images(
    model: Any, test_images: Tensor, num_images: int, seed: int, batch_size: int
) -> dict[str, list[Tensor]]:
    """``samples``: decoder means at ``num_images`` prior draws; ``recon``: decoder means
    at E[z|x] of the first ``num_images`` test images (prepared as the model sees
    them, with a fixed seed). Batches on the CPU, clipped to [0, 1]. The draws use
    forked random streams, so measuring changes nothing a run draws afterwards."""
    device = model.device
    out: dict[str, list[Tensor]] = {"samples": [], "recon": []}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        for start, stop in _chunks(num_images, batch_size):
            out["samples"].append(model.sample(stop - start, generator=generator).float().cpu().clamp(0, 1))
        for start, stop in _chunks(num_images, batch_size):
            x = model.likelihood.prepare(test_images[start:stop].to(device), model.levels)
            out["recon"].append(model.reconstruct(x).float().cpu().clamp(0, 1))
    return out


def mean_laplacian_variance(batches: list[Tensor]) -> float:
    total = sum(float(laplacian_variance(b).sum()) for b in batches)
    return total / sum(b.shape[0] for b in batches)


def measure_sample_quality(
    model: Any,
    test_images: Tensor,
    levels: int,
    classifier: TrainedClassifier | None,
    num_images: int = 10000,
    seed: int = 0,
    batch_size: int = 500,
) -> dict[str, float]:
    """The metrics of :data:`NAMES` (FID ones only with a ``classifier``), each set of
    ``min(num_images, test images)`` images: an FID's bias depends on the sizes of its
    two sets, so samples are as many as the test images they are compared with."""
    n = min(num_images, test_images.shape[0])
    real = [intensities(test_images[a:b], levels) for a, b in _chunks(n, batch_size)]
    generated = generated_images(model, test_images, n, seed, batch_size)
    reference = mean_laplacian_variance(real)
    # test images without any detail (flat colours) have no sharpness to be relative to
    metrics = (
        {f"sharpness_{name}": mean_laplacian_variance(images) / reference for name, images in generated.items()}
        if reference > 0
        else {}
    )
    if classifier is not None:
        fid = FrechetDistance(Features(classifier.network), tuple(test_images.shape[1:]), real)
        metrics.update({f"fid_{name}": fid(images) for name, images in generated.items()})
        metrics["fid_classifier_accuracy"] = classifier.accuracy
    return metrics
