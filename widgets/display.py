"""Screen-resolution buffers for the Bokeh panels: block reductions and uint8 stretches.

Full-resolution survey images are never sent to the browser (a 4096^2 float32 update takes
~18 s to repaint in JupyterLab).  Each layer is reduced to at most ``max_pixels`` per side with
the reduction that keeps what matters in it — mean for images, OR for masks, signed
max-|value| for difference/score images, max for epoch counts — then stretched to uint8 in
Python so the colormap is applied in the browser.
"""

from __future__ import annotations

import numpy as np
from astropy.visualization import AsinhStretch, LinearStretch, MinMaxInterval, PercentileInterval, ZScaleInterval

__all__ = ["block_factor", "reduce_block", "stretch_uint8", "limits", "AFW_MASK_COLORS", "CB_SAFE_MASK_COLORS"]

#: afwDisplay's default mask colours
AFW_MASK_COLORS = {
    "BAD": "red", "CR": "magenta", "EDGE": "yellow", "INTERPOLATED": "green", "INTRP": "green", "SAT": "green",
    "DETECTED": "blue", "DETECTED_NEGATIVE": "cyan", "SUSPECT": "yellow", "NO_DATA": "orange", "CLIPPED": "#9467bd",
    "REJECTED": "#a65628", "SENSOR_EDGE": "#999999", "INEXACT_PSF": "#f781bf", "STREAK": "#17becf",
}
#: Okabe-Ito colour-blind-safe palette, assigned in plane order
CB_SAFE_MASK_COLORS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]


def block_factor(shape: tuple[int, int], max_pixels: int) -> int:
    """Smallest integer factor that brings both sides to at most ``max_pixels``."""
    return max(1, int(np.ceil(max(shape) / float(max_pixels))))


def reduce_block(a: np.ndarray, factor: int, how: str = "mean") -> np.ndarray:
    """Reduce ``a`` by ``factor`` x ``factor`` blocks (the edge is padded, not dropped).

    how : "mean" (NaN-aware), "or" (integer masks), "absmax" (keeps the sign of the largest
    |value|), "max".
    """
    if factor <= 1:
        return a
    ny, nx = a.shape
    py, px = (-ny) % factor, (-nx) % factor
    if how == "or":
        b = np.pad(a, ((0, py), (0, px)))
        b = b.reshape(b.shape[0] // factor, factor, b.shape[1] // factor, factor)
        return np.bitwise_or.reduce(np.bitwise_or.reduce(b, axis=3), axis=1)
    b = np.pad(a.astype(np.float32), ((0, py), (0, px)), constant_values=np.nan)
    b = b.reshape(b.shape[0] // factor, factor, b.shape[1] // factor, factor)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if how == "mean":
            return np.nanmean(b, axis=(1, 3))
        if how == "max":
            return np.nanmax(b, axis=(1, 3))
        if how == "absmax":
            flat = b.transpose(0, 2, 1, 3).reshape(b.shape[0], b.shape[2], -1)
            idx = np.nanargmax(np.where(np.isnan(flat), -1.0, np.abs(flat)), axis=2)
            return np.take_along_axis(flat, idx[..., None], 2)[..., 0]
    raise ValueError(f"unknown reduction {how!r} (mean, or, absmax, max)")


def limits(a: np.ndarray, interval: str = "zscale", symmetric: bool = False) -> tuple[float, float]:
    """Display limits: zscale, percentile (99.5) or minmax; ``symmetric`` centres them on 0."""
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return -1.0, 1.0
    if finite.size > 200_000:  # limits from a regular subsample: same answer, bounded cost
        finite = finite[:: finite.size // 200_000 + 1]
    iv = {"zscale": ZScaleInterval(), "percentile": PercentileInterval(99.5), "minmax": MinMaxInterval()}.get(interval)
    if iv is None:
        raise ValueError(f"unknown interval {interval!r} (zscale, percentile, minmax)")
    lo, hi = iv.get_limits(finite)
    if symmetric:
        m = max(abs(lo), abs(hi)) or 1.0
        return -m, m
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def stretch_uint8(a: np.ndarray, lo: float, hi: float, stretch: str = "linear") -> np.ndarray:
    """Map [lo, hi] to 0..254 with a linear or asinh stretch; NaN becomes 255 (drawn transparent)."""
    s = {"linear": LinearStretch(), "asinh": AsinhStretch(0.1)}.get(stretch)
    if s is None:
        raise ValueError(f"unknown stretch {stretch!r} (linear, asinh)")
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.clip((a - lo) / (hi - lo), 0, 1)
    nan = ~np.isfinite(t)
    t = s(np.where(nan, 0, t), clip=True)
    out = np.round(t * 254).astype(np.uint8)
    out[nan] = 255
    return out
