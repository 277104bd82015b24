"""``AssembleCoaddTask``: weighted stacking of warps with LSST's exact per-pixel semantics.

One function, :func:`assemble_coadd`, serves the static-sky template, the final CompareWarp stack
and plain coadds.  Steps (reference §2): weights = 1/MEANCLIP(variance) per warp; per tile of
``subregionSize`` (processed internally in row chunks to bound memory, which cannot change any
pixel since every statistic is per pixel): alternative masks, nImage, removeMaskPlanes, the
statistic, the output mask rules (OR of usable inputs, propagation thresholds, CLIPPED, the
REJECTED/SENSOR_EDGE/CLIPPED rejection map, NO_DATA where nothing is usable); then
INEXACT_PSF, NO_DATA where variance == 0, optional alternative edge mask, interpolation over
NO_DATA, non-positive/NaN variance -> inf, bright-object masks.

``doOnlineForMean`` uses running sums (LSST's ``AccumulatorMeanStack``).  LSST tests
``isfinite`` on the *mask* there, so unmasked NaN image pixels enter its sums; diffstack tests the
image (correct), and ``lsst_online_quirk=True`` reproduces LSST's behaviour.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numba as nb
import numpy as np

from .config import AssembleCoaddConfig, as_config
from .errors import ConfigError, InputError
from .exposure import Exposure
from .interp import interpolate_over_plane, mask_bright_objects
from .masks import MaskPlanes, remap_mask
from .psf import CoaddPsf, InputCoverage
from .parallel import map_epochs, n_threads
from .stack_kernel import STAT_CODES, stack_pixels
from .stats import meanclip_masked

__all__ = ["assemble_coadd", "compute_weights", "CoaddResult", "apply_alt_masks", "epochs_at"]

log = logging.getLogger("diffstack.coadd")

ProgressFn = Callable[[str, float], None]

#: pixels per internal chunk.  A chunk's gathered inputs (12 bytes per input and pixel) should
#: stay in cache, but each chunk costs Python work per input: per pixel rather than per element
#: (epochs x pixels) is the compromise that measured best from 10 to 30 inputs; memory stays
#: small beside the inputs themselves
_CHUNK_PIXELS = 1 << 15


@dataclass
class CoaddResult:
    """Output of :func:`assemble_coadd`.

    Attributes
    ----------
    coadd : Exposure
    n_image : ndarray of int32
        Usable inputs per pixel (LSST's nImage: and-mask only, after alternative masks).
    input_map : ndarray of uint8, shape (ceil(N/8), ny, nx)
        Bit-packed (``np.packbits`` along the epoch axis, big-endian bit order) flags of the
        inputs that contributed to each pixel (usable and not sigma-clipped); see :func:`epochs_at`.
    weights : ndarray (N,)
        Weight of each input (0 for skipped inputs).
    skipped : dict
        ``index -> reason`` for inputs left out.
    n_clipped : ndarray of int32
        Inputs removed by sigma clipping per pixel.
    timings : dict
        Seconds per step.
    raw : tuple of ndarray or None
        ``(value, variance, mask)`` as stacked, before ``processResults`` (interpolation etc.);
        what a ``base=`` re-run starts from.  Only with ``keep_raw=True``.
    """

    coadd: Exposure
    n_image: np.ndarray
    input_map: np.ndarray
    weights: np.ndarray
    skipped: dict[int, str]
    n_clipped: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    raw: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def epochs_at(self, x: int, y: int) -> list[int]:
        """Indices of the inputs that contributed to parent pixel ``(x, y)``."""
        return epochs_at(self.input_map, x - self.coadd.xy0[0], y - self.coadd.xy0[1], len(self.weights))


def epochs_at(input_map: np.ndarray, ix: int, iy: int, n: int) -> list[int]:
    bits = np.unpackbits(input_map[:, iy, ix])[:n]
    return [int(i) for i in np.nonzero(bits)[0]]


def _check_warps(warps: Sequence[Exposure]) -> None:
    if len(warps) == 0:
        raise InputError("assemble_coadd needs at least one warp")
    for i, w in enumerate(warps):
        if not isinstance(w, Exposure):
            raise InputError(f"warp {i} is a {type(w).__name__}, not an Exposure")
    ref = warps[0]
    for i, w in enumerate(warps[1:], 1):
        if w.shape != ref.shape or w.xy0 != ref.xy0:
            raise InputError(f"warp {i} covers {w.bbox}, warp 0 covers {ref.bbox}: warps must share one pixel grid")
        unit = w.metadata.get("BUNIT")
        if unit is not None and str(unit) != "nJy":
            raise InputError(f"warp {i} has BUNIT={unit!r}; AssembleCoadd requires nJy (calibrate first)")


def compute_weights(warps: Sequence[Exposure], config: AssembleCoaddConfig, planes: MaskPlanes | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """Weights 1/MEANCLIP(variance) (unweighted, NaN-safe, and-mask = badMaskPlanes), and skips."""

    def one(w: Exposure) -> tuple[float, str | None]:
        if not np.any(np.isfinite(w.image)):
            return 0.0, "image is entirely NaN"
        bad = w.mask_planes.bitmask(config.badMaskPlanes, strict=False, field="badMaskPlanes")
        mc = meanclip_masked(w.variance, w.mask, bad, config.sigmaClip, config.clipIter)
        if not np.isfinite(mc) or mc <= 0:
            return 0.0, f"clipped mean variance is {mc} (non-positive or not finite)"
        return 1.0 / mc, None

    # the compiled passes release the GIL, so threads use every core
    results = map_epochs(one, warps)
    weights = np.zeros(len(warps))
    skipped: dict[int, str] = {}
    for i, (wt, reason) in enumerate(results):
        if reason is not None:
            skipped[i] = reason
            log.warning("skipping warp %d: %s", i, reason)
        else:
            weights[i] = wt
    return weights, skipped


def apply_alt_masks(mask: np.ndarray, planes: MaskPlanes, alt: dict[str, np.ndarray] | None, bad_mask_planes: Sequence[str], use_psf_matched_polygons: bool) -> np.ndarray:
    """LSST ``applyAltMaskPlanes`` on one warp's mask (returns a new array when ``alt`` has
    planes): inside alternative NO_DATA the bad-mask bits are cleared first (CompareWarp's
    ``use_psf_matched_polygons``), then each plane's bit is set where its selection is true.
    The same steps the stack applies chunk by chunk (:func:`_alt_operations`)."""
    if not alt:
        return mask
    ny, nx = mask.shape
    out = np.array(mask, np.int32, order="C")
    flat = out.reshape(-1)
    for sel, bits, keep in _alt_operations(alt, planes, bad_mask_planes, use_psf_matched_polygons, (ny, nx)):
        _alt_slice(flat, sel, 0, ny, 0, nx, bits, keep)
    return out


# --- gathering a chunk of every warp into the kernel's (N, P) rows -------------------------
# Why compiled: per chunk and warp, numpy took a strided slice copy, a reshape copy, np.stack,
# and apply_alt_masks' masked passes, all holding the GIL between calls: at 10 x 2048^2 that
# glue cost as much as the stacking kernel and kept the chunk threads from running side by
# side.  These copy (or OR in) one warp's chunk in one pass without the GIL.

@nb.njit(cache=True, nogil=True)
def _gather_slice(src, y0, y1, x0, x1, out):  # pragma: no cover - compiled
    w = x1 - x0
    for y in range(y0, y1):
        r = src[y, x0:x1]
        o = out[(y - y0) * w:(y - y0 + 1) * w]
        for j in range(w):
            o[j] = r[j]


@nb.njit(cache=True, nogil=True)
def _alt_slice(out, sel, y0, y1, x0, x1, bits, keep):  # pragma: no cover - compiled
    # where sel: out = (out & keep) | bits (LSST applyAltMaskPlanes: clear, then set)
    w = x1 - x0
    for y in range(y0, y1):
        s = sel[y, x0:x1]
        o = out[(y - y0) * w:(y - y0 + 1) * w]
        for j in range(w):
            o[j] = ((o[j] & keep) | bits) if s[j] else o[j]


@nb.njit(cache=True, nogil=True)
def _gather_idx(src, idx, out):  # pragma: no cover - compiled
    nx = src.shape[1]
    for i in range(idx.size):
        p = idx[i]
        out[i] = src[p // nx, p % nx]


@nb.njit(cache=True, nogil=True)
def _alt_idx(out, sel, idx, bits, keep):  # pragma: no cover - compiled
    nx = sel.shape[1]
    for i in range(idx.size):
        p = idx[i]
        if sel[p // nx, p % nx]:
            out[i] = (out[i] & keep) | bits


def _alt_operations(alt: dict[str, np.ndarray] | None, planes: MaskPlanes, bad_mask_planes: Sequence[str], use_psf_matched_polygons: bool, shape: tuple[int, int]) -> list[tuple[np.ndarray, np.int32, np.int32]]:
    """:func:`apply_alt_masks` as ``(selection, bits to set, bits to keep)`` steps, in its order:
    inside NO_DATA the bad-mask bits are cleared first, then each plane is set."""
    ops: list[tuple[np.ndarray, np.int32, np.int32]] = []
    if not alt:
        return ops
    if use_psf_matched_polygons and "NO_DATA" in alt and "NO_DATA" in bad_mask_planes:
        bad = int(planes.bitmask(bad_mask_planes, strict=False, field="badMaskPlanes"))
        ops.append((np.asarray(alt["NO_DATA"], bool), np.int32(0), np.int32(~bad)))
    for name, sel in alt.items():
        planes.add(name)
        sel = np.asarray(sel, bool)
        if sel.shape != shape:
            raise InputError(f"alternative mask {name!r} has shape {sel.shape}, warp has {shape}")
        ops.append((sel, np.int32(planes.bitmask([name])), np.int32(-1)))
    return ops


def assemble_coadd(
    warps: Sequence[Exposure],
    config: AssembleCoaddConfig | None = None,
    alt_masks: Sequence[dict[str, np.ndarray] | None] | None = None,
    extra_bad_planes: Sequence[str] = (),
    use_psf_matched_polygons: bool = False,
    alt_edge_mask: np.ndarray | None = None,
    bright_objects: Any = None,
    weights: np.ndarray | None = None,
    lsst_online_quirk: bool = False,
    progress: ProgressFn | None = None,
    base: CoaddResult | None = None,
    pixels: np.ndarray | None = None,
    keep_raw: bool = False,
) -> CoaddResult:
    """Stack ``warps`` as LSST's ``AssembleCoaddTask.run`` + ``processResults`` would.

    Parameters
    ----------
    warps : sequence of Exposure
        Warps on one pixel grid (same shape and xy0), in nJy.
    config : AssembleCoaddConfig, optional
        Defaults to LSST's AssembleCoaddConfig (MEANCLIP, 3 sigma, 2 iterations).
    alt_masks : sequence of dict, optional
        Per-warp ``{plane: bool array}`` applied before stacking (CompareWarp's artifact masks).
    extra_bad_planes : sequence of str
        Added to the and-mask (CompareWarp adds CLIPPED).
    use_psf_matched_polygons : bool
        CompareWarp's rule: inside alternative NO_DATA, first clear the warp's bad-mask bits.
    alt_edge_mask : bool array, optional
        CompareWarp's ``applyAltEdgeMask`` region (SENSOR_EDGE | INEXACT_PSF).
    bright_objects : astropy Table, optional
        Used when ``config.doMaskBrightObjects``.
    weights : array, optional
        Precomputed weights, one per warp, finite and >= 0 (skips the MEANCLIP of each
        variance plane); a warp of weight 0 is left out, as LSST leaves out one whose weight
        cannot be computed.
    lsst_online_quirk : bool
        Reproduce LSST's online-mean ``isfinite(mask)`` bug.
    progress : callable(stage, fraction), optional
    base, pixels : CoaddResult and int array, optional
        Stack only the flat pixel indices ``pixels`` and take every other pixel from ``base``,
        an earlier result of a call that differed from this one at most at those pixels' alternative
        masks.  Every statistic is per pixel, so the result is identical to a full run; CompareWarp
        uses this to restack only where the artifact masks clip something.
    keep_raw : bool
        Keep ``raw`` (the stack before processResults) in the result, so that it can be a ``base``.
    """
    t0 = time.perf_counter()
    config = as_config(config, AssembleCoaddConfig)
    config.validate()
    if config.statistic not in ("MEAN", "MEDIAN", "MEANCLIP"):
        raise ConfigError(f"statistic={config.statistic!r} is valid in LSST but not implemented in diffstack (MEAN, MEDIAN, MEANCLIP)")
    _check_warps(warps)
    n = len(warps)
    if alt_masks is not None and len(alt_masks) != n:
        raise InputError(f"{len(alt_masks)} alternative masks for {n} warps")
    timings: dict[str, float] = {}
    # one plane dictionary for the coadd; warps that disagree are remapped
    planes = warps[0].mask_planes.copy()
    for name in ("CLIPPED", "REJECTED", "SENSOR_EDGE", "INEXACT_PSF", "NO_DATA", "EDGE"):
        planes.add(name)
    masks = [remap_mask(w.mask, w.mask_planes, planes) for w in warps]
    if weights is None:
        weights, skipped = compute_weights(warps, config)
    else:
        try:
            weights = np.array(weights, dtype=float)  # a copy: the caller's array is not kept
        except (TypeError, ValueError):
            raise InputError(f"weights must be {n} numbers, one per warp, got {weights!r}") from None
        if weights.shape != (n,):
            raise InputError(f"weights must be {n} numbers, one per warp, got shape {weights.shape}")
        bad_w = [i for i in range(n) if not (np.isfinite(weights[i]) and weights[i] >= 0)]
        if bad_w:
            raise InputError(f"weights must be finite and >= 0 (0 leaves a warp out), got {', '.join(f'warp {i}: {weights[i]}' for i in bad_w)}")
        skipped = {i: "weight is zero" for i in range(n) if weights[i] == 0}
    timings["weights"] = time.perf_counter() - t0
    used = [i for i in range(n) if i not in skipped]
    if not used:
        raise InputError("no usable warps: " + "; ".join(f"{i}: {r}" for i, r in skipped.items()))
    and_mask = np.int32(planes.bitmask(list(config.badMaskPlanes) + list(extra_bad_planes), strict=False, field="badMaskPlanes"))
    remove = np.int32(planes.bitmask(config.removeMaskPlanes, strict=False, field="removeMaskPlanes"))
    b = {p: np.int32(planes.bitmask([p])) for p in ("NO_DATA", "EDGE", "CLIPPED", "REJECTED", "SENSOR_EDGE", "INEXACT_PSF")}
    rejected_src = np.int32(int(and_mask) & ~int(b["NO_DATA"]) & ~int(b["EDGE"]) & ~int(b["CLIPPED"]))
    thresholds = [(np.int32(planes.bitmask([p])), float(t)) for p, t in config.maskPropagationThresholds.items() if p in planes]
    th_bits = np.array([t[0] for t in thresholds], np.int32)
    th_vals = np.array([t[1] for t in thresholds], np.float64)

    ny, nx = warps[0].shape
    dtype = np.result_type(*[w.dtype for w in warps])
    nbytes = (n + 7) // 8  # bits indexed by input position, skipped inputs stay 0
    if (base is None) != (pixels is None):
        raise InputError("assemble_coadd: base and pixels must be given together")
    if base is not None:
        if base.raw is None or base.n_image.shape != (ny, nx) or base.input_map.shape[0] != nbytes:
            raise InputError("assemble_coadd: base is not a stack of these warps")
        value, variance, out_mask = (a.copy() for a in base.raw)
        n_image, n_clip, input_map = base.n_image.copy(), base.n_clipped.copy(), base.input_map.copy()
        pixels = np.asarray(pixels, np.intp).ravel()
    else:
        value = np.full((ny, nx), np.nan, dtype)
        variance = np.full((ny, nx), np.nan, dtype)
        out_mask = np.zeros((ny, nx), np.int32)
        n_image = np.zeros((ny, nx), np.int32)
        n_clip = np.zeros((ny, nx), np.int32)
        input_map = np.zeros((nbytes, ny, nx), np.uint8)
    wts = np.ascontiguousarray(weights[used], np.float64)
    used_idx = np.asarray(used, np.int64)
    alt_ops = [_alt_operations(None if alt_masks is None else alt_masks[i], planes, config.badMaskPlanes, use_psf_matched_polygons, (ny, nx)) for i in used]
    x_dtype = np.result_type(*[warps[i].image.dtype for i in used])
    v_dtype = np.result_type(*[warps[i].variance.dtype for i in used])
    online = config.doOnlineForMean and config.statistic == "MEAN"
    stat_code = STAT_CODES["ONLINE" if online else config.statistic]
    tw, th = (int(v) for v in config.subregionSize)
    if tw <= 0 or th <= 0:
        raise ConfigError(f"subregionSize must be positive, got {config.subregionSize}")
    t1 = time.perf_counter()
    tiles = [(y, x) for y in range(0, ny, th) for x in range(0, nx, tw)] if not online else [(0, 0)]

    def _chunk(sl: tuple[slice, slice] | np.ndarray) -> None:
        # a chunk is a 2-D slice of the tile, or a set of flat pixel indices (``pixels`` mode)
        if isinstance(sl, np.ndarray):
            idx = sl
            shape = idx.shape
            npix = idx.size

            def gather(a, out):
                _gather_idx(a, idx, out)

            def alt_step(out, sel, bits, keep):
                _alt_idx(out, sel, idx, bits, keep)

            def put(a, v):
                if a.ndim == 3:
                    a.reshape(a.shape[0], -1)[:, idx] = v
                else:
                    a.reshape(-1)[idx] = v
        else:
            shape = (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
            npix = shape[0] * shape[1]
            box = (sl[0].start, sl[0].stop, sl[1].start, sl[1].stop)

            def gather(a, out):
                _gather_slice(a, *box, out)

            def alt_step(out, sel, bits, keep):
                _alt_slice(out, sel, *box, bits, keep)

            def put(a, v):
                a[(slice(None),) + sl if a.ndim == 3 else sl] = v

        # (N, P) row-contiguous copies of the chunk: the kernel works along rows of pixels
        x = np.empty((len(used), npix), x_dtype)
        v = np.empty((len(used), npix), v_dtype)
        m = np.empty((len(used), npix), np.int32)
        for j, i in enumerate(used):
            gather(warps[i].image, x[j])
            gather(warps[i].variance, v[j])
            gather(masks[i], m[j])
            for sel, bits, keep in alt_ops[j]:
                alt_step(m[j], sel, bits, keep)
        out = (np.empty(npix, dtype), np.empty(npix, dtype), np.empty(npix, np.int32), np.empty(npix, np.int32), np.empty(npix, np.int32))
        imap = np.empty((nbytes, npix), np.uint8)
        stack_pixels(
            x, v, m, wts, and_mask, remove, stat_code, float(config.sigmaClip), int(config.clipIter),
            bool(config.calcErrorFromInputVariance), bool(online and lsst_online_quirk), th_bits, th_vals,
            b["CLIPPED"], b["REJECTED"], b["SENSOR_EDGE"], b["NO_DATA"], b["EDGE"], rejected_src, used_idx, *out, imap,
        )
        for a, o in zip((value, variance, out_mask, n_image, n_clip), out):
            put(a, o.reshape(shape))
        put(input_map, imap.reshape((nbytes,) + shape))

    # chunks write disjoint slices and the compiled kernel releases the GIL (nogil), so a thread
    # pool spreads the stack over every core without copying the inputs
    k = n_threads(os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=k) if k > 1 else None
    run = pool.map if pool is not None else map
    try:
        if pixels is not None:
            tiles = []
            step = _CHUNK_PIXELS
            list(run(_chunk, [pixels[i : i + step] for i in range(0, pixels.size, step)]))
        for ti, (ty, tx) in enumerate(tiles):
            ty1, tx1 = (min(ty + th, ny), min(tx + tw, nx)) if not online else (ny, nx)
            rows_per_chunk = max(1, _CHUNK_PIXELS // (tx1 - tx))
            chunks = [(slice(cy, min(cy + rows_per_chunk, ty1)), slice(tx, tx1)) for cy in range(ty, ty1, rows_per_chunk)]
            list(run(_chunk, chunks))
            if progress:
                progress("stack", (ti + 1) / len(tiles))
    finally:
        if pool is not None:
            pool.shutdown()
    timings["stack"] = time.perf_counter() - t1
    raw = (value.copy(), variance.copy(), out_mask.copy()) if keep_raw else None
    # ---- setInexactPsf, setCoaddEdgeBits
    inexact = (out_mask & (b["SENSOR_EDGE"] | b["CLIPPED"] | b["REJECTED"])) != 0
    out_mask[inexact] |= b["INEXACT_PSF"]
    out_mask[variance == 0] |= b["NO_DATA"]
    if alt_edge_mask is not None:
        out_mask[np.asarray(alt_edge_mask, bool)] |= b["SENSOR_EDGE"] | b["INEXACT_PSF"]
    ref = warps[used[0]]
    meta = {
        "BUNIT": "nJy",
        "COADD_STATISTIC": config.statistic,
        "COADD_INPUTS": [int(warps[i].metadata.get("EPOCH", i)) for i in used],
        "COADD_WEIGHTS": [float(weights[i]) for i in used],
        "COADD_SKIPPED": {str(k): v for k, v in skipped.items()},
        "COADD_CONFIG": config.to_dict(),
    }
    psf = None
    if all(warps[i].psf is not None for i in used):
        # LSST's CoaddPsf takes, at each position, only the inputs whose CCDs cover it; a warp's
        # NO_DATA plane (its own bit) is that coverage on the patch, packed to a bit per pixel.
        # A restack (``base``) has the same warps and weights, so it shares base's coverage
        prev = base.coadd.psf if base is not None else None
        if isinstance(prev, CoaddPsf) and prev.coverage is not None and len(prev.coverage) == len(used):
            cov = prev.coverage
        else:
            nd = [int(warps[i].mask_planes.bitmask(["NO_DATA"], strict=False)) for i in used]  # 0 without the plane
            cov = InputCoverage.from_masks([warps[i].mask for i in used], nd, ref.xy0)
        psf = CoaddPsf([warps[i].psf for i in used], weights[used], coverage=cov)
    coadd = Exposure(value, variance, out_mask, planes, psf=psf, photo_calib=1.0, wcs=ref.wcs, xy0=ref.xy0, metadata=meta, copy=False)
    # ---- processResults
    t2 = time.perf_counter()
    if config.doInterp:
        ic = config.interpImage
        interpolate_over_plane(coadd, "NO_DATA", ic.fallbackValueType, ic.fallbackUserValue, ic.negativeFallbackAllowed, ic.useFallbackValueAtEdge, ic.transpose, in_place=True)
    with np.errstate(invalid="ignore"):
        bad_var = ~(coadd.variance > 0)
    coadd.variance[bad_var] = np.inf
    if config.doMaskBrightObjects and bright_objects is not None:
        mask_bright_objects(coadd, bright_objects, config.brightObjectMaskName)
    timings["process_results"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    return CoaddResult(coadd, n_image, input_map, weights, skipped, n_clip, timings, raw)
