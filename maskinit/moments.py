"""Mean and variance of values that arrive in parts (a layer called once per FPN level, a stage over a batch):
Chan et al.'s pairwise merge of (count, mean, M2), exact where E[x^2] - E[x]^2 loses digits to a large mean.

`merge` is the arithmetic alone (floats or numpy arrays alike); `RunningMoments` feeds it tensors and
remembers whether anything was not finite.
"""

from __future__ import annotations

import math

import torch


def merge(first: tuple, second: tuple) -> tuple:
    """The (count, mean, M2) of two parts together, M2 being the sum of squared deviations from the mean."""
    count_a, mean_a, m2_a = first
    count_b, mean_b, m2_b = second
    total = count_a + count_b
    delta = mean_b - mean_a
    return total, mean_a + delta * count_b / total, m2_a + m2_b + delta * delta * count_a * count_b / total


class RunningMoments:
    """Mean and variance of every value of the tensors `add`ed, computed in `dtype`.

    Once a value is not finite, the mean and the variance are infinite (the stage or layer has blown up);
    nothing added yet (or only empty tensors): None.
    """

    def __init__(self, dtype: torch.dtype = torch.float64):
        self.dtype = dtype
        self.count, self.mean, self.m2, self.finite = 0, 0.0, 0.0, True

    def add(self, tensor: torch.Tensor) -> None:
        if tensor.numel() == 0 or not self.finite:
            return
        values = tensor.detach().to(self.dtype)
        if not bool(torch.isfinite(values).all()):
            self.finite = False
            return
        variance, mean = torch.var_mean(values, correction=0)
        count = values.numel()
        self.count, self.mean, self.m2 = merge(
            (self.count, self.mean, self.m2), (count, float(mean), float(variance) * count)
        )

    @property
    def variance(self) -> float | None:
        if not self.finite:
            return math.inf
        return self.m2 / self.count if self.count else None

    def mean_and_std(self) -> tuple[float | None, float | None]:
        if not self.finite:
            return math.inf, math.inf
        if not self.count:
            return None, None
        return self.mean, math.sqrt(self.m2 / self.count)
