"""Seeded, deterministic simulated survey data: warp stacks and subtraction pairs, with truth.

Everything is rendered analytically and vectorised: point sources and galaxies are
pixel-integrated Gaussians (the PSFs here are Gaussian, optionally varying across the field),
scattered into the image with one ``np.bincount`` per component, so a 256^2 stack takes a
fraction of a second and 4096^2 stays practical.

Units: warps are calibrated to nJy (``BUNIT = nJy``, ``photo_calib = 1``) like LSST's; each
epoch has its own throughput (nJy per count) so its noise level differs.  The variance plane
is the true variance of the noise that was drawn: sky + source (Poisson, gain 1) + read noise,
scaled to nJy^2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from .errors import InputError
from .exposure import Exposure
from .masks import MaskPlanes
from .psf import FWHM_PER_SIGMA, GaussianPsf, Psf, VaryingGaussianPsf, DoubleGaussianPsf
from .detection import grow_radius, smooth_for_detection, threshold_footprints
from .psf_matching import match_to_psf

__all__ = ["simulate_stack", "simulate_pair", "SimulatedStack", "SimulatedPair", "render_points", "make_wcs", "predicted_zogy_snr"]

_SAT_COUNTS = 60000.0


def _number(name: str, value: Any, low: float | None = 0.0, high: float | None = None, strict: bool = False, integer: bool = False) -> Any:
    """``value`` checked as a finite number (an integer if ``integer``) within ``[low, high]``
    (``low`` excluded when ``strict``): a named InputError instead of numpy's deep errors."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        v = float(value)
        ok = np.isfinite(v) and (low is None or (v > low if strict else v >= low)) and (high is None or v <= high)
    if not ok:
        kind = "an integer" if integer else "a finite number"
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if strict else '>='} {low:g}")
        if high is not None:
            bounds.append(f"<= {high:g}")
        raise InputError(f"{name} must be {kind}{' ' + ' and '.join(bounds) if bounds else ''}, got {value!r}")
    return int(value) if integer else float(value)


def _interval(name: str, value: Any, low: float = 0.0, strict: bool = False) -> tuple[float, float]:
    """A ``(min, max)`` pair of numbers above ``low`` with min <= max."""
    try:
        a, b = value
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a (min, max) pair, got {value!r}") from None
    a, b = _number(f"{name}[0]", a, low, strict=strict), _number(f"{name}[1]", b, low, strict=strict)
    if a > b:
        raise InputError(f"{name} must be (min, max) with min <= max, got {value!r}")
    return a, b


def _size(value: Any, minimum: int, what: str) -> tuple[int, int]:
    pair = (value, value) if np.isscalar(value) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2:
        raise InputError(f"{what} must be an integer or (ny, nx), got {value!r}")
    ny, nx = (_number(f"{what}", v, None, integer=True) for v in pair)
    if ny < minimum or nx < minimum:
        raise InputError(f"{what} must be at least {minimum} pixels, got {(ny, nx)}")
    return ny, nx


def make_wcs(shape: tuple[int, int], ra: float = 150.0, dec: float = 2.2, scale_arcsec: float = 0.2) -> WCS:
    """A TAN WCS centred on the image (parent frame, 0-based pixels)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    w.wcs.cdelt = [-scale_arcsec / 3600.0, scale_arcsec / 3600.0]
    w.wcs.cunit = ["deg", "deg"]
    return w


def _integrated_1d(offsets: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    s = (sigma * np.sqrt(2.0))[:, None]
    return 0.5 * (erf((offsets + 0.5) / s) - erf((offsets - 0.5) / s))


def _sampled_1d(offsets: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    s = sigma[:, None]
    return np.exp(-0.5 * (offsets / s) ** 2) / (np.sqrt(2 * np.pi) * s)


def render_points(
    shape: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    sigma: np.ndarray | float,
    half_width: int | None = None,
    sampled: bool = False,
) -> np.ndarray:
    """Sum of pixel-integrated circular Gaussians (float64 image of ``shape``).

    ``sigma`` may differ per source (a spatially varying PSF).  Sources are truncated at
    ``half_width`` pixels (default ``ceil(5 max sigma)``), which keeps >99.99 % of the flux.
    """
    ny, nx = shape
    x, y, flux = (np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (x, y, flux))
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), x.shape)
    out = np.zeros(shape)
    if x.size == 0:
        return out
    h = int(np.ceil(5 * sig.max())) if half_width is None else int(half_width)
    ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    d = np.arange(-h, h + 1)
    # process in chunks to bound the temporary (n, 2h+1, 2h+1) stamp array
    chunk = max(1, int(4e6 // (2 * h + 1) ** 2))
    canvas = np.zeros((ny + 2 * h) * (nx + 2 * h))
    for s in range(0, x.size, chunk):
        sl = slice(s, s + chunk)
        prof = _sampled_1d if sampled else _integrated_1d
        gx = prof(d[None, :] - (x[sl] - ix[sl])[:, None], sig[sl])
        gy = prof(d[None, :] - (y[sl] - iy[sl])[:, None], sig[sl])
        stamps = flux[sl, None, None] * gy[:, :, None] * gx[:, None, :]
        rows = (iy[sl, None] + h + d[None, :])  # (n, 2h+1) in canvas coordinates
        cols = (ix[sl, None] + h + d[None, :])
        ok_r = (rows >= 0) & (rows < ny + 2 * h)
        ok_c = (cols >= 0) & (cols < nx + 2 * h)
        idx = rows[:, :, None] * (nx + 2 * h) + cols[:, None, :]
        ok = ok_r[:, :, None] & ok_c[:, None, :]
        canvas += np.bincount(idx[ok], weights=stamps[ok], minlength=canvas.size)
    return canvas.reshape(ny + 2 * h, nx + 2 * h)[h : h + ny, h : h + nx].copy()


def _render_galaxies(shape, x, y, flux, cov_xx, cov_yy, cov_xy, psf_sigma) -> np.ndarray:
    """Elliptical Gaussian galaxies convolved with a Gaussian PSF, sampled at pixel centres."""
    ny, nx = shape
    out = np.zeros(ny * nx)
    if x.size == 0:
        return out.reshape(shape)
    sxx = cov_xx + psf_sigma**2
    syy = cov_yy + psf_sigma**2
    sxy = cov_xy
    h = int(np.ceil(4.5 * np.sqrt(max(sxx.max(), syy.max()))))
    d = np.arange(-h, h + 1)
    ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    det = sxx * syy - sxy**2
    dx = d[None, None, :] - (x - ix)[:, None, None]
    dy = d[None, :, None] - (y - iy)[:, None, None]
    q = (syy[:, None, None] * dx**2 - 2 * sxy[:, None, None] * dx * dy + sxx[:, None, None] * dy**2) / det[:, None, None]
    stamps = flux[:, None, None] * np.exp(-0.5 * q) / (2 * np.pi * np.sqrt(det))[:, None, None]
    rows = iy[:, None] + d[None, :]
    cols = ix[:, None] + d[None, :]
    ok = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
    idx = rows[:, :, None] * nx + cols[:, None, :]
    out += np.bincount(idx[ok], weights=stamps[ok], minlength=ny * nx)
    return out.reshape(shape)


@dataclass
class SimulatedStack:
    """A simulated stack of warps of one patch, and its truth.

    Attributes
    ----------
    direct_warps, psf_matched_warps : list of Exposure
    truth : dict
        ``noiseless`` (N, ny, nx) per-epoch noiseless sky without artifacts (variable stars at
        their epoch flux), ``static_sky`` (ny, nx) noiseless sky at the mean epoch PSF is not
        defined for varying PSFs, so instead ``artifact_flux`` (N, ny, nx), ``artifact_mask``
        (N, ny, nx; exactly where ``artifact_flux != 0``), ``artifact_kind`` (N, ny, nx; 0 none,
        1 faint trail, 2 bright trail, 3 cosmic ray, 4 ghost), ``psf_sigma`` per epoch (at the
        patch's centre with ``psf_gradient``), ``throughput`` per epoch (nJy per count).
    catalogs : dict of astropy Table
        ``stars`` (x, y, flux, variable, saturated), ``galaxies``, ``variables`` (per-epoch
        flux), ``artifacts`` (epoch, kind, parameters).
    """

    direct_warps: list[Exposure]
    psf_matched_warps: list[Exposure] | None
    truth: dict[str, Any]
    catalogs: dict[str, Table]
    params: dict[str, Any] = field(default_factory=dict)


ARTIFACT_KINDS = {1: "faint_trail", 2: "bright_trail", 3: "cosmic_ray", 4: "ghost"}


def _power_law_flux(u: np.ndarray, fmin: float, fmax: float) -> np.ndarray:
    """Fluxes with dN/dF ~ F^-2 on [fmin, fmax] from uniform deviates ``u`` (inverse CDF)."""
    return 1.0 / (1.0 / fmin - u * (1.0 / fmin - 1.0 / fmax))


def simulate_stack(
    n_epochs: int = 10,
    size: int | tuple[int, int] = 256,
    seed: int = 1,
    fwhm_range: tuple[float, float] = (2.5, 5.0),
    star_density: float = 3e-4,
    galaxy_density: float = 1.5e-4,
    galaxy_flux_range: tuple[float, float] = (1e3, 1e6),
    n_saturated_stars: int = 0,
    variable_fraction: float = 0.05,
    sky_counts: tuple[float, float] = (300.0, 800.0),
    read_noise: float = 5.0,
    throughput_range: tuple[float, float] = (0.8, 1.25),
    n_trails: int = 2,
    cosmic_ray_density: float = 2.5e-5,
    ghost: bool = True,
    chip_gap_fraction: float = 0.3,
    bad_columns: int = 1,
    psf_matched: bool = True,
    target_fwhm: float = 7.7,
    keep_truth_images: bool = True,
    dtype: Any = np.float32,
    psf_gradient: float = 0.0,
) -> SimulatedStack:
    """Simulate ``n_epochs`` registered warps of one patch.

    Parameters
    ----------
    n_epochs : int
        Number of epochs (>= 1).
    size : int or (ny, nx)
        Patch size in pixels.
    seed : int
        Everything is drawn from ``numpy.random.default_rng(seed)``.
    fwhm_range : (float, float)
        Per-epoch PSF FWHM (pixels) is uniform in this range.
    star_density, galaxy_density : float
        Sources per pixel.  At LSST's 0.2"/px (3.24e8 px per deg^2) the defaults are ~97 000
        stars/deg^2 brighter than 2e3 nJy (22.6 mag AB: a crowded low-latitude field, tens of
        times the few thousand of a high-latitude one, chosen so that a 256^2 patch has stars to
        measure) and ~49 000 galaxies/deg^2 brighter than 1e3 nJy (23.9 mag), close to observed
        i-band galaxy counts.  The star density sets how much of the sky CompareWarp protects
        (``doPreserveContainedBySource``): ~18-20 % of a 512^2 patch at the default, since the
        300-sigma template threshold is read against the PSF-matched variance planes, which
        leave out the correlation PSF matching gives the noise (as afw's do), so that nearly
        every star brighter than ~2e3 nJy is protected in a 10-epoch template.
    galaxy_flux_range : (float, float)
        Galaxy fluxes (nJy) follow dN/dF ~ F^-2 between these limits (counts rising 0.4 dex per
        magnitude), so bright galaxies are as rare as they are on the sky.
    n_saturated_stars : int
        Stars of 1.5e6-5e6 nJy (saturated, with SAT masks) added to the power-law population.
        The sky density of such stars is ~1e-6 per pixel, so the default, 0, leaves them to
        chance; pass e.g. 2 to exercise SAT handling (their residuals merge with artifacts that
        cross them, which LSST's temporal rule then keeps, see DMTN-197).
    variable_fraction : float
        Fraction of (unsaturated) stars that vary; flux multiplier per epoch in [0.6, 1.4].
    sky_counts : (float, float)
        Per-epoch sky level (counts) range.
    read_noise : float
        Read noise (counts).
    throughput_range : (float, float)
        Per-epoch nJy per count.
    n_trails : int
        Satellite trails: half faint (peak ~2-4 sigma), half bright (~50-500 sigma), in distinct
        epochs.
    cosmic_ray_density : float
        Cosmic rays per pixel per epoch.
    ghost : bool
        Add one optical ghost (a faint disk) in one epoch.
    chip_gap_fraction : float
        Fraction of epochs with a NO_DATA chip gap and edge.
    bad_columns : int
        BAD columns per epoch (at dithered positions).
    psf_matched : bool
        Also build PSF-matched warps (double Gaussian, ``target_fwhm``).
    keep_truth_images : bool
        Keep the per-epoch truth cubes (memory: ~3 N ny nx floats).
    psf_gradient : float
        Fractional change of each epoch's PSF width from one side of the patch to the other,
        along a direction drawn per epoch (a :class:`~toolkit.psf.VaryingGaussianPsf`; its
        width at the centre is the epoch's FWHM).  0 (default): a constant PSF per epoch.
        The directions come from a stream of their own, so every other draw is as without it.
    """
    n_epochs = _number("n_epochs", n_epochs, 1, integer=True)
    psf_gradient = _number("psf_gradient", psf_gradient, 0.0, 1.0)
    ny, nx = _size(size, 32, "size")
    fwhm_range = _interval("fwhm_range", fwhm_range, strict=True)
    sky_counts = _interval("sky_counts", sky_counts)
    throughput_range = _interval("throughput_range", throughput_range, strict=True)
    for name, value in (("star_density", star_density), ("galaxy_density", galaxy_density), ("cosmic_ray_density", cosmic_ray_density), ("read_noise", read_noise)):
        _number(name, value)
    for name, value in (("variable_fraction", variable_fraction), ("chip_gap_fraction", chip_gap_fraction)):
        _number(name, value, 0.0, 1.0)
    for name, value in (("n_trails", n_trails), ("bad_columns", bad_columns)):
        _number(name, value, integer=True)
    if psf_matched:
        _number("target_fwhm", target_fwhm, strict=True)
    rng = np.random.default_rng(seed)
    area = ny * nx
    wcs = make_wcs((ny, nx))

    # ---- static sky
    n_bright = int(n_saturated_stars)
    if n_bright < 0:
        raise InputError(f"n_saturated_stars must be >= 0, got {n_saturated_stars}")
    n_stars = max(n_bright, rng.poisson(star_density * area))
    sx, sy = rng.uniform(-0.5, nx - 0.5, n_stars), rng.uniform(-0.5, ny - 0.5, n_stars)
    # power-law (dN/dF ~ F^-2) fluxes in nJy, 2e3 .. 5e6
    u = rng.uniform(size=n_stars)
    fmin, fmax = 2e3, 5e6
    sflux = _power_law_flux(u, fmin, fmax)
    sflux[:n_bright] = rng.uniform(1.5e6, 5e6, n_bright)
    n_gal = rng.poisson(galaxy_density * area)
    gx, gy = rng.uniform(0, nx - 1, n_gal), rng.uniform(0, ny - 1, n_gal)
    # power-law (dN/dF ~ F^-2, i.e. counts rising 0.4 dex per magnitude as observed at
    # i ~ 20-23) between the two limits, as for stars
    gmin, gmax = (float(v) for v in galaxy_flux_range)
    if not 0 < gmin < gmax < np.inf:
        raise InputError(f"galaxy_flux_range must be 0 < min < max, got {galaxy_flux_range}")
    gflux = _power_law_flux(rng.uniform(size=n_gal), gmin, gmax)
    gsize = rng.uniform(1.0, 4.0, n_gal)
    ge = rng.uniform(0, 0.5, n_gal)
    gtheta = rng.uniform(0, np.pi, n_gal)
    a2, b2 = (gsize * (1 + ge)) ** 2, (gsize * (1 - ge)) ** 2
    c, s = np.cos(gtheta), np.sin(gtheta)
    gxx, gyy, gxy = a2 * c * c + b2 * s * s, a2 * s * s + b2 * c * c, (a2 - b2) * c * s
    variable = (rng.uniform(size=n_stars) < variable_fraction) & (sflux < 3e5)
    var_mult = np.ones((n_epochs, n_stars))
    var_mult[:, variable] = rng.uniform(0.6, 1.4, (n_epochs, variable.sum()))

    # ---- per-epoch conditions
    fwhm = rng.uniform(*fwhm_range, n_epochs)
    sigma = fwhm / FWHM_PER_SIGMA
    sky = rng.uniform(*sky_counts, n_epochs)
    thr = rng.uniform(*throughput_range, n_epochs)

    # ---- artifacts: plan them first so the RNG stream does not depend on truth options
    art_rows = []
    trail_epochs = rng.permutation(n_epochs)[: min(n_trails, n_epochs)]
    for k, ep in enumerate(trail_epochs):
        kind = 1 if k % 2 == 0 else 2
        theta = rng.uniform(0, np.pi)
        x0, y0 = rng.uniform(0.3 * nx, 0.7 * nx), rng.uniform(0.3 * ny, 0.7 * ny)
        noise_sigma = np.sqrt(sky[ep] + read_noise**2)
        peak_snr = rng.uniform(2.0, 4.0) if kind == 1 else rng.uniform(50.0, 500.0)
        art_rows.append((int(ep), kind, x0, y0, theta, peak_snr * noise_sigma * thr[ep], float(sigma[ep]), 0.0))
    n_cr = rng.poisson(cosmic_ray_density * area, n_epochs)
    for ep in range(n_epochs):
        for _ in range(n_cr[ep]):
            x0, y0 = rng.uniform(5, nx - 6), rng.uniform(5, ny - 6)
            length = rng.uniform(1.0, 12.0)
            theta = rng.uniform(0, np.pi)
            amp = rng.uniform(30.0, 300.0) * np.sqrt(sky[ep] + read_noise**2) * thr[ep]
            art_rows.append((ep, 3, x0, y0, theta, amp, 0.6, length))
    if ghost:
        ep = int(rng.integers(n_epochs))
        x0, y0 = rng.uniform(0.25 * nx, 0.75 * nx), rng.uniform(0.25 * ny, 0.75 * ny)
        radius = rng.uniform(0.05, 0.1) * min(nx, ny)
        amp = rng.uniform(2.0, 4.0) * np.sqrt(sky[ep] + read_noise**2) * thr[ep]
        art_rows.append((ep, 4, x0, y0, 0.0, amp, 2.0, radius))

    gap = rng.uniform(size=n_epochs) < chip_gap_fraction
    gap_x = rng.integers(nx // 5, 4 * nx // 5, n_epochs)
    gap_w = rng.integers(4, 12, n_epochs)
    edge_w = rng.integers(3, max(4, nx // 20), n_epochs)
    bad_cols = rng.integers(0, nx, (n_epochs, bad_columns))
    noise_seeds = rng.integers(0, 2**63 - 1, n_epochs)

    yy, xx = np.mgrid[0:ny, 0:nx]
    planes = MaskPlanes()
    sat_bit, bad_bit, nd_bit = (np.int32(planes.bitmask([p])) for p in ("SAT", "BAD", "NO_DATA"))
    direct, matched = [], []
    noiseless_all = np.zeros((n_epochs, ny, nx), np.float32) if keep_truth_images else None
    art_flux_all = np.zeros((n_epochs, ny, nx), np.float32) if keep_truth_images else None
    art_kind_all = np.zeros((n_epochs, ny, nx), np.uint8) if keep_truth_images else None
    sat_star = np.zeros(n_stars, bool)
    centre = ((nx - 1) / 2, (ny - 1) / 2)
    # per epoch, d sigma / d (x, y): a stream of its own keeps the other draws as they were
    phi = np.random.default_rng([seed, 1]).uniform(0, 2 * np.pi, n_epochs) if psf_gradient else np.zeros(n_epochs)
    for ep in range(n_epochs):
        psf_s = float(sigma[ep])
        if psf_gradient:
            slope = psf_gradient * psf_s / max(nx, ny)
            psf = VaryingGaussianPsf(psf_s, slope * np.cos(phi[ep]), slope * np.sin(phi[ep]), ref=centre)
            s_star = psf_s + psf.dsigma_dx * (sx - centre[0]) + psf.dsigma_dy * (sy - centre[1])
            s_gal = psf_s + psf.dsigma_dx * (gx - centre[0]) + psf.dsigma_dy * (gy - centre[1])
        else:
            psf = GaussianPsf(psf_s)
            s_star = s_gal = psf_s
        model = render_points((ny, nx), sx, sy, sflux * var_mult[ep], s_star, sampled=True)
        model += _render_galaxies((ny, nx), gx, gy, gflux, gxx, gyy, gxy, s_gal)
        art = np.zeros((ny, nx))
        kind_img = np.zeros((ny, nx), np.uint8)
        for row in art_rows:
            e, kind, x0, y0, theta, amp, width, extra = row
            if e != ep:
                continue
            if kind in (1, 2):  # trail: PSF-wide line through the whole image, truncated at 5 sigma
                dist = np.abs(-(xx - x0) * np.sin(theta) + (yy - y0) * np.cos(theta))
                prof = np.where(dist <= 5 * width, amp * np.exp(-0.5 * (dist / width) ** 2), 0.0)
            elif kind == 3:  # cosmic ray: sharp track, not PSF-convolved (rendered in a local box)
                ux, uy = np.cos(theta), np.sin(theta)
                r = int(extra) + 4
                ys = slice(max(0, int(y0) - r), min(ny, int(y0) + r + 1))
                xs = slice(max(0, int(x0) - r), min(nx, int(x0) + r + 1))
                bx, by = xx[ys, xs], yy[ys, xs]
                t = np.clip((bx - x0) * ux + (by - y0) * uy, 0, extra)
                dist = np.hypot(bx - (x0 + t * ux), by - (y0 + t * uy))
                prof = np.zeros((ny, nx))
                prof[ys, xs] = np.where(dist <= 1.5, amp * np.exp(-0.5 * (dist / width) ** 2), 0.0)
            else:  # ghost: a faint disk with soft edge, truncated
                r = np.hypot(xx - x0, yy - y0)
                with np.errstate(over="ignore"):  # exp overflows far outside the disk: 1/inf = 0
                    prof = np.where(r <= extra + 3 * width, amp / (1 + np.exp((r - extra) / width)), 0.0)
            kind_img[(prof != 0) & (kind_img == 0)] = kind
            art += prof
        # counts and noise
        counts_model = (model + art) / thr[ep]
        var_counts = sky[ep] + np.maximum(counts_model, 0) + read_noise**2
        nrng = np.random.default_rng(noise_seeds[ep])
        counts = counts_model + nrng.standard_normal((ny, nx)) * np.sqrt(var_counts)
        mask = np.zeros((ny, nx), np.int32)
        # single-visit detection footprints, as LSST's calexp detection makes them (warps carry
        # DETECTED): 5 sigma on the PSF-smoothed image, grown by 2.4 sigma_PSF
        simg, svar = smooth_for_detection(counts, var_counts, psf_s)
        det, _ = threshold_footprints(simg, svar, 5.0, "positive", 1, grow_radius(2.4, psf_s))
        mask[det > 0] |= np.int32(planes.bitmask(["DETECTED"]))
        sat = counts_model + sky[ep] > _SAT_COUNTS
        counts[sat] = _SAT_COUNTS - sky[ep]
        mask[sat] |= sat_bit
        image = counts * thr[ep]
        variance = var_counts * thr[ep] ** 2
        for col in bad_cols[ep]:
            image[:, col] += 50 * np.sqrt(sky[ep]) * thr[ep]
            mask[:, col] |= bad_bit
        if gap[ep]:
            nd = np.zeros((ny, nx), bool)
            nd[:, gap_x[ep] : gap_x[ep] + gap_w[ep]] = True
            nd[:, : edge_w[ep]] = True
            image[nd] = np.nan
            variance[nd] = np.inf
            mask[nd] |= nd_bit
        if sat.any():
            near = np.hypot(sx[:, None] - xx[sat][None, :], sy[:, None] - yy[sat][None, :]).min(1) < 2 if sat.sum() < 5e4 else np.zeros(n_stars, bool)
            sat_star |= near
        exp = Exposure(
            image.astype(dtype), variance.astype(dtype), mask, planes, psf=psf,
            photo_calib=1.0, wcs=wcs, metadata={"BUNIT": "nJy", "EPOCH": ep, "SEEING": float(fwhm[ep]), "SKYCNTS": float(sky[ep]), "THRUPUT": float(thr[ep])},
        )
        direct.append(exp)
        if keep_truth_images:
            noiseless_all[ep] = model
            art_flux_all[ep] = art
            art_kind_all[ep] = kind_img
    if psf_matched:
        target = DoubleGaussianPsf(target_fwhm)
        matched = [match_to_psf(e, target) for e in direct]
    truth: dict[str, Any] = {
        "psf_sigma": sigma,
        "throughput": thr,
        "sky_counts": sky,
        "read_noise": read_noise,
    }
    if keep_truth_images:
        truth.update(noiseless=noiseless_all, artifact_flux=art_flux_all, artifact_mask=art_flux_all != 0, artifact_kind=art_kind_all)
    stars = Table({"x": sx, "y": sy, "flux": sflux, "variable": variable, "saturated": sat_star, "mean_flux": sflux * var_mult.mean(0)})
    gals = Table({"x": gx, "y": gy, "flux": gflux, "size": gsize, "e": ge, "theta": gtheta})
    vidx = np.nonzero(variable)[0]
    variables = Table({"star": vidx, "x": sx[vidx], "y": sy[vidx], "flux": (sflux[vidx][None, :] * var_mult[:, vidx]).T})
    arts = Table(rows=art_rows, names=("epoch", "kind", "x0", "y0", "theta", "amplitude", "width", "extent"), dtype=(int, int, float, float, float, float, float, float)) if art_rows else Table(names=("epoch", "kind"))
    params = dict(n_epochs=n_epochs, size=(ny, nx), seed=seed, target_fwhm=target_fwhm, psf_gradient=psf_gradient)
    return SimulatedStack(direct, matched if psf_matched else None, truth, {"stars": stars, "galaxies": gals, "variables": variables, "artifacts": arts}, params)


def predicted_zogy_snr(flux: np.ndarray, psf_sci: np.ndarray, psf_ref: np.ndarray, var_sci: float, var_ref: float, f_sci: float = 1.0, f_ref: float = 1.0, shape: tuple[int, int] = (256, 256)) -> np.ndarray:
    """Optimal S/N of point transients of ``flux`` (science units) in a ZOGY subtraction,
    ``flux * sqrt(F_S)`` with ``F_S = sum_k F_n^2 F_r^2 |P_n|^2 |P_r|^2 / (s_n^2 F_r^2 |P_r|^2 + s_r^2 F_n^2 |P_n|^2) / N``
    (ZOGY paper, eqs. 41-42; sums over the DFT grid ``shape``).  Background noise only."""
    from .psf_matching import _embed_origin

    pn = np.fft.fft2(_embed_origin(psf_sci, shape))
    pr = np.fft.fft2(_embed_origin(psf_ref, shape))
    num = f_sci**2 * f_ref**2 * np.abs(pn) ** 2 * np.abs(pr) ** 2
    den = var_sci * f_ref**2 * np.abs(pr) ** 2 + var_ref * f_sci**2 * np.abs(pn) ** 2
    fs = np.sum(num / np.maximum(den, 1e-300)) / (shape[0] * shape[1])
    return np.asarray(flux) * np.sqrt(fs)


@dataclass
class SimulatedPair:
    """A reference/science pair for image subtraction, with truth.

    ``truth`` holds ``transients`` (Table: x, y, flux [science nJy], snr_pred), ``stars``, and
    the noiseless images ``science_model`` / ``reference_model`` (calibrated nJy).
    """

    science: Exposure
    reference: Exposure
    truth: dict[str, Any]


def simulate_pair(
    size: int | tuple[int, int] = 512,
    seed: int = 1,
    science_fwhm: float = 4.0,
    reference_fwhm: float = 3.0,
    science_sky_sigma: float = 30.0,
    reference_sky_sigma: float = 15.0,
    science_calib: float = 1.3,
    reference_calib: float = 1.0,
    star_density: float = 1e-3,
    n_transients: int = 30,
    transient_snr_range: tuple[float, float] = (5.0, 40.0),
    science_fwhm_gradient: tuple[float, float] = (0.0, 0.0),
    source_noise: bool = True,
    dtype: Any = np.float32,
) -> SimulatedPair:
    """Simulate a reference and a science image of one field, with point transients.

    Images are in counts with ``photo_calib`` nJy/count (``science_calib`` and
    ``reference_calib``), so ZOGY's ``scaleByCalibration`` has something to do.  Noise levels are
    given as the calibrated (nJy) sky sigma.  Transient fluxes are drawn so that their predicted
    optimal ZOGY S/N is uniform in ``transient_snr_range`` (background-limited prediction).
    ``science_fwhm_gradient`` (d FWHM / d x, d FWHM / d y per pixel) makes the science PSF vary
    across the field (for grid mode).
    """
    ny, nx = _size(size, 64, "pair size")
    for name, value in (("science_fwhm", science_fwhm), ("reference_fwhm", reference_fwhm), ("science_sky_sigma", science_sky_sigma), ("reference_sky_sigma", reference_sky_sigma), ("science_calib", science_calib), ("reference_calib", reference_calib)):
        _number(name, value, strict=True)
    _number("star_density", star_density)
    _number("n_transients", n_transients, integer=True)
    _interval("transient_snr_range", transient_snr_range, strict=True)
    try:
        gx_, gy_ = (float(v) for v in science_fwhm_gradient)
    except (TypeError, ValueError):
        raise InputError(f"science_fwhm_gradient must be (d FWHM/dx, d FWHM/dy), got {science_fwhm_gradient!r}") from None
    if not (np.isfinite(gx_) and np.isfinite(gy_)):
        raise InputError(f"science_fwhm_gradient must be finite, got {science_fwhm_gradient!r}")
    rng = np.random.default_rng(seed)
    wcs = make_wcs((ny, nx))
    n_stars = max(1, rng.poisson(star_density * ny * nx))
    margin = 8
    sx, sy = rng.uniform(margin, nx - margin, n_stars), rng.uniform(margin, ny - margin, n_stars)
    u = rng.uniform(size=n_stars)
    fmin, fmax = 500.0, 2e5
    sflux = _power_law_flux(u, fmin, fmax)
    s_ref = reference_fwhm / FWHM_PER_SIGMA
    ref_psf = GaussianPsf(s_ref)
    s_sci0 = science_fwhm / FWHM_PER_SIGMA
    gx, gy = (g / FWHM_PER_SIGMA for g in science_fwhm_gradient)
    center = ((nx - 1) / 2, (ny - 1) / 2)
    if gx or gy:
        sci_psf: Psf = VaryingGaussianPsf(s_sci0, gx, gy, ref=center, size=2 * int(np.ceil(4 * (s_sci0 + abs(gx) * nx / 2 + abs(gy) * ny / 2))) + 1)
    else:
        sci_psf = GaussianPsf(s_sci0)
    # transients: away from the border and from each other
    n_tr = int(n_transients)
    tx = rng.uniform(3 * margin, nx - 3 * margin, n_tr)
    ty = rng.uniform(3 * margin, ny - 3 * margin, n_tr)
    target_snr = rng.uniform(*transient_snr_range, n_tr)
    snr1 = np.array([
        predicted_zogy_snr(1.0, sci_psf.compute_kernel_image((x, y), size=41), ref_psf.compute_kernel_image(size=41), science_sky_sigma**2, reference_sky_sigma**2)
        for x, y in zip(tx, ty)
    ])
    tflux = target_snr / snr1
    sci_sig = np.array([sci_psf.sigma_at((x, y)) for x, y in zip(sx, sy)]) if isinstance(sci_psf, VaryingGaussianPsf) else s_sci0
    tr_sig = np.array([sci_psf.sigma_at((x, y)) for x, y in zip(tx, ty)]) if isinstance(sci_psf, VaryingGaussianPsf) else s_sci0
    # sampled (not pixel-integrated) profiles: exactly the PSF models the pair carries
    ref_model = render_points((ny, nx), sx, sy, sflux, s_ref, sampled=True)
    sci_static = render_points((ny, nx), sx, sy, sflux, sci_sig, sampled=True)
    sci_model = sci_static + render_points((ny, nx), tx, ty, tflux, tr_sig, sampled=True)

    def observe(model_njy, sky_sigma_njy, calib, psf):
        counts = model_njy / calib
        sky_var_counts = (sky_sigma_njy / calib) ** 2
        var = sky_var_counts + (np.maximum(counts, 0) if source_noise else 0)
        img = counts + rng.standard_normal(counts.shape) * np.sqrt(var)
        return Exposure(img.astype(dtype), np.broadcast_to(var, counts.shape).astype(dtype), None, psf=psf, photo_calib=calib, wcs=wcs, metadata={"BUNIT": "count"})

    sci = observe(sci_model, science_sky_sigma, science_calib, sci_psf)
    ref = observe(ref_model, reference_sky_sigma, reference_calib, ref_psf)
    transients = Table({"x": tx, "y": ty, "flux": tflux, "snr_pred": target_snr})
    stars = Table({"x": sx, "y": sy, "flux": sflux})
    truth = {"transients": transients, "stars": stars, "science_model": sci_model, "reference_model": ref_model, "science_static": sci_static}
    return SimulatedPair(sci, ref, truth)
