"""Turn plain FITS images (no variance, no mask, no PSF: typical survey cutouts) into Exposures.

What real files lack is estimated from the image itself:

* **variance** = local sky variance (photutils ``Background2D``: sigma-clipped medians and
  rms in boxes, the rms corrected for the clipping, median-filtered and interpolated) + the
  source Poisson term ``max(image - sky, 0) / gain`` in image units, with the gain from the
  header (``GAIN``, else the mean of ``GAINA``/``GAINB``);
* **SAT** where the pixel value reaches the header's ``SATURATE`` (or the lower of
  ``SATURATA``/``SATURATB``), less ``AVSKY`` for sky-subtracted images, grown by one pixel;
  NaN/inf pixels become **NO_DATA** (image 0, variance = the median variance);
* **PSF** measured from the image's stars: isolated, unsaturated, high-S/N point sources found by
  photutils' ``DAOStarFinder`` are stacked into an effective PSF with photutils' ``EPSFBuilder``
  (oversampled, then sampled back at whole-pixel offsets, which is what a pixel-convolved PSF
  stamp is).  ``psf_method="gaussian"`` instead uses a circular Gaussian with the stars' median
  adaptive-moment radius, a fallback for fields whose stars are too few for an ePSF.

:func:`photometric_scales` puts several exposures of one field on a common flux scale from
their common bright stars (aperture photometry), as LSST's ``photoCalib`` does before warps are
coadded or subtracted.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InputError, warn
from .exposure import Exposure
from .masks import MaskPlanes
from .psf import GaussianPsf, ImagePsf, Psf, PsfexPsf, adaptive_moments
from .stats import clipped_noise, clipped_std_ratio

__all__ = [
    "header_gain", "header_saturation", "estimate_background", "estimate_variance",
    "find_psf_stars", "measure_psf", "psf_from_file", "psfex_psf", "load_image", "photometric_scales", "apply_scales",
    "noise_correlation_factor", "noise_correlation_from",
]


# ---------------------------------------------------------------------- header helpers
def _number(header: Any, key: str) -> float | None:
    try:
        v = float(header[key])
    except (KeyError, TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def header_gain(header: Any) -> float | None:
    """Electrons per image unit: ``GAIN``, else the mean of the amplifiers' ``GAINA``/``GAINB``."""
    g = _number(header, "GAIN")
    if g is None:
        amps = [v for v in (_number(header, "GAINA"), _number(header, "GAINB")) if v is not None]
        g = float(np.mean(amps)) if amps else None
    if g is not None and g <= 0:
        raise InputError(f"header GAIN must be > 0, got {g}")
    return g


def header_saturation(header: Any) -> float | None:
    """Saturation level in image units: ``SATURATE``, else the lower of ``SATURATA``/``SATURATB``,
    less ``AVSKY`` when the header says the sky was subtracted (``AVSKY`` present)."""
    s = _number(header, "SATURATE")
    if s is None:
        amps = [v for v in (_number(header, "SATURATA"), _number(header, "SATURATB")) if v is not None]
        s = min(amps) if amps else None
    if s is None:
        return None
    sky = _number(header, "AVSKY")
    return s - sky if sky is not None else s


# ---------------------------------------------------------------------- noise
def estimate_background(image: np.ndarray, mask: np.ndarray | None = None, box_size: int = 32, filter_size: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Sky level and sky rms maps (photutils ``Background2D``: 3-sigma clipped median and
    standard deviation, the latter divided by :func:`clipped_std_ratio` so that it estimates
    the noise's sigma, not the clipped sample's).

    ``mask`` (True = ignore) keeps sources and bad pixels out of the estimate; boxes are shrunk
    for small images so that there are at least 4 per axis.
    """
    from astropy.stats import SigmaClip
    from photutils.background import Background2D, MedianBackground, StdBackgroundRMS

    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise InputError(f"image must be 2-D, got shape {image.shape}")
    bad = ~np.isfinite(image) if mask is None else (np.asarray(mask, bool) | ~np.isfinite(image))
    if bad.all():
        raise InputError("no finite, unmasked pixel to estimate the background from")
    box = int(max(8, min(box_size, min(image.shape) // 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bkg = Background2D(image, box, filter_size=filter_size, mask=bad, sigma_clip=SigmaClip(sigma=3.0, maxiters=5), bkg_estimator=MedianBackground(), bkgrms_estimator=StdBackgroundRMS(), exclude_percentile=50.0)
    return np.asarray(bkg.background), np.asarray(bkg.background_rms) / clipped_std_ratio(3.0)


def estimate_variance(image: np.ndarray, gain: float | None = None, mask: np.ndarray | None = None, box_size: int = 32, filter_size: int = 3, source_mask_sigma: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel variance of an image without one: sky variance + source Poisson term.

    Sources are masked for the sky estimate in two passes (pixels more than
    ``source_mask_sigma`` sky rms above the first-pass sky, grown by 2 px).  Returns
    ``(variance, sky)`` in image units squared and image units.  Without a gain only the sky
    term is returned (the variance is then too small on bright sources; a warning says so).
    """
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float64)
    sky, rms = estimate_background(image, mask, box_size, filter_size)
    with np.errstate(invalid="ignore"):
        sources = (image - sky) > source_mask_sigma * rms
    sources = ndimage.binary_dilation(sources, iterations=2)
    if mask is not None:
        sources |= np.asarray(mask, bool)
    if sources.mean() < 0.7:
        sky, rms = estimate_background(image, sources, box_size, filter_size)
    var = rms.astype(np.float64) ** 2
    if gain is None:
        warn("no gain given or in the header: the variance has no source term")
    else:
        if gain <= 0:
            raise InputError(f"gain must be > 0, got {gain}")
        with np.errstate(invalid="ignore"):
            var = var + np.clip(image - sky, 0, None) / gain
    good = np.isfinite(var) & (var > 0)
    if not good.any():
        raise InputError("the estimated variance is zero everywhere (a constant image?)")
    var[~good] = np.median(var[good])
    return var, sky


# ---------------------------------------------------------------------- PSF
def find_psf_stars(image: np.ndarray, variance: np.ndarray, bad: np.ndarray | None = None, fwhm: float = 4.0, size: int = 25, max_stars: int = 60, min_snr: float = 30.0, max_neighbour: float = 0.05, min_separation: float | None = None) -> Any:
    """Isolated, unsaturated, round, high-S/N point sources for PSF measurement (astropy Table
    with ``x``, ``y``, ``flux``), brightest first.

    A star is kept if its whole ``size`` box is inside the image, holds no ``bad`` pixel, has no
    other detection brighter than ``max_neighbour`` of its peak in the box or within ``fwhm``
    of it (whose light would spill in), and its peak S/N exceeds
    ``min_snr``.  With ``min_separation`` (pixels), a fainter neighbour in the box is allowed
    when it is at least that far from the star (its pixels are then to be left out of the fit:
    the table's ``meta["detections"]`` holds every detection's (x, y)).
    """
    from astropy.table import Table
    from photutils.detection import DAOStarFinder

    image = np.asarray(image, dtype=np.float64)
    sigma = np.sqrt(np.median(variance))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # photutils >= 3 names the shape cuts as ranges
            # and by default hides any peak within 2.5 FWHM of a brighter one: the isolation
            # test below must see those neighbours (min_separation=0 was the default before 3)
            finder = DAOStarFinder(fwhm=fwhm, threshold=5.0 * sigma, sharpness_range=(0.2, 1.0), roundness_range=(-0.5, 0.5), exclude_border=True, min_separation=0)
        except TypeError:
            finder = DAOStarFinder(fwhm=fwhm, threshold=5.0 * sigma, sharplo=0.2, sharphi=1.0, roundlo=-0.5, roundhi=0.5, exclude_border=True)
        found = finder(np.nan_to_num(image), mask=bad)
    if found is None or len(found) == 0:
        return Table(names=("x", "y", "flux"), dtype=(float, float, float))
    xcol = "x_centroid" if "x_centroid" in found.colnames else "xcentroid"
    x = np.asarray(found[xcol], float)
    y = np.asarray(found[xcol.replace("x", "y", 1)], float)
    peak = np.asarray(found["peak"], float)
    flux = np.asarray(found["flux"], float)
    half = size // 2
    ny, nx = image.shape
    keep = []
    order = np.argsort(-peak)
    for i in order:
        xi, yi = int(round(x[i])), int(round(y[i]))
        if xi - half < 0 or yi - half < 0 or xi + half >= nx or yi + half >= ny:
            continue
        snr = peak[i] / np.sqrt(variance[yi, xi])
        if snr < min_snr:
            continue
        if bad is not None and bad[yi - half:yi + half + 1, xi - half:xi + half + 1].any():
            continue
        # a neighbour up to one FWHM outside the box still spills light into it
        reach = half + fwhm
        near = (np.abs(x - x[i]) <= reach) & (np.abs(y - y[i]) <= reach) & (peak > max_neighbour * peak[i])
        if min_separation is not None:
            near &= (np.hypot(x - x[i], y - y[i]) < min_separation) | (peak >= peak[i])
        near[i] = False
        if near.any():
            continue
        keep.append(i)
        if len(keep) >= max_stars:
            break
    out = Table({"x": x[keep], "y": y[keep], "flux": flux[keep]})
    out.meta["detections"] = (x, y)
    return out


def measure_psf(image: np.ndarray, variance: np.ndarray, bad: np.ndarray | None = None, size: int = 25, fwhm: float | None = None, method: str = "auto", oversampling: int = 2, min_stars: int = 2, min_epsf_stars: int = 15) -> ImagePsf:
    """PSF of an image measured from its stars, as an :class:`~toolkit.psf.ImagePsf` stamp.

    Parameters
    ----------
    image, variance : ndarray
        Sky-subtracted image and its variance.
    bad : ndarray of bool, optional
        Pixels no star box may touch (saturated, missing).
    size : int
        Odd stamp size.
    fwhm : float, optional
        Initial FWHM guess (pixels) for star finding; refined from the stars' adaptive moments.
    method : {'auto', 'epsf', 'moffat', 'gaussian'}
        photutils' ePSF (needs many stars: ``min_epsf_stars``), a Moffat profile fitted to each
        star with the median width and index taken (works with a handful of stars, and keeps
        the wings a Gaussian lacks), or a circular Gaussian with the median adaptive-moment
        radius.  ``'auto'`` takes the ePSF when there are enough stars, else the Moffat.  With
        fewer than ``min_stars`` isolated stars of peak S/N >= 20 (a small, shallow or crowded
        cutout), ``'auto'`` and ``'moffat'`` fit the Moffat to stars of peak S/N >= 10, or to
        stars whose fainter neighbours lie >= 3 FWHM away, the neighbours' pixels left out.
    """
    if size % 2 == 0:
        raise InputError(f"PSF stamp size must be odd, got {size}")
    if method not in ("auto", "epsf", "moffat", "gaussian"):
        raise InputError(f"unknown PSF method {method!r}; use 'auto', 'epsf', 'moffat' or 'gaussian'")
    guess = 4.0 if fwhm is None else float(fwhm)
    fit_size = max(size, int(4 * guess) | 1)
    stars = find_psf_stars(image, variance, bad, fwhm=guess, size=fit_size, min_snr=20.0)
    if len(stars) >= min_stars and fwhm is None:
        # refine the FWHM from the stars' moments, then find again with it
        radii = [_moment_radius(image, sx, sy, fit_size) for sx, sy in zip(stars["x"], stars["y"])]
        radii = [r for r in radii if np.isfinite(r)]
        if radii:
            guess = 2.3548 * float(np.median(radii))
            stars = find_psf_stars(image, variance, bad, fwhm=guess, size=fit_size, min_snr=20.0)
    if len(stars) < min_stars and method in ("auto", "moffat"):
        # Too few isolated stars of peak S/N >= 20 (a small or shallow cutout, or a crowded
        # field): a Moffat profile (two parameters) is still well fitted from a few fainter
        # stars, or from stars whose fainter neighbours lie >= 3 FWHM away with the
        # neighbours' pixels left out of the fits; the FWHM is refined from the fits.
        for min_snr, crowded in ((10.0, False), (20.0, True), (10.0, True)):
            found = _moffat_psf_fallback(image, variance, bad, fit_size, size, guess, fwhm is None, min_stars, min_snr, crowded)
            if found is not None:
                return ImagePsf(found)
    if len(stars) < min_stars:
        raise InputError(f"only {len(stars)} isolated unsaturated bright stars found (need {min_stars}) to measure the PSF; give a PSF or use a larger image")
    if method == "auto":
        method = "epsf" if len(stars) >= min_epsf_stars else "moffat"
    if method == "gaussian":
        radii = [_moment_radius(image, sx, sy, fit_size) for sx, sy in zip(stars["x"], stars["y"])]
        return ImagePsf(GaussianPsf(float(np.nanmedian(radii)), size=size).compute_kernel_image())
    if method == "moffat":
        return ImagePsf(_moffat_psf(image, variance, stars, fit_size, size, guess, mask_radius=1.5 * guess))
    from astropy.nddata import NDData
    from photutils.psf import EPSFBuilder, extract_stars

    data = np.nan_to_num(np.asarray(image, dtype=np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cut = extract_stars(NDData(data=data), stars["x", "y"], size=size + 4)
        builder = EPSFBuilder(oversampling=oversampling, maxiters=8, progress_bar=False)
        epsf, _ = builder(cut)
    arr = np.asarray(epsf.data, dtype=np.float64)
    cy, cx = arr.shape[0] // 2, arr.shape[1] // 2
    half = size // 2
    # an ePSF is already pixel-integrated: sampling it at whole-pixel offsets gives the stamp
    ys = cy + oversampling * np.arange(-half, half + 1)
    xs = cx + oversampling * np.arange(-half, half + 1)
    if ys.min() < 0 or ys.max() >= arr.shape[0] or xs.min() < 0 or xs.max() >= arr.shape[1]:
        raise InputError("the ePSF is smaller than the requested stamp; lower size")
    stamp = arr[np.ix_(ys, xs)]
    stamp = np.clip(stamp, 0, None)
    if not np.isfinite(stamp).all() or stamp.sum() <= 0:
        raise InputError("the ePSF build failed (non-finite or empty stamp)")
    return ImagePsf(_recentre(stamp / stamp.sum()))


def _moffat_psf_fallback(image, variance, bad, fit_size: int, size: int, guess: float, refine: bool, min_stars: int, min_snr: float, crowded: bool) -> np.ndarray | None:
    """:func:`_moffat_psf` of stars of peak S/N >= ``min_snr``; with ``crowded``, also of
    stars whose fainter neighbours lie >= 3 FWHM away (every other detection's pixels within
    1.5 FWHM are left out of the fits).  With ``refine``, the FWHM guess is replaced by the
    fits' FWHM and the stars found again, up to three times.  None when fewer than
    ``min_stars`` such stars exist."""
    result = None
    for _ in range(3 if refine else 1):
        stars = find_psf_stars(image, variance, bad, fwhm=guess, size=fit_size, min_snr=min_snr, min_separation=3.0 * guess if crowded else None)
        if len(stars) < min_stars:
            return result
        try:
            result, (gamma, alpha) = _moffat_psf(image, variance, stars, fit_size, size, guess, mask_radius=1.5 * guess, return_params=True)
        except InputError:
            return result  # a refinement that no star survives keeps the last good fit
        fitted = 2.0 * gamma * np.sqrt(2 ** (1 / alpha) - 1)
        if abs(fitted - guess) < 0.02 * guess:
            break
        guess = float(fitted)
    return result


def _moffat_psf(image, variance, stars, fit_size: int, size: int, fwhm: float, mask_radius: float | None = None, return_params: bool = False):
    """Median Moffat (gamma, alpha) of per-star least-squares fits, rendered pixel-integrated
    (5x oversampled and binned) on a ``size`` stamp.  ``mask_radius``: pixels that close to
    another detection (``stars.meta["detections"]``) get no weight in a star's fit (a
    neighbour outside the star's box still spills light into it)."""
    from astropy.modeling import fitting, models

    half = fit_size // 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    fitter = fitting.LevMarLSQFitter()
    gammas, alphas = [], []
    det_x, det_y = stars.meta.get("detections", (np.zeros(0), np.zeros(0)))
    for sx, sy in zip(stars["x"], stars["y"]):
        xi, yi = int(round(sx)), int(round(sy))
        cut = np.asarray(image[yi - half:yi + half + 1, xi - half:xi + half + 1], dtype=np.float64)
        w = 1.0 / np.sqrt(np.asarray(variance[yi - half:yi + half + 1, xi - half:xi + half + 1], dtype=np.float64))
        if mask_radius is not None:
            others = (np.abs(det_x - xi) <= half + mask_radius) & (np.abs(det_y - yi) <= half + mask_radius) & (np.hypot(det_x - sx, det_y - sy) > 0.5)
            for ox, oy in zip(det_x[others], det_y[others]):
                w[np.hypot(xx + xi - ox, yy + yi - oy) <= mask_radius] = 0.0
        alpha0 = 3.0
        gamma0 = fwhm / (2.0 * np.sqrt(2 ** (1 / alpha0) - 1))
        m0 = models.Moffat2D(amplitude=float(cut.max()), x_0=sx - xi, y_0=sy - yi, gamma=gamma0, alpha=alpha0)
        m0.alpha.bounds = (1.2, 10.0)
        m0.gamma.bounds = (0.3, 5 * gamma0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = fitter(m0, xx, yy, cut, weights=w, maxiter=200)
        if np.isfinite(fit.gamma.value) and np.isfinite(fit.alpha.value) and fit.amplitude.value > 0:
            gammas.append(abs(float(fit.gamma.value)))
            alphas.append(float(fit.alpha.value))
    if not gammas:
        raise InputError("no star could be fitted with a Moffat profile")
    gamma, alpha = float(np.median(gammas)), float(np.median(alphas))
    os_ = 5
    g = (np.arange(size * os_) - (size * os_ - 1) / 2) / os_
    r2 = g[:, None] ** 2 + g[None, :] ** 2
    fine = (1 + r2 / gamma**2) ** (-alpha)
    stamp = fine.reshape(size, os_, size, os_).sum(axis=(1, 3))
    stamp = stamp / stamp.sum()
    return (stamp, (gamma, alpha)) if return_params else stamp


def _recentre(stamp: np.ndarray) -> np.ndarray:
    """Shift a stamp by a sub-pixel amount so its centroid is at the centre pixel (ZOGY checks
    PSF centroids to 0.2 px; an ePSF built from undersampled stars can be off by ~0.1 px)."""
    from scipy import ndimage

    n = stamp.shape[0]
    yy, xx = np.mgrid[:n, :n]
    s = stamp.sum()
    dx = (stamp * xx).sum() / s - (n - 1) / 2
    dy = (stamp * yy).sum() / s - (n - 1) / 2
    if abs(dx) < 1e-3 and abs(dy) < 1e-3:
        return stamp
    out = ndimage.shift(stamp, (-dy, -dx), order=3, mode="constant")
    out = np.clip(out, 0, None)
    return out / out.sum()


def _moment_radius(image: np.ndarray, x: float, y: float, size: int) -> float:
    half = size // 2
    xi, yi = int(round(x)), int(round(y))
    cut = np.asarray(image[yi - half:yi + half + 1, xi - half:xi + half + 1], dtype=np.float64)
    try:
        ixx, iyy, ixy = adaptive_moments(np.clip(np.nan_to_num(cut), 0, None))
    except Exception:  # noqa: BLE001 -- a failed star is skipped, not fatal
        return float("nan")
    det = ixx * iyy - ixy**2
    return float(det**0.25) if det > 0 else float("nan")


# ---------------------------------------------------------------------- loading
def load_image(
    path: str | os.PathLike,
    hdu: int | str | None = None,
    gain: float | None = None,
    saturation: float | None = None,
    psf: Psf | np.ndarray | str | os.PathLike | None = "measure",
    noise: str | os.PathLike | None = None,
    noise_kind: str = "sigma",
    mask: str | os.PathLike | None = None,
    psf_size: int = 25,
    psf_method: str = "auto",
    box_size: int = 32,
    subtract_sky: bool = True,
    dtype: Any = np.float32,
) -> Exposure:
    """Read a plain FITS image and give it the variance, mask and PSF the engines need.

    Parameters
    ----------
    path : path
        FITS file; the first 2-D image HDU is used unless ``hdu`` is given.
    gain, saturation : float, optional
        Override the header's gain (e-/unit) and saturation level (image units).
    psf : 'measure', Psf, ndarray, path or None
        ``'measure'`` (default) measures it from the image's stars (:func:`measure_psf`,
        ``psf_method``); a Psf or array stamp is
        used as given; a path names a FITS PSF stamp (cropped to ``psf_size`` if larger and
        renormalised); ``None`` leaves the exposure without PSF.
    noise : path, optional
        A noise map (e.g. JWST's ``ERR``) instead of estimating the variance; ``noise_kind`` is
        ``'sigma'``, ``'variance'`` or ``'inverse_variance'``.  A file laid out as JWST's
        pipeline writes one (``SCI`` and ``ERR`` extensions) brings its own: ``ERR`` is used
        when no map is given (see :func:`toolkit.io.read_plain_fits`).
    mask : path, optional
        A bad-pixel map (e.g. a DECam community-pipeline ``ood`` file, a ZTF ``mskimg``): its
        non-zero pixels are set in the ``BAD`` plane and left out of the sky, variance and PSF
        estimates (ZOGY and the coadds ignore BAD pixels by default).
    subtract_sky : bool
        Subtract the estimated sky (the engines expect sky-subtracted warps).
    """
    from .io import read_plain_fits

    kinds = {"sigma": "sigma", "variance": "variance", "inverse_variance": "inverse_variance"}
    if noise is not None and noise_kind not in kinds:
        raise InputError(f"noise_kind must be one of {sorted(kinds)}, got {noise_kind!r}")
    exp = read_plain_fits(path, hdu=hdu, dtype=np.float64, mask=mask, mask_plane="BAD", **({kinds[noise_kind]: noise} if noise is not None else {}))
    meta = exp.metadata
    image = exp.image
    finite = np.isfinite(image)
    if not finite.any():
        raise InputError(f"{path}: the image has no finite pixel")
    g = gain if gain is not None else header_gain(meta)
    sat_level = saturation if saturation is not None else header_saturation(meta)
    planes = MaskPlanes()
    bad = (exp.mask & exp.mask_planes.bitmask(["BAD"], strict=False)) != 0  # the given map
    out_mask = np.zeros(image.shape, np.int32)
    no_data = ~finite
    sat = np.zeros(image.shape, bool)
    if sat_level is not None:
        with np.errstate(invalid="ignore"):
            sat = image >= sat_level
        if sat.any():
            from scipy import ndimage

            sat = ndimage.binary_dilation(sat, iterations=1)
    if exp.metadata.get("DSNOVAR"):  # no noise map, given or in the file
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if g is not None else "default")
            var, sky = estimate_variance(image, g, mask=no_data | sat | bad, box_size=box_size)
    else:
        var = np.asarray(exp.variance, dtype=np.float64).copy()
        bad_var = ~np.isfinite(var) | (var <= 0)
        no_data |= bad_var
        var[bad_var] = np.median(var[~bad_var]) if (~bad_var).any() else 1.0
        sky, _ = estimate_background(image, no_data | sat | bad, box_size) if subtract_sky else (np.zeros(image.shape), None)
    img = np.where(finite, image - (sky if subtract_sky else 0.0), 0.0)
    var = np.where(no_data, np.median(var[~no_data]), var)
    for name, where in (("NO_DATA", no_data), ("SAT", sat)) + ((("BAD", bad),) if mask is not None else ()):
        planes.add(name)
        if where.any():
            out_mask[where] |= np.int32(planes.bitmask([name]))
    if isinstance(psf, str) and psf == "measure":
        psf_obj: Psf | None = measure_psf(img, var, bad=no_data | sat | bad, size=psf_size, fwhm=_number(meta, "FWHM"), method=psf_method)
    elif psf is None or isinstance(psf, Psf):
        psf_obj = psf
    elif isinstance(psf, np.ndarray):
        psf_obj = ImagePsf(_crop_psf(psf, psf_size))
    else:
        psf_obj = psf_from_file(psf, psf_size)
    meta = dict(meta)
    meta.pop("DSNOVAR", None)
    if g is not None:
        meta["GAIN"] = g
    return Exposure(img.astype(dtype), var.astype(dtype), out_mask, planes, psf=psf_obj, photo_calib=exp.photo_calib, wcs=exp.wcs, metadata=meta, copy=False)


#: WebbPSF/STPSF's detector-sampled extensions, preferred first (with distortion, then without)
_DETECTOR_PSF_HDUS = ("DET_DIST", "DET_SAMP")


def psf_from_file(path: str | os.PathLike, size: int = 25) -> Psf:
    """A PSF from a FITS file: a PSFEx model (a ``.psf`` file: a table with a ``PSF_MASK``
    column, :func:`psfex_psf`), spatially varying as PSFEx fitted it, or else a stamp,
    cropped to ``size`` if larger and renormalised.

    The stamp is a WebbPSF/STPSF file's detector-sampled extension (``DET_DIST``, else
    ``DET_SAMP``) when it has one, else the first image.  An image oversampled relative to the
    detector (WebbPSF's ``OVERSAMP``/``OVERDIST`` extensions, or a header ``OVERSAMP`` > 1)
    would pose as a PSF several times too wide, so it is refused by name, as is an unreadable
    file.
    """
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            for hdu in hdul:
                if isinstance(hdu, fits.BinTableHDU) and "PSF_MASK" in hdu.columns.names:
                    return psfex_psf(hdu, size=size, where=str(path))
            images = [h for h in hdul if h.is_image and h.data is not None]
            names = {h.name.upper(): h for h in images}
            chosen = next((names[n] for n in _DETECTOR_PSF_HDUS if n in names), images[0] if images else None)
            if chosen is None:
                raise InputError(f"cannot read PSF file {path}: it has no image and no PSFEx PSF_MASK table")
            over = chosen.header.get("OVERSAMP", 1)
            if chosen.name.upper() in ("OVERSAMP", "OVERDIST") or (isinstance(over, (int, float)) and over > 1 and chosen.name.upper() not in _DETECTOR_PSF_HDUS):
                raise InputError(f"PSF file {path}: its image ({chosen.name or 'primary'}) is oversampled {over}x relative to the detector; give a detector-sampled PSF (WebbPSF's DET_SAMP or DET_DIST extension)")
            stamp = np.asarray(chosen.data, dtype=np.float64)
    except InputError:
        raise  # already names the file and the problem
    except (OSError, TypeError, ValueError) as err:
        raise InputError(f"cannot read PSF file {path}: {err}") from None
    return ImagePsf(_crop_psf(stamp, size))


def psfex_psf(hdu: Any, size: int | None = None, where: str = "PSFEx model") -> PsfexPsf:
    """The :class:`~toolkit.psf.PsfexPsf` of a PSFEx ``.psf`` file's ``PSF_DATA`` table.

    Reads ``PSF_MASK`` (the basis images), ``PSF_SAMP`` and the polynomial keywords
    (``POLNAXIS``, ``POLNGRP``, ``POLNAME1/2``, ``POLZERO1/2``, ``POLSCAL1/2``, ``POLDEG1``).
    A constant model (``POLNAXIS`` = 0) and polynomials in the image position
    (``X_IMAGE``/``Y_IMAGE`` or their ``WIN`` versions, one group) are understood; contexts
    that are not the position (a magnitude, a FITS header value) are refused by name.  The
    contexts are SExtractor's 1-based pixel coordinates.  ``size``: the default kernel size
    (odd), at most the model's extent in image pixels (PsfexPsf's own default).
    """
    h = hdu.header
    try:
        basis = np.asarray(hdu.data["PSF_MASK"][0], dtype=np.float64)
        samp = float(h["PSF_SAMP"])
        naxis = int(h.get("POLNAXIS", 0))
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise InputError(f"{where}: not a readable PSFEx model ({type(err).__name__}: {err})") from None
    if basis.ndim == 2:
        basis = basis[None]
    if naxis == 0:
        degree, zero, scale = 0, (0.0, 0.0), (1.0, 1.0)
    else:
        names = [str(h.get(f"POLNAME{i}", "")).strip().upper() for i in (1, 2)]
        if naxis != 2 or int(h.get("POLNGRP", 1)) != 1 or not (names[0].startswith("X") and names[1].startswith("Y") and all(n.endswith("_IMAGE") for n in names)):
            got = ", ".join(str(h.get(f"POLNAME{i}")) for i in range(1, naxis + 1))
            raise InputError(f"{where}: PSFEx contexts {got} in {h.get('POLNGRP', 1)} group(s): only a polynomial in the image position (X_IMAGE, Y_IMAGE in one group) is understood")
        try:
            degree = int(h["POLDEG1"])
            zero = (float(h["POLZERO1"]), float(h["POLZERO2"]))
            scale = (float(h["POLSCAL1"]), float(h["POLSCAL2"]))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{where}: PSFEx polynomial keywords missing or malformed ({type(err).__name__}: {err})") from None
    psf = PsfexPsf(basis, samp, degree, zero, scale, origin=1.0)
    if size is not None and size < psf.size:
        psf.size = int(size) | 1  # odd, as every kernel size
    return psf


def _crop_psf(stamp: np.ndarray, size: int) -> np.ndarray:
    stamp = np.asarray(stamp, dtype=np.float64)
    if stamp.ndim != 2 or not np.isfinite(stamp).all():
        raise InputError("a PSF stamp must be a finite 2-D array")
    ny, nx = stamp.shape
    if ny % 2 == 0 or nx % 2 == 0:
        raise InputError(f"a PSF stamp must have odd sizes, got {stamp.shape}")
    n = min(size, ny, nx)
    cy, cx = ny // 2, nx // 2
    cut = stamp[cy - n // 2:cy + n // 2 + 1, cx - n // 2:cx + n // 2 + 1]
    if cut.sum() <= 0:
        raise InputError("the PSF stamp sums to <= 0")
    return _recentre(np.clip(cut, 0, None) / np.clip(cut, 0, None).sum())


# ---------------------------------------------------------------------- photometric scaling
def photometric_scales(exposures: Sequence[Exposure], reference: int = 0, radius: float | None = None, min_snr: float = 20.0, min_stars: int = 3, names: Sequence[str] | None = None) -> np.ndarray:
    """Factors that put each exposure on the reference's flux scale (reference -> 1).

    Bright stars are found on the reference; each exposure's aperture fluxes (radius ~2 FWHM of
    the worst PSF, so seeing changes do not bias the ratio) are compared star by star and the
    3-sigma clipped median ratio is taken.  Multiply an image by its factor (and its variance by
    the factor squared): see :func:`apply_scales`.  ``names`` (e.g. file names, one per
    exposure) are used in errors instead of "exposure i".
    """
    from astropy.stats import sigma_clipped_stats
    from photutils.aperture import CircularAperture, aperture_photometry

    if not exposures:
        raise InputError("no exposures given")
    if names is not None and len(names) != len(exposures):
        raise InputError(f"{len(names)} names for {len(exposures)} exposures")
    label = (lambda i: str(names[i])) if names is not None else (lambda i: f"exposure {i}")
    if not (isinstance(reference, (int, np.integer)) and 0 <= reference < len(exposures)):
        raise InputError(f"reference must be the index of one of the {len(exposures)} exposures (0..{len(exposures) - 1}), got {reference!r}")
    ref = exposures[reference]
    shapes = {e.shape for e in exposures}
    if len(shapes) != 1:
        raise InputError(f"exposures must share one pixel grid, got shapes {sorted(shapes)}")
    if radius is None:
        radii = [e.psf.determinant_radius() for e in exposures if e.psf is not None]
        radius = 2.0 * 2.3548 * max(radii) if radii else 8.0
    bad = (ref.mask != 0)
    stars = find_psf_stars(ref.image, ref.variance, bad, fwhm=radius / 2, size=int(2 * radius) | 1, max_stars=80, min_snr=min_snr)
    if len(stars) < min_stars:
        raise InputError(f"only {len(stars)} bright isolated stars on the reference, {label(reference)} (need {min_stars}), to scale the photometry")
    apert = CircularAperture(np.column_stack([stars["x"], stars["y"]]), r=radius)
    f_ref = np.asarray(aperture_photometry(np.asarray(ref.image, float), apert)["aperture_sum"])
    scales = np.ones(len(exposures))
    for i, e in enumerate(exposures):
        if i == reference:
            continue
        f = np.asarray(aperture_photometry(np.asarray(e.image, float), apert)["aperture_sum"])
        ok = (f > 0) & (f_ref > 0)
        if ok.sum() < min_stars:
            raise InputError(f"{label(i)}: only {int(ok.sum())} stars with positive flux to scale the photometry")
        _, med, _ = sigma_clipped_stats(f_ref[ok] / f[ok], sigma=3.0)
        scales[i] = med
    return scales


def apply_scales(exposures: Sequence[Exposure], scales: Sequence[float]) -> list[Exposure]:
    """New exposures with image x s and variance x s^2 (inputs untouched)."""
    if len(scales) != len(exposures):
        raise InputError(f"{len(scales)} scales for {len(exposures)} exposures")
    out = []
    for e, s in zip(exposures, scales):
        if not np.isfinite(s) or s <= 0:
            raise InputError(f"photometric scale must be finite and > 0, got {s}")
        c = e.copy()
        c.image *= c.image.dtype.type(s)
        c.variance *= c.variance.dtype.type(s * s)
        out.append(c)
    return out


# ---------------------------------------------------------------------- correlated noise
def _source_free(exposures: Sequence[tuple[Exposure, int]], half: int, edge: int, source_snr: float, grow: int) -> tuple[np.ndarray, np.ndarray]:
    """Where noise can be measured, as (unusable, good).  ``unusable``: a source (smoothed S/N
    > ``source_snr`` in any of the images), one of its image's ``bits``, non-finite or variance
    <= 0 in any plane.  ``good``: not within ``grow + half`` px of an unusable pixel (a
    source's wings, a kernel's reach) nor within ``edge`` px of the border."""
    from scipy import ndimage

    bad = np.zeros(exposures[0][0].shape, bool)
    for e, bits in exposures:
        bad |= (e.mask & bits) != 0
        with np.errstate(invalid="ignore"):
            bad |= ~np.isfinite(e.image) | ~(e.variance > 0) | ~np.isfinite(e.variance)
    for e, _ in exposures:
        # S/N is calibration-free (c * image / sqrt(c^2 * variance)), so raw planes do; a
        # threshold at 5 needs no more than float32 (half the memory traffic of float64).  It
        # is taken above the image's median (of every 4th pixel in x and y: a sky level needs
        # no more), so that an image whose sky was not subtracted (ZOGY's correctBackground
        # does that later) is not one big source
        dt = np.result_type(e.image.dtype, e.variance.dtype, np.float32)
        sub = np.asarray(e.image)[::4, ::4][~bad[::4, ::4]]
        sky = dt.type(np.median(sub)) if sub.size else dt.type(0)
        snr = np.where(bad, dt.type(0), (e.image - sky) / np.sqrt(np.where(bad, dt.type(1), e.variance)))
        bad |= ndimage.gaussian_filter(snr, 2) > source_snr
    near = ndimage.binary_dilation(bad, iterations=grow + half)
    if edge > 0:
        near[:edge] = near[-edge:] = True
        near[:, :edge] = near[:, -edge:] = True
    return bad, ~near


def noise_correlation_from(scorr: np.ndarray, exposures: Sequence[tuple[Exposure, int]], half: int, edge: int, source_snr: float = 5.0, grow: int = 6, min_fraction: float = 0.05, with_error: bool = False) -> float | tuple[float, float]:
    """The clipped variance of a ZOGY Scorr over source-free pixels: the factor by which its
    inputs' variance planes miss the noise as ZOGY's score kernels sum it (1 for honest planes).

    ``exposures``: the (exposure, ignored mask bits) pairs Scorr came from; sources, bad and
    non-finite pixels are excluded as in :func:`noise_correlation_factor`, plus ``edge`` px at
    the border (where the padding enters).  ``with_error``: also return the factor's standard
    error, from the scatter of the same measurement on a 4 x 4 grid of tiles (Scorr is
    correlated over the score kernel only, so tiles are independent; NaN when fewer than four
    tiles hold 100 usable pixels).
    """
    good = _source_free(exposures, half, edge, source_snr, grow)[1]
    if good.mean() < min_fraction:
        raise InputError(f"only {100 * good.mean():.1f} % of the pixels are away from sources, masks and the edge; need {100 * min_fraction:.0f} % to measure the noise correlation")
    # every other pixel in x and y: Scorr is smoothed by the score kernel (wider than the PSF),
    # so neighbours carry nearly the same noise and a quarter of the pixels measures its
    # variance as well, for a quarter of the clipping's sorting
    s, g = np.asarray(scorr, float)[::2, ::2], good[::2, ::2]
    factor = clipped_noise(s[g])[2]
    if not with_error:
        return factor
    parts = []
    for rows in np.array_split(np.arange(s.shape[0]), 4):
        for cols in np.array_split(np.arange(s.shape[1]), 4):
            tile = np.ix_(rows, cols)
            if np.count_nonzero(g[tile]) >= 100:
                parts.append(clipped_noise(s[tile][g[tile]])[2])
    error = float(np.std(parts, ddof=1) / np.sqrt(len(parts))) if len(parts) >= 4 else float("nan")
    return factor, error


def noise_correlation_factor(exposures: Sequence[Exposure], source_snr: float = 5.0, grow: int = 6) -> float:
    """How much more variance the noise has on the PSF scale than the per-pixel variance says.

    Registered (resampled) images have correlated noise: the variance plane is right pixel by
    pixel but too small for PSF-weighted sums, which is what ZOGY's S (a matched filter)
    computes, so Scorr comes out wider than a unit Gaussian.  This measures the factor from
    pairs of images of the same field, each calibrated by its ``photo_calib`` (so a calexp in
    ADU pairs with a coadd in nJy; images from :func:`load_image` must be put on one scale
    first, e.g. with :func:`photometric_scales`), cross-convolved so that static
    sources cancel whatever their PSFs: ``d = a (*) P_b - b (*) P_a`` has the predicted variance
    ``V_a (*) P_b^2 + V_b (*) P_a^2`` pixel by pixel, and the factor is ``var(d) / prediction``
    over pixels away from sources (``source_snr`` in either image, grown by ``grow`` px and the
    PSF radius), masked and non-finite pixels and the image edge, 3-sigma clipped and
    corrected for the clipping (:func:`~toolkit.stats.clipped_noise`), median over consecutive pairs.
    With equal PSFs this is ``var((a - b) (*) P) / ((V_a + V_b) (*) P^2)``.

    Multiply a variance plane (e.g. a coadd's, which keeps its inputs' correlation) by it.  For
    a ZOGY pair, ``ZogyConfig.doMeasureNoiseCorrelation`` measures the factor on ZOGY's own
    score filter instead (:func:`noise_correlation_from`), which is the one Scorr needs when
    the pair's PSFs differ.  Returns ~1 for white noise.
    """
    from .psf_matching import fft_convolve

    if len(exposures) < 2:
        raise InputError("need at least two exposures of one field to measure the noise correlation")
    ratios = []
    for a, b in zip(exposures[0::2], exposures[1::2]):
        if a.shape != b.shape:
            raise InputError(f"exposures must share one pixel grid, got {a.shape} and {b.shape}")
        if a.psf is None or b.psf is None:
            raise InputError("exposures need PSFs to measure the noise correlation")
        ka, kb = a.psf.compute_kernel_image(), b.psf.compute_kernel_image()
        half = max(ka.shape[0], kb.shape[0]) // 2
        unusable, good = _source_free([(a, -1), (b, -1)], half, 2 * half + 1, source_snr, grow)
        if good.mean() < 0.05:
            continue
        # sources, masked and non-finite pixels are zeroed in the images *and* the variance
        # planes, so the prediction stays exact for pixels whose kernels reach some of them;
        # each image is calibrated by its photo_calib (a calexp in ADU beside a coadd in nJy
        # would leave every static source in the difference)
        ca, cb = float(a.photo_calib), float(b.photo_calib)
        a_img, a_var, b_img, b_var = (np.where(unusable, 0.0, np.asarray(p, float) * c) for p, c in ((a.image, ca), (a.variance, ca * ca), (b.image, cb), (b.variance, cb * cb)))
        d = fft_convolve(a_img, kb) - fft_convolve(b_img, ka)
        pred = fft_convolve(a_var, kb * kb) + fft_convolve(b_var, ka * ka)
        ratios.append(clipped_noise(d[good] / np.sqrt(pred[good]))[2])
    if not ratios:
        raise InputError("no pair had enough source-free pixels to measure the noise correlation")
    return float(np.median(ratios))
