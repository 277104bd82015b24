"""ZOGY proper image subtraction (Zackay, Ofek & Gal-Yam 2016) as LSST's ``ZogyTask`` did it.

``zogy(science, template)`` returns ``diff = science - template`` (whitened D, scaled by 1/F_D to
science flux units), the score S and their variance planes and PSFs, and
``Scorr = S / sqrt(V_S)``.  Steps follow reference §4: calibrate (or explicit scalings named by
role), optional background subtraction, matching-kernel size estimate, non-finite pixels replaced
by the array mean and remembered, ``generate_grid`` cells padded with white noise at the cell's
mean variance, PSFs at each cell centre, the Fourier solution with LSST's near-zero-denominator
rule, paste-back of inner boxes, score cleanup.

Departures from LSST, all documented: the padding noise of the two images is independent (LSST
seeded both from the variance value, so equal-variance images got identical noise); transforms
are real (``scipy.fft.rfft2``) with ``workers``; optional paper terms (astrometric noise, source
noise, flux-ratio fit) and a transient catalog, all off unless asked for.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numba as nb
import numpy as np
import scipy.fft as sfft

from .config import ZogyConfig, as_config
from .detection import footprint_pixels
from .errors import InputError, warn
from .exposure import Exposure
from .geom import Box
from .psf import ImagePsf, Psf
from .parallel import MIN_THREADED_ROWS, fft_workers, map_bands, map_calls, map_pair, map_row_blocks, map_tasks, one_blas_thread
from .psf_matching import _conv_buffer, _embed_origin, _fft_cols, _fft_cols_into, _irfft2, _irfft2_into, _rows_in_place
from .stats import clipped_noise, meanclip_masked

if TYPE_CHECKING:  # astropy.table is imported where a catalog is made (import time)
    from astropy.table import Table

__all__ = [
    "zogy", "ZogyResult", "generate_grid", "split_border", "estimate_matching_kernel_size",
    "pad_center_origin", "pixel_space_square", "transient_catalog",
]

_TINY = 100 * np.finfo(np.complex128).tiny


# ---------------------------------------------------------------------- geometry helpers
def _fft_friendly(n: int) -> int:
    """Smallest even 5-smooth length >= n (fast for scipy.fft's pocketfft)."""
    p = sfft.next_fast_len(int(n), real=True)
    while p % 2:
        p = sfft.next_fast_len(p + 1, real=True)
    return p


def generate_grid(image_box: Box, min_edge: tuple[int, int], inner_dims: tuple[int, int], min_total_dims: tuple[int, int] | None = None, power_of_two: bool = False, fft_friendly: bool = False) -> list[tuple[Box, Box]]:
    """LSST ``generateGrid``: ``(inner, outer)`` cells; inner boxes tile the image exactly once.

    Outer sizes are inner + 2 * min_edge (at least ``min_total_dims``), optionally raised to a
    power of two in 16..8192 (LSST) or to the next FFT-friendly size (diffstack: 2^a 3^b 5^c,
    which pads a 2048^2 image to 2160^2 instead of 4096^2), and always even.
    """
    ex, ey = (int(v) for v in min_edge)
    iw, ih = (int(v) for v in inner_dims)
    if iw <= 0 or ih <= 0:
        raise InputError(f"inner cell dimensions must be positive, got {inner_dims}")

    def corners(start, length, inner):
        n = length // inner
        if n == 0:
            return [start, start + length]
        w = length // n
        return [start + i * w for i in range(n)] + [start + length]

    def padded(inner_len, edge, min_tot):
        p = inner_len + 2 * edge
        if min_tot is not None:
            p = max(p, min_tot)
        if power_of_two:
            for q in (2 ** k for k in range(4, 14)):
                if q >= p:
                    p = q
                    break
        elif fft_friendly:
            p = _fft_friendly(p)
        if p % 2:
            p += 1
        return p

    xs = corners(image_box.x0, image_box.width, iw)
    ys = corners(image_box.y0, image_box.height, ih)
    mt = min_total_dims or (None, None)
    cells = []
    for j in range(len(ys) - 1):
        for i in range(len(xs) - 1):
            inner = Box.from_corners(xs[i], ys[j], xs[i + 1], ys[j + 1])
            pw = padded(inner.width, ex, mt[0])
            ph = padded(inner.height, ey, mt[1])
            outer = Box(inner.x0 - (pw - inner.width) // 2, inner.y0 - (ph - inner.height) // 2, pw, ph)
            cells.append((inner, outer))
    return cells


def split_border(inner: Box, outer: Box) -> list[Box]:
    """LSST ``splitBorder``: 8 disjoint boxes tiling ``outer`` minus ``inner``, counter-clockwise
    from the lower-left corner."""
    if not outer.contains(inner.dilated(1)):
        raise InputError(f"outer box {outer} must contain inner box {inner} grown by 1")
    x = [outer.x0, inner.x0, inner.x1, outer.x1]
    y = [outer.y0, inner.y0, inner.y1, outer.y1]
    order = [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    return [Box.from_corners(x[i], y[j], x[i + 1], y[j + 1]) for i, j in order]


def pad_center_origin(a: np.ndarray, shape: tuple[int, int], inverse: bool = False) -> np.ndarray:
    """LSST ``padCenterOriginArray``: forward zero-pads and puts ``a[n//2]`` at index 0; inverse
    crops a full array back to ``shape`` and re-centres (``fftshift`` for equal shapes)."""
    if not inverse:
        return _embed_origin(a, shape)
    ny, nx = shape
    return np.roll(a, (ny // 2, nx // 2), (0, 1))[:ny, :nx]


def pixel_space_square(x_hat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """FFT of the pixel-space square of a (real) kernel given by its rfft ``x_hat``."""
    k = sfft.irfft2(x_hat, s=shape, workers=fft_workers(x_hat.size))
    return sfft.rfft2(k * k, workers=fft_workers(k.size))


def estimate_matching_kernel_size(psf1: Psf, psf2: Psf, position: tuple[float, float] | None = None) -> int:
    """max(10 * max determinant radius, PSF stamp sizes), truncated to int as LSST's Extent2I."""
    s1 = psf1.determinant_radius(position)
    s2 = psf2.determinant_radius(position)
    k1 = psf1.compute_kernel_image(position)
    k2 = psf2.compute_kernel_image(position)
    return int(max(10 * max(s1, s2), *k1.shape, *k2.shape))


# ---------------------------------------------------------------------- result
@dataclass
class ZogyResult:
    """Output of :func:`zogy`.

    Attributes
    ----------
    diff : Exposure
        D / F_D (science flux units), its variance plane, mask = OR of both masks, PSF P_D.
    score : Exposure or None
        S and V_S, PSF P_S.
    scorr : ndarray or None
        S / sqrt(V_S) (plus the optional paper terms in the denominator).
    F_D : float
        Flux scaling of D (single cell; the first cell's in grid mode).
    F_S : ndarray
        Per-pixel F_S (from each pixel's cell): S / F_S estimates a point source's flux.
    cells : list of dict
        Per cell: inner/outer boxes, P_D, P_S, F_D, F_S, variances used.
    flux_scalings : (float, float)
        The (F_n, F_r) used: the config's scalings, (1, 1) with ``scaleByCalibration``, or the
        fitted ratio with ``doFitFluxRatio``.
    noise_correlation : float
        The factor both variance planes were multiplied by: ``noiseCorrelationFactor``, or the
        measured one with ``doMeasureNoiseCorrelation`` (1 = none, LSST).
    noise_correlation_error : float
        The measured factor's standard error (from its scatter over a 4 x 4 grid of tiles; NaN
        when too few tiles are usable); 0 when the factor was given.
    timings : dict
    """

    diff: Exposure
    score: Exposure | None
    scorr: np.ndarray | None
    F_D: float
    F_S: np.ndarray
    cells: list[dict[str, Any]]
    catalog: Any = None
    timings: dict[str, float] = field(default_factory=dict)
    flux_scalings: tuple[float, float] = (1.0, 1.0)
    noise_correlation: float = 1.0
    noise_correlation_error: float = 0.0


# ---------------------------------------------------------------------- preparation
@nb.njit(cache=True, nogil=True)
def _all_finite(a):  # pragma: no cover - compiled
    # x - x == 0 only for finite x; and-reduced over blocks (a SIMD loop), stopping after the
    # first block with a non-finite value
    for b0 in range(0, a.size, 4096):
        blk = a[b0:b0 + 4096]
        ok = True
        for j in range(blk.size):
            ok = ok & ((blk[j] - blk[j]) == 0)
        if not ok:
            return False
    return True


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _scorr_rows(S, VS, nonfinite, has_nonfinite, tiny, out, thr, hits):  # pragma: no cover - compiled
    # LSST's score cleanup (S = 0 and V_S = 1 where a pixel was non-finite or V_S < tiny or
    # NaN) and Scorr = S / sqrt(V_S), in the score's precision as numpy would compute them
    # (a cleaned pixel's 0 / sqrt(1) is the 0 LSST writes).  Selects rather than branches, on
    # row views, so the loop is a SIMD loop.  ``hits[i]``: how many |Scorr| >= ``thr`` (in the
    # score's precision, as the catalog's footprint pass compares) row i holds, so that the
    # catalog reads those rows alone (footprint_pixels' ``rows``)
    zero = S.dtype.type(0.0)
    one = S.dtype.type(1.0)
    for i in range(S.shape[0]):
        s = S[i]
        v = VS[i]
        o = out[i]
        nf = nonfinite[i] if has_nonfinite else nonfinite[0]
        h = np.int32(0)
        for j in range(s.size):
            vj = v[j]
            bad = not (vj >= tiny)
            if has_nonfinite:
                bad = bad | nf[j]
            sj = zero if bad else s[j]
            vj = one if bad else vj
            s[j] = sj
            v[j] = vj
            oj = sj / np.sqrt(vj)
            o[j] = oj
            h += np.int32(abs(oj) >= thr)
        hits[i] = h


@nb.njit(cache=True, nogil=True)
def _scan_bits(u, exp_mask, mag_mask, sign_shift):  # pragma: no cover - compiled
    # one pass over a float plane's bit patterns (uint32 for float32, uint64 for float64):
    # how many values are finite, how many of those are <= 0, and the largest |x| of the
    # finite ones as a bit pattern.  In integers and without branches, because the float forms
    # (x - x == 0, a max that must skip NaN) do not vectorise (11 ms at 2048^2 against 1.5):
    # a finite value's exponent bits are not all set; |x|'s bits order as |x| does; x <= 0 is
    # the sign bit set (negatives and -0) or all bits clear (+0).  Counts go to int32 sums per
    # block of 4096 (no overflow), so the loop keeps narrow lanes.
    one = u.dtype.type(1)
    n_fin = 0
    n_bad = 0
    big = u.dtype.type(0)
    for b0 in range(0, u.size, 4096):
        blk = u[b0:b0 + 4096]
        f = np.int32(0)
        bd = np.int32(0)
        m = u.dtype.type(0)
        for j in range(blk.size):
            b = blk[j]
            fin = (b & exp_mask) != exp_mask
            f += np.int32(fin)
            bd += np.int32(fin) & np.int32(((b >> sign_shift) | u.dtype.type(b == 0)) & one)
            mag = (b & mag_mask) * u.dtype.type(fin)
            m = mag if mag > m else m
        n_fin += f
        n_bad += bd
        big = max(big, m)
    return n_fin, n_bad, big


_SCAN_TYPES = {np.dtype(np.float32): (np.uint32, 0x7F800000, 0x7FFFFFFF, 31), np.dtype(np.float64): (np.uint64, 0x7FF0000000000000, 0x7FFFFFFFFFFFFFFF, 63)}


def _scan_plane(a: np.ndarray) -> tuple[int, int, float]:
    """``(n_finite, n_nonpositive, max |x| over the finite values (0 if none))`` of a plane, in
    one compiled pass (:func:`_scan_bits`) for native float32/float64 planes."""
    if a.dtype in _SCAN_TYPES and a.dtype.isnative:
        ut, em, mm, sh = _SCAN_TYPES[a.dtype]
        n_fin, n_bad, big = _scan_bits(np.ascontiguousarray(a).reshape(-1).view(ut), ut(em), ut(mm), ut(sh))
        return int(n_fin), int(n_bad), float(np.array([big], ut).view(a.dtype)[0])
    fin = np.isfinite(a)  # other dtypes: the same three numbers with numpy
    vals = a[fin]
    return int(vals.size), int(np.count_nonzero(vals <= 0)), float(np.abs(vals).max()) if vals.size else 0.0


@nb.njit(cache=True, nogil=True)
def _is_constant(a):  # pragma: no cover - compiled
    # stops at the first value that differs from the first (a varying plane: at once)
    a0 = a[0, 0]
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            if a[i, j] != a0:
                return False
    return True


def _check_inputs(sci: Exposure, ref: Exposure, scan_images: bool = True) -> dict[int, float]:
    """Named errors for unusable inputs.  Returns ``{id(plane): max |x|}`` for the image and
    variance planes found entirely finite on the way (they need no non-finite pass later, and
    the largest |x| says whether a calibration factor can overflow them).  ``scan_images=False``
    leaves the image and variance planes to the padding's copies (:func:`_copy_finite`,
    :func:`_copy_positive`), which find what this scan would have found."""
    for name, e in (("science", sci), ("template", ref)):
        if not isinstance(e, Exposure):
            raise InputError(f"{name} must be an Exposure, got {type(e).__name__}")
        if e.psf is None:
            raise InputError(f"{name} has no PSF: ZOGY needs one for each image (give psf= to the Exposure, e.g. toolkit.real_data.measure_psf(image, variance) for a real image, or toolkit.real_data.psf_from_file)")
        if e.image.size == 0:
            raise InputError(f"{name} image is empty (shape {e.shape})")
    # each image's two planes scanned once, the two images side by side
    big = sci.image.size >= MIN_THREADED_ROWS**2
    if scan_images:
        scans = map_pair(lambda e: (_scan_plane(e.image), _scan_plane(e.variance)), sci, ref, threaded=big)
    else:
        # the padded copies check both planes (see _zogy)
        scans = [((-1, 0, np.nan), (-1, 0, np.nan))] * 2
    finite: dict[int, float] = {}
    for (name, e), (img, var) in zip((("science", sci), ("template", ref)), scans):
        if img[0] == 0:
            raise InputError(f"{name} image is entirely NaN/inf")
        n_finite, n_bad, _ = var
        if n_finite == 0:
            raise InputError(f"{name} variance plane has no finite value")
        if n_bad:
            raise InputError(f"{name} variance plane has zero or negative values ({n_bad} pixels); variance must be > 0")
        for plane, (n_fin, _, top) in ((e.image, img), (e.variance, var)):
            if n_fin == plane.size:
                finite[id(plane)] = top
        k = e.psf.compute_kernel_image(e.bbox.center)
        if not np.all(np.isfinite(k)):
            raise InputError(f"{name} PSF kernel contains NaN")
    if sci.shape != ref.shape:
        raise InputError(f"science shape {sci.shape} differs from template shape {ref.shape}")
    if sci.xy0 != ref.xy0:
        raise InputError(f"science xy0 {sci.xy0} differs from template xy0 {ref.xy0}: register them first")
    return finite


def _psf_centroid(k: np.ndarray) -> np.ndarray:
    ny, nx = k.shape
    y, x = np.mgrid[:ny, :nx]
    s = k.sum()
    w = np.abs(k) if s == 0 else k
    s = w.sum()
    return np.array([(w * x).sum() / s - (nx - 1) / 2, (w * y).sum() / s - (ny - 1) / 2])


def check_centroids(k1: np.ndarray, k2: np.ndarray, max_dist: float) -> None:
    """LSST's ``checkCentroids``: raise :class:`InputError` if the two PSF stamps' centroids
    (relative to their centre pixels) are more than ``max_dist`` pixels apart."""
    d = _psf_centroid(k1) - _psf_centroid(k2)
    if float(d @ d) > max_dist**2:
        raise InputError(f"PSF centroids differ by {np.hypot(*d):.3f} px > maxPsfCentroidDist={max_dist} (off-centre PSF?)")


def _image_noise_variance(img: np.ndarray, mask: np.ndarray, bits: int, exclude: np.ndarray | None, psf_sigma: float) -> float:
    """Per-pixel sky noise variance measured from an image, without its variance plane.

    Sources are found where the image smoothed by a Gaussian of the PSF's width is 4 sigma
    (of the smoothed noise) above the clipped median, and masked with a margin of 3 PSF sigma;
    then the 3-sigma clipped standard deviation of the remaining usable pixels (finite, none of
    ``bits``, not ``exclude``d) is divided by :func:`~toolkit.stats.clipped_std_ratio`, so that
    it is the noise's sigma, and squared.  Why the masking: clipping alone leaves the faint
    wings of sources and their Poisson noise in the sample (+3 % in the variance of a
    simulated field with 1e-3 stars per pixel; within 0.2 % with it).  A 4-sigma threshold
    is crossed by noise alone at ~3e-5 of the pixels, so masking only the positive side does
    not bias the noise (100.1 for a true 100 on pure noise).
    """
    from scipy import ndimage

    use = np.isfinite(img) & ((mask & bits) == 0)
    if exclude is not None:
        use &= ~exclude
    if use.sum() < 100:
        raise InputError(f"doFitFluxRatio: only {int(use.sum())} usable pixels to measure an image's noise level")
    x = np.asarray(img, dtype=np.float64)  # read only where usable (x[use], x[sky], sky within use)
    level, _, var = clipped_noise(x[use], 3.0, maxiters=10)  # the clipped mean is the sky level
    s0 = np.sqrt(var)
    sig = max(float(psf_sigma), 0.5)
    smooth = ndimage.gaussian_filter(np.where(use, x - level, 0.0), sig)
    sources = smooth > 4.0 * s0 / np.sqrt(4.0 * np.pi * sig**2)
    grow = int(3.0 * sig + 0.5)
    sky = use & ~ndimage.maximum_filter(sources, size=2 * grow + 1)
    if sky.sum() >= 100:
        var = clipped_noise(x[sky], 3.0, maxiters=10)[2]
    if not var > 0:
        raise InputError("doFitFluxRatio: an image has no pixel-to-pixel noise (constant image?)")
    return var


def _fit_flux_ratio(n_img, r_img, pn, pr, var_r: float, unusable: np.ndarray) -> float:
    """F_n/F_r from the images (ZOGY paper, section 3.5).

    N (*) P_r and R (*) P_n share the PSF P_n (*) P_r, so a static source gives the same
    pattern in both, scaled by F_n/F_r: the ratio is the slope of one against the other, fitted
    by least squares with an intercept (a difference of sky levels shifts every pixel alike and
    would bias a plain ratio) and 3-sigma outlier rejection (transients, variables), over the
    pixels where R (*) P_n is 20 sigma above its median and no unusable pixel (masked or
    non-finite) lies within a PSF stamp.
    """
    from astropy.modeling import fitting, models
    from astropy.stats import sigma_clip
    from scipy import ndimage

    from .psf_matching import fft_convolve

    a = fft_convolve(np.nan_to_num(n_img), pr)
    b = fft_convolve(np.nan_to_num(r_img), pn)
    sigma_b = np.sqrt(var_r * (pn**2).sum())
    reach = max(pn.shape[0], pn.shape[1], pr.shape[0], pr.shape[1])
    near_bad = ndimage.maximum_filter(unusable, size=reach) if unusable.any() else unusable
    sel = (b - np.median(b) > 20 * sigma_b) & ~near_bad
    if sel.sum() < 10:
        raise InputError(f"doFitFluxRatio: too few bright source pixels to fit the flux ratio ({int(sel.sum())} at 20 sigma in the template convolved with the science PSF; need 10)")
    fit = fitting.FittingWithOutlierRemoval(fitting.LinearLSQFitter(), sigma_clip, niter=3, sigma=3.0)
    line, _ = fit(models.Linear1D(), b[sel].astype(np.float64), a[sel].astype(np.float64))
    ratio = float(line.slope.value)
    if not ratio > 0:
        raise InputError(f"doFitFluxRatio: the fitted flux ratio F_n/F_r is {ratio:.4g}; are the images of the same field?")
    return ratio


# ---------------------------------------------------------------------- main entry point
def zogy(science: Exposure, template: Exposure, config: ZogyConfig | None = None, calculate_score: bool = True, progress: Callable[[str, float], None] | None = None) -> ZogyResult:
    """ZOGY subtraction ``science - template``.

    Parameters
    ----------
    science, template : Exposure
        Registered images (same shape and xy0) with PSFs and variance planes.
    config : ZogyConfig, optional
        LSST's ZogyConfig fields plus diffstack's options; LSST defaults if omitted.
    calculate_score : bool
        Also compute S, V_S and Scorr.
    progress : callable(stage, fraction), optional

    Notes
    -----
    Precision: the transforms of the images and variance planes run in the inputs' precision
    (float32 for the usual float32 exposures, float64 otherwise); everything that decides the
    kernels (PSF spectra, the near-zero-denominator rule, F_D, F_S) runs in float64.  LSST did
    everything in float64 and cast the results back to exposure1's dtype.
    """
    cfg = as_config(config, ZogyConfig)
    cfg.validate()
    if cfg.doMeasureNoiseCorrelation:
        return _zogy_noise_corrected(science, template, cfg, calculate_score, progress)
    try:
        return _zogy(science, template, cfg, calculate_score, progress, trust_images=_looks_finite(science) and _looks_finite(template))
    except _NotFinite:
        # an image has non-finite pixels (or overflows when calibrated): the run again with the
        # images scanned first, as LSST's removeNonFinitePixels needs them replaced before the
        # noise levels are measured
        return _zogy(science, template, cfg, calculate_score, progress, trust_images=False)


def _looks_finite(e: Exposure) -> bool:
    """Whether a sample of the image and the variance plane (their edge rows and columns and
    every 16th pixel of every 16th row, ~1/256 of them) is finite, and the variance's > 0: an
    image with NaN borders or blank regions (a JWST mosaic's edges), or a variance plane with
    zeros, is then scanned first instead of found out in its padded copy."""
    a, v = getattr(e, "image", None), getattr(e, "variance", None)
    if not all(isinstance(x, np.ndarray) and x.ndim == 2 and x.size for x in (a, v)):
        return False  # the input checks name the problem

    def parts(x):
        return x[::16, ::16], x[[0, -1]], x[:, [0, -1]]

    with np.errstate(invalid="ignore"):
        # (NaN fails both comparisons; +inf the second)
        return all(np.isfinite(p).all() for p in parts(a)) and all(((p > 0) & (p < np.inf)).all() for p in parts(v))


class _NotFinite(Exception):
    """Raised inside :func:`_zogy` when a padded copy of a plane that was not scanned turns out
    to hold a non-finite pixel (or, of a variance plane, one <= 0)."""


def _zogy(science: Exposure, template: Exposure, cfg: ZogyConfig, calculate_score: bool, progress: Callable[[str, float], None] | None, trust_images: bool) -> ZogyResult:
    """:func:`zogy`'s body.  ``trust_images``: where nothing reads the images before their cell
    is padded (whole-image mode, no background, flux-ratio fit or source-noise option), the
    images and variance planes are not scanned first: their copies into the cell check every
    value (:func:`_copy_finite`, :func:`_copy_positive`) and find any non-finite pixel, any
    variance <= 0 or an overflow of the calibration, and raise :class:`_NotFinite` so the
    caller runs again with them scanned (which names the problem or handles the pixels as
    LSST does).  One 16 MB read of each 2k^2 plane is saved otherwise.  (The variance planes'
    clipped means come first: they skip non-finite pixels, and an unusable result also sends
    the run back.)"""
    t0 = time.perf_counter()
    lazy = not (cfg.correctBackground or cfg.doFitFluxRatio or cfg.doSourceNoise)
    # (whole-image mode only: a grid's run sent back would have reported progress on the cells
    # it had done, and a grid's cells cost far more than the scan saves)
    fast = trust_images and lazy and not cfg.doSpatialGrid
    finite_planes = _check_inputs(science, template, scan_images=not fast)
    timings: dict[str, float] = {}
    sci, ref = science, template
    bad = sci.mask_planes.bitmask(cfg.ignoreMaskPlanes, strict=False, field="ignoreMaskPlanes")
    bad_r = ref.mask_planes.bitmask(cfg.ignoreMaskPlanes, strict=False, field="ignoreMaskPlanes")
    out_dtype = sci.dtype
    work = np.float32 if (sci.dtype == np.float32 and ref.dtype == np.float32) else np.float64
    # Inputs are never modified: arrays are views until something has to change them.
    if cfg.scaleByCalibration:
        cn, cr = float(sci.photo_calib), float(ref.photo_calib)
        f_n = f_r = 1.0
    else:
        cn = cr = 1.0
        f_n, f_r = cfg.scienceFluxScaling, cfg.templateFluxScaling

    # LSST calibrateImage multiplies the image by c and the variance by c^2 (float32).  Where
    # nothing but the padded cells reads a plane (no background, flux-ratio fit or source-noise
    # option), the product is taken as the plane is copied into its cell: the same float
    # products, without two calibrated 2k^2 planes made first.  ``factors[i]`` is what plane i
    # of [n_img, n_var, r_img, r_var] is still to be multiplied by (1 once it is applied).
    # a given noise-correlation factor rides on the variance planes' calibration product when
    # nothing else reads them first; otherwise it is applied after the flux-ratio fit (which
    # rescales the planes to the pixels' own variance)
    noise_corr = cfg.noiseCorrelationFactor
    vf = noise_corr if lazy else 1.0
    planes_in = [(sci.image, cn, "science image"), (sci.variance, cn**2 * vf, "science variance"), (ref.image, cr, "template image"), (ref.variance, cr**2 * vf, "template variance")]
    arrays, factors = [], []
    for k, (a, c, name) in enumerate(planes_in):
        # max |x| of a plane found entirely finite by the input checks (NaN if it was not)
        big = finite_planes.get(id(a), np.nan)
        a = np.asarray(a, dtype=work)
        if fast:
            # a plane not scanned: scaled as it is copied into its cell, where any non-finite
            # value (an input's, or an overflow) or variance <= 0 sends the run back (see _zogy)
            arrays.append(a)
            factors.append(work(c))
            continue
        if c != 1.0 and lazy and a.size:
            # one test says the plane is finite and stays so when scaled (else it is made as
            # before)
            with np.errstate(over="ignore", invalid="ignore"):
                if np.isfinite(work(big) * work(c)):
                    arrays.append(a)
                    factors.append(work(c))
                    continue
        if c != 1.0:
            with np.errstate(over="ignore"):
                scaled = a * work(c)
            # max/min are single SIMD passes (NaN if any pixel is): the infinities are counted
            # only when the scaled plane is not entirely finite
            finite = scaled.size == 0 or bool(np.isfinite(max(scaled.max(), -scaled.min())))
            n_over = 0 if finite else int(np.count_nonzero(np.isinf(scaled))) - int(np.count_nonzero(np.isinf(a)))
            if n_over > 0:
                warn(f"calibrating the {name} by {c:.6g} overflows {np.dtype(work).name} at {n_over} pixel(s); they are handled as non-finite pixels (replaced by the plane's mean and remembered, as LSST's removeNonFinitePixels does)", RuntimeWarning)
            a = scaled
        arrays.append(a)
        factors.append(work(1.0))
    n_img, n_var, r_img, r_var = arrays
    # (plane mask, bad bits) of each image: the clipped means read them in place
    mask_n = (sci.mask, bad)
    mask_r = (ref.mask, bad_r)

    def mclip(a, good, factor=1.0):
        # afw MEANCLIP (3 sigma, 3 iterations) of the finite pixels without a bad bit; NaN if
        # none.  Of a plane still to be scaled by ``factor``: of a * factor, bit for bit
        m, bits = good
        # (a plane not scanned may overflow when scaled: the run is then sent back by its copy)
        with np.errstate(over="ignore", invalid="ignore") if fast else contextlib.nullcontext():
            return meanclip_masked(a, m, bits, 3.0, 3, None if factor == 1.0 else factor)

    ny, nx = sci.shape
    local = Box(0, 0, nx, ny)
    full_var: dict[int, float] = {}

    def full_variance(which: int) -> float:
        # LSST's fullExpVar: only a fallback for cells whose own mean is not > 0, so it is
        # computed lazily (in whole-image mode it *is* the single cell's value)
        if which not in full_var:
            v = mclip(n_var, mask_n, factors[1]) if which == 0 else mclip(r_var, mask_r, factors[3])
            if not v > 0 and fast:
                raise _NotFinite  # the scanned run names the problem
            if not v > 0:
                # LSST carried the NaN into the padding and kernels (all-NaN outputs); a named
                # error says which image and why instead
                name, e = ("science", sci) if which == 0 else ("template", ref)
                raise InputError(f"cannot measure the {name} image's noise level: every pixel of its variance plane is non-finite or masked by ignoreMaskPlanes ({', '.join(p for p in cfg.ignoreMaskPlanes if p in e.mask_planes)})")
            full_var[which] = v
        return full_var[which]

    if cfg.correctBackground:

        def minus_background(name, arr, good):
            m = mclip(arr, good)
            if not np.isfinite(m):
                raise InputError(f"correctBackground: the clipped mean of the {name} image is NaN")
            return arr - work(m)  # a new array: the input stays untouched

        n_img = minus_background("science", n_img, mask_n)
        r_img = minus_background("template", r_img, mask_r)
    center = sci.bbox.center
    border = estimate_matching_kernel_size(sci.psf, ref.psf, center)
    # non-finite pixels: remember them and replace by the array's mean (LSST removeNonFinitePixels)
    nonfinite = None
    arrays = [n_img, n_var, r_img, r_var]
    for i, arr in enumerate(arrays):
        if fast or id(arr) in finite_planes or _all_finite(arr.reshape(-1)):  # one compiled pass, no isfinite plane
            continue
        bad_px = ~np.isfinite(arr)
        if bad_px.any():
            nonfinite = bad_px if nonfinite is None else nonfinite | bad_px
            arr = np.array(arr, dtype=work)
            arr[bad_px] = np.mean(arr[~bad_px], dtype=np.float64)
            arrays[i] = arr
    n_img, n_var, r_img, r_var = arrays
    if cfg.doFitFluxRatio:
        # the noise levels from the pixels themselves: each variance plane is rescaled so that
        # its clipped mean (what ZOGY's kernels and V_D, V_S read) equals its image's measured
        # pixel variance; then F_n/F_r from the images' common sources
        scaled = []
        for i, (img, var, (m, bits), e) in enumerate(((n_img, n_var, mask_n, sci), (r_img, r_var, mask_r, ref))):
            measured = _image_noise_variance(img, m, bits, nonfinite, e.psf.determinant_radius(center))
            scaled.append(var * work(measured / full_variance(i)))
        n_var, r_var = scaled
        full_var.clear()
        pn0 = sci.psf.compute_kernel_image(center)
        pr0 = ref.psf.compute_kernel_image(center)
        unusable = ((mask_n[0] & bad) != 0) | ((mask_r[0] & bad_r) != 0)
        if nonfinite is not None:
            unusable |= nonfinite
        f_n = _fit_flux_ratio(n_img, r_img, pn0, pr0, full_variance(1), unusable)
        f_r = 1.0
    if not lazy and noise_corr != 1.0:
        n_var, r_var = n_var * work(noise_corr), r_var * work(noise_corr)
        full_var.clear()
    inner_dims = (max(1, int(border * cfg.gridInnerSize)),) * 2 if cfg.doSpatialGrid else (nx, ny)
    cells = generate_grid(local, (border, border), inner_dims, power_of_two=cfg.powerOfTwoCells, fft_friendly=not cfg.powerOfTwoCells)
    timings["prepare"] = time.perf_counter() - t0
    D = VD = S = VS = None
    FS = np.empty((ny, nx)) if len(cells) > 1 else None
    VA = np.zeros((ny, nx), work) if calculate_score and cfg.doAstrometricNoise else None
    x0, y0 = sci.xy0
    psf_shape1 = sci.psf.compute_kernel_image(center).shape
    one_cell = len(cells) == 1 and work == out_dtype
    from .masks import remap_mask

    planes = sci.mask_planes.copy()
    # the OR of the two masks, and (with the score) the score's own copy of it, in blocks of
    # rows: on this kind of machine the fresh pages of two 2k^2 int32 planes cost more than
    # the arithmetic.  A single cell's blocks are among its setup tasks (see run_cell), taken
    # once its kernels are made (measured PSFs' kernels take full-cell transforms on two FFT
    # threads and want both cores).  A grid's blocks are made after its cells.
    t_mask = remap_mask(template.mask, template.mask_planes, planes)
    mask = np.empty(sci.shape, np.int32)
    score_mask = np.empty(sci.shape, np.int32) if calculate_score else None

    def or_rows(sl: slice) -> None:
        np.bitwise_or(sci.mask[sl], t_mask[sl], out=mask[sl])
        if score_mask is not None:
            score_mask[sl] = mask[sl]

    mask_blocks = [slice(j, min(j + -(-ny // 4), ny)) for j in range(0, ny, -(-ny // 4))]
    masks_left = list(mask_blocks) if len(cells) > 1 else []
    # a single cell's Scorr (LSST's cleanup included) is made as S and V_S come back to pixel
    # space, block by block while in cache (see _fourier_cell)
    scorr = np.empty((ny, nx), work) if (one_cell and calculate_score and VA is None and not cfg.doSourceNoise) else None
    # per row, how many |Scorr| >= the catalog's threshold (in Scorr's precision): made with
    # Scorr where _scorr_rows makes it, so the catalog's footprint pass reads those rows alone
    hits = np.zeros(ny, np.int32)
    thr = work(cfg.transientThreshold)
    if not one_cell:
        D, VD = np.empty((ny, nx), out_dtype), np.empty((ny, nx), out_dtype)
        if calculate_score:
            S, VS = np.empty((ny, nx), work), np.empty((ny, nx), work)

    def run_cell(ci: int, inner: Box, outer: Box) -> tuple[dict, dict | None]:
        # one cell, start to end: its info, and (one cell only) its outputs' arrays.  The cells
        # run one after the other: a grid's cells on two threads ran slower (1.2x at 2048^2),
        # their many small numpy steps holding the GIL; a big cell threads its own passes
        pos = (inner.center[0] + x0, inner.center[1] + y0)
        k1 = sci.psf.compute_kernel_image(pos)
        k2 = ref.psf.compute_kernel_image(pos)
        try:
            check_centroids(k1, k2, cfg.maxPsfCentroidDist)
        except InputError as exc:
            even = [f"{name} ({e.psf.input_shape[0]}x{e.psf.input_shape[1]})" for name, e in (("science", sci), ("template", ref)) if any(n % 2 == 0 for n in getattr(e.psf, "input_shape", ()))]
            if not even:
                raise
            # a stamp centred between pixels: LSST's convention puts pixel n//2 at the centre
            raise InputError(f"{exc}: the {' and '.join(even)} PSF stamp has an even side, and pixel n//2 is taken as its centre (LSST's convention), so a PSF centred between pixels is half a pixel off; give it on an odd grid centred on a pixel") from None
        isl = inner.slices()
        # The cell's work as tasks on two threads (the clipped means, copies, draws and
        # transforms release the GIL) where the cell is big enough to pay for them (a grid's
        # small cells run in the calling thread).  The two noise levels (afw MEANCLIP of the
        # variance planes, the largest cost outside the transforms) come first, then what
        # needs them (the kernels, the padding outside the image), taken as soon as both are
        # known; what does not (the planes' copies into the cell) fills the threads until
        # then.  (Run as two stages, each stage's unequal tasks left a thread idle ~15 ms at
        # 2048^2; queued behind the copies, the kernels started late where they are the long
        # task: measured PSFs' full-cell squares, ~10 % slower.)  The mask OR's blocks wait
        # for the kernels: those want both cores for their transforms' two FFT threads.
        levels: dict[int, float] = {}

        def level(which: int) -> Callable[[], None]:
            def task() -> None:
                if inner == local:
                    levels[which] = full_variance(which)
                else:
                    var, m, bits, f = (n_var, mask_n[0], bad, factors[1]) if which == 0 else (r_var, mask_r[0], bad_r, factors[3])
                    v = mclip(var[isl], (m[isl], bits), f)
                    levels[which] = v if v > 0 else full_variance(which)

            return task

        # (allocated here, so a plane's copy and its padding may run in either order)
        cell_planes = [_cell_buffer(outer, work) for _ in range(4)]
        N1, N2, V1, V2 = cell_planes
        copies = [lambda: _padded_image(n_img, cell_planes[0], outer, local, factors[0]), lambda: _padded_image(r_img, cell_planes[1], outer, local, factors[2]), lambda: _padded_variance(n_var, cell_planes[2], outer, local, factors[1], check=fast), lambda: _padded_variance(r_var, cell_planes[3], outer, local, factors[3], check=fast)]

        def kernels() -> _CellKernels:
            ker = _cell_kernels(k1, k2, f_n, f_r, levels[0], levels[1], outer.shape, calculate_score, work)
            if ker.coarse > 1:
                ker.fused_squares()  # made once and kept by the kernels (the fused pass reads it)
            return ker

        def strips(j: int) -> Callable[[], None]:
            # the padding outside the image: the two images' noise from two seeded streams
            # (their noise must differ), the variance planes' mean level
            def task() -> None:
                if j < 2:
                    _pad_image_strips(cell_planes[j], outer, local, levels[j], np.random.default_rng([cfg.paddingSeed, ci, j]))
                else:
                    _pad_variance_strips(cell_planes[j], outer, local, levels[j - 2])

            return task

        masks = [functools.partial(or_rows, sl) for sl in mask_blocks] if len(cells) == 1 else []
        tasks = [level(0), level(1), kernels] + [strips(j) for j in range(4)] + copies + masks
        needs = [(), (), (0, 1)] + [(0, 1)] * 4 + [()] * 4 + [(2,)] * len(masks)
        t_cell = time.perf_counter()
        done = map_tasks(tasks, needs, threaded=outer.shape[0] >= MIN_THREADED_ROWS)
        timings["cells_setup"] = timings.get("cells_setup", 0.0) + time.perf_counter() - t_cell
        ker = done[2]
        ok1, ok2, ok3, ok4 = done[7:11]
        v1, v2 = levels[0], levels[1]
        cell_planes.clear()  # (N1..V2 are then the only references: their del below frees a grid cell's planes)
        if fast and not (ok1 and ok2 and ok3 and ok4):
            raise _NotFinite
        # LSST pasteSubDiffImg: inner box only, D and V_D divided by F_D (and F_D^2) per cell; a
        # single cell's D and V_D are scaled inside the Fourier pass (the same float products)
        cin = inner.slices((outer.x0, outer.y0))
        finish = None
        if scorr is not None:
            tiny = work(100 * np.finfo(work).tiny)  # LSST: finfo of the score variance's dtype
            nf = nonfinite if nonfinite is not None else np.zeros((1, 0), bool)

            def scorr_block(sl: slice, S_rows: np.ndarray, VS_rows: np.ndarray) -> None:
                _scorr_rows(S_rows[:, cin[1]], VS_rows[:, cin[1]], nf[sl] if nonfinite is not None else nf, nonfinite is not None, tiny, scorr[sl], thr, hits[sl])

            finish = scorr_block

        out = _fourier_cell(N1, N2, V1, V2, ker, calculate_score, VA is not None, (cfg.astrometricSigmaX, cfg.astrometricSigmaY), scale_d=one_cell, rows=cin[0], finish=finish)
        del N1, N2, V1, V2
        views = None
        if one_cell:
            # one cell: the outputs are views of the cell arrays (no copies of 2k^2 planes)
            views = {k: v[cin] for k, v in out.items()}
        else:
            np.divide(out["D"][cin], ker.F_D, out=D[isl], casting="unsafe")
            np.divide(out["VD"][cin], ker.F_D**2, out=VD[isl], casting="unsafe")
            if calculate_score:
                S[isl] = out["S"][cin]
                VS[isl] = out["VS"][cin]
                if VA is not None:
                    VA[isl] = out["VA"][cin]
        if FS is not None:
            FS[isl] = ker.F_S
        pd = _crop_normalize(ker.pd, psf_shape1)
        ps = _crop_normalize(ker.ps, psf_shape1) if calculate_score else None
        info = dict(inner=inner.shifted(x0, y0), outer=outer.shifted(x0, y0), P_D=pd, P_S=ps, F_D=ker.F_D, F_S=ker.F_S, var_science=v1, var_template=v2, P_D_sum=float(pad_center_origin(ker.pd, psf_shape1, inverse=True).sum()))
        return info, views

    done = []
    for ci, (inner, outer) in enumerate(cells):
        done.append(run_cell(ci, inner, outer))
        if progress:
            progress("zogy cells", (ci + 1) / len(cells))
    cell_info = [info for info, _ in done]
    if one_cell:
        views = done[0][1]
        D, VD = views["D"], views["VD"]
        if calculate_score:
            S, VS = views["S"], views["VS"]
            if VA is not None:
                VA = views["VA"]
    del done
    timings["fourier"] = time.perf_counter() - t0 - timings["prepare"]
    if FS is None:
        FS = np.broadcast_to(np.float64(cell_info[0]["F_S"]), (ny, nx))
    if masks_left:
        map_calls([functools.partial(or_rows, sl) for sl in masks_left], threaded=ny >= MIN_THREADED_ROWS)
    pd_psf = ImagePsf(cell_info[0]["P_D"]) if len(cell_info) == 1 else _GridPsf(cell_info, "P_D")
    diff = Exposure(D, VD, mask, planes, psf=pd_psf, photo_calib=1.0, wcs=sci.wcs, xy0=sci.xy0, metadata={"BUNIT": "nJy" if cfg.scaleByCalibration else sci.metadata.get("BUNIT", "")}, copy=False)
    score = None
    if calculate_score:
        tiny = 100 * np.finfo(VS.dtype).tiny  # LSST: finfo of the score variance's dtype
        if scorr is not None:
            pass  # a single cell's: made with S and V_S (run_cell)
        elif VA is None and not cfg.doSourceNoise:
            # a grid's: LSST's cleanup and Scorr in one compiled pass per block of rows
            scorr = np.empty(S.shape, S.dtype)
            nf = nonfinite if nonfinite is not None else np.zeros((1, 0), bool)
            map_row_blocks(lambda sl: _scorr_rows(S[sl], VS[sl], nf[sl] if nonfinite is not None else nf, nonfinite is not None, S.dtype.type(tiny), scorr[sl], thr, hits[sl]), ny)
        else:
            cleanup = ~(VS >= tiny)
            if nonfinite is not None:
                cleanup |= nonfinite
            S[cleanup] = 0.0
            VS[cleanup] = 1.0
            denom = VS
            if VA is not None:
                VA[cleanup] = 0.0
                denom = VS + VA
            if cfg.doSourceNoise:
                denom = denom + _source_noise_term(n_img, r_img, n_var, r_var, sci, ref, cell_info, f_n, f_r, (cn, cr), shape_full=(ny, nx), x0y0=(x0, y0))
                denom[cleanup] = 1.0
            scorr = S / np.sqrt(denom)
        ps_psf = ImagePsf(cell_info[0]["P_S"]) if len(cell_info) == 1 else _GridPsf(cell_info, "P_S")
        score = Exposure(S.astype(out_dtype, copy=False), VS.astype(out_dtype, copy=False), score_mask, planes, psf=ps_psf, photo_calib=1.0, wcs=sci.wcs, xy0=sci.xy0, copy=False)
    timings["total"] = time.perf_counter() - t0
    res = ZogyResult(diff, score, scorr, float(cell_info[0]["F_D"]), FS, cell_info, timings=timings, flux_scalings=(float(f_n), float(f_r)), noise_correlation=float(noise_corr))
    if calculate_score:
        # (_scorr_rows counted the rows wherever it made Scorr)
        seed_rows = np.flatnonzero(hits) if (VA is None and not cfg.doSourceNoise) else None
        res.catalog = _transient_catalog(res, cfg.transientThreshold, cfg.transientMinPixels, cfg.transientMinProminence, seed_rows)
    return res


def _zogy_noise_corrected(science: Exposure, template: Exposure, cfg: ZogyConfig, calculate_score: bool, progress) -> ZogyResult:
    """``doMeasureNoiseCorrelation``: ZOGY once with the planes as given, the factor that makes
    its Scorr unit-variance away from sources, then ZOGY with both planes times that factor.

    Why Scorr itself: the factor a resampled pair's variance planes miss depends on the filter
    that sums the noise; Scorr's is ZOGY's own score kernels, so its clipped variance over
    source-free pixels (:func:`toolkit.real_data.noise_correlation_from`) is the factor that
    makes Scorr honest, for any mix of the two images' correlations.  The second run is the
    one ``noiseCorrelationFactor`` set to the measured value gives, bit for bit.
    """
    from .real_data import noise_correlation_from

    t0 = time.perf_counter()
    first_cfg = cfg.copy()
    first_cfg.doMeasureNoiseCorrelation = False
    first_cfg.noiseCorrelationFactor = 1.0
    stage = (lambda name, frac: progress(f"{name} (measuring the noise correlation)", frac)) if progress else None
    first = zogy(science, template, first_cfg, calculate_score=True, progress=stage)
    border = estimate_matching_kernel_size(science.psf, template.psf, science.bbox.center)
    half = max(science.psf.compute_kernel_image().shape[0], template.psf.compute_kernel_image().shape[0]) // 2
    bad = [e.mask_planes.bitmask(cfg.ignoreMaskPlanes, strict=False, field="ignoreMaskPlanes") for e in (science, template)]
    try:
        factor, error = noise_correlation_from(first.scorr, [(science, bad[0]), (template, bad[1])], half=half, edge=border, with_error=True)
    except InputError as exc:
        raise InputError(f"doMeasureNoiseCorrelation: {exc}") from None
    if not error <= 0.1 * factor:  # NaN too: too few usable tiles to say
        how = f"± {error:.2g}" if np.isfinite(error) else "(too few source-free tiles to say how well)"
        warn(f"doMeasureNoiseCorrelation: the measured factor {factor:.3g} {how} is uncertain: the pair has few source-free pixels (a small or crowded image); a factor measured on a larger field of the same data, given as noiseCorrelationFactor, is better", RuntimeWarning)
    second_cfg = first_cfg.copy()
    second_cfg.noiseCorrelationFactor = factor
    res = zogy(science, template, second_cfg, calculate_score=calculate_score, progress=progress)
    res.noise_correlation_error = error
    res.timings["noise_correlation"] = time.perf_counter() - t0 - res.timings["total"]
    res.timings["total"] = time.perf_counter() - t0
    return res


def _crop_normalize(full: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if shape[0] > full.shape[0] or shape[1] > full.shape[1]:
        raise InputError(f"the science PSF's {shape[0]}x{shape[1]} stamp is larger than the {full.shape[0]}x{full.shape[1]} P_D/P_S made for its cell: give a PSF model whose stamp size does not vary across the image")
    centred = pad_center_origin(full, shape, inverse=True)
    s = centred.sum()
    return centred / s if s != 0 else centred


def _strips(outer: Box, local: Box) -> tuple[tuple, list[tuple[slice, slice]]]:
    """The slices of the cell that the image covers, and of the (up to four) strips outside it."""
    h, w = outer.shape
    dst = outer.intersection(local).slices((outer.x0, outer.y0))
    ya, yb, xa, xb = dst[0].start, dst[0].stop, dst[1].start, dst[1].stop
    strips = [(slice(0, ya), slice(0, w)), (slice(yb, h), slice(0, w)), (slice(ya, yb), slice(0, xa)), (slice(ya, yb), slice(xb, w))]
    return dst, [sl for sl in strips if sl[0].stop > sl[0].start and sl[1].stop > sl[1].start]


def _cell_buffer(outer: Box, dtype) -> np.ndarray:
    """A cell's plane: the left part of rows two floats wider than the cell, where each row's
    half spectrum fits (:func:`_wide_buffer`)."""
    h, w = outer.shape
    return _conv_buffer((h, w), dtype)[:, :w]


def _padded_image(img, a: np.ndarray, outer: Box, local: Box, factor=1.0) -> bool:
    """The image's half of LSST ``initializeSubImage``: the cell ``a`` (:func:`_cell_buffer`)
    filled from the image where they overlap, times ``factor`` (the calibration still to be
    applied, in a's dtype); returns whether every value copied is finite.  The strips outside
    the image are :func:`_pad_image_strips`' (their noise needs the cell's mean variance, which
    this copy does not, so the two may run at different times)."""
    dst, _ = _strips(outer, local)
    # copied (and scaled) by a pass that also says whether every value it wrote is finite
    return _copy_finite(img[outer.intersection(local).slices()], a.dtype.type(factor), a[dst])


def _pad_image_strips(a: np.ndarray, outer: Box, local: Box, mean_var: float, rng) -> None:
    """White noise of variance ``mean_var`` in the strips of the cell ``a`` (from
    :func:`_padded_image`) that the image does not cover.

    Only the outside strips are drawn (a whole-box draw costs ~40 ms at 2k^2 for pixels that are
    then overwritten).  ``rng`` is the image's own stream: the two images' noise must differ.
    """
    dtype = a.dtype.type
    sd = np.sqrt(mean_var)
    for sl in _strips(outer, local)[1]:
        a[sl] = rng.standard_normal((sl[0].stop - sl[0].start, sl[1].stop - sl[1].start), dtype=dtype) * dtype(sd)


def _padded_variance(var, b: np.ndarray, outer: Box, local: Box, factor=1.0, check: bool = False) -> bool:
    """The variance plane's half of LSST ``initializeSubImage``: the cell ``b``
    (:func:`_cell_buffer`) filled from the plane (times ``factor``) where the image covers it
    (the strips outside are :func:`_pad_variance_strips`'); returns, with ``check``, whether
    every value copied is finite and > 0 (True without)."""
    dst, _ = _strips(outer, local)
    src = var[outer.intersection(local).slices()]
    if check:
        return _copy_positive(src, b.dtype.type(factor), b[dst])
    if factor != 1.0:
        np.multiply(src, factor, out=b[dst])
    else:
        b[dst] = src
    return True


def _pad_variance_strips(b: np.ndarray, outer: Box, local: Box, mean_var: float) -> None:
    """The cell's mean variance in the strips of ``b`` (from :func:`_padded_variance`) that
    the image does not cover."""
    for sl in _strips(outer, local)[1]:
        b[sl] = mean_var


@nb.njit(cache=True, nogil=True, fastmath={"reassoc"})  # NaN/inf rules kept
def _copy_finite(src, f, out):  # pragma: no cover - compiled
    # out = src * f (in their dtype, as numpy's multiply), and whether every product is finite:
    # v - v is 0 for a finite v and NaN otherwise, and a sum of them stays NaN once it is (a
    # sum vectorises where a boolean and-reduction did not: 2.4 against 3.1 ms at 2k^2)
    acc = src.dtype.type(0)
    for i in range(src.shape[0]):
        s = src[i]
        o = out[i]
        r = src.dtype.type(0)
        for j in range(s.size):
            v = s[j] * f
            o[j] = v
            r += v - v
        acc += r
    return acc == 0


@nb.njit(cache=True, nogil=True)
def _copy_positive_bits(src, f, out, bits, top):  # pragma: no cover - compiled
    # out = src * f (in their dtype, as numpy's multiply), and how many products are not
    # finite and > 0: in integers, as _scan_bits, a float is finite and > 0 exactly when its
    # bits (``bits``: out's, as unsigned integers) minus 1 lie below ``top`` (the bits of the
    # largest finite value); counted per row, in SIMD loops
    one = bits.dtype.type(1)
    n_bad = 0
    for i in range(src.shape[0]):
        s = src[i]
        o = out[i]
        ob = bits[i]
        bad = 0
        for j in range(s.size):
            o[j] = s[j] * f
        for j in range(s.size):
            bad += (ob[j] - one) >= top
        n_bad += bad
    return n_bad


def _copy_positive(src: np.ndarray, f, out: np.ndarray) -> bool:
    """``out[...] = src * f`` (in their float32 or float64 dtype), and whether every product is
    finite and > 0: the copy of a variance plane that was not scanned (see :func:`_zogy`)."""
    ut, top = (np.uint32, 0x7F7FFFFF) if out.dtype.itemsize == 4 else (np.uint64, 0x7FEFFFFFFFFFFFFF)
    return _copy_positive_bits(src, out.dtype.type(f), out, out.view(ut), ut(top)) == 0


def _locked(method: Callable) -> Callable:
    """``method`` run under its object's ``_lock``."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return run


@dataclass
class _CellKernels:
    """Everything of a cell that depends only on the PSFs, flux scalings and noise levels.

    What is held is small: P_D and P_S, the PSF stamps' row transforms and, where the cell
    allows a coarse grid, the kernels' spectra on that grid.  The cell-size kernel spectra are
    made band by band inside the Fourier pass (:func:`_fourier_fused`) and never stored, unless
    a path that needs them whole asks for them (:attr:`spectra`, :meth:`squares`).
    """

    pd: np.ndarray  # P_D and P_S in pixel space, origin at [0, 0]
    ps: np.ndarray | None
    F_D: float
    F_S: float
    work: Any
    shape: tuple[int, int]  # the cell
    args: tuple  # (f1, f2, a1, a2, calc_score) of the compiled algebra
    psf: _PsfColumns  # the two PSF stamps' spectra, band by band
    coarse: int = 1  # pd/ps (and the kernels squared) come from every coarse-th frequency
    coarse_spectra: np.ndarray | None = None  # c1, c2 (s1, s2) on the coarse grid, complex128
    _spectra: np.ndarray | None = None
    _squares: np.ndarray | None = None
    _square_plan: tuple | None = None
    _full_sq: np.ndarray | None = None
    _cols_y: np.ndarray | None = None  # column inverse transforms of the long-tailed kernels, until squared
    boxed: list[int] = field(default_factory=list)  # box sizes of kernels squared on a box
    # the lazily made parts are made under it: the cache hands one object to every thread
    # that asks for the same kernels (an explorer's background run beside a notebook's)
    _lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        held = [self.pd, self.ps, self.coarse_spectra, self._spectra, self._squares, self._full_sq]
        if self._square_plan is not None and self._square_plan[2] is not None:
            held.append(self._square_plan[2][0])
        return sum(a.nbytes for a in held if a is not None) + self.psf.nbytes

    @property
    @_locked
    def spectra(self) -> np.ndarray:
        """c1, c2 (and s1, s2) on the cell's full rfft grid, in the work precision."""
        if self._spectra is None:
            self._spectra = _full_algebra(self.psf, self.shape, self.args, self.work, want_psf=False)[0]
        return self._spectra

    @_locked
    def _plan_squares(self) -> tuple:
        """The pixel-space kernels squared: ``(boxed, full, rows, low)`` with ``boxed`` the
        ``(index, half-size, square)`` of kernels whose square fits a central box, ``full`` the
        indices of those that need LSST's full-cell square, ``low`` the spectra of the boxed
        squares' cross terms by kernel index (see below), and ``rows`` the row transforms of
        the other boxed squares (all cut to the largest box; None if there are none).

        A kernel whose square has all but 1e-9 of its sum within a central box (the usual
        case: the score kernels, and whitening kernels of well-sampled PSFs) is squared on that
        box; the neglected tail changes V_D and V_S by < 1e-9 relative, below float32
        resolution.  Long-tailed kernels (truncated PSF stamps whiten into slowly decaying
        kernels) take LSST's full-cell square.

        A boxed square that is the sum of at most ``SQUARE_RANK_MAX`` products of a column
        and a row, to ``SQUARE_RANK_TOL`` of its sum (smooth kernels are: 4-6 terms for the
        simulator's Gaussian pairs, 9-20 for truncated Moffats), has its spectrum made as the
        matrix product of its terms' column and row spectra (:func:`_square_band`): a few
        complex products a frequency, where the column transforms of its rows cost ~3x more
        at 2048^2.  The residual moves V_D and V_S by less than the tail already left out.
        """
        if self._square_plan is None:
            ny, nx = self.shape
            if self.coarse > 1:
                # the kernels from every coarse-th frequency: periodic over ~270 px, equal to
                # the cell's kernels within the crop wherever they pass the decay test below
                cy, cx = ny // self.coarse, nx // self.coarse
                kern = _irfft2(self.coarse_spectra, (cy, cx))
                rmax = min(128, (cy - 2) // 2, (cx - 2) // 2)
                crop = kern[:, np.arange(-rmax, rmax + 1) % cy][:, :, np.arange(-rmax, rmax + 1) % cx]
            else:
                cols_y = sfft.ifft(self.spectra, axis=-2, workers=fft_workers(self.spectra.size))
                rmax = min(128, (ny - 2) // 2, (nx - 2) // 2)
                rows = np.arange(-rmax, rmax + 1) % ny
                cols = np.arange(-rmax, rmax + 1) % nx
                crop = sfft.irfft(cols_y[:, rows, :], n=nx, axis=-1, workers=fft_workers(cols_y.size))[:, :, cols]
                self._cols_y = cols_y
            boxed, full = [], []
            for i in range(len(crop)):
                c2 = np.square(crop[i], dtype=np.float64)
                inside = c2.sum()
                r_use = None
                # the kernel must have decayed to nothing at the crop's edge (the truncated
                # stamps' long-tailed whitening kernels fail this) ...
                edge = inside - c2[8:-8, 8:-8].sum() if rmax > 16 else inside
                if inside > 0 and edge <= 1e-12 * inside:
                    # ... and then the smallest box holding all but 1e-9 of it is used
                    for r in (8, 16, 32, 64, 128):
                        if r <= rmax and inside - c2[rmax - r:rmax + r + 1, rmax - r:rmax + r + 1].sum() <= 1e-9 * inside:
                            r_use = r
                            break
                if r_use is None:
                    full.append(i)
                else:
                    boxed.append((i, r_use, c2))
            if self._cols_y is not None:
                # the long-tailed kernels' column transforms are the first half of their
                # full-cell inverse transforms (:meth:`_full_squares`): kept for it, not redone
                self._cols_y = self._cols_y[full] if full else None
            cdt = np.complex64 if self.work == np.float32 else np.complex128
            low = {}
            for i, r, c2 in boxed:
                box = c2[rmax - r:rmax + r + 1, rmax - r:rmax + r + 1]
                terms = _cross_terms(box, SQUARE_RANK_MAX, SQUARE_RANK_TOL)
                if terms is not None:
                    low[i] = _square_factors(_term_spectra(terms, box.shape, self.shape), cdt)
            rows_t = None
            by_rows = [b for b in boxed if b[0] not in low]
            if by_rows:
                r = max(b[1] for b in by_rows)
                # every square cut to the largest box needed
                cut = [c2[rmax - r:rmax + r + 1, rmax - r:rmax + r + 1].astype(self.work) for _, _, c2 in by_rows]
                rows_t = _stamp_rows(cut, self.shape, self.work)
            self._square_plan = (boxed, full, rows_t, low)
            self.boxed = [2 * r + 1 for _, r, _ in boxed]
        return self._square_plan

    def fused_squares(self) -> tuple:
        """What the fused pass (:func:`_fourier_fused`) reads for the squared kernels:
        ``(boxed, rows, full, planes, low)``: the indices of the kernels whose square fits a
        box, the row transforms (:func:`_stamp_rows`, or None) of those among them not in
        ``low``, the indices of the long-tailed kernels with their squares' spectra on the
        cell's full grid (LSST's full-cell square; an array, empty if none), and ``low``, the
        boxed squares' cross-term spectra by kernel index (see :meth:`_plan_squares`)."""
        boxed, full, rows_t, low = self._plan_squares()
        return [i for i, _, _ in boxed], rows_t, full, self._full_squares(), low

    @_locked
    def _full_squares(self) -> np.ndarray:
        """Spectra of the full-cell squares of the long-tailed kernels (in the order of
        :meth:`_plan_squares`' ``full``), made once."""
        if self._full_sq is None:
            full = self._plan_squares()[1]
            if not full:
                self._full_sq = np.zeros((0, self.shape[0], self.shape[1] // 2 + 1), np.complex64 if self.work == np.float32 else np.complex128)
            else:
                if self._cols_y is not None:
                    k = sfft.irfft(self._cols_y, n=self.shape[1], axis=-1, workers=fft_workers(self._cols_y.size))
                    self._cols_y = None
                else:
                    k = _irfft2(self.spectra[full], self.shape)
                np.square(k, out=k)
                self._full_sq = sfft.rfft2(k, axes=(-2, -1), workers=fft_workers(k.size))
        return self._full_sq

    @_locked
    def squares(self) -> np.ndarray:
        """Spectra of the pixel-space squares of the kernels (LSST ``pixelSpaceSquare``) on the
        cell's full grid, made on first use: a cell whose variance planes are constant never
        needs them."""
        if self._squares is None:
            boxed, full, rows_t, low = self._plan_squares()
            ny, nx = self.shape
            nxh = nx // 2 + 1
            by_rows = [i for i, _, _ in boxed if i not in low]
            if not full and not low:
                sq = _columns(rows_t, self.shape)
            else:
                sq = np.empty((len(boxed) + len(full), ny, nxh), np.complex64 if self.work == np.float32 else np.complex128)
                if by_rows:
                    sq[by_rows] = _columns(rows_t, self.shape)
                if low:
                    # band by band, as the fused pass makes them (the same products)
                    with one_blas_thread():
                        for j in range(0, nxh, _BAND):
                            cols = slice(j, min(j + _BAND, nxh))
                            for i, f in low.items():
                                _square_band(f, cols, sq[i, :, cols])
                if full:
                    sq[full] = self._full_squares()
            self._squares = sq
        return self._squares

    def sum_squares(self, i: int) -> float:
        """sum(k_i^2) in pixel space, from the spectrum (Parseval over the rfft half)."""
        c = self.spectra[i]
        p = c.real.astype(np.float64) ** 2 + c.imag.astype(np.float64) ** 2
        ny, nx = self.shape
        with one_blas_thread():  # a threaded matrix-vector product leaves OpenBLAS's threads spinning
            return float((p @ _half_spectrum_weights(nx)).sum()) / (ny * nx)


def _half_spectrum_weights(nx: int) -> np.ndarray:
    """Weights that turn a sum over an rfft half spectrum (last axis) into the sum over the
    full spectrum: 2 for the columns that stand for a conjugate pair, 1 for DC and Nyquist."""
    w = np.full(nx // 2 + 1, 2.0)
    w[0] = 1.0
    if nx % 2 == 0:
        w[-1] = 1.0
    return w


def _columns(stamp_rows: tuple, shape: tuple[int, int]) -> np.ndarray:
    """Second half of a pruned rfft2: the row transforms from :func:`_stamp_rows` placed in
    their cell rows, then the column transforms."""
    rx, rows = stamp_rows
    full = np.zeros((len(rows), shape[0], shape[1] // 2 + 1), rx.dtype)
    for i, r in enumerate(rows):
        full[i, r, :] = rx[i, : len(r)]
    return sfft.fft(full, axis=1, overwrite_x=True, workers=fft_workers(full.size))


def _spectra(kernels: list[np.ndarray], shape: tuple[int, int], dtype) -> np.ndarray:
    """rfft2 of small centred stamps zero-padded to ``shape`` with their centre at [0, 0]
    (LSST ``padCenterOriginArray``), batched.

    Why by hand: a stamp occupies only a few rows of the padded cell, so the row transforms run
    on those rows alone (:func:`_stamp_rows`) and only the column transforms see the full
    height; about half the work of ``rfft2`` on the padded arrays, with the same result.
    """
    return _columns(_stamp_rows(kernels, shape, dtype), shape)


class _KernelCache:
    """Kernel algebra of recent cells, kept within a byte budget."""

    def __init__(self, budget: int = 256 * 2**20):
        self.budget = budget
        self.entries: OrderedDict = OrderedDict()
        # an explorer's background run beside a notebook's uses it from two threads; the
        # kernels are made outside the lock (two threads may then make the same ones: the
        # first stored is kept)
        self._lock = threading.Lock()

    def get(self, key, make):
        with self._lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                return self.entries[key]
        value = make(key)
        with self._lock:
            if key in self.entries:
                return self.entries[key]
            self.entries[key] = value
            while len(self.entries) > 1 and sum(v.nbytes for v in self.entries.values()) > self.budget:
                self.entries.popitem(last=False)
            if value.nbytes > self.budget:
                self.entries.clear()
        return value

    def cache_clear(self) -> None:
        with self._lock:
            self.entries.clear()


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _kernels_at(p1r, p1i, p2r, p2i, f1, f2, a1, a2, z1, z2, g2, g3):  # pragma: no cover - compiled
    # c1, c2, s1, s2 at one frequency (calculateFourierDiffim's kernels with LSST's near-zero
    # rule) as eight float64 parts (re, im of each), for the caller to round to the precision
    # it stores or uses them in.  Branch-free (the near-zero case is selected, not jumped to),
    # so the loops that inline it vectorise.
    P1sq = p1r * p1r + p1i * p1i
    P2sq = p2r * p2r + p2i * p2i
    s_denom = a1 * P2sq + a2 * P1sq
    small = s_denom < _TINY
    inv_s = 1.0 / (1.0 if small else s_denom)
    inv_den = np.sqrt(inv_s)
    w0 = f2 * inv_den
    w1 = inv_den * f1
    w2 = P2sq * inv_s * g2
    w3 = P1sq * inv_s * g3
    return (
        z1 if small else p2r * w0, 0.0 if small else p2i * w0,
        z2 if small else p1r * w1, 0.0 if small else p1i * w1,
        0.0 if small else p1r * w2, 0.0 if small else p1i * -w2,
        0.0 if small else p2r * w3, 0.0 if small else p2i * -w3,
    )


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _algebra_rows(P1, P2, f1, f2, a1, a2, calc_score, want_psf, spectra, pd_hat, ps_hat, wts):  # pragma: no cover - compiled
    """calculateFourierDiffim's spectral algebra on a block of rows; returns that block's part
    of F_S's sum.

    Every quantity is formed in float64 (the near-zero rule must see LSST's float64 spectra,
    and a float32 1/den could overflow where P ~ 1e-40) and cast to the work precision only
    when stored.  Why compiled: written with numpy this is ~25 full passes over float64 spectra
    (0.1 s at 2160^2); one loop computes c1, c2, P_D, the F_S integrand, P_S and the score
    kernels per frequency with the same operations in the same order.  ``want_psf=False``
    skips P_D and P_S.  The kernels come from :func:`_kernels_at`, as in :func:`_fused_band`.
    """
    fd_denom = np.sqrt(a1 + a2)
    fd2 = fd_denom**2
    z1 = f2 / fd_denom
    z2 = f1 / fd_denom
    g2 = f1 * f2**2
    g3 = f2 * f1**2
    ft = spectra.real.dtype.type
    part = 0.0
    ny, nx = P1.shape
    for i in range(ny):
        row = 0.0
        for j in range(nx):
            p1r = P1[i, j].real
            p1i = P1[i, j].imag
            p2r = P2[i, j].real
            p2i = P2[i, j].imag
            k = _kernels_at(p1r, p1i, p2r, p2i, f1, f2, a1, a2, z1, z2, g2, g3)
            spectra[0, i, j] = complex(ft(k[0]), ft(k[1]))
            spectra[1, i, j] = complex(ft(k[2]), ft(k[3]))
            if calc_score:
                spectra[2, i, j] = complex(ft(k[4]), ft(k[5]))
                spectra[3, i, j] = complex(ft(k[6]), ft(k[7]))
            # P_D, P_S and F_S's integrand (the compiler shares these terms with the kernels')
            P1sq = p1r * p1r + p1i * p1i
            P2sq = p2r * p2r + p2i * p2i
            s_denom = a1 * P2sq + a2 * P1sq
            num = 0.0
            if s_denom < _TINY:
                if want_psf:
                    pd_hat[i, j] = 0.0
            else:
                inv_s = 1.0 / s_denom
                # P_D = fd P1 P2 / den; |P_D|^2 / fd^2 = |P1|^2 |P2|^2 / sDenom (paper eq. 42)
                if want_psf:
                    w = np.sqrt(inv_s) * fd_denom
                    pd_hat[i, j] = complex((p1r * p2r - p1i * p2i) * w, (p1r * p2i + p1i * p2r) * w)
                num = P1sq * P2sq * inv_s
            row += num * wts[j]
            if calc_score and want_psf:
                ps_hat[i, j] = num * fd2
        part += row
    return part


_BAND = 32  # complex columns per band of the fused pass.  At 2048^2 (on 2 cores, 2 MB L2 each) 24-64 ran alike and ~7 % faster than 16 once the squares came from BLAS products (wider products, half the calls); 8 ran ~20 % slower


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _ds_row(a, b, ks, n, sd, calc_score):  # pragma: no cover - compiled
    # D (and S) on one band row, in place: a <- (c1 a - c2 b) sd, b <- s1 a - s2 b, with the
    # kernels' parts from ``ks``; re, im interleaved
    if calc_score:
        for j in range(n):
            r = j + j
            xr, xi, yr, yi = a[r], a[r + 1], b[r], b[r + 1]
            k0r, k0i, k1r, k1i = ks[j], ks[_BAND + j], ks[2 * _BAND + j], ks[3 * _BAND + j]
            k2r, k2i, k3r, k3i = ks[4 * _BAND + j], ks[5 * _BAND + j], ks[6 * _BAND + j], ks[7 * _BAND + j]
            a[r] = ((k0r * xr - k0i * xi) - (k1r * yr - k1i * yi)) * sd
            a[r + 1] = ((k0r * xi + k0i * xr) - (k1r * yi + k1i * yr)) * sd
            b[r] = (k2r * xr - k2i * xi) - (k3r * yr - k3i * yi)
            b[r + 1] = (k2r * xi + k2i * xr) - (k3r * yi + k3i * yr)
    else:
        for j in range(n):
            r = j + j
            xr, xi, yr, yi = a[r], a[r + 1], b[r], b[r + 1]
            k0r, k0i, k1r, k1i = ks[j], ks[_BAND + j], ks[2 * _BAND + j], ks[3 * _BAND + j]
            a[r] = ((k0r * xr - k0i * xi) - (k1r * yr - k1i * yi)) * sd
            a[r + 1] = ((k0r * xi + k0i * xr) - (k1r * yi + k1i * yr)) * sd


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _vd_row(c, e, q0, q1, q2, q3, n, svd, calc_score):  # pragma: no cover - compiled
    # V_D (and V_S) on one band row, in place: c <- (q1 c + q2 e) svd, e <- q3 c + q4 e
    if calc_score:
        for j in range(n):
            r = j + j
            ur, ui, vr, vi = c[r], c[r + 1], e[r], e[r + 1]
            c[r] = ((q0[r] * ur - q0[r + 1] * ui) + (q1[r] * vr - q1[r + 1] * vi)) * svd
            c[r + 1] = ((q0[r] * ui + q0[r + 1] * ur) + (q1[r] * vi + q1[r + 1] * vr)) * svd
            e[r] = (q2[r] * ur - q2[r + 1] * ui) + (q3[r] * vr - q3[r + 1] * vi)
            e[r + 1] = (q2[r] * ui + q2[r + 1] * ur) + (q3[r] * vi + q3[r + 1] * vr)
    else:
        for j in range(n):
            r = j + j
            ur, ui, vr, vi = c[r], c[r + 1], e[r], e[r + 1]
            c[r] = ((q0[r] * ur - q0[r + 1] * ui) + (q1[r] * vr - q1[r + 1] * vi)) * svd
            c[r + 1] = ((q0[r] * ui + q0[r + 1] * ur) + (q1[r] * vi + q1[r + 1] * vr)) * svd


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _fused_band(P, Q, A, B, C, E, c0, w, f1, f2, a1, a2, calc_score, sd, svd):  # pragma: no cover - compiled
    """The kernels of :func:`_algebra_rows` applied where they are made, on the band of ``w``
    (<= ``_BAND``) complex columns from ``c0``: per frequency c1, c2 (s1, s2) from the PSF
    spectra ``P`` (float64 view, (2, ny, 2 _BAND): re, im interleaved), then in place
    A <- (c1 A - c2 B) sd (D), B <- s1 A - s2 B (S), C <- (q1 C + q2 E) svd (V_D),
    E <- q3 C + q4 E (V_S), with q the squared kernels' spectra ``Q`` (float view like ``P``),
    A..E float views (ny, 2 nxh) of the four planes' spectra, and sd, svd the real scale
    factors of D and V_D (1/F_D, 1/F_D^2, or 1).

    The kernels are rounded to the data's precision as the stored spectra of
    :func:`_algebra_rows` are, and the products are those of :func:`_products_rows` written
    out on real and imaginary parts, so the results equal the unfused path's (up to the sign
    of exact zeros).  Why written this way: complex array elements and a 2-D index defeat the
    compiler's SIMD loops (this ran scalar at ~35 ns a frequency); 1-D row views indexed from a
    loop bounded by ``_BAND`` (so 2j and 2j+1 are provably non-negative and need no
    wraparound), the kernels staged in one small scratch array, and a few arrays per loop (so the
    run-time overlap checks stay few) let it vectorise: about 3x faster.  The row products are
    inlined with the constant ``_BAND`` as their trip count for every full band (the compiler
    then unrolls them) and with ``calc_score`` decided outside the loops: ~30 % faster again.
    """
    fd_denom = np.sqrt(a1 + a2)
    z1 = f2 / fd_denom
    z2 = f1 / fd_denom
    g2 = f1 * f2**2
    g3 = f2 * f1**2
    ft = A.dtype.type
    ks = np.empty(8 * _BAND, A.dtype)  # the band row's kernels, part m at [m _BAND + j]
    n = min(w, _BAND)
    full = n == _BAND
    for i in range(P.shape[1]):
        p1 = P[0, i]
        p2 = P[1, i]
        for j in range(n):
            k = _kernels_at(p1[j + j], p1[j + j + 1], p2[j + j], p2[j + j + 1], f1, f2, a1, a2, z1, z2, g2, g3)
            for m in range(8):
                ks[m * _BAND + j] = ft(k[m])
        a = A[i, 2 * c0:2 * (c0 + n)]
        b = B[i, 2 * c0:2 * (c0 + n)]
        c = C[i, 2 * c0:2 * (c0 + n)]
        e = E[i, 2 * c0:2 * (c0 + n)]
        q0, q1 = Q[0, i], Q[1, i]
        q2, q3 = (Q[2, i], Q[3, i]) if calc_score else (q0, q1)  # (unread without the score)
        if full:
            _ds_row(a, b, ks, _BAND, sd, calc_score)
            _vd_row(c, e, q0, q1, q2, q3, _BAND, svd, calc_score)
        else:
            _ds_row(a, b, ks, n, sd, calc_score)
            _vd_row(c, e, q0, q1, q2, q3, n, svd, calc_score)


def _tail_fraction(k: np.ndarray) -> float:
    """Share of sum(k^2) in the 8-px frame farthest from the origin of a periodic kernel
    (origin at [0, 0]): where a kernel made on a short period has not decayed."""
    c = np.fft.fftshift(k)
    total = float(np.square(c, dtype=np.float64).sum())
    inner = float(np.square(c[8:-8, 8:-8], dtype=np.float64).sum())
    return (total - inner) / total if total > 0 else 0.0


def _coarse_step(shape: tuple[int, int], min_len: int = 258) -> int:
    """The largest m dividing both cell dimensions with every coarse dimension >= ``min_len``
    (1 if none): sampling a spectrum at every m-th frequency gives the kernel summed over a
    period of shape/m pixels, which is the full-grid kernel wherever the kernel has decayed
    within half that period."""
    ny, nx = shape
    for m in range(min(ny, nx) // min_len, 1, -1):
        if ny % m == 0 and nx % m == 0:
            return m
    return 1


def _stamp_rows(kernels: list[np.ndarray], shape: tuple[int, int], dtype=np.float64) -> tuple[np.ndarray, list[np.ndarray]]:
    """Row transforms (length nx) of the stamps' rows, and the cell rows they occupy (centre
    at [0, 0], LSST ``padCenterOriginArray``): the first half of a pruned rfft2."""
    ny, nx = shape
    gy = max(k.shape[0] for k in kernels)
    r = np.zeros((len(kernels), gy, nx), dtype)
    rows = []
    for i, k in enumerate(kernels):
        ky, kx = k.shape
        r[i, :ky][:, (np.arange(kx) - kx // 2) % nx] = k
        rows.append((np.arange(ky) - ky // 2) % ny)
    return sfft.rfft(r, axis=-1, workers=fft_workers(r.size)), rows


#: PSF stamps of at most this rank get their spectra from their column and row terms
#: (:class:`_PsfColumns`); others from the column transforms of their rows
LOW_RANK_MAX = 2
#: boxed squared kernels of at most this many cross terms (to SQUARE_RANK_TOL of their sum)
#: get their spectra as matrix products of the terms' spectra (:meth:`_CellKernels._plan_squares`);
#: at 2048^2 the product of 24 terms still costs less than the column transforms it replaces
SQUARE_RANK_MAX = 24
SQUARE_RANK_TOL = 1e-10


def _square_factors(spectra: tuple[np.ndarray, np.ndarray], cdt) -> tuple[np.ndarray, np.ndarray]:
    """A boxed square's terms' column and row spectra (:func:`_term_spectra`) as
    :func:`_square_band` reads them: ``((ny, r), (r, nx // 2 + 1))`` in ``cdt``.

    Each term's two spectra are scaled to the same peak, and the real and imaginary parts
    whose products with the other spectrum's peak are below 1e-12 of the square's spectral
    peak (its sum: the square is positive) are set to zero.  Why: a smooth kernel's spectra
    fall to ~1e-20 of their peak at high frequencies (their round-off imaginary parts lower
    still), where their products are float32 subnormals, and subnormal arithmetic made the
    products ~15x slower.  What is zeroed moves the spectrum by < 1e-12 of its peak per term
    and factor, far below the float32 resolution it is stored at."""
    a, b = spectra
    peak = float(np.abs((a[:, :1] * b[:, :1]).sum()))  # the spectrum at frequency 0
    pa, pb = np.abs(a).max(axis=1), np.abs(b).max(axis=1)
    g = np.sqrt(np.divide(pb, pa, out=np.ones_like(pa), where=(pa > 0) & (pb > 0)))[:, None]
    a, b = a * g, b / g  # new arrays: the inputs stay as they are
    # real and imaginary parts alike (a symmetric term's spectrum is real but for round-off,
    # whose products would be subnormal), each against the other spectrum's peak
    for x, other in ((a, b), (b, a)):
        f = x.view(np.float64)
        f[np.abs(f) * np.abs(other).max(axis=1, keepdims=True) < 1e-12 * peak] = 0
    return np.ascontiguousarray(a.T, dtype=cdt), b.astype(cdt)


def _square_band(factors: tuple[np.ndarray, np.ndarray], cols: slice, out: np.ndarray) -> None:
    """A boxed square's spectrum on the columns ``cols`` into ``out`` (ny, width): the product
    of its terms' column spectra (ny, r) and row spectra (r, nx // 2 + 1).  Why a BLAS
    product: a compiled loop over so few terms a frequency ran at a quarter of its speed (the
    terms are too few for the compiler to keep the sums in registers); callers hold
    :func:`~toolkit.parallel.one_blas_thread` around it."""
    a, b = factors
    np.matmul(a, b[:, cols], out=out)


@nb.njit(cache=True, nogil=True)
def _low_rank_band(A, B, c0, w, P):  # pragma: no cover - compiled
    # P[k, v, j] = sum_i A[k, i, v] B[k, i, c0 + j]: the spectra of stamp k = sum_i u_i v_i^T
    # on the band of w columns from c0, from the column (A) and row (B) spectra of its terms
    for k in range(A.shape[0]):
        for v in range(A.shape[2]):
            for j in range(w):
                acc = A[k, 0, v] * B[k, 0, c0 + j]
                for i in range(1, A.shape[1]):
                    acc += A[k, i, v] * B[k, i, c0 + j]
                P[k, v, j] = acc


def _cross_terms(k: np.ndarray, max_rank: int, tol: float = 1e-15) -> tuple[np.ndarray, np.ndarray] | None:
    """``(columns (ky, r), rows (r, kx))`` with ``k`` = columns @ rows to a residual of at most
    ``tol`` of ``k``'s absolute sum, for r <= ``max_rank``; None if more terms would be needed.

    Cross approximation with full pivoting: each term is the residual's column and row through
    its largest element, which removes that column and row exactly; a stamp of rank r is done
    in r terms.  Why not an SVD: LAPACK's call starts OpenBLAS's threads, which then spin for a
    while on a 2-core machine and slowed the ZOGY pass that followed by ~10 %; this is a few
    elementwise numpy operations on a small stamp."""
    res = np.array(k, dtype=np.float64)
    mag = np.abs(res)
    total = float(mag.sum())
    left = [total]  # the residual's absolute sum after each term
    cols, rows = [], []
    while left[-1] > tol * total:
        n = len(cols)
        if n == max_rank:
            return None
        if n >= 4 and n == max_rank // 2 and left[-1] * (left[-1] / left[n // 2]) ** ((max_rank - n) / (n - n // 2)) > tol * total:
            # half way, the rate of the last half's terms kept up would not reach ``tol`` in
            # time (a measured PSF's whitening kernels squared: 1e-4 after 8 terms, 5e-5
            # after 12): given up on now rather than after max_rank terms
            return None
        p, q = np.unravel_index(int(np.argmax(mag)), res.shape)
        col, row = res[:, q].copy(), res[p, :] / res[p, q]
        res -= np.multiply.outer(col, row)
        np.abs(res, out=mag)
        left.append(float(mag.sum()))
        cols.append(col)
        rows.append(row)
    if not cols:  # an all-zero stamp
        cols, rows = [np.zeros(res.shape[0])], [np.zeros(res.shape[1])]
    return np.stack(cols, axis=1), np.stack(rows)


def _term_spectra(terms: tuple[np.ndarray, np.ndarray], kshape: tuple[int, int], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The 1-D spectra of a stamp's cross terms (:func:`_cross_terms`) on a cell of ``shape``,
    the stamp's centre at [0, 0] (LSST ``padCenterOriginArray``): ``(fft of the columns
    (r, ny), rfft of the rows (r, nx // 2 + 1))``, complex128.  The stamp's rfft2 on the cell
    is ``sum_i outer(cols[i], rows[i])``."""
    cu, rv = terms
    ny, nx = shape
    ky, kx = kshape
    col = np.zeros((cu.shape[1], ny))
    col[:, (np.arange(ky) - ky // 2) % ny] = cu.T
    row = np.zeros((rv.shape[0], nx))
    row[:, (np.arange(kx) - kx // 2) % nx] = rv
    return sfft.fft(col, axis=-1), sfft.rfft(row, axis=-1)


class _PsfColumns:
    """The two PSF stamps' spectra on a cell's rfft grid, made band of columns by band.

    A stamp of rank r (a Gaussian model's sampled stamp is an outer product, r = 1; a double
    Gaussian r = 2) is the sum of r products of a column and a row, so its 2-D spectrum is the
    sum of r products of their 1-D spectra: r complex products a frequency, where the column
    transforms of its rows cost ~20x that (they were ~a fifth of the fused ZOGY pass at
    2048^2).  The terms come from :func:`_cross_terms`, whose residual is at most 1e-15 of the
    stamp's absolute sum, so the spectrum moves by less than that (float64 round-off of the
    transforms is ~1e-16; the data they filter are float32).  Stamps of higher rank (measured
    PSFs, truncated Moffats) take the column transforms of their rows (:func:`_stamp_rows`).
    """

    def __init__(self, kernels: list[np.ndarray], shape: tuple[int, int]) -> None:
        ny, nx = shape
        self.shape = shape
        self.factors: tuple[np.ndarray, np.ndarray] | None = None
        self.rows: tuple | None = None
        terms = [_cross_terms(k, LOW_RANK_MAX) for k in kernels]
        if all(t is not None for t in terms):
            rank = max(t[0].shape[1] for t in terms)
            A = np.zeros((len(kernels), rank, ny), np.complex128)
            B = np.zeros((len(kernels), rank, nx // 2 + 1), np.complex128)
            for i, (t, k) in enumerate(zip(terms, kernels)):
                a, b = _term_spectra(t, k.shape, shape)
                A[i, : len(a)] = a
                B[i, : len(b)] = b
            self.factors = (A, B)
        else:
            self.rows = _stamp_rows(kernels, shape)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.factors) if self.factors is not None else self.rows[0].nbytes

    def scratch(self, width: int) -> np.ndarray | None:
        """The input band :meth:`band` needs for ``width`` columns (None: it needs none)."""
        return None if self.factors is not None else np.zeros((2, self.shape[0], width), np.complex128)

    def band(self, cols: slice, out: np.ndarray, scratch: np.ndarray | None) -> None:
        """The two spectra on the columns ``cols`` into ``out[:, :, :w]`` (complex128).
        ``scratch``: from :meth:`scratch`, reused from band to band (zero but for the stamps'
        rows, which each band overwrites)."""
        w = cols.stop - cols.start
        if self.factors is not None:
            _low_rank_band(self.factors[0], self.factors[1], cols.start, w, out)
            return
        rx, rows = self.rows
        p_in = scratch[:, :, :w]
        for i in range(2):
            p_in[i, rows[i]] = rx[i, : len(rows[i]), cols]
        _fft_cols_into(p_in, out[:, :, :w])


def _full_algebra(psf: _PsfColumns, shape: tuple[int, int], args: tuple, work, want_psf: bool):
    """:func:`_algebra_rows` over the cell's full rfft grid: ``(spectra, pd_hat, ps_hat, F_S sum)``.

    The PSF spectra are made in bands of ~128 columns (:class:`_PsfColumns`, in float64) with
    the algebra on each band: a few MB at a time instead of two 37 MB cell-size
    complex128 planes, whose fresh pages cost more than the transforms on this kind of machine.
    """
    ny, nx = shape
    nxh = nx // 2 + 1
    calc_score = args[4]
    n = 4 if calc_score else 2
    cdt = np.complex64 if work == np.float32 else np.complex128
    spectra = np.empty((n, ny, nxh), cdt)
    pd_hat = np.empty((ny, nxh) if want_psf else (0, 0), cdt)
    ps_hat = np.empty((ny, nxh) if (calc_score and want_psf) else (0, 0), cdt)
    wts = _half_spectrum_weights(nx)

    def block(cols: slice) -> float:
        P = np.empty((2, ny, cols.stop - cols.start), np.complex128)
        psf.band(cols, P, psf.scratch(cols.stop - cols.start))
        return _algebra_rows(P[0], P[1], *args, want_psf, spectra[:, :, cols], pd_hat[:, cols] if want_psf else pd_hat, ps_hat[:, cols] if (calc_score and want_psf) else ps_hat, wts[cols])

    step = max(16, -(-nxh // max(2, -(-nxh // 128))))
    bands = [slice(j, min(j + step, nxh)) for j in range(0, nxh, step)]
    # two threads (the transforms and the compiled loop release the GIL; the kept helper of
    # map_calls, not two new threads), where there are bands enough to share
    parts = map_calls([functools.partial(block, b) for b in bands])
    return spectra, pd_hat, ps_hat, sum(parts)


def _origin_block(x_hat: np.ndarray, shape: tuple[int, int], half: int) -> np.ndarray:
    """The inverse rfft2 of ``x_hat`` (a ``shape`` cell) at the pixels within ``half`` of the
    origin, as a (2 half, 2 half) array that keeps the cell's wrap-around order (rows and
    columns 0..half-1, then -half..-1), so that :func:`pad_center_origin` crops it as it would
    the whole cell (for crops up to 2 half - 1 on a side).

    Why: P_D and P_S are only wanted as PSF-sized stamps; after the column transforms only
    those 2 half rows need the row transform.  The values are those of :func:`_irfft2` (the
    same transforms, on fewer rows); ``x_hat`` is overwritten.
    """
    ny, nx = shape
    if 2 * half >= min(ny, nx):
        return _irfft2(x_hat, shape, overwrite=True)
    cols = sfft.ifft(x_hat, axis=-2, workers=fft_workers(x_hat.size), overwrite_x=True)
    rows = np.r_[0:half, ny - half:ny]
    block = sfft.irfft(cols[rows], n=nx, axis=-1, workers=fft_workers(cols.size))
    return block[:, np.r_[0:half, nx - half:nx]]


def _make_cell_kernels(key):
    k1b, s1, k2b, s2, f1, f2, var1, var2, shape, calc_score, work = key
    k1 = np.frombuffer(k1b).reshape(s1)
    k2 = np.frombuffer(k2b).reshape(s2)
    work = np.dtype(work).type
    ny, nx = shape
    a1 = var1 * f2**2
    a2 = var2 * f1**2
    n = 4 if calc_score else 2
    args = (float(f1), float(f2), float(a1), float(a2), bool(calc_score))
    F_D = float(f1 * f2 / np.sqrt(a1 + a2))
    psf = _PsfColumns([k1, k2], shape)
    # P_D and P_S are only wanted as PSF-sized stamps: they are made on a coarse frequency grid
    # (every m-th frequency, which is the stamps' rfft2 on a cell m times smaller) when the
    # cell allows one at least 258 px (and 4 PSF widths) on a side and they decay within it
    m = _coarse_step(shape, max(258, 4 * max(s1 + s2)))
    if m > 1:
        cshape = (ny // m, nx // m)
        c1, c2 = _spectra([k1, k2], cshape, np.float64)
        # small arrays: float64 keeps rounding out of the tail test
        spec_c = np.empty((n,) + c1.shape, np.complex128)
        pd_c = np.empty(c1.shape, np.complex128)
        ps_c = np.empty(c1.shape if calc_score else (0, 0), np.complex128)
        part = _algebra_rows(c1, c2, *args, True, spec_c, pd_c, ps_c, _half_spectrum_weights(cshape[1]))
        pd = _irfft2(pd_c, cshape, overwrite=True)
        ps = _irfft2(ps_c, cshape, overwrite=True) if calc_score else None
        # long-tailed P_D/P_S (sharply truncated stamps): the coarse period would alias their
        # tails into the stamp by more than ~3e-8 of the peak (a 1e-14 energy share in the
        # outer frame gives ~3e-8, 3.6e-13 gave 1.6e-7), so they are made on the cell's grid as
        # LSST does.  Below that the difference is under float32 resolution.
        if max(_tail_fraction(pd), _tail_fraction(ps) if calc_score else 0.0) <= 1e-14:
            # F_S is the mean over the frequencies of f1^2 f2^2 |P1|^2 |P2|^2 / sDenom, i.e.
            # P_S at the origin times f1^2 f2^2 / fd^2; the coarse grid's mean is P_S summed
            # over its periodic images at the origin, the same wherever P_S passed that test
            F_S = float(f1**2 * f2**2 * part / (cshape[0] * cshape[1]))
            return _CellKernels(pd, ps, F_D, F_S, work, tuple(shape), args, psf, coarse=m, coarse_spectra=spec_c)
    spectra, pd_hat, ps_hat, part = _full_algebra(psf, shape, args, work, want_psf=True)
    # at least 128 (crops up to 255 px wide), and the stamps' own size: P_D is cut to the
    # science PSF's stamp, whose size a model may vary across the image
    half = max(128, max(s1 + s2) // 2 + 1)
    pd = _origin_block(pd_hat, shape, half)
    ps = _origin_block(ps_hat, shape, half) if calc_score else None
    F_S = float(f1**2 * f2**2 * part / (ny * nx))
    return _CellKernels(pd, ps, F_D, F_S, work, tuple(shape), args, psf, coarse=1, _spectra=spectra)


def _cell_kernels(k1, k2, f1, f2, var1, var2, cell_shape, calc_score, work) -> _CellKernels:
    """calculateFourierDiffim's kernel algebra on the cell's frequency grid: float64 throughout
    (LSST's near-zero-denominator rule needs float64 spectra), stored in the work precision.
    Cached, so a re-run with the same PSFs and noise levels (an explorer) reuses it."""
    k1 = np.ascontiguousarray(k1, dtype=np.float64)
    k2 = np.ascontiguousarray(k2, dtype=np.float64)
    key = (k1.tobytes(), k1.shape, k2.tobytes(), k2.shape, float(f1), float(f2), float(var1), float(var2), tuple(cell_shape), bool(calc_score), np.dtype(work).str)
    return _cell_kernels_cached.get(key, _make_cell_kernels)


_cell_kernels_cached = _KernelCache()


@nb.njit(cache=True, nogil=True)
def _products_rows(a, b, k1, k2, k3, k4, both, minus, sa, sb):  # pragma: no cover - compiled
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            x = a[i, j]
            y = b[i, j]
            if minus:
                a[i, j] = (k1[i, j] * x - k2[i, j] * y) * sa
                if both:
                    b[i, j] = (k3[i, j] * x - k4[i, j] * y) * sb
            else:
                a[i, j] = (k1[i, j] * x + k2[i, j] * y) * sa
                if both:
                    b[i, j] = (k3[i, j] * x + k4[i, j] * y) * sb


def _products_in_place(a, b, k1, k2, k3, k4, both: bool, minus: bool, sa=1.0, sb=1.0) -> None:
    """a <- (k1 a -/+ k2 b) sa and (``both``) b <- (k3 a -/+ k4 b) sb, elementwise with the old
    a and b (``sa``, ``sb``: real scale factors in the data's precision; 1 leaves the products
    as they are).

    Why compiled: in numpy these are six full-plane operations and two new complex planes per
    pair; one pass in place reads each spectrum once and allocates nothing (fresh pages cost
    as much as the arithmetic on this kind of machine).  Blocks of rows run on two threads.
    """
    rt = a.real.dtype.type
    sa, sb = rt(sa), rt(sb)
    map_row_blocks(lambda sl: _products_rows(a[sl], b[sl], k1[sl], k2[sl], k3[sl], k4[sl], both, minus, sa, sb), a.shape[0])


def _wide_buffer(a: np.ndarray) -> np.ndarray:
    """The :func:`~toolkit.psf_matching._conv_buffer` array whose left part ``a`` is (what
    :func:`_padded_image` and :func:`_padded_variance` make), or such a copy of ``a``: each row then holds its own half
    spectrum, so the transforms can run in place."""
    ny, nx = a.shape
    w = 2 * (nx // 2 + 1)
    b = a.base
    if isinstance(b, np.ndarray) and b.shape == (ny, w) and b.dtype == a.dtype and b.flags.c_contiguous and a.strides == b.strides and a.ctypes.data == b.ctypes.data:
        return b
    out = _conv_buffer((ny, nx), a.dtype)
    out[:, :nx] = a
    return out


def _fourier_fused(wides: list[np.ndarray], shape: tuple[int, int], ker: _CellKernels, sq: tuple, calc_score: bool, scales: dict[int, Any] | None = None, rows: slice | None = None, finish: Callable[[slice], Any] | None = None) -> None:
    """D, S, V_D and V_S of one cell, in place in the four wide padded planes (N1, N2, V1, V2).

    The same transforms and products as the unfused path, arranged so that no cell-size plane
    is allocated: rows are transformed in place (each row's half spectrum fits its own row,
    :func:`_rows_in_place`), and then, per band of columns, the data's column transforms, the
    PSF spectra (float64) and the squared kernels' spectra are made, the kernels are formed and
    applied (:func:`_fused_band`) and the inverse column transforms taken, while the band is in
    cache; then the rows go back.  ``sq`` is :meth:`_CellKernels.fused_squares`: the squares
    that fit a box come band by band from their cross terms' spectra or their rows' column
    transforms, the long-tailed ones (LSST's full-cell squares, which truncated PSF stamps
    need) from their stored spectra.
    Why by hand: at 2048^2 the kernel spectra, their squares and the data spectra were twelve
    fresh 18-37 MB planes, whose page faults and memory traffic cost as much as the transforms.
    """
    ny, nx = shape
    nxh = nx // 2 + 1
    dt = wides[0].dtype
    cdt = np.complex64 if dt == np.float32 else np.complex128
    C = [w.view(cdt) for w in wides]
    outputs = (0, 1, 2, 3) if calc_score else (0, 2)
    scales = scales or {}
    sd, svd = dt.type(scales.get(0, 1.0)), dt.type(scales.get(2, 1.0))
    for w in wides:
        _rows_in_place(w, nx, False)
    boxed, rows_t, full, planes, low = sq
    n_sq = len(boxed) + len(full)
    by_rows = [i for i in boxed if i not in low]
    # the squares made from their rows transform straight into Q when they are all of them
    direct = by_rows == list(range(n_sq))

    def run(group: Iterable[slice]) -> None:
        # the stamps' bands: zero but for the stamps' rows, which each band overwrites; their
        # column transforms go to P and Q
        P_in = ker.psf.scratch(_BAND)
        P = np.empty((2, ny, _BAND), np.complex128)
        Q = np.empty((n_sq, ny, _BAND), cdt)
        if by_rows:
            qx, qrow = rows_t
            Q_in = np.zeros((len(by_rows), ny, _BAND), cdt)
            Q_box = Q if direct else np.empty((len(by_rows), ny, _BAND), cdt)
        for cols in group:
            w = cols.stop - cols.start
            ker.psf.band(cols, P, P_in)
            for i, f in low.items():
                _square_band(f, cols, Q[i, :, :w])
            if by_rows:
                q_in = Q_in[:, :, :w]
                q_in[:, qrow[0]] = qx[:, : len(qrow[0]), cols]
                _fft_cols_into(q_in, Q_box[:, :, :w])
                if not direct:
                    Q[by_rows, :, :w] = Q_box[:, :, :w]
            if full:
                Q[full, :, :w] = planes[:, :, cols]
            band = [c[:, cols] for c in C]
            for x in band:
                _fft_cols(x)
            _fused_band(P.view(np.float64), Q.view(dt), *wides, cols.start, w, *ker.args[:4], calc_score, sd, svd)
            for b in outputs:
                _fft_cols(band[b], inverse=True)

    with one_blas_thread() if low else contextlib.nullcontext():
        map_bands(run, nxh, _BAND)
    _rows_back(wides, outputs, nx, rows if rows is not None else slice(0, ny), finish)


def _rows_back(wides: list[np.ndarray], outputs: tuple, nx: int, rows: slice, finish: Callable[[slice], Any] | None) -> None:
    """The inverse row transforms of the ``outputs`` planes on the cell ``rows`` that are read
    (a cell's inner box), and ``finish`` (see :func:`_fourier_cell`) on blocks of them.

    With ``finish``, S and V_S go back block by block on two threads, each block followed by
    ``finish`` while it is in cache: the Scorr pass that came after read both planes from
    memory again (~34 MB at 2k^2; ~4 ms saved).  (Blocks of 1/8 of the rows ran better than
    1/16 or 1/32, though two of them hold more than this kind of machine's L2.)"""
    n = rows.stop - rows.start
    later = (1, 3) if finish is not None else ()
    for b in outputs:
        if b not in later:
            _rows_in_place(wides[b][rows], nx, True)
    if finish is None:
        return

    def block(sl: slice) -> None:
        cell = slice(rows.start + sl.start, rows.start + sl.stop)
        for b in later:
            _rows_in_place(wides[b][cell], nx, True, threads=1)
        finish(sl, wides[1][cell, :nx], wides[3][cell, :nx])

    map_row_blocks(block, n)


def _fourier_cell(N1, N2, V1, V2, ker: _CellKernels, calc_score: bool, astrometric: bool, sig_ast, scale_d: bool = False, rows: slice | None = None, finish: Callable[[slice], Any] | None = None) -> dict[str, np.ndarray]:
    """D, V_D (and S, V_S) on one padded cell from the kernel spectra: the data need 4 forward
    and 4 inverse real transforms; a variance plane that is constant over the cell (padding
    only, or a flat sky) needs none, because k^2 (*) c = c * sum(k^2) exactly.

    The padded cells ``N1``, ``N2`` (and varying ``V1``, ``V2``) are overwritten: D, S, V_D and
    V_S are written into them once their transforms are taken.  The usual case (both variance
    planes vary, a coarse-grid cell, no astrometric term) runs fused and in
    place (:func:`_fourier_fused`); the rest as written below, with the same arithmetic.
    ``scale_d``: D and V_D come out divided by F_D and F_D^2 (multiplied by their reciprocals
    in the work precision).  ``rows``: the cell rows that will be read (the others may be left
    untransformed by the fused pass; all by default).  ``finish(sl, S, V_S)``, with
    ``calc_score``: called on blocks ``sl`` of ``rows`` (counted from ``rows.start``) that
    together cover them once, with those rows of S and V_S, once they are final there (the
    fused pass calls it while a block is in cache)."""
    out, finished = _fourier_planes(N1, N2, V1, V2, ker, calc_score, astrometric, sig_ast, scale_d, rows, finish)
    if finish is not None and calc_score and not finished:
        r = rows if rows is not None else slice(0, N1.shape[0])
        S, VS = out["S"][r], out["VS"][r]
        map_row_blocks(lambda sl: finish(sl, S[sl], VS[sl]), r.stop - r.start)
    return out


def _fourier_planes(N1, N2, V1, V2, ker: _CellKernels, calc_score: bool, astrometric: bool, sig_ast, scale_d: bool, rows: slice | None, finish: Callable[[slice], Any] | None) -> tuple[dict[str, np.ndarray], bool]:
    """:func:`_fourier_cell`'s outputs, and whether ``finish`` was called (by the fused pass)."""
    shape = N1.shape
    dtype = N1.dtype
    scales = {}
    if scale_d:
        scales = {0: dtype.type(1.0 / ker.F_D), 2: dtype.type(1.0 / ker.F_D**2)}
    const, varying = [], []
    for j, V in enumerate((V1, V2)):
        if _is_constant(V):
            const.append((j, V, float(V[0, 0])))
        else:
            varying.append((j, V, 0.0))
    if not astrometric and len(varying) == 2 and ker.coarse > 1:
        sq = ker.fused_squares()
        if sq is not None:
            wides = [_wide_buffer(a) for a in (N1, N2, V1, V2)]
            _fourier_fused(wides, shape, ker, sq, calc_score, scales, rows, finish if calc_score else None)
            nx = shape[1]
            out = {"D": wides[0][:, :nx], "VD": wides[2][:, :nx]}
            if calc_score:
                out["S"], out["VS"] = wides[1][:, :nx], wides[3][:, :nx]
            return out, calc_score and finish is not None
    K = ker.spectra
    n1 = sfft.rfft2(N1, workers=fft_workers(N1.size))
    n2 = sfft.rfft2(N2, workers=fft_workers(N2.size))
    out: dict[str, np.ndarray] = {}
    if calc_score and astrometric:
        buf = K[0] * n1
        tmp = K[1] * n2
        # paper eq. 30-33: V_ast = sx^2 (dS_N/dx)^2 + sy^2 (dS_N/dy)^2, the same for S_R
        out["D"] = _irfft2(buf - tmp, shape, overwrite=True)
        sn = _irfft2(np.multiply(K[2], n1, out=buf), shape, overwrite=True)
        sr = _irfft2(np.multiply(K[3], n2, out=tmp), shape, overwrite=True)
        out["S"] = sn - sr
        va = np.zeros(shape, dtype)
        for img in (sn, sr):
            gy, gx = np.gradient(img)
            va += sig_ast[0] ** 2 * gx**2 + sig_ast[1] ** 2 * gy**2
        out["VA"] = va
        del buf, tmp
    else:
        # D^ = c1 n1 - c2 n2 and S^ = s1 n1 - s2 n2, written over n1 and n2 in one pass
        _products_in_place(n1, n2, K[0], K[1], K[2] if calc_score else K[0], K[3] if calc_score else K[1], calc_score, True, scales.pop(0, 1.0))
        # the outputs overwrite the padded cells, which are not read again
        out["D"] = _irfft2_into(n1, N1)
        if calc_score:
            out["S"] = _irfft2_into(n2, N2)
    del n1, n2
    # variance planes: V = k1^2 (*) V1 + k2^2 (*) V2 for each output (LSST pixelSpaceSquare)
    vhs = [sfft.rfft2(V, workers=fft_workers(V.size)) for _, V, _ in varying]
    sq = ker.squares() if varying else None
    if len(varying) == 2:
        # the usual case: V_D^ = q1 v1 + q2 v2 and V_S^ = q3 v1 + q4 v2 over v1 and v2
        _products_in_place(vhs[0], vhs[1], sq[0], sq[1], sq[2] if calc_score else sq[0], sq[3] if calc_score else sq[1], calc_score, False, scales.pop(2, 1.0))
        out["VD"] = _irfft2_into(vhs[0], V1)
        if calc_score:
            out["VS"] = _irfft2_into(vhs[1], V2)
        return _scaled(out, scales), False
    for key, base in (("VD", 0),) + ((("VS", 2),) if calc_score else ()):
        offset = sum(val * ker.sum_squares(base + j) for j, _, val in const)
        if varying:
            acc = sq[base + varying[0][0]] * vhs[0]
            for i in range(1, len(varying)):
                acc += sq[base + varying[i][0]] * vhs[i]
            res = _irfft2(acc, shape, overwrite=True)
            if offset:
                res += dtype.type(offset)
        else:
            res = np.full(shape, offset, dtype)
        out[key] = res
    return _scaled(out, scales), False


def _scaled(out: dict[str, np.ndarray], scales: dict[int, Any]) -> dict[str, np.ndarray]:
    for i, s in scales.items():
        out[("D", "S", "VD", "VS")[i]] *= s
    return out


def _source_noise_term(n_img, r_img, n_var, r_var, sci, ref, cells, f_n, f_r, calibs, shape_full, x0y0):
    """Paper's source-noise term: the images' Poisson variance propagated through the score
    kernels of each cell, for variance planes that hold the background only.

    An image calibrated by c (nJy per count, ``scaleByCalibration``) from counts with GAIN g
    (electrons per count; metadata ``GAIN``, default 1) has Poisson variance c * image / g in
    its calibrated units.  Variance planes that already grow with the sources (LSST's do: they
    carry the Poisson term) would count it twice, which deflates Scorr at bright sources; a
    warning says so when the planes' excess over their background matches the Poisson term.
    """
    terms = []
    for name, img, var, e, c in (("science", n_img, n_var, sci, calibs[0]), ("template", r_img, r_var, ref, calibs[1])):
        gain = float(e.metadata.get("GAIN", 1.0))
        poisson = np.maximum(img, 0) * (c / gain)
        bkg = float(np.nanmedian(var))
        bright = np.isfinite(var) & (img > 20 * np.sqrt(bkg)) if bkg > 0 else np.zeros(img.shape, bool)
        if bright.sum() >= 20:
            ratio = float(np.median((var[bright] - bkg) / poisson[bright]))
            if ratio > 0.5:
                warn(f"doSourceNoise: the {name} variance plane already grows with the sources (its excess over the background is {ratio:.2f} x the Poisson term at bright pixels), so its source noise is counted twice and Scorr is deflated there; doSourceNoise is meant for variance planes that hold the background only", RuntimeWarning)
        terms.append(poisson)
    vn, vr = terms
    out = np.zeros(shape_full)
    from .psf_matching import fft_convolve

    for c in cells:
        inner = c["inner"].shifted(-x0y0[0], -x0y0[1])
        pos = (c["inner"].center[0], c["inner"].center[1])
        k1 = sci.psf.compute_kernel_image(pos)
        k2 = ref.psf.compute_kernel_image(pos)
        shape = (max(k1.shape[0], k2.shape[0]) * 2 + 1,) * 2
        P1 = np.fft.fft2(pad_center_origin(k1, shape))
        P2 = np.fft.fft2(pad_center_origin(k2, shape))
        a1, a2 = c["var_science"] * f_r**2, c["var_template"] * f_n**2
        sd = np.maximum(a1 * np.abs(P2) ** 2 + a2 * np.abs(P1) ** 2, _TINY)
        s1 = np.fft.ifft2(f_n * f_r**2 * P1.conj() * np.abs(P2) ** 2 / sd).real
        s2 = np.fft.ifft2(f_r * f_n**2 * P2.conj() * np.abs(P1) ** 2 / sd).real
        s1, s2 = np.fft.fftshift(s1), np.fft.fftshift(s2)
        term = fft_convolve(vn, s1 * s1) + fft_convolve(vr, s2 * s2)
        out[inner.slices()] = term[inner.slices()]
    return out


class _GridPsf(Psf):
    """Per-cell PSFs (P_D or P_S) of a grid-mode subtraction, looked up by position."""

    def __init__(self, cells, key):
        self.cells = cells
        self.key = key
        self.size = cells[0][key].shape[0]

    def _kernel(self, n, position):
        c = self.cells[0]
        if position is not None:
            for cell in self.cells:
                b = cell["inner"]
                if b.x0 <= position[0] < b.x1 and b.y0 <= position[1] < b.y1:
                    c = cell
                    break
        from .psf import _resize_centered

        return _resize_centered(c[self.key], n)

    def to_dict(self):
        return {"type": "ImagePsf", "array": self.compute_kernel_image()}


def _parabolic_peaks(S: np.ndarray, px: np.ndarray, py: np.ndarray, sign: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sub-pixel offsets and values of the extrema of ``S`` near the pixels (px, py): a parabola
    through each pixel and its two neighbours along each axis (offsets within +-0.5 px; none at
    the image edge or where the pixel is not an extremum along that axis).  In float64, one
    array operation per step for all peaks (a real pair can list a thousand)."""
    ny, nx = S.shape
    b = S[py, px].astype(np.float64)
    value = b.copy()
    offsets = []
    for dy, dx in ((0, 1), (1, 0)):
        pos, n = (px, nx) if dx else (py, ny)
        inside = (pos > 0) & (pos < n - 1)
        # neighbours clamped into the image; unused where not inside
        a = S[np.clip(py - dy, 0, ny - 1), np.clip(px - dx, 0, nx - 1)].astype(np.float64)
        c = S[np.clip(py + dy, 0, ny - 1), np.clip(px + dx, 0, nx - 1)].astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            den = a - 2.0 * b + c
            ok = inside & (sign * den < 0) & np.isfinite(a + c)
            d = np.where(ok, np.clip(0.5 * (a - c) / np.where(ok, den, 1.0), -0.5, 0.5), 0.0)
            value = np.where(ok, value + -0.25 * (a - c) * d, value)
        offsets.append(d)
    return offsets[0], offsets[1], value


@nb.njit(cache=True, nogil=True)
def _find_root(parent, i):  # pragma: no cover - compiled
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@nb.njit(cache=True, nogil=True)
def _prominent_peaks(flat, vals, nx, ny, prominence):  # pragma: no cover - compiled
    """Indices (into ``flat``) of the peaks of ``vals`` over the pixels ``flat`` (sorted flat
    indices of 8-connected footprints) that rise at least ``prominence`` above the highest saddle
    joining them to a higher peak, plus each footprint's highest pixel.

    A union-find sweep from the highest pixel down (the persistence of each local maximum):
    when two regions meet at a pixel, the one with the lower peak ends there, and its peak is
    kept if it stands ``prominence`` above that pixel.  Hand-written: scikit-image's
    ``peak_prominences`` is 1-D only and photutils' ``deblend_sources`` splits by flux contrast
    on multi-thresholded segments, not by a height in noise units.
    """
    m = flat.size
    order = np.argsort(-vals)
    parent = np.full(m, -1, np.int64)
    peak = np.arange(m)
    kept = np.zeros(m, np.bool_)
    for i in order:
        parent[i] = i
        f = flat[i]
        y, x = f // nx, f % nx
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy == 0 and dx == 0:
                    continue
                yy, xx = y + dy, x + dx
                if yy < 0 or yy >= ny or xx < 0 or xx >= nx:
                    continue
                j = np.searchsorted(flat, yy * nx + xx)
                if j >= m or flat[j] != yy * nx + xx or parent[j] < 0:
                    continue  # not above threshold, or not reached yet
                ri, rj = _find_root(parent, i), _find_root(parent, j)
                if ri == rj:
                    continue
                hi, lo = (ri, rj) if vals[peak[ri]] >= vals[peak[rj]] else (rj, ri)
                if vals[peak[lo]] - vals[i] >= prominence:
                    kept[peak[lo]] = True
                parent[lo] = hi
    for i in range(m):
        if _find_root(parent, i) == i:
            kept[peak[i]] = True  # each footprint's highest pixel
    return np.nonzero(kept)[0]


def transient_catalog(result: ZogyResult, threshold: float = 5.0, min_pixels: int = 1, min_prominence: float | None = 2.0) -> Table:
    """Catalog of |Scorr| >= ``threshold`` detections (both signs) as an astropy Table.

    A footprint is an 8-connected group of pixels with sign * Scorr >= ``threshold`` and at least
    ``min_pixels`` of them.  Each gives one entry per peak: its highest pixel, and every other
    local maximum that rises ``min_prominence`` (Scorr units) above the highest saddle joining it
    to a higher peak, so that transients closer than their footprints (Scorr's PSF is about
    sqrt(2) times the images') are listed apart: two of Scorr ~10 from ~1.8 FWHM of the science
    PSF (7-8 px for a 4-px FWHM; 5-6 px stays one entry).  ``None`` gives one entry
    per footprint (what an LSST DiaSource catalog without deblending has).

    Columns: x, y (parent pixels: the peak pixel refined to sub-pixel precision by a
    parabola through S and its neighbours along each axis), ra, dec (with a WCS), scorr (value
    at the peak pixel), flux and flux_err (PSF photometry from the score, the paper's optimal
    estimator: S / F_S at the refined peak, and sqrt(V_S) / F_S; for a peak in a blend the
    neighbours' light adds to it), sign, npix (the footprint's pixels), footprint (its number;
    the entries of one blended footprint share it), and mask: the difference's mask bits at the
    peak pixel (the OR of both images' masks), so entries on bad, saturated or cosmic-ray pixels
    can be told apart (``diff.mask_planes.bitmask``).

    S is the image matched-filtered by the transient's PSF, so its maximum is F_S times the
    flux only at the transient's true position; read at the nearest pixel it is low by up to
    ~3 % for a source between pixels (a few-pixel PSF), which the parabolic peak removes.
    """
    return _transient_catalog(result, threshold, min_pixels, min_prominence, None)


def _transient_catalog(result: ZogyResult, threshold: float, min_pixels: int, min_prominence: float | None, seed_rows: np.ndarray | None) -> Table:
    """:func:`transient_catalog`; ``seed_rows``: the rows that hold every |Scorr| >=
    ``threshold`` pixel, where ZOGY counted them as it made Scorr (None: every row is read)."""
    from astropy.table import Table

    sc = result.scorr
    if sc is None:
        raise InputError("the result has no Scorr (calculate_score=False)")
    if not (isinstance(threshold, (int, float, np.integer, np.floating)) and np.isfinite(threshold) and threshold > 0):
        raise InputError(f"transient_catalog threshold must be a finite number > 0 (|Scorr| units), got {threshold!r}")
    if not (isinstance(min_pixels, (int, np.integer)) and min_pixels >= 1):
        raise InputError(f"transient_catalog min_pixels must be an integer >= 1, got {min_pixels!r}")
    if min_prominence is not None and not (isinstance(min_prominence, (int, float, np.integer, np.floating)) and np.isfinite(min_prominence) and min_prominence > 0):
        raise InputError(f"transient_catalog min_prominence must be a finite number > 0 (|Scorr| units) or None, got {min_prominence!r}")
    S = result.score.image
    VS = result.score.variance
    bits = result.diff.mask
    nx = sc.shape[1]
    dtypes = dict(x=float, y=float, scorr=float, flux=float, flux_err=float, sign=int, npix=int, footprint=int, mask=np.int32)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in dtypes}
    n_before = 0
    # 8-connected groups of sign * Scorr >= threshold, as pixel indices and labels (no label
    # image); peaks from those pixels only: ndimage.maximum_position argsorts the whole image
    # (~1 s at 2k^2) when only a few hundred pixels are above threshold.  The two signs' passes
    # over Scorr (compiled, without the GIL) run side by side
    found = map_pair(lambda polarity: footprint_pixels(sc, None, threshold, polarity, rows=seed_rows), "positive", "negative", threaded=(sc.shape[0] if seed_rows is None else len(seed_rows)) >= MIN_THREADED_ROWS)
    for sign, (flat, labels, n) in zip((1, -1), found):
        if n == 0:
            continue
        vals = sign * sc.ravel()[flat]
        npix = np.bincount(labels, minlength=n + 1)
        if min_prominence is None:
            order = np.lexsort((-vals, labels))
            peaks = order[np.r_[True, labels[order][1:] != labels[order][:-1]]]
        else:
            by_pixel = np.argsort(flat)
            peaks = by_pixel[_prominent_peaks(flat[by_pixel], vals[by_pixel].astype(np.float64), sc.shape[1], sc.shape[0], float(min_prominence))]
        peaks = peaks[npix[labels[peaks]] >= min_pixels]
        py, px = np.divmod(flat[peaks].astype(np.int64), nx)
        fs = np.asarray(result.F_S[py, px], np.float64)
        dx, dy, peak = _parabolic_peaks(S, px, py, sign)
        cols["x"].append(px + dx + result.diff.xy0[0])
        cols["y"].append(py + dy + result.diff.xy0[1])
        cols["scorr"].append(sc[py, px].astype(np.float64))
        cols["flux"].append(peak / fs)
        cols["flux_err"].append(np.sqrt(VS[py, px]).astype(np.float64) / fs)
        cols["sign"].append(np.full(len(peaks), sign, np.int64))
        cols["npix"].append(npix[labels[peaks]].astype(np.int64))
        cols["footprint"].append(n_before + labels[peaks].astype(np.int64) - 1)
        cols["mask"].append(bits[py, px].astype(np.int32))
        n_before += n
    t = Table({k: (np.concatenate(v) if v else np.zeros(0)).astype(dtypes[k]) for k, v in cols.items()})
    wcs = result.diff.wcs
    if wcs is not None and len(t):
        ra, dec = wcs.pixel_to_world_values(np.asarray(t["x"], float), np.asarray(t["y"], float))
        t["ra"], t["dec"] = ra, dec
    t.sort("scorr", reverse=True)
    return t
