"""Mask-plane dictionaries: the mapping from LSST plane names to bit numbers.

LSST keeps one global, ordered name -> bit dictionary; planes that a task needs (CLIPPED,
REJECTED, ...) are added on demand, taking the next free bit.  :class:`MaskPlanes` mirrors that,
one per exposure, and the stacking code remaps masks when inputs disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numba as nb
import numpy as np

from .errors import ConfigError, InputError

__all__ = ["DEFAULT_MASK_PLANES", "LSST_PLANE_NAMES", "MaskPlanes", "remap_mask"]

#: LSST's default plane order (afw ``Mask`` initial dictionary).
DEFAULT_MASK_PLANES: dict[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
}

#: Planes that LSST pipelines register in afw's global mask dictionary besides the defaults
#: (ip_isr, pipe_tasks, drp_tasks, ip_diffim, source_injection).  A config may name one that
#: these inputs lack: LSST's dictionary still has it, so it selects no pixel rather than raising.
LSST_PLANE_NAMES: frozenset[str] = frozenset(DEFAULT_MASK_PLANES) | {
    "CLIPPED", "REJECTED", "INEXACT_PSF", "SENSOR_EDGE", "NOT_DEBLENDED", "BRIGHT_OBJECT",
    "STREAK", "CROSSTALK", "UNMASKEDNAN", "VIGNETTED", "PARTLY_VIGNETTED", "SPIKE", "ITL_DIP",
    "HIGH_VARIANCE", "SAT_TEMPLATE", "FAKE", "INJECTED", "INJECTED_CORE", "INJECTED_TEMPLATE",
    "INJECTED_TEMPLATE_CORE",
}

#: Mask arrays are int32, so bit 31 is the sign bit; LSST allows 32 planes.
MAX_PLANES = 32


class MaskPlanes(dict):
    """An ordered ``name -> bit`` mapping with LSST's lookup rules.

    Parameters
    ----------
    planes : mapping or sequence of str, optional
        Initial planes (``name -> bit``, or names given bits 0, 1, ... in order); defaults to
        :data:`DEFAULT_MASK_PLANES`.
    """

    def __init__(self, planes: Mapping[str, int] | Sequence[str] | None = None) -> None:
        if planes is None:
            planes = DEFAULT_MASK_PLANES
        elif not isinstance(planes, Mapping):
            if isinstance(planes, (str, bytes)) or not isinstance(planes, (Sequence, set, frozenset)):
                raise InputError(f"mask planes must be a mapping name -> bit or a sequence of names, got {type(planes).__name__}")
            if isinstance(planes, (set, frozenset)):
                raise InputError("mask planes given as names need an order (a list or tuple), not a set")
            if len(set(planes)) != len(planes):
                raise InputError(f"a mask plane name is given twice: {list(planes)}")
            planes = {name: bit for bit, name in enumerate(planes)}
        super().__init__(planes)
        bits = list(self.values())
        for name, bit in self.items():
            if not isinstance(name, str) or not name:
                raise InputError(f"mask plane names must be non-empty strings, got {name!r}")
            if int(bit) != bit or not 0 <= bit < MAX_PLANES:
                raise InputError(f"mask plane {name!r} has bit {bit!r}; bits must be 0..{MAX_PLANES - 1}")
        if len(set(bits)) != len(bits):
            raise InputError(f"two mask planes share a bit: {dict(self)}")

    def copy(self) -> "MaskPlanes":
        return MaskPlanes(self)

    def bit(self, name: str) -> int:
        """Bit number of plane ``name``; :class:`InputError` if it does not exist."""
        try:
            return self[name]
        except KeyError:
            raise InputError(
                f"unknown mask plane {name!r}; known planes: {', '.join(self)}"
            ) from None

    def add(self, name: str) -> int:
        """Return the bit of ``name``, adding the plane at the next free bit if needed."""
        if name in self:
            return self[name]
        if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
            raise InputError(f"invalid mask plane name {name!r}")
        used = set(self.values())
        free = [b for b in range(MAX_PLANES) if b not in used]
        if not free:
            raise InputError(f"no free mask bit left for plane {name!r}")
        self[name] = free[0]
        return free[0]

    def bitmask(self, names: Iterable[str] | str, strict: bool = True, field: str | None = None) -> int:
        """OR of the bit values of ``names``.

        With ``strict=False`` (config lists such as ``badMaskPlanes``), a name that is not a plane
        here but one LSST registers (:data:`LSST_PLANE_NAMES`) selects nothing: LSST's global
        dictionary has it and these inputs set none of its pixels.  Any other name raises
        (:class:`ConfigError` naming ``field`` when given), as afw's ``getPlaneBitMask`` does for
        a name its dictionary lacks: a typo must not silently select nothing.
        """
        if isinstance(names, str):
            names = [names]
        value = 0
        for name in names:
            if name in self:
                value |= 1 << self[name]
            elif strict or name not in LSST_PLANE_NAMES:
                if field is None:
                    self.bit(name)  # raises with the helpful message
                raise ConfigError(f"{field}: unknown mask plane {name!r}; the inputs have {', '.join(self)}, and LSST also registers {', '.join(sorted(LSST_PLANE_NAMES - set(self)))}")
        return _to_int32(value)

    def names_in(self, value: int) -> list[str]:
        """Plane names whose bits are set in the integer ``value``."""
        value = int(value) & 0xFFFFFFFF
        return [name for name, bit in self.items() if value & (1 << bit)]


def _to_int32(value: int) -> int:
    """Interpret an unsigned 32-bit pattern as the signed int32 used by mask arrays."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


def remap_mask(mask: np.ndarray, source: Mapping[str, int], target: MaskPlanes) -> np.ndarray:
    """Translate a mask array from the ``source`` plane dictionary to ``target``.

    Planes missing from ``target`` are added to it.  Returns ``mask`` itself (not a copy) when
    the two dictionaries agree on every plane used, which is the common case.
    """
    for name in source:
        target.add(name)
    if all(target[name] == bit for name, bit in source.items()):
        return mask
    out = np.zeros(mask.shape, dtype=np.int32)
    m = mask.view(np.uint32) if mask.dtype == np.int32 else mask.astype(np.uint32)
    for name, bit in source.items():
        sel = (m >> np.uint32(bit)) & np.uint32(1)
        if sel.any():
            out |= (sel.astype(np.uint32) << np.uint32(target[name])).view(np.int32)
    return out


@nb.njit(cache=True, nogil=True)
def _any_bits_rows(mask, bits, out):  # pragma: no cover - compiled
    for y in range(mask.shape[0]):
        mr, o = mask[y], out[y]
        for x in range(mr.size):
            o[x] = (mr[x] & bits) != 0


def any_bits(mask: np.ndarray, bits: int) -> np.ndarray:
    """Boolean plane: where ``mask`` has any of ``bits`` set.

    ``(mask & bits) != 0`` in one pass: numpy makes the int32 product plane first, which costs
    more than the test on a 2k^2 mask.
    """
    m = np.asarray(mask)
    if m.ndim != 2 or m.dtype != np.int32:
        return (m & np.int32(bits)) != 0
    out = np.empty(m.shape, np.bool_)
    _any_bits_rows(m, np.int32(bits), out)
    return out
