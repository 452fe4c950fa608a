"""The Frechet distance against closed forms and scipy; the shipped Fashion-MNIST metric network
by what it does (test accuracy, a distance that sees degraded images)."""

import numpy as np
import pytest
import torch
from scipy import linalg

from ldmkit.data import load_fashion_mnist
from ldmkit.metrics import (
    classify,
    extrapolated_frechet_distance,
    feature_frechet_distance,
    frechet_distance,
    gaussian_statistics,
    load_fmnist_classifier,
)


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()  # 5 + 4 + 1 + 0
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected.item(), rel=1e-12)


def test_frechet_distance_matches_the_scipy_sqrtm_formula():
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(500, 16, generator=gen, dtype=torch.float64)
         @ torch.randn(16, 16, generator=gen, dtype=torch.float64))
    y = torch.randn(400, 16, generator=gen, dtype=torch.float64) * 2 + 0.5
    (m1, s1), (m2, s2) = gaussian_statistics(x), gaussian_statistics(y)
    root = linalg.sqrtm(s1.numpy() @ s2.numpy()).real  # the usual FID code's route
    reference = np.sum((m1 - m2).numpy() ** 2) + np.trace(s1.numpy() + s2.numpy() - 2 * root)
    assert feature_frechet_distance(x, y) == pytest.approx(reference, rel=1e-9)
    assert feature_frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_extrapolated_frechet_distance_removes_the_small_sample_bias():
    # 300 samples of N(mu, diag(s)) against N(0, I): the closed form is |mu|^2 + sum (1 - sqrt(s))^2
    dim = 16
    scales, mu = torch.linspace(0.5, 2.0, dim, dtype=torch.float64), torch.full((dim,), 0.1, dtype=torch.float64)
    exact = float(mu @ mu + ((1 - scales.sqrt()) ** 2).sum())
    reference = torch.randn(50_000, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain, extrapolated = [], []
    for trial in range(20):
        x = mu + scales.sqrt() * torch.randn(
            300, dim, generator=torch.Generator().manual_seed(trial + 1), dtype=torch.float64
        )
        plain.append(feature_frechet_distance(x, reference))
        extrapolated.append(extrapolated_frechet_distance(x, reference, seed=trial))
    plain_bias = sum(plain) / len(plain) - exact
    extrapolated_bias = sum(extrapolated) / len(extrapolated) - exact
    assert plain_bias > 0.25  # about tr(S) / N = 0.33 on a true distance of 1.05
    assert abs(extrapolated_bias) < 0.1  # its standard error over 20 trials is about 0.04
    with pytest.raises(ValueError, match="too few"):
        extrapolated_frechet_distance(x[:3], reference)


def test_gaussian_statistics_refuse_too_few_samples():
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_statistics(torch.zeros(1, 4))


@pytest.fixture(scope="module")
def classifier():
    return load_fmnist_classifier()


def test_shipped_classifier_classifies_the_test_set(classifier):
    images, labels = load_fashion_mnist("test", limit=2000)
    features, predicted = classify(classifier, images)
    assert features.shape == (2000, 128)
    assert (predicted == labels).float().mean() > 0.90  # 10-class chance is 0.10; full test set: 0.924


def test_frechet_distance_on_its_features_sees_degraded_images(classifier):
    train, _ = load_fashion_mnist("train", limit=1000)
    test, _ = load_fashion_mnist("test", limit=1000)
    real = feature_frechet_distance(classify(classifier, train)[0], classify(classifier, test)[0])
    blurred = torch.nn.functional.avg_pool2d(train, 3, 1, 1)
    noisy = (train + 0.4 * torch.randn(train.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    for degraded in (blurred, noisy):
        assert feature_frechet_distance(classify(classifier, degraded)[0], classify(classifier, test)[0]) > 3 * real


def test_class_images_are_scored_with_fd_inf_of_class_balanced_halves(classifier):
    from ldmkit.apps.evaluate import fashion_mnist_test_features, score_class_images

    train, labels = load_fashion_mnist("train", limit=6000)
    per_class = 300  # real training images in the evaluator's prompt-major order: 300 of each class
    images = torch.cat([train[labels == k][:per_class] for k in range(10)])
    test_features = fashion_mnist_test_features(classifier)
    scores = score_class_images(classifier, images, test_features, per_class)
    assert scores["class_agreement"] > 0.9
    # real images: the bias removed, FD_inf is near 0, far below FD (measured 0.006 against 0.082);
    # each half's is noisier (-0.15, -0.04), and still far below a trained model's (~1)
    assert abs(scores["fd_inf"]) < 0.3 * scores["frechet_distance"]
    assert all(abs(half) < 0.3 for half in scores["fd_inf_halves"])
    one_class = score_class_images(classifier, images[:per_class].repeat(10, 1, 1, 1), test_features, per_class)
    assert one_class["fd_inf"] > 10 * scores["frechet_distance"]  # a collapsed generator is seen
