"""Integer pixel boxes in the parent frame, the equivalent of LSST's ``Box2I``, and moving a
WCS between the parent frame and array pixels.

Coordinates follow LSST: ``x`` is the column, ``y`` the row, and a box covers the pixels
``x0 <= x < x0 + width`` and ``y0 <= y < y0 + height``.  Array slices are ``[y, x]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from astropy.wcs import WCS

__all__ = ["Box", "shifted_wcs"]


def shifted_wcs(wcs: WCS, dx: float, dy: float) -> WCS:
    """A copy of ``wcs`` for pixel coordinates shifted by ``(dx, dy)``.

    An Exposure's WCS maps parent-frame pixels; FITS files and ``CCDData`` map array pixels,
    which are the parent ones less ``xy0``: ``shifted_wcs(w, -x0, -y0)`` goes one way and
    ``shifted_wcs(w, x0, y0)`` back.  CRPIX moves, and so does the SIP distortion's own
    reference pixel: astropy keeps a copy of CRPIX in ``wcs.sip`` (the polynomials are in
    offsets from it), which moving ``wcs.wcs.crpix`` alone would leave behind.
    """
    from astropy.wcs import Sip

    w = wcs.deepcopy()
    w.wcs.crpix = w.wcs.crpix + np.array([dx, dy], dtype=float)
    if w.sip is not None:
        w.sip = Sip(w.sip.a, w.sip.b, w.sip.ap, w.sip.bp, w.wcs.crpix)
    return w


@dataclass(frozen=True)
class Box:
    """An integer pixel box ``[x0, x0 + width) x [y0, y0 + height)``."""

    x0: int
    y0: int
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("x0", "y0", "width", "height"):
            value = getattr(self, name)
            if int(value) != value:
                raise InputError(f"Box.{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.width < 0 or self.height < 0:
            raise InputError(f"Box width/height must be >= 0, got {self.width}x{self.height}")

    @classmethod
    def from_corners(cls, x0: int, y0: int, x1: int, y1: int) -> "Box":
        """Box from an inclusive minimum corner and an exclusive maximum corner."""
        return cls(x0, y0, x1 - x0, y1 - y0)

    @property
    def x1(self) -> int:
        """Exclusive end column."""
        return self.x0 + self.width

    @property
    def y1(self) -> int:
        """Exclusive end row."""
        return self.y0 + self.height

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape ``(height, width)``."""
        return (self.height, self.width)

    @property
    def area(self) -> int:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        """Centre ``(x, y)`` in pixel coordinates (pixel centres are integers)."""
        return (self.x0 + (self.width - 1) / 2.0, self.y0 + (self.height - 1) / 2.0)

    def is_empty(self) -> bool:
        return self.width == 0 or self.height == 0

    def contains(self, other: "Box") -> bool:
        """True if ``other`` lies entirely inside this box."""
        return (
            other.x0 >= self.x0 and other.y0 >= self.y0 and other.x1 <= self.x1 and other.y1 <= self.y1
        )

    def intersection(self, other: "Box") -> "Box":
        """The overlap of two boxes (possibly empty)."""
        x0, y0 = max(self.x0, other.x0), max(self.y0, other.y0)
        x1, y1 = min(self.x1, other.x1), min(self.y1, other.y1)
        return Box(x0, y0, max(0, x1 - x0), max(0, y1 - y0))

    def dilated(self, dx: int, dy: int | None = None) -> "Box":
        """Grow (or shrink, with negative values) by ``dx`` columns and ``dy`` rows per side."""
        dy = dx if dy is None else dy
        return Box(self.x0 - dx, self.y0 - dy, self.width + 2 * dx, self.height + 2 * dy)

    def shifted(self, dx: int, dy: int) -> "Box":
        return Box(self.x0 + dx, self.y0 + dy, self.width, self.height)

    def slices(self, origin: tuple[int, int] = (0, 0)) -> tuple[slice, slice]:
        """Array slices ``(rows, cols)`` of this box in an array whose pixel (0, 0) is ``origin``."""
        ox, oy = origin
        return (slice(self.y0 - oy, self.y1 - oy), slice(self.x0 - ox, self.x1 - ox))
