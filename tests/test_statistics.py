import numpy as np
import pytest
import torch

from compress.causal.statistics import RegressionStatistics


def _linear_case(n=4000, seed=0, noise=0.05):
    """y = x @ B + noise with correlated parents of different scales and offsets."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(5, 5, generator=g) * 0.5 + torch.eye(5)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64) @ mixing.double()
    x = x * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0], dtype=torch.float64) + 5.0
    coef = torch.tensor(
        [[1.0, 0.0, -2.0], [0.3, 0.5, 0.0], [0.0, 4.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.7]], dtype=torch.float64
    )
    y = x @ coef + noise * torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x, y, coef


def test_recovers_known_standardised_coefficients():
    x, y, coef = _linear_case()
    stats = RegressionStatistics(5, 3)
    stats.update(x, y)
    beta = stats.solve(ridge=0.0)
    expected = coef * x.std(0, unbiased=False)[:, None] / y.std(0, unbiased=False)[None, :]
    np.testing.assert_allclose(beta.numpy(), expected.numpy(), atol=0.01)


def test_streaming_batches_equal_one_pass_and_merge_equals_union():
    x, y, _ = _linear_case(n=1000)
    whole = RegressionStatistics(5, 3)
    whole.update(x, y)
    streamed = RegressionStatistics(5, 3)
    for i in range(0, 1000, 64):
        streamed.update(x[i : i + 64], y[i : i + 64])
    left, right = RegressionStatistics(5, 3), RegressionStatistics(5, 3)
    left.update(x[:300], y[:300])
    right.update(x[300:], y[300:])
    merged = left.merge(right)
    for a, b, c in zip(whole.tensors(), streamed.tensors(), merged.tensors(), strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)


def test_rescaling_a_parent_or_child_leaves_coefficients_unchanged():
    x, y, _ = _linear_case(n=2000)
    plain, scaled = RegressionStatistics(5, 3), RegressionStatistics(5, 3)
    plain.update(x, y)
    scale_x = torch.tensor([1.0, 100.0, 1.0, 0.01, 1.0], dtype=torch.float64)
    scaled.update(x * scale_x, y * torch.tensor([3.0, 1.0, 0.2], dtype=torch.float64))
    torch.testing.assert_close(plain.solve(1e-2), scaled.solve(1e-2))


def test_constant_parent_and_child_get_zero_coefficients_not_nan():
    x, y, _ = _linear_case(n=500)
    x[:, 2] = 3.0  # a dead filter
    y[:, 1] = -1.0  # a child that never changes
    stats = RegressionStatistics(5, 3)
    stats.update(x, y)
    beta = stats.solve(1e-2)
    assert torch.isfinite(beta).all()
    assert (beta[2] == 0).all() and (beta[:, 1] == 0).all()


def test_blocks_restrict_children_to_their_own_parents():
    x, y, _ = _linear_case(n=500)
    stats = RegressionStatistics(5, 3)
    stats.update(x, y)
    beta = stats.solve(1e-2, blocks=[(slice(0, 2), slice(0, 1)), (slice(2, 5), slice(1, 3))])
    assert (beta[2:, 0] == 0).all() and (beta[:2, 1:] == 0).all()
    assert (beta[:2, 0] != 0).any() and (beta[2:, 1:] != 0).any()


def test_ridge_shrinks_and_validates():
    x, y, _ = _linear_case(n=500)
    stats = RegressionStatistics(5, 3)
    stats.update(x, y)
    assert stats.solve(10.0).abs().sum() < stats.solve(0.0).abs().sum()
    with pytest.raises(ValueError, match="ridge"):
        stats.solve(-1.0)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        stats.update(x[:, :4], y)
