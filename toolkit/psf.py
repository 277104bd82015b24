"""Point-spread-function models: Gaussian, LSST's double-Gaussian model PSF, image stamps,
spatially varying Gaussians, PSFEx models, and the weighted-average coadd PSF.

Every PSF returns a normalised kernel image (sum 1) of odd size whose centre pixel is the PSF
centre, as ``afw``'s ``computeKernelImage`` does, and its adaptive-moment determinant radius,
which LSST uses to scale growth radii.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

import numba as nb
import numpy as np

from .errors import InputError
from .parallel import one_blas_thread

__all__ = [
    "Psf",
    "GaussianPsf",
    "DoubleGaussianPsf",
    "ImagePsf",
    "VaryingGaussianPsf",
    "PsfexPsf",
    "CoaddPsf",
    "InputCoverage",
    "adaptive_moments",
    "determinant_radius",
    "model_psf",
    "FWHM_PER_SIGMA",
]

#: FWHM / sigma for a Gaussian, 2 sqrt(2 ln 2).  LSST's GaussianPsfFactory uses 2.3548.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def _odd(n: float) -> int:
    n = int(n)
    return n if n % 2 == 1 else n + 1


def _kernel_size(size: float) -> int:
    """``size`` made odd, refused when that is below 1 (a kernel image's side)."""
    n = _odd(size)
    if n < 1:
        raise InputError(f"PSF kernel size must be >= 1, got {size}")
    return n


def _sampled_gaussian_2d(n: int, sigma: float) -> np.ndarray:
    """Gaussian sampled at pixel centres (afw evaluates its analytic PSFs this way)."""
    x = np.arange(n) - n // 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return np.outer(g, g)


#: weights below exp(-_Q_CUT / 2) (~1e-20 of the peak) are taken as 0: what the pixels there
#: add to the sums is below double precision's resolution of them
_Q_CUT = 92.0


@nb.njit(cache=True, nogil=True)
def _weighted_sums(img, i00, i01, i11, xc, yc):  # pragma: no cover - compiled
    # one pass of the adaptive-moment iteration: with the weight w = exp(-q/2), q the quadratic
    # form of the inverse covariance (i00, i01, i11) about (xc, yc), the sums of img w and of
    # img w times dx, dy, dx^2, dx dy, dy^2 (dx, dy about (xc, yc)).  The exponential is
    # taken only where the weight is not negligible (a compact PSF in a big stamp: a few
    # hundred of ~10^4 pixels)
    s = sx = sy = sxx = sxy = syy = 0.0
    for iy in range(img.shape[0]):
        dy = iy - yc
        for ix in range(img.shape[1]):
            dx = ix - xc
            q = i00 * dx * dx + 2.0 * i01 * dx * dy + i11 * dy * dy
            if q < _Q_CUT:
                v = img[iy, ix] * np.exp(-0.5 * q)
                s += v
                sx += v * dx
                sy += v * dy
                sxx += v * dx * dx
                sxy += v * dx * dy
                syy += v * dy * dy
    return s, sx, sy, sxx, sxy, syy


def _inv2(a: float, b: float, c: float) -> tuple[float, float, float] | None:
    """The inverse of the symmetric 2x2 matrix [[a, b], [b, c]] as (a', b', c'); None where it
    is singular (np.linalg.inv's call overhead was most of an iteration's time)."""
    det = a * c - b * b
    if det == 0 or not np.isfinite(det):
        return None
    return c / det, -b / det, a / det


def adaptive_moments(image: np.ndarray, max_iter: int = 100, tol: float = 1e-8) -> tuple[float, float, float]:
    """Adaptive (elliptical-Gaussian-weighted) second moments ``(Ixx, Iyy, Ixy)`` of a stamp.

    Hand-written because neither astropy nor photutils exposes HSM-style adaptive moments; the
    iteration is the standard one: measure moments with a Gaussian weight of covariance M, then
    deconvolve the weight, ``C = (Mw^-1 - M^-1)^-1``, and use C as the next weight.  For a
    Gaussian profile it converges to the profile's covariance, so the determinant radius of a
    Gaussian is its sigma.  Each iteration is one compiled pass over the stamp (the weighted
    moments about the new centroid follow from the sums about the old one): a measured PSF's
    101-px stamp took ~7 ms in numpy array passes, ahead of every ZOGY run.
    """
    img = np.asarray(image, dtype=np.float64)
    ny, nx = img.shape
    y, x = np.mgrid[0:ny, 0:nx]
    total = img.sum()
    if not np.isfinite(total) or total <= 0:
        raise InputError("PSF image must have a finite, positive sum for moments")
    xc = (img * x).sum() / total
    yc = (img * y).sum() / total
    dx, dy = x - xc, y - yc
    cov = np.array([[(img * dx * dx).sum(), (img * dx * dy).sum()], [0.0, (img * dy * dy).sum()]]) / total
    cov[1, 0] = cov[0, 1]
    if np.linalg.det(cov) <= 0:
        cov = np.eye(2)
    img = np.ascontiguousarray(img)
    c = (float(cov[0, 0]), float(cov[0, 1]), float(cov[1, 1]))
    for _ in range(max_iter):
        inv = _inv2(*c)
        if inv is None:
            break
        s, sx, sy, sxx, sxy, syy = _weighted_sums(img, *inv, float(xc), float(yc))
        if not s > 0:
            break
        # the new centroid, and the moments about it: sum w (d - m)^2 = sum w d^2 - s m^2
        mx, my = sx / s, sy / s
        xc, yc = xc + mx, yc + my
        mw = _inv2(sxx / s - mx * mx, sxy / s - mx * my, syy / s - my * my)
        if mw is None:
            break
        new = _inv2(mw[0] - inv[0], mw[1] - inv[1], mw[2] - inv[2])
        if new is None or not new[0] * new[2] - new[1] * new[1] > 0:
            break
        done = max(abs(n - o) for n, o in zip(new, c)) < tol * max(1.0, max(abs(o) for o in c))
        c = new
        if done:
            break
    cov = np.array([[c[0], c[1]], [c[1], c[2]]])
    return float(cov[0, 0]), float(cov[1, 1]), float(cov[0, 1])


def determinant_radius(image: np.ndarray) -> float:
    """(Ixx Iyy - Ixy^2)^(1/4) of the adaptive moments of ``image``."""
    ixx, iyy, ixy = adaptive_moments(image)
    return float((ixx * iyy - ixy * ixy) ** 0.25)


class Psf:
    """Base class.  Subclasses implement :meth:`_kernel` and describe themselves in :meth:`to_dict`."""

    #: default odd size of the kernel image
    size: int = 21
    #: True when the kernel image is the same at every position (a model without spatial
    #: terms), so position-dependent work (a spatially varying matching kernel) can be skipped
    constant: bool = False

    def compute_kernel_image(self, position: Sequence[float] | None = None, size: int | None = None) -> np.ndarray:
        """Normalised (sum 1), centred kernel image of odd ``size`` at ``position`` (x, y)."""
        n = self.size if size is None else _kernel_size(size)
        k = np.asarray(self._kernel(n, position), dtype=np.float64)
        s = k.sum()
        if not np.isfinite(s) or s <= 0:
            raise InputError("PSF kernel has a non-finite or non-positive sum")
        return k / s

    def _kernel(self, n: int, position: Sequence[float] | None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def resized(self, size: int) -> "Psf":
        """A copy whose default kernel image is ``size`` (made odd) pixels on a side.

        LSST's ``Psf.resized``.  For an analytic model this sets how much of its profile the
        default (normalised) stamp holds: a wide wing truncated by a small stamp moves flux into
        the core.  The PSF itself is not changed.
        """
        n = _kernel_size(size)
        new = copy.copy(self)
        new.size = n
        return new

    def determinant_radius(self, position: Sequence[float] | None = None) -> float:
        """Adaptive-moment determinant radius (pixels) of the kernel image at ``position``."""
        return determinant_radius(self.compute_kernel_image(position))

    def to_dict(self) -> dict[str, Any]:
        """Description from which :func:`psf_from_dict` rebuilds the PSF (what a FITS file keeps).

        diffstack's own models describe themselves.  Any other subclass (a user's own model)
        is described by its kernel image at its default position, with its class name under
        ``"model"``: it comes back as an :class:`ImagePsf`.
        """
        return {"type": "ImagePsf", "array": self.compute_kernel_image(), "model": type(self).__name__}

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        a, b = self.to_dict(), other.to_dict()  # type: ignore[attr-defined]
        if a.keys() != b.keys():
            return False
        return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)

    __hash__ = None  # type: ignore[assignment]


class GaussianPsf(Psf):
    """Circular Gaussian PSF of width ``sigma`` (pixels), sampled at pixel centres.

    Parameters
    ----------
    sigma : float
        Gaussian sigma in pixels (> 0).
    size : int, optional
        Odd kernel size; default ``2*ceil(4 sigma)+1``, at least 5.
    """

    constant = True

    def __init__(self, sigma: float, size: int | None = None) -> None:
        sigma = float(sigma)
        if not np.isfinite(sigma) or sigma <= 0:
            raise InputError(f"GaussianPsf sigma must be finite and > 0, got {sigma}")
        self.sigma = sigma
        self.size = _odd(size if size is not None else max(5, 2 * int(np.ceil(4 * sigma)) + 1))

    @property
    def fwhm(self) -> float:
        return self.sigma * FWHM_PER_SIGMA

    def _kernel(self, n, position):
        return _sampled_gaussian_2d(n, self.sigma)

    def to_dict(self):
        return {"type": "GaussianPsf", "sigma": self.sigma, "size": self.size}

    def __repr__(self) -> str:
        return f"GaussianPsf(sigma={self.sigma:g}, size={self.size})"


class DoubleGaussianPsf(Psf):
    """LSST's model PSF (``GaussianPsfFactory`` with ``addWing=True``): a core Gaussian plus a
    wing Gaussian ``wing_fwhm_factor`` times wider whose peak is ``wing_amplitude`` of the core's.

    Parameters
    ----------
    fwhm : float
        Core FWHM in pixels (LSST's ``defaultFwhm``; 7.7 for PSF-matched warps).
    wing_fwhm_factor, wing_amplitude : float
        LSST defaults 2.5 and 0.1.
    size_factor, min_size : float, int
        Kernel size = max(min_size, int(size_factor * fwhm + 0.5)), made odd (LSST 3 and 5).
    """

    constant = True

    def __init__(
        self,
        fwhm: float = 7.7,
        wing_fwhm_factor: float = 2.5,
        wing_amplitude: float = 0.1,
        size_factor: float = 3.0,
        min_size: int = 5,
        size: int | None = None,
    ) -> None:
        fwhm = float(fwhm)
        if not np.isfinite(fwhm) or fwhm <= 0:
            raise InputError(f"DoubleGaussianPsf fwhm must be finite and > 0, got {fwhm}")
        if wing_fwhm_factor <= 0 or wing_amplitude < 0:
            raise InputError("wing_fwhm_factor must be > 0 and wing_amplitude >= 0")
        self.fwhm = fwhm
        self.wing_fwhm_factor = float(wing_fwhm_factor)
        self.wing_amplitude = float(wing_amplitude)
        # LSST GaussianPsfFactory: sigma = fwhm / 2.3548 (rounded constant kept for parity)
        self.sigma1 = fwhm / 2.3548
        self.sigma2 = self.sigma1 * self.wing_fwhm_factor
        if size is None:
            size = max(int(min_size), int(size_factor * fwhm + 0.5))
        self.size = _odd(size)

    def _kernel(self, n, position):
        return _sampled_gaussian_2d(n, self.sigma1) + self.wing_amplitude * _sampled_gaussian_2d(n, self.sigma2)

    def to_dict(self):
        return {
            "type": "DoubleGaussianPsf",
            "fwhm": self.fwhm,
            "wing_fwhm_factor": self.wing_fwhm_factor,
            "wing_amplitude": self.wing_amplitude,
            "size": self.size,
        }

    def __repr__(self) -> str:
        return f"DoubleGaussianPsf(fwhm={self.fwhm:g}, size={self.size})"


def model_psf(fwhm: float = 7.7) -> DoubleGaussianPsf:
    """LSST's default PSF-matched-warp model PSF (double Gaussian, core FWHM ``fwhm``)."""
    return DoubleGaussianPsf(fwhm)


class ImagePsf(Psf):
    """A PSF given as an image stamp (e.g. WebbPSF, or measured from stars).

    The stamp is normalised to sum 1.  Even-sized stamps get a zero row/column appended so
    that the pixel at index ``n//2`` stays the centre, as LSST's kernel convention has it.
    """

    constant = True

    def __init__(self, array: Any, normalize: bool = True) -> None:
        arr = np.array(array, dtype=np.float64)
        if arr.ndim != 2:
            raise InputError(f"PSF image must be 2-D, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise InputError("PSF image contains NaN or infinite values")
        if arr.sum() <= 0:
            raise InputError("PSF image must have a positive sum")
        #: the stamp's shape as given (before an even side was made odd)
        self.input_shape: tuple[int, int] = (int(arr.shape[0]), int(arr.shape[1]))
        if arr.shape[0] % 2 == 0:
            arr = np.vstack([arr, np.zeros((1, arr.shape[1]))])
        if arr.shape[1] % 2 == 0:
            arr = np.hstack([arr, np.zeros((arr.shape[0], 1))])
        # normalize=False keeps a stored, already normalised stamp bit-identical on a round trip
        self.array = arr / arr.sum() if normalize else arr
        self.size = max(arr.shape)

    def _kernel(self, n, position):
        return _resize_centered(self.array, n)

    def resized(self, size: int) -> "ImagePsf":
        # the stamp is the whole PSF: a larger one only adds zeros, a smaller one crops it
        n = _kernel_size(size)
        return self if n >= self.size else ImagePsf(_resize_centered(self.array, n))

    def to_dict(self):
        return {"type": "ImagePsf", "array": self.array}

    def __repr__(self) -> str:
        return f"ImagePsf(shape={self.array.shape})"


def _resize_centered(arr: np.ndarray, n: int) -> np.ndarray:
    """Crop or zero-pad a centred odd stamp to ``n x n`` keeping the centre pixel."""
    out = np.zeros((n, n))
    cy, cx = arr.shape[0] // 2, arr.shape[1] // 2
    h = n // 2
    y0, y1 = max(0, cy - h), min(arr.shape[0], cy + h + 1)
    x0, x1 = max(0, cx - h), min(arr.shape[1], cx + h + 1)
    out[h - (cy - y0) : h + (y1 - cy), h - (cx - x0) : h + (x1 - cx)] = arr[y0:y1, x0:x1]
    return out


class VaryingGaussianPsf(Psf):
    """A Gaussian whose sigma varies linearly across the parent frame:
    ``sigma(x, y) = sigma0 + dsigma_dx * (x - x_ref) + dsigma_dy * (y - y_ref)``.

    Used to test ZOGY's grid mode, where each cell gets the PSF at its centre.
    """

    def __init__(
        self,
        sigma0: float,
        dsigma_dx: float = 0.0,
        dsigma_dy: float = 0.0,
        ref: tuple[float, float] = (0.0, 0.0),
        size: int | None = None,
    ) -> None:
        self.sigma0, self.dsigma_dx, self.dsigma_dy = float(sigma0), float(dsigma_dx), float(dsigma_dy)
        self.ref = (float(ref[0]), float(ref[1]))
        if not (np.isfinite(self.sigma0) and self.sigma0 > 0):
            raise InputError(f"VaryingGaussianPsf sigma0 must be finite and > 0, got {sigma0!r}")
        if not all(np.isfinite(v) for v in (self.dsigma_dx, self.dsigma_dy, *self.ref)):
            raise InputError(f"VaryingGaussianPsf gradients and ref must be finite, got {(dsigma_dx, dsigma_dy)} and {tuple(ref)}")
        self.size = _odd(size if size is not None else max(5, 2 * int(np.ceil(4 * sigma0 * 1.5)) + 1))

    def sigma_at(self, position: Sequence[float] | None) -> float:
        if position is None:
            return self.sigma0
        s = self.sigma0 + self.dsigma_dx * (position[0] - self.ref[0]) + self.dsigma_dy * (position[1] - self.ref[1])
        if not np.isfinite(s):
            raise InputError(f"VaryingGaussianPsf: the position must be finite, got {tuple(position)}")
        if s <= 0:
            raise InputError(f"VaryingGaussianPsf sigma is non-positive at {tuple(position)}")
        return s

    def _kernel(self, n, position):
        return _sampled_gaussian_2d(n, self.sigma_at(position))

    def to_dict(self):
        return {
            "type": "VaryingGaussianPsf",
            "sigma0": self.sigma0,
            "dsigma_dx": self.dsigma_dx,
            "dsigma_dy": self.dsigma_dy,
            "ref": list(self.ref),
            "size": self.size,
        }


def _psfex_interpolant(x: np.ndarray) -> np.ndarray:
    """PSFEx's resampling kernel (``INTERPF`` of its vignet.c): Lanczos-3,
    sin(pi x) sin(pi x / 3) / (pi^2 x^2 / 3), 1 at 0 and 0 beyond |x| = 3."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    small = np.abs(x) < 1e-5
    inside = ~small & (np.abs(x) <= 3.0)
    xi = x[inside]
    out[inside] = np.sin(np.pi * xi) * np.sin(np.pi * xi / 3.0) / (np.pi**2 * xi**2 / 3.0)
    out[small] = 1.0
    return out


@functools.lru_cache(maxsize=64)
def _psfex_resample_matrix(n_in: int, n_out: int, step: float) -> np.ndarray:
    """(n_out, n_in) weights of PSFEx's ``vignet_resample`` along one axis, with no shift and
    the interpolant at the input's own scale (``stepi`` = 1): output pixel j samples the input
    at x1 = n_in//2 - n_out//2 * step + j * step, from the input pixels int(x1) - 5 ...
    int(x1) + 4 that exist, weighted by :func:`_psfex_interpolant` and normalised over them.
    Output pixels before the first x1 > 0 (when the start is negative) or past x1 = n_in - 1
    stay 0, by PSFEx's own integer arithmetic.

    Why by hand: PSFEx's window, renormalisation at the model's edge and start rule decide
    the kernel's pixel values; no library resampler has them.
    """
    m = np.zeros((n_out, n_in))
    hmw = int(3.0) + 2  # (INTERPW / 2) / dstepi + 2 with INTERPW = 6, dstepi = 1
    xs1 = float(n_in // 2) - float(n_out // 2) * step
    first = 0
    if xs1 < 0.0:
        first = int(1.0 - xs1 / step)
        if first >= n_out:
            return m
        xs1 += first * step
    count = min(int((n_in - 1 - xs1) / step + 1), n_out - first)
    for k in range(max(count, 0)):
        x1 = xs1 + k * step
        lo = int(x1) - hmw
        taps = np.arange(max(lo, 0), min(lo + 2 * hmw, n_in))
        w = _psfex_interpolant(taps - x1)
        total = w.sum()
        m[first + k, taps] = w / total if total > 0 else 0.0
    return m


class PsfexPsf(Psf):
    """A PSFEx model: basis images sampled every ``pixstep`` image pixels, combined with
    polynomial weights of the position, then resampled to the pixel grid as PSFEx does.

    The weights are the terms of a polynomial of degree ``degree`` in
    ``u = (x + origin - zero[0]) / scale[0]`` and ``v = (y + origin - zero[1]) / scale[1]``
    (x, y: parent pixel coordinates), in PSFEx's order: 1, u, ..., u^d, v, u v, ...,
    u^(d-1) v, v^2, ..., v^d; ``basis[k]`` is the k-th term's image (rows y, columns x).
    ``origin`` is 1 for a PSFEx file (its contexts are SExtractor's 1-based ``X_IMAGE``,
    ``Y_IMAGE``) and 0 for an LSST ``PsfexPsf`` (fitted on LSST's 0-based centroids).  As in
    LSST's ``PsfexPsf.computeKernelImage``, the terms are summed in float32 (the basis is
    float32 in both file formats), and the default kernel covers the model's extent in image
    pixels, ``int(width * pixstep)`` made odd.

    Parameters
    ----------
    basis : array (n_terms, h, w) or (h, w)
    pixstep : float
        Image pixels per model pixel (PSFEx's ``PSF_SAMP``, LSST's ``_pixstep``).
    degree : int
        Polynomial degree (``POLDEG1``); ``n_terms`` must be (degree + 1)(degree + 2) / 2.
    zero, scale : (float, float)
        ``POLZERO1/2`` and ``POLSCAL1/2`` (LSST's context offsets and scales).
    origin : float
        What is added to a 0-based pixel coordinate to get the model's context coordinate.
    default_position : (float, float), optional
        Position of the kernel when none is given (LSST: the average position of the PSF
        stars); the context centre ``zero - origin`` if omitted.
    size : int, optional
        Default kernel size (odd); the model's extent, ``int(width * pixstep)`` made odd, by
        default.
    """

    def __init__(self, basis: Any, pixstep: float, degree: int, zero: Sequence[float], scale: Sequence[float], origin: float = 0.0, default_position: Sequence[float] | None = None, size: int | None = None) -> None:
        b = np.array(basis, dtype=np.float32)
        if b.ndim == 2:
            b = b[None]
        if b.ndim != 3 or min(b.shape) < 1:
            raise InputError(f"PsfexPsf basis must be (n_terms, h, w), got shape {np.shape(basis)}")
        if not np.isfinite(b).all():
            raise InputError("PsfexPsf basis has NaN or infinite values")
        d = int(degree)
        if d < 0 or b.shape[0] != (d + 1) * (d + 2) // 2:
            raise InputError(f"PsfexPsf: a degree-{d} polynomial in x and y has {(d + 1) * (d + 2) // 2 if d >= 0 else '?'} terms, the basis has {b.shape[0]} images")
        if not (np.isfinite(pixstep) and pixstep > 0):
            raise InputError(f"PsfexPsf pixstep must be finite and > 0, got {pixstep!r}")
        zero, scale = tuple(float(z) for z in zero), tuple(float(c) for c in scale)
        if len(zero) != 2 or len(scale) != 2 or not all(np.isfinite(zero + scale)) or 0.0 in scale:
            raise InputError(f"PsfexPsf zero and scale must be two finite numbers each (scale non-zero), got {zero} and {scale}")
        self.basis, self.pixstep, self.degree = b, float(pixstep), d
        self.zero, self.scale, self.origin = zero, scale, float(origin)
        if default_position is None:
            default_position = (zero[0] - self.origin, zero[1] - self.origin)
        self.default_position = (float(default_position[0]), float(default_position[1]))
        self.size = _odd(size if size is not None else max(1, int(b.shape[2] * self.pixstep), int(b.shape[1] * self.pixstep)))

    def weights(self, position: Sequence[float] | None = None) -> np.ndarray:
        """The polynomial terms at ``position`` (x, y), in the basis' order."""
        x, y = self.default_position if position is None else (float(position[0]), float(position[1]))
        if not (np.isfinite(x) and np.isfinite(y)):
            raise InputError(f"PsfexPsf: the position must be finite, got {(x, y)}")
        u = (x + self.origin - self.zero[0]) / self.scale[0]
        v = (y + self.origin - self.zero[1]) / self.scale[1]
        d = self.degree
        return np.array([u**i * v**j for j in range(d + 1) for i in range(d + 1 - j)])

    def model_image(self, position: Sequence[float] | None = None) -> np.ndarray:
        """The model at ``position`` on its own grid (``pixstep`` image pixels apart), the terms
        summed in float32 in their order, as PSFEx and LSST do."""
        out = np.zeros(self.basis.shape[1:], np.float32)
        for w, b in zip(self.weights(position).astype(np.float32), self.basis):
            out += w * b
        return out

    def _kernel(self, n, position):
        model = self.model_image(position).astype(np.float64)
        h, w = model.shape
        step = 1.0 / self.pixstep  # model pixels per image pixel
        # the matrices are cached (a grid of cells asks for the same ones): read, never written
        with one_blas_thread():  # threaded products leave OpenBLAS's threads spinning
            return _psfex_resample_matrix(h, n, step) @ model @ _psfex_resample_matrix(w, n, step).T

    def to_dict(self):
        return {
            "type": "PsfexPsf", "basis": self.basis, "pixstep": self.pixstep, "degree": self.degree,
            "zero": list(self.zero), "scale": list(self.scale), "origin": self.origin,
            "default_position": list(self.default_position), "size": self.size,
        }

    def __repr__(self) -> str:
        return f"PsfexPsf(terms={self.basis.shape[0]}, model={self.basis.shape[2]}x{self.basis.shape[1]}, pixstep={self.pixstep:g})"


class InputCoverage:
    """Where each input of a coadd has data, one bit per pixel, on the coadd's pixel grid.

    LSST's ``CoaddPsf`` keeps each input CCD's bounding box and valid polygon; a warp's NO_DATA
    plane is that footprint drawn on the patch.  Bits are packed along x (``np.packbits``), so
    30 inputs of 2048^2 take 15 MB (each a 32nd of its int32 mask plane).

    Parameters
    ----------
    packed : sequence of 2-D uint8 arrays
        ``np.packbits(covered, axis=1)`` per input.
    shape : (ny, nx)
        The unpacked shape.
    xy0 : (int, int), optional
        Parent position (x, y) of pixel [0, 0].
    """

    def __init__(self, packed: Sequence[np.ndarray], shape: tuple[int, int], xy0: tuple[int, int] = (0, 0)) -> None:
        ny, nx = (int(v) for v in shape)
        self.packed = [np.asarray(p, dtype=np.uint8) for p in packed]
        if any(p.shape != (ny, (nx + 7) // 8) for p in self.packed):
            raise InputError(f"InputCoverage: packed arrays must have shape {(ny, (nx + 7) // 8)} for {(ny, nx)}, got {[p.shape for p in self.packed]}")
        self.shape = (ny, nx)
        self.xy0 = (int(xy0[0]), int(xy0[1]))

    @classmethod
    def from_boolean(cls, covered: Sequence[np.ndarray], xy0: tuple[int, int] = (0, 0)) -> "InputCoverage":
        """From 2-D boolean arrays (True where the input has data), all of one shape."""
        arrs = [np.asarray(c) for c in covered]
        if not arrs or any(a.ndim != 2 or a.dtype != bool or a.shape != arrs[0].shape for a in arrs):
            raise InputError(f"InputCoverage.from_boolean needs 2-D boolean arrays of one shape, got {[(a.dtype.name, a.shape) for a in arrs]}")
        return cls([np.packbits(a, axis=1) for a in arrs], arrs[0].shape, xy0)

    @classmethod
    def from_masks(cls, masks: Sequence[np.ndarray], no_data_bits: int | Sequence[int], xy0: tuple[int, int] = (0, 0)) -> "InputCoverage":
        """From integer mask planes: an input has data where none of its ``no_data_bits`` is set
        (one value for all, or one per mask when their plane dictionaries differ)."""
        from .parallel import map_epochs

        arrs = [np.asarray(m) for m in masks]
        if not arrs or any(a.ndim != 2 or not np.issubdtype(a.dtype, np.integer) or a.shape != arrs[0].shape for a in arrs):
            raise InputError(f"InputCoverage.from_masks needs 2-D integer masks of one shape, got {[(a.dtype.name, a.shape) for a in arrs]}")
        bits = [int(no_data_bits)] * len(arrs) if np.ndim(no_data_bits) == 0 else [int(b) for b in no_data_bits]  # type: ignore[union-attr]
        if len(bits) != len(arrs):
            raise InputError(f"InputCoverage.from_masks: no_data_bits needs one value or one per mask ({len(arrs)}), got {len(bits)}")
        ny, nx = arrs[0].shape

        def pack(ab):
            m, b = ab
            out = np.empty((ny, (nx + 7) // 8), np.uint8)
            # in blocks of rows: the whole-plane temporaries (m & b, then == 0) would be 5 bytes
            # per pixel, more than the coadd's own peak allows at survey scale
            step = max(1, (1 << 18) // max(nx, 1))
            for r in range(0, ny, step):
                out[r : r + step] = np.packbits((m[r : r + step] & m.dtype.type(b)) == 0, axis=1)
            return out

        # numpy's bitwise pass and packbits release the GIL: the inputs are packed side by side
        return cls(map_epochs(pack, list(zip(arrs, bits))), (ny, nx), xy0)

    def __len__(self) -> int:
        return len(self.packed)

    def covering(self, position: Sequence[float]) -> np.ndarray:
        """Indices of the inputs with data at parent ``position`` (afw's ``Box2D(bbox).contains``:
        a pixel owns [i - 0.5, i + 0.5)); none off the frame."""
        x, y = float(position[0]), float(position[1])
        if not (np.isfinite(x) and np.isfinite(y)):
            raise InputError(f"the position must be finite, got {tuple(position)}")
        ix, iy = int(np.floor(x + 0.5)) - self.xy0[0], int(np.floor(y + 0.5)) - self.xy0[1]
        if not (0 <= iy < self.shape[0] and 0 <= ix < self.shape[1]):
            return np.zeros(0, dtype=int)
        bit = np.uint8(0x80 >> (ix & 7))
        return np.array([i for i, p in enumerate(self.packed) if p[iy, ix >> 3] & bit], dtype=int)

    def centroid(self, i: int) -> tuple[float, float, int]:
        """Parent (x, y) centroid of input ``i``'s data and its pixel count (NaN, NaN, 0 if none)."""
        # straight from the packed bytes (no unpacked plane): per byte value, how many bits are
        # set and the sum of their offsets in the byte (bit 7 = first pixel, as np.packbits)
        p = self.packed[i]
        counts = _POPCOUNT[p]
        per_row = counts.sum(axis=1, dtype=np.int64)
        n = int(per_row.sum())
        if n == 0:
            return float("nan"), float("nan"), 0
        per_byte = counts.sum(axis=0, dtype=np.int64)
        sum_x = float(per_byte @ (8 * np.arange(p.shape[1]))) + float(_OFFSET_SUM[p].sum(dtype=np.int64))
        return sum_x / n + self.xy0[0], float(per_row @ np.arange(p.shape[0])) / n + self.xy0[1], n


_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)  # [value, offset in byte]
_POPCOUNT = _BITS.sum(axis=1).astype(np.uint8)
_OFFSET_SUM = (_BITS * np.arange(8)).sum(axis=1).astype(np.uint16)


class CoaddPsf(Psf):
    """Weighted average of input PSFs (LSST's ``CoaddPsf``), evaluated at any position.

    At a position, only the inputs that cover it contribute, each with its coadd weight, and
    the sum is divided by the weights of those inputs (``CoaddPsf::doComputeKernelImage``: the
    ``subsetContaining`` the point).  Without ``coverage`` every input covers everywhere.

    Parameters
    ----------
    psfs : sequence of Psf
        The inputs' PSFs, on the coadd's pixel grid (warps need no resampling, so LSST's
        ``warpingKernelName`` has no role here).
    weights : sequence of float
        The coadd weights of the inputs (1/mean variance); normalised internally.
    coverage : InputCoverage or sequence of 2-D boolean arrays, optional
        Where each input has data (see :class:`InputCoverage`; boolean arrays are True there
        and start at ``xy0``).  :func:`toolkit.coadd.assemble_coadd` gives each coadd's PSF the
        coverage of the warps' NO_DATA planes.
    xy0 : (int, int), optional
        Parent position (x, y) of pixel [0, 0] of boolean ``coverage`` arrays.

    Notes
    -----
    With ``coverage``, the default position (``position=None``) is LSST's average position: the
    mean of the inputs' positions weighted by weight x good pixels, with the lowest-weight inputs
    dropped until some input covers it.  LSST takes each CCD's centre; a warp knows no CCDs, so
    the centroid of its data area stands in.  Where no input covers a position, LSST raises;
    here every input contributes, so a grid cell or an image centre over a hole still gets a
    PSF (those pixels are NO_DATA in the coadd anyway).
    """

    def __init__(self, psfs: Sequence[Psf], weights: Sequence[float], coverage: InputCoverage | Sequence[np.ndarray] | None = None, xy0: tuple[int, int] = (0, 0)) -> None:
        if len(psfs) == 0 or len(psfs) != len(weights):
            raise InputError("CoaddPsf needs as many weights as PSFs, and at least one")
        w = np.asarray(weights, dtype=np.float64)
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise InputError("CoaddPsf weights must be finite, >= 0 and not all zero")
        self.psfs = list(psfs)
        self.input_weights = w  # as given (what toolkit.io writes, so a round trip is exact)
        self.weights = w / w.sum()
        self.size = max(p.size for p in self.psfs)
        if coverage is not None and not isinstance(coverage, InputCoverage):
            coverage = InputCoverage.from_boolean(coverage, xy0)
        if coverage is not None and len(coverage) != len(self.psfs):
            raise InputError(f"CoaddPsf coverage: {len(coverage)} inputs for {len(self.psfs)} PSFs")
        self.coverage = coverage
        self._average = None

    def contributors(self, position: Sequence[float] | None = None) -> np.ndarray:
        """Indices of the inputs that cover ``position`` (all of them where none does)."""
        everyone = np.arange(len(self.psfs))
        if self.coverage is None:
            return everyone
        if position is None:
            position = self.average_position
        inside = self.coverage.covering(position)
        return inside if inside.size else everyone

    @property
    def average_position(self) -> tuple[float, float] | None:
        """LSST's ``getAveragePosition`` (see Notes); None without ``coverage``."""
        cov = self.coverage
        if cov is None:
            return None
        if self._average is None:
            items = []  # (weight x good pixels, x, y) per input with data
            for i in range(len(cov)):
                cx, cy, n = cov.centroid(i)
                if n:
                    items.append((self.weights[i] * n, cx, cy))
            # as computeAveragePosition: drop the lowest weights until some input covers it
            items.sort(key=lambda t: t[0])
            pos = None
            for k in range(len(items)):
                wsum = sum(t[0] for t in items[k:])
                pos = (sum(t[0] * t[1] for t in items[k:]) / wsum, sum(t[0] * t[2] for t in items[k:]) / wsum)
                if cov.covering(pos).size:
                    break
            if pos is None:  # no input has any data: the frame's centre
                ny, nx = cov.shape
                pos = (cov.xy0[0] + (nx - 1) / 2.0, cov.xy0[1] + (ny - 1) / 2.0)
            self._average = pos
        return self._average

    def _kernel(self, n, position):
        if position is None:
            position = self.average_position
        use = self.contributors(position)
        w = self.weights[use] / self.weights[use].sum()
        out = np.zeros((n, n))
        for i, wi in zip(use, w):
            out += wi * self.psfs[i].compute_kernel_image(position, size=n)
        return out

    def to_dict(self):
        # As a dictionary, its kernel image at the average position (toolkit.io keeps the parts)
        return {"type": "ImagePsf", "array": self.compute_kernel_image()}


#: how :func:`psf_from_dict` rebuilds each ``to_dict`` type from the description's other keys
_BUILDERS: dict[str, Any] = {
    "GaussianPsf": lambda a: GaussianPsf(**a),
    "DoubleGaussianPsf": lambda a: DoubleGaussianPsf(**a),
    "ImagePsf": lambda a: ImagePsf(a["array"], normalize=False),
    "VaryingGaussianPsf": lambda a: VaryingGaussianPsf(**{**a, "ref": tuple(a["ref"])}),
    "PsfexPsf": lambda a: PsfexPsf(**a),
}
#: the ``to_dict`` types :func:`psf_from_dict` rebuilds
STORED_TYPES = frozenset(_BUILDERS)


def psf_from_dict(d: dict[str, Any]) -> Psf:
    """Inverse of ``Psf.to_dict`` (for the types in :data:`STORED_TYPES`)."""
    kind = d.get("type")
    if kind not in _BUILDERS:
        raise InputError(f"unknown PSF type {kind!r}")
    return _BUILDERS[kind]({k: v for k, v in d.items() if k not in ("type", "model")})
