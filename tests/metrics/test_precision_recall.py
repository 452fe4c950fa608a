"""Improved precision and recall (Kynkaanniemi et al. 2019) against a worked example, Gaussians
with a known answer, and the edge cases."""

import pytest
import torch

from ldmkit.metrics import precision_recall


def gaussian(n: int, width: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    return scale * torch.randn(n, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_worked_example_in_one_dimension_in_blocks():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[0.5], [3.9], [4.5], [10.0]])
    # k = 1: every real radius is 1 (the point itself does not count as its neighbour), so 0.5 and
    # 3.9 are on the real manifold and 4.5 and 10 are not; the fake radii are 3.4, 0.6, 0.6, 5.5,
    # and the ball of 0.5 alone holds all the real points
    for batch in (1, 3, 1024):
        assert precision_recall(real, fake, k=1, batch=batch) == {"precision": 0.5, "recall": 1.0, "k": 1}


def test_identical_sets_score_one():
    features = gaussian(1000, 8)
    assert precision_recall(features, features.clone()) == {"precision": 1.0, "recall": 1.0, "k": 3}


def test_narrow_fake_gaussian_has_fidelity_without_diversity_and_the_swap_the_reverse():
    # real N(0, I), fake N(0, s^2 I) in 2-D, N = 1000, k = 3. Where both sets are dense, a point
    # lies on the other's manifold with probability about 0.98 (a Monte-Carlo run of 20 seeds of
    # two N(0, I) sets: 0.977 +- 0.007), so precision is near 1: 0.980 +- 0.014 (min 0.939) in 20 seeds.
    # The fake sample reaches out to about R = s sqrt(2 ln N), where its expected count beyond,
    # N exp(-R^2 / 2 s^2), falls to 1 (the outermost points' wide balls fill up to there); the
    # real mass within R is 1 - exp(-R^2 / 2) = 1 - N^(-s^2): 0.351 for s = 0.25. Monte Carlo
    # gives 0.354 +- 0.023 (0.30 to 0.39) in 20 seeds.
    n, s = 1000, 0.25
    real, fake = gaussian(n, 2, seed=1), gaussian(n, 2, scale=s, seed=2)
    narrow = precision_recall(real, fake)
    assert narrow["precision"] > 0.9
    assert narrow["recall"] == pytest.approx(1 - n ** -(s**2), abs=0.08)
    # the roles swapped (the fake set is now the wide one): the same two numbers, exchanged
    wide = precision_recall(fake, real)
    assert (wide["precision"], wide["recall"]) == (narrow["recall"], narrow["precision"])
    assert wide["recall"] > 0.9 and wide["precision"] < 0.5


def test_a_distant_fake_set_scores_zero():
    real = gaussian(1000, 4, seed=3)
    fake = gaussian(1000, 4, seed=4) + 100  # every radius is a few units: no ball reaches 100 away
    assert precision_recall(real, fake) == {"precision": 0.0, "recall": 0.0, "k": 3}


@pytest.mark.parametrize(("real", "fake", "k", "message"), [
    (torch.zeros(10, 2, 3), torch.zeros(10, 2), 3, "real features must be 2-D"),
    (torch.zeros(10, 2), torch.zeros(10), 3, "fake features must be 2-D"),
    (torch.zeros(10, 2), torch.zeros(10, 3), 3, "feature widths differ: 2 and 3"),
    (torch.zeros(3, 2), torch.zeros(10, 2), 3, "real has 3 rows: fewer than k . 1 = 4"),
    (torch.zeros(10, 2), torch.zeros(4, 2), 4, "fake has 4 rows: fewer than k . 1 = 5"),
    (torch.zeros(10, 2), torch.zeros(10, 2), 0, "k must be at least 1"),
])
def test_bad_inputs_are_named(real, fake, k, message):
    with pytest.raises(ValueError, match=message):
        precision_recall(real, fake, k=k)
