"""maskinit.moments: the pairwise merge against numpy on the whole, a large mean, non-finite and empty input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maskinit.moments import RunningMoments, merge


def test_merge_of_parts_is_the_moments_of_the_whole():
    rng = np.random.default_rng(0)
    parts = [rng.normal(5, 3, size) for size in (1, 7, 100, 2)]
    moments = (0, 0.0, 0.0)
    for part in parts:
        moments = merge(moments, (part.size, part.mean(), part.var() * part.size))
    whole = np.concatenate(parts)
    count, mean, m2 = moments
    assert count == whole.size and mean == pytest.approx(whole.mean()) and m2 / count == pytest.approx(whole.var())


def test_merge_works_per_channel_on_arrays():
    rng = np.random.default_rng(1)
    first, second = rng.normal(0, 1, (3, 50)), rng.normal(10, 2, (3, 30))
    count, mean, m2 = merge((50, first.mean(1), first.var(1) * 50), (30, second.mean(1), second.var(1) * 30))
    whole = np.concatenate([first, second], axis=1)
    np.testing.assert_allclose(mean, whole.mean(1))
    np.testing.assert_allclose(m2 / count, whole.var(1))


def test_running_moments_of_tensors_in_parts():
    values = torch.randn(3, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 + 1e6
    moments = RunningMoments()
    for part in values:
        moments.add(part)
    moments.add(torch.empty(0))  # nothing: no change
    mean, std = moments.mean_and_std()
    assert mean == pytest.approx(float(values.mean()), rel=1e-12)
    assert std == pytest.approx(float(values.std(unbiased=False)), rel=1e-9)  # exact despite the large mean
    assert moments.variance == pytest.approx(std**2)


def test_running_moments_in_float32_as_lsuv_measures():
    moments = RunningMoments(torch.float32)
    moments.add(torch.full((4,), 2.0, dtype=torch.float16))
    moments.add(torch.tensor([0.0, 4.0]))
    assert moments.count == 6 and moments.mean == pytest.approx(2.0) and moments.variance == pytest.approx(8 / 6)


def test_nothing_added_is_none_and_non_finite_is_infinite():
    empty = RunningMoments()
    assert empty.variance is None and empty.mean_and_std() == (None, None)
    broken = RunningMoments()
    broken.add(torch.tensor([1.0, 2.0]))
    broken.add(torch.tensor([1.0, float("nan")]))
    broken.add(torch.tensor([3.0]))  # after a non-finite value: still infinite
    assert not broken.finite and broken.variance == math.inf and broken.mean_and_std() == (math.inf, math.inf)
