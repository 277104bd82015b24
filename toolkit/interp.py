"""Interpolation over NO_DATA after stacking (LSST's ``InterpImageTask``), and bright-object masks.

LSST's (legacy) ``interpolateOverDefects`` fills each row's defect from the two good pixels on
either side with tabulated predictive-coding weights: a narrow defect gets weighted sums of
those four pixels, a wide one tapers within ~6 pixels of each side to the mean of its
neighbours.  diffstack departs here: it interpolates linearly between the nearest good pixel on
each side of the row (or column, with ``transpose``), which agrees with LSST next to the good
pixels and differs in the middle of wide gaps (a ramp instead of a constant).  The edge rules
follow LSST: with ``useFallbackValueAtEdge`` a defect touching the image edge gets the fallback
value (the image MEDIAN by default, clamped at >= 0 unless ``negativeFallbackAllowed``);
without it, the value of the nearest good pixel of the row (LSST's rule for wide edge
defects), and the fallback only where a whole row is bad ("no information").  The variance
plane is interpolated the same way, INTRP is set, NO_DATA is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numba as nb
import numpy as np

from .errors import ConfigError, warn
from .exposure import Exposure
from .stats import meanclip_scalar, median_masked

if TYPE_CHECKING:
    from astropy.table import Table

__all__ = ["interpolate_over_plane", "mask_bright_objects", "fallback_value"]


#: InterpImageConfig.fallbackValueType choices
FALLBACK_TYPES = ("MEAN", "MEDIAN", "MEANCLIP", "USER")


def fallback_value(image: np.ndarray, good: np.ndarray, kind: str = "MEDIAN", user_value: float = 0.0, allow_negative: bool = False) -> float:
    """The edge fallback value of ``InterpImageTask``."""
    if kind == "USER":
        return user_value if (allow_negative or user_value >= 0) else 0.0
    if kind == "MEDIAN":
        val = median_masked(image, ~np.asarray(good, bool))  # finite pixels only; NaN if none
        val = 0.0 if np.isnan(val) else val
        return val if (allow_negative or val >= 0) else 0.0
    vals = image[good & np.isfinite(image)]
    if vals.size == 0:
        val = 0.0
    elif kind == "MEAN":
        val = float(vals.mean())
    else:  # MEANCLIP, afw defaults 3 sigma, 3 iterations... StatisticsControl default numIter=3
        val = meanclip_scalar(vals, 3.0, 3)
    if not allow_negative and val < 0:
        val = 0.0
    return val


def _interp_rows(arr: np.ndarray, bad: np.ndarray, fallback: float | Callable[[], float], edge_nearest: bool = False) -> np.ndarray:
    """Copy of ``arr`` with each run of ``bad`` pixels filled along its row (see the module doc)."""
    out = arr.copy()
    _interp_rows_into(out, bad, fallback, edge_nearest)
    return out


def _interp_rows_into(arr: np.ndarray, bad: np.ndarray, fallback: float | Callable[[], float], edge_nearest: bool = False) -> None:
    """Fill the runs of ``bad`` pixels of each row of ``arr`` in place.

    ``fallback`` may be a callable, evaluated only if some run needs it (a median of a
    4-megapixel image costs more than the interpolation itself).

    A run between good pixels l and r gets ``v_l + (v_r - v_l) (x - l) / (r - l)``; a run that
    touches either end of its row gets ``fallback``, or with ``edge_nearest`` the value of the
    row's good pixel next to it (``fallback`` then only for rows with no good pixel).  The runs
    come from one pass over the mask (where it changes along the row); everything after that is
    proportional to the number of bad pixels, which is what makes re-interpolating a 4k coadd
    cheap.
    """
    bad = np.ascontiguousarray(bad, dtype=bool)
    if bad.shape != arr.shape:
        raise ValueError(f"bad mask shape {bad.shape} differs from the array's {arr.shape}")
    if arr.size == 0:
        return
    if callable(fallback):
        # a run touches a row end exactly when the row's first or last pixel is bad
        needed = bad.all(axis=1).any() if edge_nearest else (bad[:, 0].any() or bad[:, -1].any())
        fallback = fallback() if needed else 0.0
    _fill_runs(arr, bad, float(fallback), bool(edge_nearest))


@nb.njit(cache=True, nogil=True)
def _fill_runs(arr, bad, fallback, edge_nearest):  # pragma: no cover - compiled
    # Why compiled: one scan of the mask finds the runs and fills them, where numpy needed a
    # diff of the whole plane and two full-plane nonzero() calls (~30 ms at 2k^2).  The
    # arithmetic is numpy's: (v_r - v_l) in the array's precision, times t in float64.
    ny, nx = arr.shape
    for y in range(ny):
        x = 0
        while x < nx:
            if not bad[y, x]:
                x += 1
                continue
            s = x
            while x < nx and bad[y, x]:
                x += 1
            left = s - 1
            right = x
            if left < 0 or right >= nx:
                v = fallback
                if edge_nearest and right < nx:
                    v = arr[y, right]
                elif edge_nearest and left >= 0:
                    v = arr[y, left]
                for c in range(s, right):
                    arr[y, c] = v
            else:
                vl = arr[y, left]
                dv = arr[y, right] - vl
                for c in range(s, right):
                    arr[y, c] = vl + dv * ((c - left) / (right - left))


def interpolate_over_plane(exposure: Exposure, plane: str = "NO_DATA", fallback_type: str = "MEDIAN", user_value: float = 0.0, negative_allowed: bool = False, use_fallback_at_edge: bool = True, transpose: bool = False, in_place: bool = False) -> Exposure:
    """Return a copy of ``exposure`` (or, with ``in_place``, the exposure itself) with pixels in
    ``plane`` interpolated; INTRP set there."""
    if fallback_type not in FALLBACK_TYPES:
        raise ConfigError(f"fallbackValueType must be one of {', '.join(FALLBACK_TYPES)}, got {fallback_type!r}")
    if not np.isfinite(float(user_value)):
        raise ConfigError(f"fallbackUserValue must be finite, got {user_value!r}")
    # a plane LSST registers but these inputs lack selects nothing; any other name is a typo
    exposure.mask_planes.bitmask([plane], strict=False, field="interpolate_over_plane plane")
    out = exposure if in_place else exposure.copy()
    if plane not in out.mask_planes:
        return out
    bad = out.get_plane(plane) | ~np.isfinite(out.image)
    if not bad.any():
        return out
    if bad.all():
        return out
    # evaluated only if some run needs it, and before anything is written (the medians of a 4k
    # coadd cost more than the interpolation of a few gaps)
    def fb():
        return fallback_value(out.image, ~bad, fallback_type, user_value, negative_allowed)

    def fb_var():
        val = median_masked(out.variance, bad)
        return 0.0 if np.isnan(val) else val

    nearest = not use_fallback_at_edge
    if transpose:
        # columns: work on transposed copies and write them back
        img, var = np.ascontiguousarray(out.image.T), np.ascontiguousarray(out.variance.T)
        _interp_rows_into(img, bad.T, fb, nearest)
        _interp_rows_into(var, bad.T, fb_var, nearest)
        out.image[...] = img.T
        out.variance[...] = var.T
    else:
        _interp_rows_into(out.image, bad, fb, nearest)
        _interp_rows_into(out.variance, bad, fb_var, nearest)
    out.set_plane("INTRP", bad)
    return out


def mask_bright_objects(exposure: Exposure, table: Table, plane: str = "BRIGHT_OBJECT") -> None:
    """Paint ``plane`` over boxes/circles from an astropy Table (in place on ``exposure``), with
    LSST's ``setBrightObjectMasks`` rules.

    Columns: ``type`` ('box' or 'circle'; any other type is skipped with a warning, as LSST
    logs it); the centre as ``ra``/``dec`` (degrees, needs ``exposure.wcs``; LSST's form) or
    ``x``/``y`` (parent pixels, diffstack's); ``width``/``height`` (boxes) or ``radius``
    (circles) in arcsec as ``*_arcsec`` (LSST's form, converted with the plate scale at the
    bbox centre) or in pixels.  As in LSST the centre is rounded to the nearest pixel, a box
    covers columns ``int(x - w/2)`` to ``int(x + w/2)`` inclusive (rows likewise), a circle is
    afw's circular stencil of radius ``int(r)`` about the centre, and a box with a non-zero
    ``angle`` is refused.
    """
    from .detection import circular_stencil
    from .errors import InputError

    ny, nx = exposure.shape
    x0, y0 = exposure.xy0
    scale = None
    if exposure.wcs is not None:
        scale = _plate_scale_arcsec(exposure.wcs, (x0 + (nx - 1) / 2.0, y0 + (ny - 1) / 2.0))
    sel = np.zeros((ny, nx), bool)

    def paint(ys: slice, xs: slice, stamp: np.ndarray | None = None) -> None:
        # the part inside the image of a shape over rows ys and columns xs (parent pixels):
        # the whole box, or where ``stamp`` is set
        ya, yb, xa, xb = max(ys.start, y0), min(ys.stop, y0 + ny), max(xs.start, x0), min(xs.stop, x0 + nx)
        if ya < yb and xa < xb:
            part = True if stamp is None else stamp[ya - ys.start : yb - ys.start, xa - xs.start : xb - xs.start]
            sel[ya - y0 : yb - y0, xa - x0 : xb - x0] |= part

    for row in table:
        cols = row.colnames
        if "ra" in cols and "dec" in cols:
            if exposure.wcs is None:
                raise InputError("bright-object rows with ra/dec need the exposure's WCS")
            fx, fy = (float(v) for v in exposure.wcs.world_to_pixel_values(row["ra"], row["dec"]))
        elif "x" in cols and "y" in cols:
            fx, fy = float(row["x"]), float(row["y"])
        else:
            raise InputError("bright-object rows need ra/dec (with a WCS) or x/y")
        if not (np.isfinite(fx) and np.isfinite(fy)):
            raise InputError(f"bright-object row {row.index}: its centre is not finite ({fx}, {fy})")
        # lsst.geom.Point2I(Point2D): the nearest pixel, ties up
        cx, cy = int(np.floor(fx + 0.5)), int(np.floor(fy + 0.5))

        def size(name: str) -> float:
            if f"{name}_arcsec" in cols:
                if scale is None:
                    raise InputError(f"{name}_arcsec needs a WCS for the plate scale")
                v = float(row[f"{name}_arcsec"]) / scale
            elif name in cols:
                v = float(row[name])
            else:
                raise InputError(f"bright-object row lacks {name!r} (pixels) or {name}_arcsec")
            if not (np.isfinite(v) and v >= 0):
                raise InputError(f"bright-object row {row.index}: {name} must be finite and >= 0, got {v}")
            return v

        kind = str(row["type"]).lower()
        if kind == "box":
            if "angle" in cols and float(row["angle"]) != 0.0:
                raise InputError(f"bright-object box at ({fx:.1f}, {fy:.1f}) has angle {float(row['angle'])}: LSST handles only axis-aligned boxes")
            w, h = size("width"), size("height")
            xa, xb = int(cx - 0.5 * w), int(cx + 0.5 * w)
            ya, yb = int(cy - 0.5 * h), int(cy + 0.5 * h)
            paint(slice(ya, yb + 1), slice(xa, xb + 1))
        elif kind == "circle":
            r = int(size("radius"))
            paint(slice(cy - r, cy + r + 1), slice(cx - r, cx + r + 1), circular_stencil(r))
        else:
            warn(f"bright-object region type {kind!r} at ({fx:.1f}, {fy:.1f}) is neither box nor circle: skipped, as LSST skips it")
    exposure.set_plane(plane, sel)


def _plate_scale_arcsec(wcs, point: tuple[float, float]) -> float:
    """afw ``SkyWcs.getPixelScale(point)``: the square root of the sky area of one pixel at
    ``point`` (arcsec), from the pixel's two edge vectors on the sky."""
    x, y = point
    ra, dec = (np.asarray(v, float) for v in wcs.celestial.pixel_to_world_values([x, x + 1.0, x], [y, y, y + 1.0]))
    cosd = np.cos(np.deg2rad(dec[0]))
    # wrap RA differences into (-180, 180] before scaling them to the tangent plane
    dra = (ra[1:] - ra[0] + 180.0) % 360.0 - 180.0
    ex = np.array([dra[0] * cosd, dec[1] - dec[0]])
    ey = np.array([dra[1] * cosd, dec[2] - dec[0]])
    return float(np.sqrt(abs(ex[0] * ey[1] - ex[1] * ey[0]))) * 3600.0
