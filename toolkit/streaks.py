"""Streak finding on detection masks (``doFilterMorphological``), a simplified ``MaskStreaksTask``.

LSST runs a Kernel Hough Transform on a Canny edge map of the DETECTED pixels and fits a Moffat
profile to each line (DMTN-197).  diffstack runs scikit-image's straight-line Hough transform
directly on the detected pixels, keeps lines supported by at least ``clusterMinimumSize``
pixels, refits each line to its pixels (the Hough angle is quantised), masks the detected
pixels within the streak's core width along it, and dilates by ``grow`` pixels.  No profile
fit: the masked width comes from the detections themselves (the offsets from the line at which
at least half of its length is detected).

LSST's profile fit is what rejects compact sources that a Hough transform also votes for: its
model is a line across the whole image, so a blob that fills a few pixels of it fits to
nothing.  Here the same role is played by a continuity test: along the line, the detections
in the band must form one unbroken run (gaps of up to a band width allowed) at least
``MIN_RUN_BAND_LENGTHS`` band widths long and at least ``MIN_RUN_FRACTION`` of the line's chord
through the image.  Without it, every PSF-matched cosmic ray (a 15-25 px blob of 60-100
detected pixels) passed as a streak and was clipped, grown by growStreakFp, with its
neighbours on the line; and in crowded epochs (5 % of the pixels detected) any line through
the field collected a thousand detected pixels from separate sources.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .config import MaskStreaksConfig

__all__ = ["find_streaks"]

#: a streak's detections must run unbroken along this many band widths of its line ...
MIN_RUN_BAND_LENGTHS = 10
#: ... and along this fraction of the line's chord through the image
MIN_RUN_FRACTION = 0.5


def _longest_run(steps: np.ndarray, gap: int) -> int:
    """Length of the longest stretch of the sorted unique integers ``steps`` whose successive
    values differ by at most ``gap`` + 1."""
    if steps.size == 0:
        return 0
    breaks = np.nonzero(np.diff(steps) > gap + 1)[0]
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks, [steps.size - 1]))
    return int((steps[ends] - steps[starts]).max()) + 1


def _chord_length(shape: tuple[int, int], ang: float, dist: float) -> float:
    """Length of the line x cos(ang) + y sin(ang) = dist inside the image box."""
    ny, nx = shape
    c, s = np.cos(ang), np.sin(ang)
    pts = []
    if abs(s) > 1e-12:  # crossings of the left and right edges
        for x in (0.0, nx - 1.0):
            y = (dist - x * c) / s
            if 0.0 <= y <= ny - 1.0:
                pts.append((x, y))
    if abs(c) > 1e-12:  # of the top and bottom edges
        for y in (0.0, ny - 1.0):
            x = (dist - y * s) / c
            if 0.0 <= x <= nx - 1.0:
                pts.append((x, y))
    if len(pts) < 2:
        return 0.0
    p = np.array(pts)
    return float(np.ptp(p[:, 0]) ** 2 + np.ptp(p[:, 1]) ** 2) ** 0.5


def _refit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(angle, dist)`` of the line x cos(angle) + y sin(angle) = dist along the principal axis
    of the points: the Hough peak's angle is quantised (a 0.5 degree error moves the ends of a
    4k-pixel line by 18 px), the points' own axis is not."""
    mx, my = x.mean(), y.mean()
    evals, evecs = np.linalg.eigh(np.cov(np.vstack([x - mx, y - my])))
    dx, dy = evecs[:, 1]  # the direction of largest spread: along the line
    ang = float(np.arctan2(dx, -dy))  # the normal (cos, sin) is (-dy, dx)
    return ang, float(mx * np.cos(ang) + my * np.sin(ang))


def _core_half_width(offsets: np.ndarray, along: np.ndarray, run: int) -> float:
    """Half-width of the streak's core: the offsets from the line (1-px bins) at which at least
    half of the line's length holds a detection, contiguous around the best-covered one.  It
    stands in for the width of LSST's fitted profile."""
    bins = np.round(offsets).astype(np.int64)
    lo = bins.min()
    steps = np.floor(along).astype(np.int64)
    # unique (offset, step) pairs: each step counts once per offset
    pairs = np.unique((bins - lo) * (steps.max() - steps.min() + 1) + (steps - steps.min()))
    frac = np.bincount(pairs // (steps.max() - steps.min() + 1), minlength=bins.max() - lo + 1) / max(run, 1)
    best = int(np.argmax(frac))
    i = j = best
    while i > 0 and frac[i - 1] >= 0.5:
        i -= 1
    while j < frac.size - 1 and frac[j + 1] >= 0.5:
        j += 1
    return float(max(abs(i + lo), abs(j + lo))) + 0.5


def find_streaks(detected: np.ndarray, config: MaskStreaksConfig, grow: int = 0) -> np.ndarray:
    """Boolean streak mask from a boolean detection mask.

    For each Hough line supported by at least ``clusterMinimumSize`` detected pixels within
    ``absMinimumKernelHeight`` of it, the line is refitted to those pixels, tested for length
    (module notes), and the detected pixels within its core width (at least
    ``absMinimumKernelHeight``) are masked along the whole line (``onlyMaskDetected``), then
    the mask is grown by ``grow`` pixels with afw's circular stencil.
    """
    from skimage.transform import hough_line, hough_line_peaks

    out = np.zeros(detected.shape, bool)
    if detected.sum() < config.clusterMinimumSize:
        return out
    theta = np.deg2rad(np.arange(-90.0, 90.0, config.thetaBinSize / 4))
    h, angles, dists = hough_line(detected, theta=theta)
    yy, xx = np.nonzero(detected)
    half_band = max(config.absMinimumKernelHeight, 2.0)
    band = 2 * half_band
    for acc, ang, dist in zip(*hough_line_peaks(h, angles, dists, threshold=config.clusterMinimumSize, num_peaks=10)):
        on = np.abs(xx * np.cos(ang) + yy * np.sin(ang) - dist) <= half_band
        if on.sum() < config.clusterMinimumSize:
            continue
        for _ in range(2):  # the band's own axis, then the band about it
            ang, dist = _refit(xx[on], yy[on])
            on = np.abs(xx * np.cos(ang) + yy * np.sin(ang) - dist) <= half_band
        if on.sum() < config.clusterMinimumSize:
            continue
        # the support must run unbroken along a long stretch of the line (module notes): the
        # 1-px steps along it that hold a detection, gaps up to a band width bridged
        along_all = -xx * np.sin(ang) + yy * np.cos(ang)
        run = _longest_run(np.unique(np.floor(along_all[on]).astype(np.int64)), int(band))
        if run < max(MIN_RUN_BAND_LENGTHS * band, MIN_RUN_FRACTION * _chord_length(detected.shape, ang, dist)):
            continue
        # its width: the core of the detections' profile across it, out to a few band widths
        offset = xx * np.cos(ang) + yy * np.sin(ang) - dist
        near = np.abs(offset) <= 4 * band
        width = max(half_band, _core_half_width(offset[near], along_all[near], run))
        sel = np.abs(offset) <= width
        out[yy[sel], xx[sel]] = True
    if grow > 0 and out.any():
        from .detection import grow_mask

        out = grow_mask(out, grow)  # the same dilation, on the streaks' boxes only
    return out
