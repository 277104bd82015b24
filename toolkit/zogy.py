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

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from .config import ZogyConfig
from .errors import InputError
from .exposure import Exposure
from .geom import Box
from .psf import ImagePsf, Psf
from .psf_matching import _embed_origin
from .stats import meanclip_scalar

__all__ = [
    "zogy", "ZogyResult", "generate_grid", "split_border", "estimate_matching_kernel_size",
    "pad_center_origin", "pixel_space_square", "transient_catalog",
]

_TINY = 100 * np.finfo(np.complex128).tiny


# ---------------------------------------------------------------------- geometry helpers
def generate_grid(image_box: Box, min_edge: tuple[int, int], inner_dims: tuple[int, int], min_total_dims: tuple[int, int] | None = None, power_of_two: bool = False) -> list[tuple[Box, Box]]:
    """LSST ``generateGrid``: ``(inner, outer)`` cells; inner boxes tile the image exactly once.

    Outer sizes are inner + 2 * min_edge (at least ``min_total_dims``), optionally raised to a
    power of two in 16..8192, and always even.
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
    k = sfft.irfft2(x_hat, s=shape, workers=-1)
    return sfft.rfft2(k * k, workers=-1)


def estimate_matching_kernel_size(psf1: Psf, psf2: Psf, position=None) -> int:
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


# ---------------------------------------------------------------------- preparation
def _check_inputs(sci: Exposure, ref: Exposure) -> None:
    for name, e in (("science", sci), ("template", ref)):
        if not isinstance(e, Exposure):
            raise InputError(f"{name} must be an Exposure, got {type(e).__name__}")
        if e.psf is None:
            raise InputError(f"{name} has no PSF")
        if not np.any(np.isfinite(e.image)):
            raise InputError(f"{name} image is entirely NaN/inf")
        fin = np.isfinite(e.variance)
        if not fin.any():
            raise InputError(f"{name} variance plane has no finite value")
        if np.any(e.variance[fin] <= 0):
            raise InputError(f"{name} variance plane has zero or negative values ({int((e.variance[fin] <= 0).sum())} pixels); variance must be > 0")
        k = e.psf.compute_kernel_image(e.bbox.center)
        if not np.all(np.isfinite(k)):
            raise InputError(f"{name} PSF kernel contains NaN")
    if sci.shape != ref.shape:
        raise InputError(f"science shape {sci.shape} differs from template shape {ref.shape}")
    if sci.xy0 != ref.xy0:
        raise InputError(f"science xy0 {sci.xy0} differs from template xy0 {ref.xy0}: register them first")


def _psf_centroid(k: np.ndarray) -> np.ndarray:
    ny, nx = k.shape
    y, x = np.mgrid[:ny, :nx]
    s = k.sum()
    w = np.abs(k) if s == 0 else k
    s = w.sum()
    return np.array([(w * x).sum() / s - (nx - 1) / 2, (w * y).sum() / s - (ny - 1) / 2])


def check_centroids(k1: np.ndarray, k2: np.ndarray, max_dist: float) -> None:
    d = _psf_centroid(k1) - _psf_centroid(k2)
    if float(d @ d) > max_dist**2:
        raise InputError(f"PSF centroids differ by {np.hypot(*d):.3f} px > maxPsfCentroidDist={max_dist} (off-centre PSF?)")


def _fit_flux_ratio(n_img, r_img, pn, pr, var_n, var_r) -> float:
    """F_n/F_r from cross-convolved images (N (*) P_r vs R (*) P_n share one PSF): a weighted
    least-squares slope over high-S/N pixels (ZOGY §3.5 suggests fitting it this way)."""
    from .psf_matching import fft_convolve

    a = fft_convolve(np.nan_to_num(n_img), pr)
    b = fft_convolve(np.nan_to_num(r_img), pn)
    noise = np.sqrt(var_n * (pr**2).sum() + var_r * (pn**2).sum())
    sel = (b > 20 * noise) & (a > 0)
    if sel.sum() < 10:
        raise InputError("too few bright pixels to fit the flux ratio (doFitFluxRatio)")
    ratio = a[sel] / b[sel]
    return float(np.median(ratio))


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
    """
    t0 = time.perf_counter()
    cfg = ZogyConfig() if config is None else config
    cfg.validate()
    _check_inputs(science, template)
    timings: dict[str, float] = {}
    sci, ref = science, template
    bad = sci.mask_planes.bitmask(cfg.ignoreMaskPlanes, strict=False)
    bad_r = ref.mask_planes.bitmask(cfg.ignoreMaskPlanes, strict=False)
    dtype = sci.dtype
    if cfg.scaleByCalibration:
        n_img = sci.image.astype(np.float64) * sci.photo_calib
        n_var = sci.variance.astype(np.float64) * sci.photo_calib**2
        r_img = ref.image.astype(np.float64) * ref.photo_calib
        r_var = ref.variance.astype(np.float64) * ref.photo_calib**2
        f_n = f_r = 1.0
    else:
        n_img, n_var = sci.image.astype(np.float64), sci.variance.astype(np.float64)
        r_img, r_var = ref.image.astype(np.float64), ref.variance.astype(np.float64)
        f_n, f_r = cfg.scienceFluxScaling, cfg.templateFluxScaling
    mask_n = (sci.mask & np.int32(bad)) == 0
    mask_r = (ref.mask & np.int32(bad_r)) == 0

    def mclip(a, good):
        sel = good & np.isfinite(a)
        return meanclip_scalar(a[sel], 3.0, 3) if sel.any() else float("nan")

    full_var_n = mclip(n_var, mask_n)
    full_var_r = mclip(r_var, mask_r)
    if cfg.correctBackground:
        for name, arr, good in (("science", n_img, mask_n), ("template", r_img, mask_r)):
            m = mclip(arr, good)
            if not np.isfinite(m):
                raise InputError(f"correctBackground: the clipped mean of the {name} image is NaN")
            arr -= m
    center = sci.bbox.center
    border = estimate_matching_kernel_size(sci.psf, ref.psf, center)
    # non-finite pixels: remember them and replace by the array mean (LSST removeNonFinitePixels)
    nonfinite = np.zeros(sci.shape, bool)
    for arr in (n_img, n_var, r_img, r_var):
        bad_px = ~np.isfinite(arr)
        if bad_px.any():
            nonfinite |= bad_px
            arr[bad_px] = np.nan
            arr[bad_px] = np.nanmean(arr)
    if cfg.doFitFluxRatio:
        pn0 = sci.psf.compute_kernel_image(center)
        pr0 = ref.psf.compute_kernel_image(center)
        f_n = _fit_flux_ratio(n_img, r_img, pn0, pr0, full_var_n, full_var_r)
        f_r = 1.0
    ny, nx = sci.shape
    local = Box(0, 0, nx, ny)
    if cfg.doSpatialGrid:
        inner = max(1, int(border * cfg.gridInnerSize))
        cells = generate_grid(local, (border, border), (inner, inner), power_of_two=True)
    else:
        cells = generate_grid(local, (border, border), (nx, ny), power_of_two=True)
    timings["prepare"] = time.perf_counter() - t0
    D = np.zeros((ny, nx))
    VD = np.zeros((ny, nx))
    S = np.zeros((ny, nx)) if calculate_score else None
    VS = np.zeros((ny, nx)) if calculate_score else None
    FS = np.zeros((ny, nx))
    VA = np.zeros((ny, nx)) if calculate_score and cfg.doAstrometricNoise else None
    cell_info = []
    x0, y0 = sci.xy0
    psf_shape1 = sci.psf.compute_kernel_image(center).shape
    for ci, (inner, outer) in enumerate(cells):
        pos = (inner.center[0] + x0, inner.center[1] + y0)
        k1 = sci.psf.compute_kernel_image(pos)
        k2 = ref.psf.compute_kernel_image(pos)
        check_centroids(k1, k2, cfg.maxPsfCentroidDist)
        isl = inner.slices()
        v1 = mclip(n_var[isl], mask_n[isl])
        v2 = mclip(r_var[isl], mask_r[isl])
        v1 = v1 if v1 > 0 else full_var_n
        v2 = v2 if v2 > 0 else full_var_r
        shape = outer.shape
        ov = outer.intersection(local)
        src = ov.slices()
        dst = ov.slices((outer.x0, outer.y0))

        def padded(img, var, mean_var, which):
            rng = np.random.default_rng([cfg.paddingSeed, ci, which])
            a = rng.standard_normal(shape) * np.sqrt(mean_var)
            b = np.full(shape, mean_var)
            a[dst] = img[src]
            b[dst] = var[src]
            return a, b

        N1, V1 = padded(n_img, n_var, v1, 0)
        N2, V2 = padded(r_img, r_var, v2, 1)
        out = _fourier_zogy(N1, N2, V1, V2, k1, k2, f_n, f_r, v1, v2, calculate_score, VA is not None, (cfg.astrometricSigmaX, cfg.astrometricSigmaY))
        cin = inner.slices((outer.x0, outer.y0))
        D[isl] = out["D"][cin]
        VD[isl] = out["VD"][cin]
        FS[isl] = out["F_S"]
        if calculate_score:
            S[isl] = out["S"][cin]
            VS[isl] = out["VS"][cin]
            if VA is not None:
                VA[isl] = out["VA"][cin]
        pd = _crop_normalize(out["Pd"], psf_shape1)
        ps = _crop_normalize(out["Ps"], psf_shape1) if calculate_score else None
        cell_info.append(dict(inner=inner.shifted(x0, y0), outer=outer.shifted(x0, y0), P_D=pd, P_S=ps, F_D=out["F_D"], F_S=out["F_S"], var_science=v1, var_template=v2, P_D_sum=out["Pd_sum"]))
        if progress:
            progress("zogy cells", (ci + 1) / len(cells))
    timings["fourier"] = time.perf_counter() - t0 - timings["prepare"]
    fd = cell_info[0]["F_D"]
    fd_map = np.zeros((ny, nx))
    for c in cell_info:
        fd_map[c["inner"].shifted(-x0, -y0).slices()] = c["F_D"]
    D /= fd_map
    VD /= fd_map**2
    mask = sci.mask.copy()
    from .masks import remap_mask

    planes = sci.mask_planes.copy()
    mask |= remap_mask(template.mask, template.mask_planes, planes)
    pd_psf = ImagePsf(cell_info[0]["P_D"]) if len(cell_info) == 1 else _GridPsf(cell_info, "P_D")
    diff = Exposure(D.astype(dtype), VD.astype(dtype), mask, planes, psf=pd_psf, photo_calib=1.0, wcs=sci.wcs, xy0=sci.xy0, metadata={"BUNIT": "nJy" if cfg.scaleByCalibration else sci.metadata.get("BUNIT", "")}, copy=False)
    score = scorr = None
    if calculate_score:
        tiny = 100 * np.finfo(np.float64).tiny
        cleanup = nonfinite | ~(VS >= tiny)
        S[cleanup] = 0.0
        VS[cleanup] = 1.0
        denom = VS.copy()
        if VA is not None:
            VA[cleanup] = 0.0
            denom += VA
        if cfg.doSourceNoise:
            denom += _source_noise_term(n_img, r_img, sci, ref, cell_info, f_n, f_r, shape_full=(ny, nx), x0y0=(x0, y0))
            denom[cleanup] = 1.0
        scorr = S / np.sqrt(denom)
        ps_psf = ImagePsf(cell_info[0]["P_S"]) if len(cell_info) == 1 else _GridPsf(cell_info, "P_S")
        score = Exposure(S.astype(dtype), VS.astype(dtype), mask.copy(), planes, psf=ps_psf, photo_calib=1.0, wcs=sci.wcs, xy0=sci.xy0, copy=False)
    timings["total"] = time.perf_counter() - t0
    res = ZogyResult(diff, score, scorr, float(fd), FS, cell_info, timings=timings)
    if calculate_score:
        res.catalog = transient_catalog(res, cfg.transientThreshold, cfg.transientMinPixels)
    return res


def _crop_normalize(full: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    centred = pad_center_origin(full, shape, inverse=True)
    s = centred.sum()
    return centred / s if s != 0 else centred


def _fourier_zogy(N1, N2, V1, V2, k1, k2, F1, F2, var1, var2, calc_score, astrometric, sig_ast):
    """calculateFourierDiffim on one padded cell (all real transforms)."""
    shape = N1.shape
    P1 = sfft.rfft2(pad_center_origin(k1, shape), workers=-1)
    P2 = sfft.rfft2(pad_center_origin(k2, shape), workers=-1)
    n1 = sfft.rfft2(N1, workers=-1)
    n2 = sfft.rfft2(N2, workers=-1)
    a1 = var1 * F2**2
    a2 = var2 * F1**2
    fd_denom = np.sqrt(a1 + a2)
    P1sq = (P1 * P1.conj()).real
    P2sq = (P2 * P2.conj()).real
    s_denom = a1 * P2sq + a2 * P1sq
    zero = s_denom < _TINY
    s_denom[zero] = _TINY
    den = np.sqrt(s_denom)
    c1 = F2 * P2 / den
    c2 = F1 * P1 / den
    c1[zero] = F2 / fd_denom
    c2[zero] = F1 / fd_denom
    Dh = c1 * n1 - c2 * n2
    v1h = sfft.rfft2(V1, workers=-1)
    v2h = sfft.rfft2(V2, workers=-1)
    VDh = pixel_space_square(c1, shape) * v1h + pixel_space_square(c2, shape) * v2h
    Pd = fd_denom * P1 * P2 / den
    Pd[zero] = 0
    F_D = F1 * F2 / fd_denom
    out = {"D": sfft.irfft2(Dh, s=shape, workers=-1), "VD": sfft.irfft2(VDh, s=shape, workers=-1), "F_D": F_D}
    pd_full = sfft.irfft2(Pd, s=shape, workers=-1)
    out["Pd"] = pd_full
    out["Pd_sum"] = float(pd_full.sum())
    # F_S (paper eq. 42, numpy normalisation): sum over the full 2-D spectrum of the rfft half
    num = F1**2 * F2**2 * P1sq * P2sq / s_denom
    num[zero] = 0
    wts = np.full(num.shape[1], 2.0)
    wts[0] = 1.0
    if shape[1] % 2 == 0:
        wts[-1] = 1.0
    out["F_S"] = float((num * wts).sum() / (shape[0] * shape[1]))
    if calc_score:
        s1 = F1 * F2**2 * P1.conj() * P2sq / s_denom
        s2 = F2 * F1**2 * P2.conj() * P1sq / s_denom
        s1[zero] = 0
        s2[zero] = 0
        out["S"] = sfft.irfft2(s1 * n1 - s2 * n2, s=shape, workers=-1)
        out["VS"] = sfft.irfft2(pixel_space_square(s1, shape) * v1h + pixel_space_square(s2, shape) * v2h, s=shape, workers=-1)
        out["Ps"] = sfft.irfft2((Pd.conj() * Pd), s=shape, workers=-1)
        if astrometric:
            # paper eq. 30-33: V_ast = sx^2 (dS_N/dx)^2 + sy^2 (dS_N/dy)^2, same for S_R
            sn = sfft.irfft2(s1 * n1, s=shape, workers=-1)
            sr = sfft.irfft2(s2 * n2, s=shape, workers=-1)
            va = np.zeros(shape)
            for img in (sn, sr):
                gy, gx = np.gradient(img)
                va += sig_ast[0] ** 2 * gx**2 + sig_ast[1] ** 2 * gy**2
            out["VA"] = va
    return out


def _source_noise_term(n_img, r_img, sci, ref, cells, f_n, f_r, shape_full, x0y0):
    """Paper's source-noise term: Poisson variance of the images (gain from metadata GAIN,
    default 1, in image units) propagated through the score kernels of each cell."""
    gain_n = float(sci.metadata.get("GAIN", 1.0))
    gain_r = float(ref.metadata.get("GAIN", 1.0))
    vn = np.maximum(n_img, 0) / gain_n
    vr = np.maximum(r_img, 0) / gain_r
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


def transient_catalog(result: ZogyResult, threshold: float = 5.0, min_pixels: int = 1):
    """Catalog of |Scorr| >= ``threshold`` detections (both signs) as an astropy Table.

    Columns: x, y (parent pixels of the |Scorr| peak), ra, dec (with a WCS), scorr (peak value),
    flux and flux_err (PSF photometry from the score: S / F_S and 1 / sqrt(F_S) scaled by the
    local sqrt(V_S / F_S) — the paper's optimal estimator), sign, npix.
    """
    from astropy.table import Table

    sc = result.scorr
    if sc is None:
        raise InputError("the result has no Scorr (calculate_score=False)")
    S = result.score.image.astype(np.float64)
    VS = result.score.variance.astype(np.float64)
    rows = []
    for sign in (1, -1):
        lab, n = ndimage.label(sign * sc >= threshold, structure=np.ones((3, 3)))
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        npix = ndimage.sum_labels(np.ones_like(sc), lab, idx)
        peaks = ndimage.maximum_position(sign * sc, lab, idx)
        for k, (py, px) in zip(npix, peaks):
            if k < min_pixels:
                continue
            fs = result.F_S[py, px]
            rows.append((px + result.diff.xy0[0], py + result.diff.xy0[1], sc[py, px], S[py, px] / fs, np.sqrt(VS[py, px]) / fs, sign, int(k)))
    t = Table(rows=rows, names=("x", "y", "scorr", "flux", "flux_err", "sign", "npix"), dtype=(int, int, float, float, float, int, int))
    wcs = result.diff.wcs
    if wcs is not None and len(t):
        ra, dec = wcs.pixel_to_world_values(np.asarray(t["x"], float), np.asarray(t["y"], float))
        t["ra"], t["dec"] = ra, dec
    t.sort("scorr", reverse=True)
    return t
