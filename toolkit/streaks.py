"""Streak finding on detection masks (``doFilterMorphological``), a simplified ``MaskStreaksTask``.

LSST runs a Kernel Hough Transform on a Canny edge map of the DETECTED pixels and fits a Moffat
profile to each line (DMTN-197).  diffstack runs scikit-image's straight-line Hough transform
directly on the detected pixels, keeps lines supported by at least ``clusterMinimumSize``
pixels, masks the detected pixels within the line's band, and dilates by ``grow`` pixels.
No profile fit: the masked width comes from the detections themselves.
"""

from __future__ import annotations

import numpy as np

__all__ = ["find_streaks"]


def find_streaks(detected: np.ndarray, config, grow: int = 0) -> np.ndarray:
    """Boolean streak mask from a boolean detection mask."""
    from skimage.transform import hough_line, hough_line_peaks

    out = np.zeros(detected.shape, bool)
    if detected.sum() < config.clusterMinimumSize:
        return out
    theta = np.deg2rad(np.arange(-90.0, 90.0, config.thetaBinSize / 4))
    h, angles, dists = hough_line(detected, theta=theta)
    yy, xx = np.nonzero(detected)
    half_band = max(config.absMinimumKernelHeight, 2.0)
    for acc, ang, dist in zip(*hough_line_peaks(h, angles, dists, threshold=config.clusterMinimumSize, num_peaks=10)):
        rho = xx * np.cos(ang) + yy * np.sin(ang)
        on = np.abs(rho - dist) <= half_band
        if on.sum() < config.clusterMinimumSize:
            continue
        # require the support to be spread along the line, not one compact blob
        along = -xx[on] * np.sin(ang) + yy[on] * np.cos(ang)
        if np.ptp(along) < 4 * half_band:
            continue
        out[yy[on], xx[on]] = True
    if grow > 0 and out.any():
        from .detection import grow_mask

        out = grow_mask(out, grow)  # the same dilation, on the streaks' boxes only
    return out
