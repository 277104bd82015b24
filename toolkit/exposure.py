"""The :class:`Exposure`: image, variance, mask, PSF, calibration and WCS of one image.

This is diffstack's stand-in for LSST's ``afw.image.ExposureF``.  Every engine consumes and
returns Exposures; they are validated on construction so that problems are reported where they
enter rather than deep inside an algorithm.
"""

from __future__ import annotations

import copy as _copy
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError
from .geom import Box, shifted_wcs
from .masks import MaskPlanes, any_bits
from .stats import native

if TYPE_CHECKING:  # astropy.nddata is imported only when converting
    from astropy.nddata import CCDData

__all__ = ["Exposure"]

_FLOAT_TYPES = (np.float32, np.float64)


def _as_float_image(name: str, array: Any, copy: bool) -> np.ndarray:
    try:
        arr = np.array(array, copy=copy) if copy else np.asarray(array)
    except Exception as exc:  # e.g. ragged lists
        raise InputError(f"{name} cannot be converted to an array: {exc}") from None
    if arr.ndim != 2:
        raise InputError(f"{name} must be 2-D (ny, nx), got shape {arr.shape}")
    if arr.dtype.type not in _FLOAT_TYPES:
        raise InputError(
            f"{name} must be float32 or float64, got dtype {arr.dtype}; "
            f"convert it with .astype(np.float32)"
        )
    return native(arr)  # big-endian FITS planes become native copies here, once


class Exposure:
    """One image with its variance, bit mask, PSF and metadata.

    Parameters
    ----------
    image : array_like, float32 or float64, shape (ny, nx)
        Pixel values.  A numpy masked array's masked pixels (of the image or the variance)
        become NaN in both planes and NO_DATA in the mask, as a warp marks pixels it lacks.
    variance : array_like, optional
        Per-pixel variance, same shape (cast to the image dtype); defaults to ones.
    mask : array_like of int, optional
        Bit mask, same shape, stored as int32; defaults to zeros.
    mask_planes : mapping, optional
        Ordered ``name -> bit`` dictionary; defaults to LSST's default planes.
    psf : toolkit.psf.Psf, optional
        The point-spread function.
    photo_calib : float, optional
        nJy per image unit (LSST ``PhotoCalib`` mean calibration).  Default 1.
    wcs : astropy.wcs.WCS, optional
        Celestial WCS of the *parent* pixel frame.
    xy0 : (int, int), optional
        Parent-frame coordinates ``(x0, y0)`` of pixel ``[0, 0]``.
    metadata : dict, optional
        FITS-header-like key/value pairs (e.g. ``BUNIT``).
    copy : bool, optional
        Copy the arrays (default).  Inputs are never modified in place either way.  Planes in
        non-native byte order (big-endian, as ``astropy.io.fits`` returns FITS data) are always
        converted to native copies.
    """

    def __init__(
        self,
        image: Any,
        variance: Any = None,
        mask: Any = None,
        mask_planes: Mapping[str, int] | None = None,
        psf: Any = None,
        photo_calib: float = 1.0,
        wcs: Any = None,
        xy0: tuple[int, int] = (0, 0),
        metadata: Mapping[str, Any] | None = None,
        copy: bool = True,
    ) -> None:
        # numpy masked arrays: np.asarray would silently keep the values under the mask, so
        # masked pixels become NaN (in copies) and NO_DATA, as a warp marks pixels it lacks
        masked = None
        for plane in (image, variance):
            if np.ma.isMaskedArray(plane) and np.ma.getmaskarray(plane).any():
                m = np.ma.getmaskarray(plane)
                masked = m if masked is None or masked.shape != m.shape else masked | m
        if masked is not None:
            copy = True  # masked pixels are written: every plane must be the Exposure's own
        if np.ma.isMaskedArray(image):
            image = np.ma.getdata(image)
        if np.ma.isMaskedArray(variance):
            variance = np.ma.getdata(variance)
        image = _as_float_image("image", image, copy)
        if variance is None:
            variance = np.ones_like(image)
        else:
            variance = _as_float_image("variance", variance, copy)
            if variance.shape != image.shape:
                raise InputError(
                    f"variance shape {variance.shape} does not match image shape {image.shape}"
                )
            if variance.dtype != image.dtype:
                variance = variance.astype(image.dtype)
        if mask is None:
            mask = np.zeros(image.shape, dtype=np.int32)
        else:
            mask = np.array(mask, copy=copy) if copy else np.asarray(mask)
            if mask.shape != image.shape:
                raise InputError(f"mask shape {mask.shape} does not match image shape {image.shape}")
            if mask.dtype.kind not in "iub":
                raise InputError(f"mask must be an integer bit mask (int32), got dtype {mask.dtype}")
            if mask.dtype != np.int32:
                if mask.dtype.kind == "b":
                    mask = mask.astype(np.int32)
                else:
                    info = np.iinfo(mask.dtype)
                    if info.bits > 32 and mask.size and (mask.max() > 0xFFFFFFFF or mask.min() < -(2**31)):
                        raise InputError("mask values do not fit in 32 bits")
                    mask = mask.astype(np.int64).astype(np.uint32).view(np.int32) if info.bits > 32 else mask.astype(np.int32)
        try:
            photo_calib = float(photo_calib)
        except (TypeError, ValueError):
            raise InputError(f"photo_calib must be a number (nJy per unit), got {photo_calib!r}") from None
        if not np.isfinite(photo_calib) or photo_calib <= 0:
            raise InputError(f"photo_calib must be finite and > 0, got {photo_calib}")
        if len(tuple(xy0)) != 2 or any(int(v) != v for v in xy0):
            raise InputError(f"xy0 must be two integers (x0, y0), got {xy0!r}")
        if psf is not None and not hasattr(psf, "compute_kernel_image"):
            raise InputError(f"psf must be a toolkit.psf.Psf, got {type(psf).__name__}")
        if wcs is not None:
            from astropy.wcs import WCS

            if not isinstance(wcs, WCS):
                raise InputError(f"wcs must be an astropy.wcs.WCS (of the parent pixel frame) or None, got {type(wcs).__name__}")
            if wcs.pixel_n_dim != 2:
                raise InputError(f"wcs must have 2 pixel axes, got {wcs.pixel_n_dim}")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise InputError(f"metadata must be a mapping (like a FITS header), got {type(metadata).__name__}")
        self.image: np.ndarray = image
        self.variance: np.ndarray = variance
        self.mask: np.ndarray = mask
        self.mask_planes: MaskPlanes = MaskPlanes(mask_planes)
        if masked is not None:
            if masked.shape != image.shape:
                raise InputError(f"masked-array mask shape {masked.shape} does not match image shape {image.shape}")
            self.image[masked] = np.nan
            self.variance[masked] = np.nan
            self.set_plane("NO_DATA", masked)
        self.psf = psf
        self.photo_calib: float = photo_calib
        self.wcs = wcs
        self.xy0: tuple[int, int] = (int(xy0[0]), int(xy0[1]))
        self.metadata: dict[str, Any] = dict(metadata or {})

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape

    @property
    def dtype(self) -> np.dtype:
        return self.image.dtype

    @property
    def bbox(self) -> Box:
        """Parent-frame box covered by this exposure."""
        return Box(self.xy0[0], self.xy0[1], self.shape[1], self.shape[0])

    # ------------------------------------------------------------------ mask planes
    def get_plane(self, name: str) -> np.ndarray:
        """Boolean array: where plane ``name`` is set."""
        return any_bits(self.mask, self.mask_planes.bitmask([name]))

    def set_plane(self, name: str, where: Any = True, add: bool = True) -> None:
        """Set plane ``name`` where ``where`` is true (a boolean array, or True for everywhere).

        The plane is added to the dictionary if missing (``add=True``), as LSST's
        ``Mask.addMaskPlane`` does.
        """
        if add:
            self.mask_planes.add(name)
        value = self.mask_planes.bitmask([name])
        if where is True:
            self.mask |= np.int32(value)
            return
        where = np.asarray(where)
        if where.shape != self.shape:
            raise InputError(f"plane {name!r}: selection shape {where.shape} != exposure shape {self.shape}")
        self.mask[where.astype(bool)] |= np.int32(value)

    def clear_plane(self, name: str, where: Any = True) -> None:
        """Clear plane ``name`` (everywhere, or where ``where`` is true)."""
        value = np.int32(self.mask_planes.bitmask([name]))
        if where is True:
            self.mask &= ~value
        else:
            self.mask[np.asarray(where, dtype=bool)] &= ~value

    def bitmask(self, names: Iterable[str] | str, strict: bool = True) -> int:
        """OR of the bits of ``names`` in this exposure's plane dictionary."""
        return self.mask_planes.bitmask(names, strict=strict)

    # ------------------------------------------------------------------ copies and cutouts
    def copy(self) -> "Exposure":
        """Deep copy (arrays, planes, metadata; the PSF and WCS objects are shared, being immutable)."""
        return Exposure(
            self.image,
            self.variance,
            self.mask,
            self.mask_planes,
            psf=self.psf,
            photo_calib=self.photo_calib,
            wcs=_copy.deepcopy(self.wcs),
            xy0=self.xy0,
            metadata=_copy.deepcopy(self.metadata),
            copy=True,
        )

    def cutout(self, box: Box, copy: bool = True) -> "Exposure":
        """Sub-exposure over ``box`` (parent coordinates); it must lie inside :attr:`bbox`."""
        if not self.bbox.contains(box):
            raise InputError(f"cutout box {box} is not inside the exposure's bbox {self.bbox}")
        sl = box.slices(self.xy0)
        return Exposure(
            self.image[sl],
            self.variance[sl],
            self.mask[sl],
            self.mask_planes,
            psf=self.psf,
            photo_calib=self.photo_calib,
            wcs=self.wcs,
            xy0=(box.x0, box.y0),
            metadata=self.metadata,
            copy=copy,
        )

    # ------------------------------------------------------------------ astropy interop
    def to_ccddata(self) -> CCDData:
        """Convert to :class:`astropy.nddata.CCDData` (variance as ``VarianceUncertainty``).

        The mask plane dictionary and xy0 go into ``meta`` (``MP_<NAME>``, ``LTV1/2``), so
        :meth:`from_ccddata` can restore them.  The WCS maps the CCDData's array pixels (as
        astropy, photutils and a written FITS file read it), not the parent frame.
        """
        from astropy import units as u
        from astropy.nddata import CCDData, VarianceUncertainty

        from .io import _metadata_cards

        # a FITS header, not a dict: CCDData.write copies a Header as it is, but converts a
        # dict key by key and fails on long keys with non-string values (MP_NO_DATA = 8);
        # metadata FITS cards cannot hold travels as JSON, as write_exposure keeps it
        meta = _metadata_cards(self.metadata)
        for name, bit in self.mask_planes.items():
            meta[f"HIERARCH MP_{name}"] = bit
        meta["LTV1"], meta["LTV2"] = -self.xy0[0], -self.xy0[1]
        meta["PHOTOCAL"] = self.photo_calib
        unit = u.Unit(str(self.metadata.get("BUNIT", "adu")), parse_strict="silent")
        ccd = CCDData(
            self.image.copy(),
            uncertainty=VarianceUncertainty(self.variance.copy()),
            mask=self.mask != 0,
            flags=self.mask.copy(),
            wcs=None if self.wcs is None else shifted_wcs(self.wcs, -self.xy0[0], -self.xy0[1]),
            meta=meta,
            unit=unit,
        )
        ccd.psf = None if self.psf is None else self.psf.compute_kernel_image()
        return ccd

    @classmethod
    def from_ccddata(cls, ccd: CCDData, psf: Any = None) -> "Exposure":
        """Build from :class:`astropy.nddata.CCDData` (any uncertainty type; a boolean mask becomes BAD)."""
        from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

        data = np.asarray(ccd.data)
        if data.dtype.type not in _FLOAT_TYPES:
            data = data.astype(np.float32)
        unc = ccd.uncertainty
        if unc is None:
            variance = None
        elif isinstance(unc, VarianceUncertainty):
            variance = np.asarray(unc.array, dtype=data.dtype)
        elif isinstance(unc, StdDevUncertainty):
            variance = np.asarray(unc.array, dtype=data.dtype) ** 2
        elif isinstance(unc, InverseVariance):
            with np.errstate(divide="ignore"):
                variance = (1.0 / np.asarray(unc.array, dtype=np.float64)).astype(data.dtype)
        else:
            raise InputError(f"unsupported CCDData uncertainty type {type(unc).__name__}")
        from .io import _metadata_from_header

        # a FITS header (to_ccddata's, or CCDData.read's) or a plain dict from another tool;
        # JSON-carried metadata (DSMETA cards) is decoded either way
        meta = _metadata_from_header(ccd.meta or {})
        planes = {k[3:]: int(v) for k, v in meta.items() if str(k).upper().startswith("MP_")}
        xy0 = (-int(meta.get("LTV1", 0)), -int(meta.get("LTV2", 0)))
        photo_calib = float(meta.get("PHOTOCAL", 1.0))
        for key in [k for k in meta if str(k).upper().startswith("MP_")] + ["LTV1", "LTV2", "PHOTOCAL"]:
            meta.pop(key, None)
        meta["BUNIT"] = ccd.unit.to_string() if ccd.unit is not None else meta.get("BUNIT")
        # CCDData masks are boolean; the full bit mask travels in ``flags`` when we wrote it
        flags = getattr(ccd, "flags", None)
        mask = flags if flags is not None and np.asarray(flags).dtype.kind in "iu" else ccd.mask
        mp = MaskPlanes(planes or None)
        if mask is not None and np.asarray(mask).dtype == bool:
            mask = np.where(mask, np.int32(1 << mp.bit("BAD")), np.int32(0))
        # CCDData's WCS maps array pixels; an Exposure's maps the parent frame
        wcs = None if ccd.wcs is None else shifted_wcs(ccd.wcs, *xy0)
        return cls(data, variance, mask, mp, psf=psf, photo_calib=photo_calib, wcs=wcs, xy0=xy0, metadata=meta)

    def __repr__(self) -> str:
        return (
            f"Exposure(shape={self.shape}, dtype={self.dtype}, xy0={self.xy0}, "
            f"psf={type(self.psf).__name__ if self.psf is not None else None}, "
            f"photo_calib={self.photo_calib:g}, planes={list(self.mask_planes)})"
        )
