"""Sample quality: the sharpness statistic, the FID's own classifier and the FID itself,
checked against brute-force and independent (numpy/scipy) computations on digits."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from vaelab.data.datamodule import ImageDataModule
from vaelab.data.sources import Digits
from vaelab.quality import feature_net
from vaelab.quality.callback import SampleQuality
from vaelab.quality.feature_net import Features, data_checksum, load_or_train, train_classifier
from vaelab.quality.fid import FrechetDistance
from vaelab.quality.sharpness import laplacian_variance, sharpness_ratio


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    images = torch.from_numpy(data.images).to(torch.uint8).unsqueeze(1)  # (1797, 1, 8, 8), 17 levels
    labels = torch.from_numpy(data.target).long()
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images), generator=generator)
    train, test = order[:1400], order[1400:]
    return images[train], labels[train], images[test], labels[test]


@pytest.fixture(scope="module")
def classifier(digits):
    network, accuracy = train_classifier(*digits, levels=17, steps=400)
    return network, accuracy


def blur(images: torch.Tensor, times: int) -> torch.Tensor:
    for _ in range(times):
        images = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return images


def test_laplacian_variance_against_a_brute_force_loop():
    images = torch.rand(3, 2, 6, 7, generator=torch.Generator().manual_seed(1))
    expected = []
    for image in images:
        per_channel = []
        for channel in image:
            response = [
                channel[i - 1, j] + channel[i + 1, j] + channel[i, j - 1] + channel[i, j + 1] - 4 * channel[i, j]
                for i in range(1, 5)
                for j in range(1, 6)
            ]
            per_channel.append(np.var([float(r) for r in response]))
        expected.append(np.mean(per_channel))
    assert laplacian_variance(images).numpy() == pytest.approx(np.array(expected), rel=1e-5)


def test_flat_and_linearly_shaded_images_have_no_sharpness():
    ramp = torch.linspace(0, 1, 8).expand(8, 8)
    images = torch.stack([torch.full((1, 8, 8), 0.3), (ramp + ramp.T).unsqueeze(0) / 2])
    assert laplacian_variance(images).abs().max() < 1e-10


def test_sharpness_is_one_for_the_data_and_falls_with_blur(digits):
    test = digits[2].float() / 16
    assert sharpness_ratio(test, test) == pytest.approx(1.0)
    ratios = [sharpness_ratio(blur(test, times), test) for times in (1, 2, 3)]
    assert 1.0 > ratios[0] > ratios[1] > ratios[2] > 0
    noisy = (test + 0.2 * torch.randn_like(test)).clamp(0, 1)
    assert sharpness_ratio(noisy, test) > 1.0  # noise is not blur: above the data's


def test_the_classifier_learns_digits(classifier):
    _, accuracy = classifier
    assert accuracy > 0.9


def test_fid_agrees_with_an_independent_numpy_scipy_computation(digits, classifier):
    network, _ = classifier
    _, _, test_images, _ = digits
    real = test_images.float() / 16
    fake = blur(real, 2)
    fid = FrechetDistance(Features(network), (1, 8, 8), [real[:200], real[200:]])([fake[:150], fake[150:]])
    with torch.no_grad():
        a = network.features(real).double().numpy()
        b = network.features(fake).double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    expected = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))
    assert fid == pytest.approx(expected, rel=1e-3)


def test_fid_ranks_real_images_above_blurred_above_noise(digits, classifier):
    network, _ = classifier
    train_images, _, test_images, _ = digits
    real = test_images.float() / 16
    fid = FrechetDistance(Features(network), (1, 8, 8), [real])
    same = fid([real])
    # other digits than the test images, as many: real, ever more blurred, pixels shuffled
    # (with few test images the classifier has fewer features: feature_net.features_for)
    other = train_images[: len(real)].float() / 16
    held_out = fid([other])
    blurred = [fid([blur(other, times)]) for times in (1, 2, 3)]
    shuffled = fid([other.flatten(1)[:, torch.randperm(64, generator=torch.Generator().manual_seed(0))].view_as(other)])
    assert abs(same) < 1e-3 * held_out
    assert held_out < blurred[0] < blurred[1] < blurred[2]
    assert held_out * 5 < shuffled
    # each generated set is scored against the same real features: asking again changes nothing
    assert fid([blur(other, 1)]) == pytest.approx(blurred[0], rel=1e-6)


def test_the_classifier_is_cached_under_its_data_checksum(digits, tmp_path, monkeypatch):
    first = load_or_train("digits", *digits, levels=17, cache_dir=tmp_path, steps=50)
    assert first.path is not None and first.path.is_file() and first.checksum[:16] in first.path.name

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although it was cached")

    monkeypatch.setattr(feature_net, "train_classifier", no_training)
    again = load_or_train("digits", *digits, levels=17, cache_dir=tmp_path, steps=50)
    assert again.path == first.path and again.accuracy == first.accuracy
    for a, b in zip(first.network.state_dict().values(), again.network.state_dict().values()):
        assert torch.equal(a, b)
    # other images: another checksum, so another classifier is trained
    changed = list(digits)
    changed[0] = changed[0].clone()
    changed[0][0, 0, 0, 0] += 1
    assert data_checksum(*changed) != first.checksum
    with pytest.raises(AssertionError, match="trained again"):
        load_or_train("digits", *changed, levels=17, cache_dir=tmp_path, steps=50)


def test_training_the_classifier_leaves_the_callers_random_stream_alone(digits):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train_classifier(*digits, levels=17, steps=2)
    assert torch.equal(torch.rand(3), expected)


def test_every_seed_of_a_data_set_is_scored_by_one_classifier(tmp_path):
    """The seed chooses the validation images, so a classifier trained on the training
    split alone would differ from seed to seed: trained on train and val together."""
    trained = []
    for seed in (1, 2):
        datamodule = ImageDataModule(Digits(), val_fraction=0.2, seed=seed)
        datamodule.setup("fit")
        quality = SampleQuality(cache_dir=tmp_path, classifier_steps=5)
        trained.append(quality.classifier(datamodule))
    assert [p.name for p in tmp_path.glob("*.pt")] == [next(tmp_path.glob("*.pt")).name]
    first, second = (found.network.state_dict() for found in trained)
    assert all(torch.equal(first[k], second[k]) for k in first)
