"""Footprint detection as LSST's ``SourceDetectionTask.detectFootprints`` does it for CompareWarp.

Thresholding in per-pixel sigma (``pixel_stdev``, inclusive), 8-connected labelling
(``scipy.ndimage.label`` with a 3x3 structure, which is afw's run-length rule), ``minPixels``
applied before growth, isotropic growth with afw's circular stencil (half-width
``int(sqrt(r^2 - dy^2))`` per row), and the union-and-relabel of ``combinedGrow`` and of the
positive/negative merge.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["circular_stencil", "threshold_footprints", "grow_radius", "binned_background", "smooth_for_detection"]

_EIGHT = np.ones((3, 3), bool)


def circular_stencil(r: int) -> np.ndarray:
    """afw's isotropic growth stencil of radius ``r``."""
    r = int(r)
    st = np.zeros((2 * r + 1, 2 * r + 1), bool)
    for dy in range(-r, r + 1):
        dx = int(np.sqrt(r * r - dy * dy))
        st[dy + r, r - dx : r + dx + 1] = True
    return st


def grow_radius(n_sigma: float, psf_sigma: float) -> int:
    return int(n_sigma * psf_sigma + 0.5)


def _label_filter_grow(seeds: np.ndarray, min_pixels: int, r: int) -> np.ndarray:
    lab, n = ndimage.label(seeds, structure=_EIGHT)
    if n == 0:
        return np.zeros(seeds.shape, bool)
    if min_pixels > 1:
        counts = np.bincount(lab.ravel(), minlength=n + 1)
        keep = counts >= min_pixels
        keep[0] = False
        sel = keep[lab]
    else:
        sel = lab > 0
    if r > 0 and sel.any():
        sel = ndimage.binary_dilation(sel, structure=circular_stencil(r))
    return sel


def threshold_footprints(image: np.ndarray, variance: np.ndarray, threshold: float, polarity: str = "both", min_pixels: int = 1, grow: int = 0) -> tuple[np.ndarray, int]:
    """Labelled footprints (int32 labels 1..n) of ``|image| >= threshold * sqrt(variance)``."""
    with np.errstate(invalid="ignore"):
        sig = np.sqrt(variance)
        pos = image >= threshold * sig if polarity in ("positive", "both") else None
        neg = -image >= threshold * sig if polarity in ("negative", "both") else None
    out = np.zeros(image.shape, bool)
    for seeds in (pos, neg):
        if seeds is not None:
            out |= _label_filter_grow(seeds, min_pixels, grow)
    lab, n = ndimage.label(out, structure=_EIGHT)
    return lab.astype(np.int32), int(n)


def binned_background(image: np.ndarray, bad: np.ndarray, bin_size: int) -> np.ndarray:
    """Smooth background: median per ``bin_size`` block of good pixels, bilinearly interpolated.

    A stand-in for afw's MEANCLIP-binned Akima-spline background (used only for the temporary
    backgrounds of ScaleVariance and template detection); photutils' Background2D gives similar
    results several times slower.
    """
    ny, nx = image.shape
    by, bx = max(1, int(np.ceil(ny / bin_size))), max(1, int(np.ceil(nx / bin_size)))
    pad_y, pad_x = by * bin_size - ny, bx * bin_size - nx
    a = np.pad(np.where(bad | ~np.isfinite(image), np.nan, image).astype(np.float64), ((0, pad_y), (0, pad_x)), constant_values=np.nan)
    blocks = a.reshape(by, bin_size, bx, bin_size).transpose(0, 2, 1, 3).reshape(by, bx, -1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(blocks, axis=2)
    if np.all(np.isnan(med)):
        return np.zeros_like(image, dtype=np.float64)
    med = np.where(np.isnan(med), np.nanmedian(med), med)
    yc = (np.arange(by) + 0.5) * bin_size - 0.5
    xc = (np.arange(bx) + 0.5) * bin_size - 0.5
    yi = np.clip(np.interp(np.arange(ny), yc, np.arange(by)), 0, by - 1)
    xi = np.clip(np.interp(np.arange(nx), xc, np.arange(bx)), 0, bx - 1)
    return ndimage.map_coordinates(med, np.meshgrid(yi, xi, indexing="ij"), order=1, mode="nearest")


def smooth_for_detection(image: np.ndarray, variance: np.ndarray, sigma: float, n_sigma_for_kernel: float = 7.0) -> tuple[np.ndarray, np.ndarray]:
    """Convolve with a Gaussian of ``sigma`` (odd width ``(int(7 sigma + 0.5)//2)*2+1``), the
    variance with the squared kernel, as LSST's detection smoothing does."""
    from .psf_matching import fft_convolve

    w = (int(n_sigma_for_kernel * sigma + 0.5) // 2) * 2 + 1
    x = np.arange(w) - w // 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    k = np.outer(g, g)
    k /= k.sum()
    img = np.where(np.isfinite(image), image, 0.0)
    var = np.where(np.isfinite(variance), variance, 0.0)
    return fft_convolve(img, k), fft_convolve(var, k * k)
