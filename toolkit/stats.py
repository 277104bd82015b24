"""Per-pixel stacking statistics with afw's exact semantics, vectorised over the stack axis.

Reproduces ``afw.math.statisticsStack`` for MEAN, MEDIAN and MEANCLIP (reference §2.4):
usable = finite and not in the and-mask; MEANCLIP starts from the median and
0.741301109252802 * IQR (quartiles linearly interpolated at q (N-1)), later iterations use the
weighted clipped mean and the square root of the debiased weighted clipped variance, and every
iteration re-selects from the full usable set with inclusive bounds.  astropy's ``sigma_clip``
differs on every one of those points (cumulative rejection, unweighted std, exclusive bounds),
which is why this is hand-written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba as nb
import numpy as np

from .errors import ConfigError

__all__ = ["IQR_TO_SIGMA", "StackStats", "stack_statistic", "meanclip_scalar", "median_of", "quantiles_of"]

#: afw's IQR -> sigma factor for a Gaussian
IQR_TO_SIGMA = 0.741301109252802


@dataclass
class StackStats:
    """Per-pixel results of one statistic over a stack (arrays shaped like one plane)."""

    value: np.ndarray
    variance: np.ndarray
    n_point: np.ndarray  # usable inputs
    n_clipped: np.ndarray  # usable inputs removed by clipping
    survivors: np.ndarray  # bool (N, ...) inputs that contributed to the value


def _quantile_sorted(s: np.ndarray, n: np.ndarray, q: float) -> np.ndarray:
    """Linearly interpolated quantile of the first ``n`` entries of each sorted column."""
    idx = q * (np.maximum(n, 1) - 1)
    lo = np.floor(idx).astype(np.intp)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    frac = idx - lo
    vlo = np.take_along_axis(s, lo[None], 0)[0]
    vhi = np.take_along_axis(s, hi[None], 0)[0]
    with np.errstate(invalid="ignore"):  # columns with no usable value hold inf
        return vlo + frac * (vhi - vlo)


def _weighted_mean_var(x, keep, w, center, need_var=True):
    """Weighted mean and debiased weighted variance of kept values (shifted for precision);
    the variance is None when not ``need_var``."""
    wk = np.where(keep, w, 0.0)
    sw = wk.sum(0)
    sw2 = (wk * wk).sum(0)
    d = np.where(keep, x - center, 0.0)
    wd = wk * d
    var = None
    with np.errstate(invalid="ignore", divide="ignore"):
        md = wd.sum(0) / sw
        if need_var:
            m2 = (wd * d).sum(0) / sw
            var = (m2 - md * md) * (sw * sw) / (sw * sw - sw2)
    return center + md, var, sw, sw2


def stack_statistic(
    values: np.ndarray,
    variances: np.ndarray,
    usable: np.ndarray,
    weights: np.ndarray,
    statistic: str = "MEANCLIP",
    n_sigma: float = 3.0,
    n_iter: int = 2,
    calc_error_from_input_variance: bool = True,
) -> StackStats:
    """Per-pixel ``statistic`` over axis 0.

    Parameters
    ----------
    values, variances : ndarray, shape (N, ...)
        Input pixel values and variances (float32/64).
    usable : ndarray of bool, shape (N, ...)
        Finite and not masked by the and-mask.
    weights : ndarray, shape (N,)
        Per-input weights (1/mean variance); MEDIAN ignores them, as afw does.
    statistic : {"MEAN", "MEDIAN", "MEANCLIP"}
    n_sigma, n_iter : float, int
        Clipping parameters (MEANCLIP).
    calc_error_from_input_variance : bool
        Variance from the inputs (sum w^2 v / (sum w)^2), else from the sample scatter.
    """
    if statistic not in ("MEAN", "MEDIAN", "MEANCLIP"):
        raise ConfigError(f"statistic {statistic!r} is not implemented (diffstack stacks with MEAN, MEDIAN, MEANCLIP)")
    x = values.astype(np.float64)
    v = variances.astype(np.float64)
    shape = (-1,) + (1,) * (x.ndim - 1)
    w = np.asarray(weights, dtype=np.float64).reshape(shape)
    n_point = usable.sum(0)
    if statistic == "MEDIAN":
        s = np.sort(np.where(usable, x, np.inf), axis=0)
        med = _quantile_sorted(s, n_point, 0.5)
        _, var_w, _, _ = _weighted_mean_var(x, usable, w, med)
        with np.errstate(invalid="ignore", divide="ignore"):
            variance = (np.pi / 2) * var_w / n_point
        med = np.where(n_point > 0, med, np.nan)
        return StackStats(med, variance, n_point, np.zeros_like(n_point), usable.copy())
    keep = usable
    if statistic == "MEANCLIP":
        s = np.sort(np.where(usable, x, np.inf), axis=0)
        center = _quantile_sorted(s, n_point, 0.5)
        iqr = _quantile_sorted(s, n_point, 0.75) - _quantile_sorted(s, n_point, 0.25)
        del s
        iqr_hw = n_sigma * IQR_TO_SIGMA * iqr
        hw = iqr_hw
        for it in range(n_iter):
            with np.errstate(invalid="ignore"):
                keep = usable & (np.abs(x - center) <= hw)
            if it == n_iter - 1:
                break
            center_new, var_c, _, _ = _weighted_mean_var(x, keep, w, np.where(np.isfinite(center), center, 0.0))
            nk = keep.sum(0)
            var_c = np.maximum(np.where(np.isfinite(var_c), var_c, 0.0), 0.0)
            hw = np.where(nk <= 1, iqr_hw, n_sigma * np.sqrt(var_c))
            center = np.where(nk >= 1, center_new, center)
    # shift by a kept value (the first) so the scatter sums do not cancel catastrophically
    first = np.argmax(keep, axis=0)
    ref = np.take_along_axis(x, first[None], 0)[0]
    ref = np.where(np.isfinite(ref), ref, 0.0)
    mean, var_s, sw, sw2 = _weighted_mean_var(x, keep, w, ref, need_var=not calc_error_from_input_variance)
    with np.errstate(invalid="ignore", divide="ignore"):
        if calc_error_from_input_variance:
            variance = np.where(keep, w * w * v, 0.0).sum(0) / (sw * sw)
        else:
            variance = var_s * sw2 / (sw * sw)
    n_keep = keep.sum(0)
    mean = np.where(n_keep > 0, mean, np.nan)
    variance = np.where(n_keep > 0, variance, np.nan)
    return StackStats(mean, variance, n_point, n_point - n_keep, keep)


def _order_statistics(x: np.ndarray, ranks: list[int]) -> dict[int, float]:
    """Exact order statistics ``sorted(x)[r]`` for a few ranks.

    A full ``np.partition`` of a 4-megapixel plane costs ~0.1 s.  Instead a fixed-seed sample
    brackets each rank, one counting pass checks that the bracket really contains it, and only
    the few thousand values inside are partitioned.  The answer is exact whatever the sample;
    a bracket that misses (adversarial data) falls back to the full partition.
    """
    n = x.size
    out: dict[int, float] = {}
    if n > 200_000:
        ns = 32768
        sample = np.sort(x[np.random.default_rng(12345).integers(0, n, ns)])
        for r in ranks:
            if r in out:
                continue
            p = r / (n - 1)
            half = 6.0 * np.sqrt(ns * p * (1.0 - p)) + 16.0
            i_lo, i_hi = int(np.floor(p * (ns - 1) - half)), int(np.ceil(p * (ns - 1) + half))
            lo = sample[i_lo] if i_lo >= 0 else None
            hi = sample[i_hi] if i_hi < ns else None
            sel = np.ones(n, bool) if lo is None else (x >= lo)
            if hi is not None:
                sel &= x <= hi
            below = 0 if lo is None else int(np.count_nonzero(x < lo))
            inside = x[sel]
            here = [q for q in ranks if below <= q < below + inside.size and q not in out]
            if r not in here:
                break
            part = np.partition(inside, [q - below for q in here])
            out.update({q: float(part[q - below]) for q in here})
    missing = [r for r in ranks if r not in out]
    if missing:
        part = np.partition(x, missing)
        out.update({r: float(part[r]) for r in missing})
    return out


def quantiles_of(x: np.ndarray, qs: Sequence[float]) -> list[float]:
    """Exact quantiles of a 1-D array with NumPy's default (linear) rule, ``np.percentile``'s
    values, from :func:`_order_statistics` instead of a full partition."""
    x = np.asarray(x).ravel()
    n = x.size
    if n == 0:
        return [float("nan")] * len(qs)
    pos = [q * (n - 1) for q in qs]
    ranks = sorted({int(np.floor(p)) for p in pos} | {min(int(np.floor(p)) + 1, n - 1) for p in pos})
    st = _order_statistics(x, ranks)
    out = []
    for p in pos:
        lo = int(np.floor(p))
        a, b = st[lo], st[min(lo + 1, n - 1)]
        out.append(a + (p - lo) * (b - a))
    return out


def median_of(a: np.ndarray, select: np.ndarray | None = None) -> float:
    """Exact median of ``a[select]`` (NumPy's definition: the mean of the two middle values for
    an even count), computed in float64 from exact order statistics; NaN if nothing is selected."""
    x = np.asarray(a).ravel() if select is None else np.asarray(a)[select]
    n = x.size
    if n == 0:
        return float("nan")
    lo, hi = (n - 1) // 2, n // 2
    st = _order_statistics(x, sorted({lo, hi}))
    return 0.5 * (st[lo] + st[hi])


@nb.njit(cache=True, nogil=True)
def _clip_passes(x, center, iqr_hw, n_sigma, n_iter):  # pragma: no cover - compiled
    # the clip iterations of meanclip_scalar: select within +-hw of the centre (inclusive, in
    # float64), then the mean and the (n-1) variance of the selection, two passes each
    hw = iqr_hw
    s = 0.0
    nk = 0
    for it in range(max(n_iter, 1)):
        lo = center - hw
        hi = center + hw
        s = 0.0
        nk = 0
        for v in x:
            f = np.float64(v)
            if (f >= lo and f <= hi) or n_iter == 0:
                s += f
                nk += 1
        if it >= n_iter - 1:
            break
        var = 0.0
        if nk >= 1:
            m = s / nk
            ss = 0.0
            for v in x:
                f = np.float64(v)
                if f >= lo and f <= hi:
                    ss += (f - m) * (f - m)
            var = ss / (nk - 1) if nk > 1 else 0.0
            center = m
        hw = iqr_hw if nk <= 1 else n_sigma * np.sqrt(max(var, 0.0))
    return s / nk if nk > 0 else np.nan


def meanclip_scalar(values: np.ndarray, n_sigma: float = 3.0, n_iter: int = 2) -> float:
    """afw MEANCLIP of a 1-D array of usable values, unweighted (warp weights, ZOGY noise levels).

    Quartiles come from exact order statistics (:func:`_order_statistics`, ``np.percentile``'s
    values), interpolated in float64; every clip iteration re-selects from all values with
    inclusive bounds around the previous clipped mean, as afw does.  The iterations run in one
    compiled loop (numba) over the input dtype, accumulating in float64, so no float64 copy or
    selection of the plane is made (~0.09 -> ~0.04 s on a 2048^2 plane).
    """
    x = np.asarray(values).ravel()
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if x.size == 0:
        return float("nan")
    q25, med, q75 = quantiles_of(x, (0.25, 0.5, 0.75))
    iqr_hw = n_sigma * IQR_TO_SIGMA * (q75 - q25)
    return float(_clip_passes(np.ascontiguousarray(x), float(med), float(iqr_hw), float(n_sigma), int(n_iter)))
