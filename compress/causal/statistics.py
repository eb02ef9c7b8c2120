"""Streaming sufficient statistics for standardised, ridge-regularised structural equations.

One `RegressionStatistics` per consumer layer holds the count, sums and cross-products of its parents
(input channels, x) and children (output channels, y). Batches are added as they come, so memory is
O(P^2 + P*Q) whatever the number of images, and two accumulators (or processes) combine by addition.
`solve` turns the sums into standardised coefficients:

    beta = (R_xx + ridge * I)^-1 R_xy

with R the correlation matrices, so rescaling a parent or a child leaves |beta| unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# A parent or child whose variance is below this fraction of the largest one in its layer is taken
# as constant (a dead or saturated filter): it explains nothing and gets a zero coefficient.
RELATIVE_VARIANCE_FLOOR = 1e-10


class RegressionStatistics:
    """Sums, cross-products and counts for regressing `n_children` outputs on `n_parents` inputs."""

    def __init__(self, n_parents: int, n_children: int, dtype: torch.dtype = torch.float64):
        if n_parents < 1 or n_children < 1:
            raise ValueError(f"need at least one parent and one child, got {n_parents} and {n_children}")
        self.n_parents, self.n_children = n_parents, n_children
        self.count = torch.zeros((), dtype=dtype)
        self.sum_x = torch.zeros(n_parents, dtype=dtype)
        self.sum_y = torch.zeros(n_children, dtype=dtype)
        self.sum_xx = torch.zeros(n_parents, n_parents, dtype=dtype)
        self.sum_xy = torch.zeros(n_parents, n_children, dtype=dtype)
        self.sum_yy = torch.zeros(n_children, dtype=dtype)  # only variances of the children are needed

    def tensors(self) -> list[torch.Tensor]:
        """Every accumulated tensor, in a fixed order (what a distributed run sums across processes)."""
        return [self.count, self.sum_x, self.sum_y, self.sum_xx, self.sum_xy, self.sum_yy]

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add observations: `x` is (N, n_parents), `y` is (N, n_children)."""
        if x.shape[0] != y.shape[0] or x.shape[1] != self.n_parents or y.shape[1] != self.n_children:
            raise ValueError(
                f"expected (N, {self.n_parents}) and (N, {self.n_children}), got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        x = x.detach().to(self.sum_x.dtype)
        y = y.detach().to(self.sum_y.dtype)
        self.count += x.shape[0]
        self.sum_x += x.sum(0)
        self.sum_y += y.sum(0)
        self.sum_xx += x.T @ x
        self.sum_xy += x.T @ y
        self.sum_yy += (y * y).sum(0)

    def merge(self, other: RegressionStatistics) -> RegressionStatistics:
        """Add another accumulator's observations to this one."""
        if (other.n_parents, other.n_children) != (self.n_parents, self.n_children):
            raise ValueError("cannot merge statistics of different shapes")
        for mine, theirs in zip(self.tensors(), other.tensors(), strict=True):
            mine += theirs
        return self

    def moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Means, standard deviations, parent covariance and parent-child covariance."""
        n = self.count.clamp(min=1)
        mean_x, mean_y = self.sum_x / n, self.sum_y / n
        cov_xx = self.sum_xx / n - torch.outer(mean_x, mean_x)
        cov_xy = self.sum_xy / n - torch.outer(mean_x, mean_y)
        std_x = torch.diagonal(cov_xx).clamp(min=0).sqrt()
        std_y = (self.sum_yy / n - mean_y * mean_y).clamp(min=0).sqrt()
        return mean_x, std_x, std_y, cov_xx, cov_xy

    def solve(self, ridge: float, blocks: Sequence[tuple[slice, slice]] | None = None) -> torch.Tensor:
        """Standardised coefficients, shape (n_parents, n_children).

        `blocks` restricts the equations to (parent slice, child slice) pairs, for grouped
        convolutions whose children see only their own group of parents; coefficients outside the
        blocks are zero.
        """
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        if self.count < 2:
            raise ValueError("need at least two observations to standardise")
        _, std_x, std_y, cov_xx, cov_xy = self.moments()
        live_x = _live(std_x)
        live_y = _live(std_y)
        if blocks is None:
            blocks = [(slice(0, self.n_parents), slice(0, self.n_children))]
        beta = torch.zeros(self.n_parents, self.n_children, dtype=cov_xx.dtype)
        for parents, children in blocks:
            px = torch.arange(self.n_parents)[parents][live_x[parents]]
            cy = torch.arange(self.n_children)[children][live_y[children]]
            if len(px) == 0 or len(cy) == 0:
                continue
            sx, sy = std_x[px], std_y[cy]
            r_xx = cov_xx[px][:, px] / torch.outer(sx, sx)
            r_xy = cov_xy[px][:, cy] / torch.outer(sx, sy)
            system = r_xx + ridge * torch.eye(len(px), dtype=r_xx.dtype)
            # lstsq tolerates the singular systems that ridge=0 gives on collinear parents.
            solution = torch.linalg.solve(system, r_xy) if ridge > 0 else torch.linalg.lstsq(system, r_xy).solution
            beta[px.unsqueeze(1), cy.unsqueeze(0)] = solution
        return beta


def _live(std: torch.Tensor) -> torch.Tensor:
    """Mask of variables that vary: a constant one has no standardised coefficient."""
    if std.numel() == 0 or std.max() <= 0:
        return torch.zeros_like(std, dtype=torch.bool)
    return std * std > RELATIVE_VARIANCE_FLOOR * (std.max() ** 2)
