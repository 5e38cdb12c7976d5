"""Adaptive drill-down for occlusion: a coarse pass everywhere, the fine stride only where the coarse map is high.

Nakandala, Kumar, Papakonstantinou, "Incremental and Approximate Inference for Faster Occlusion-based Deep CNN
Explanations", SIGMOD 2019, section 4.2 (adaptive drill-down). Differences from the paper, and why: the coarse
stage is every other position of the fine grid (plus the last one on each axis) rather than a separate
stride, so none of its work is thrown away; a fine position is computed when one of the coarse positions
around it (the corners of its cell) dropped the probability by at least ``threshold`` times the largest coarse
drop, in absolute value, rather than a fixed fraction of the image; the others take the bilinear interpolation of
those corners. The coarse pass itself starts with every 4th position, streamed as a first preview.
The paper leaves the error unmeasured; here the positions computed just above the threshold,
where both the interpolation and the truth are known, give an estimate of the error at the skipped ones.
"""

from __future__ import annotations

import numpy as np

PREVIEW_STEP = 4
"""The first frame comes from every 4th position along each axis (a sixteenth of them), the coarse pass's
first part, so that a map is on screen in a fraction of the whole pass's time."""


def coarse_indices(count: int, step: int = 2) -> np.ndarray:
    """The coarse positions along an axis of ``count`` fine ones: every ``step``-th one and the last."""
    return np.union1d(np.arange(0, count, step), [count - 1])


def coarse_mask(shape: tuple[int, int], step: int = 2) -> np.ndarray:
    """Which positions of a fine grid of ``shape`` the coarse pass (every ``step``-th) computes."""
    mask = np.zeros(shape, bool)
    mask[np.ix_(coarse_indices(shape[0], step), coarse_indices(shape[1], step))] = True
    return mask


def interpolated(grid: np.ndarray, step: int = 2) -> np.ndarray:
    """The fine grid's values bilinearly interpolated from its coarse positions (which keep their own)."""
    rows, cols = coarse_indices(grid.shape[0], step), coarse_indices(grid.shape[1], step)
    known = grid[np.ix_(rows, cols)].astype(np.float64)
    along = np.stack([np.interp(np.arange(grid.shape[1]), cols, line) for line in known])
    return np.stack([np.interp(np.arange(grid.shape[0]), rows, line) for line in along.T], axis=1)


def corner_peak(drops: np.ndarray) -> np.ndarray:
    """Per fine position, the largest absolute drop among the coarse positions at the corners of its cell."""
    rows, cols = coarse_indices(drops.shape[0]), coarse_indices(drops.shape[1])
    known = np.abs(drops[np.ix_(rows, cols)])
    peak = np.zeros(drops.shape)
    for row in range(drops.shape[0]):
        near_rows = rows[np.abs(rows - row) <= 1]
        for col in range(drops.shape[1]):
            near_cols = cols[np.abs(cols - col) <= 1]
            peak[row, col] = known[
                np.ix_(np.searchsorted(rows, near_rows), np.searchsorted(cols, near_cols))
            ].max()
    return peak


def refined_mask(drops: np.ndarray, threshold: float) -> np.ndarray:
    """Which fine positions (not coarse) to compute: a corner of their cell dropped ``threshold`` of the largest
    coarse drop or more. ``drops`` holds the coarse pass's drops (other positions are ignored)."""
    coarse = coarse_mask(drops.shape)
    peak = corner_peak(drops)
    largest = float(np.abs(drops[coarse]).max())
    return ~coarse & (peak >= threshold * largest) if largest > 0 else np.zeros(drops.shape, bool)


def position_error_estimate(
    drops: np.ndarray, guesses: np.ndarray, refined: np.ndarray, threshold: float
) -> float:
    """The largest error of the interpolation at the refined positions whose corners are within twice the
    threshold: the skipped positions' corners are below it, and the error grows with the corners' drops.

    ``drops`` holds the computed drops, ``guesses`` the interpolation from the coarse pass. With nothing refined
    in that band, the band's own width (``threshold`` times the largest coarse drop): the skipped values lie
    between their corners' if the map has no peak narrower than two strides.
    """
    coarse = coarse_mask(drops.shape)
    largest = float(np.abs(drops[coarse]).max())
    band = refined & (corner_peak(drops) < 2 * threshold * largest)
    seen = np.abs(drops[band] - guesses[band])
    return float(seen.max()) if seen.size else threshold * largest


def skipped_share(
    skipped: np.ndarray, rows: np.ndarray, cols: np.ndarray, window: int, size: tuple[int, int]
) -> np.ndarray:
    """HxW: the share of the windows covering each pixel whose drop was interpolated, not computed."""
    return window_sums(skipped.astype(np.float64), rows, cols, window, size) / np.maximum(
        window_sums(np.ones(skipped.shape), rows, cols, window, size), 1
    )


def window_sums(
    grid: np.ndarray, rows: np.ndarray, cols: np.ndarray, window: int, size: tuple[int, int]
) -> np.ndarray:
    """HxW: per pixel, the sum of ``grid``'s values over the windows (at ``rows`` x ``cols``) covering it."""
    corners = np.zeros((size[0] + 1, size[1] + 1))
    bottoms, rights = np.minimum(rows + window, size[0]), np.minimum(cols + window, size[1])
    np.add.at(corners, (rows[:, None], cols[None, :]), grid)
    np.add.at(corners, (bottoms[:, None], cols[None, :]), -grid)
    np.add.at(corners, (rows[:, None], rights[None, :]), -grid)
    np.add.at(corners, (bottoms[:, None], rights[None, :]), grid)
    return corners.cumsum(axis=0).cumsum(axis=1)[: size[0], : size[1]]
