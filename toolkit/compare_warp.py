"""``CompareWarpAssembleCoaddTask`` as a staged, cached pipeline.

Stages (reference §3) and what each depends on:

=================  =========================================================================
``psf_matched``    the inputs (PSF-matched warps are made with :mod:`psf_matching` if absent)
``template``       ``assembleStaticSkyModel.*``
``protected``      template + ``doPreserveContainedBySource``, ``detectTemplate.*``
``warp_diffs``     template + ``doScaleWarpVariance``, ``scaleWarpVariance.*``
``candidates``     warp diffs + ``detect.*``, prefilter fields, ``badMaskPlanes``
``streaks``        candidates, protected + ``doFilterMorphological``, ``maskStreaks.*``,
                   ``growStreakFp`` (the Hough transforms are kept while only protected or
                   ``growStreakFp`` change)
``filter``         candidates, protected, streaks + ``maxNumEpochs``, ``maxFractionEpochs*``,
                   ``spatialThreshold``
``weights``        direct warps + ``badMaskPlanes``, ``sigmaClip``, ``clipIter``
``coadd``          filter, candidates (NO_DATA/EDGE masks), weights + the top-level
                   AssembleCoadd fields; when only the filter changed, the previous coadd is
                   restacked where some epoch's CLIPPED bit changed
=================  =========================================================================

Each stage's result is cached under a key made of its own config values and its inputs' keys,
so a change recomputes only the stages downstream of it.  ``run_counts`` counts executions and
``timings`` records the last run time of each stage (LSST's task timer metadata).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import numba as nb
import numpy as np
from astropy.stats import sigma_clipped_stats
from scipy import ndimage

from .coadd import CoaddResult, assemble_coadd, compute_weights
from .config import CompareWarpConfig, as_config
from .detection import binned_background, footprint_pixels, grow_mask, grow_radius, smooth_for_detection, threshold_for
from .errors import InputError, warn
from .exposure import Exposure
from .psf import DoubleGaussianPsf, Psf
from .parallel import map_epochs, n_threads, worker_scratch
from .psf_matching import match_to_psf
from .stats import median_masked, quantiles_masked

__all__ = ["CompareWarpPipeline", "compare_warp_coadd", "CompareWarpResult", "WarpDiffs", "CandidateImages", "scale_variance", "streak_clip_mask", "ProtectedFootprints", "STAGES"]

log = logging.getLogger("diffstack.compare_warp")

#: |sigma-clipped median of warpDiff / sigma| (per pixel) above which an epoch is reported as
#: offset from the template.  Sky-subtracted warps sit within 0.2 of zero (simulated 256^2
#: stacks with bright trails and a ghost, the shipped DECam cutouts within 0.05; 5-epoch 128^2
#: stacks, whose templates are poor, within 0.85); a sky level left in one warp puts it at tens
#: to hundreds, and an offset of 2 alone lowers the 7.5-sigma candidate threshold to 5.5.
SKY_OFFSET_LIMIT = 2.0


class SkyOffsetWarning(UserWarning):
    """Some PSF-matched warps differ from the static-sky template over most of their area."""


def _median_offset(image: np.ndarray, variance: np.ndarray) -> float:
    """Sigma-clipped median of ``image / sqrt(variance)``, from a regular subsample of ~65 000 pixels.

    Clipped (3 sigma about the median, MAD width) so that artifacts, which may cover a sixth of
    a small warp and its PSF-matched wings, do not count as an offset; 65 000 pixels fix the
    median to ~0.005 sigma.
    """
    step = max(1, int(np.sqrt(image.size / 65536)))
    with np.errstate(invalid="ignore", divide="ignore"):
        sn = image[::step, ::step] / np.sqrt(variance[::step, ::step])
    sn = sn[np.isfinite(sn)]
    if not sn.size:
        return 0.0
    return float(sigma_clipped_stats(sn, sigma=3, maxiters=5, cenfunc="median", stdfunc="mad_std")[1])

STAGES = ("psf_matched", "template", "protected", "warp_diffs", "candidates", "streaks", "filter", "weights", "coadd")


@nb.njit(cache=True, nogil=True)
def _unusable_for_scaling(img, var, mask, bits):  # pragma: no cover - compiled
    """ScaleVariance's excluded pixels (a bit of ``bits``, a non-finite image, or a variance
    that is not > 0, NaN included) and how many are left; one pass, where numpy took six
    passes and five temporary planes."""
    ny, nx = img.shape
    out = np.empty((ny, nx), np.bool_)
    n_good = 0
    for y in range(ny):
        ir, vr, mr, o = img[y], var[y], mask[y], out[y]
        for x in range(nx):
            v = ir[x]
            b = ((mr[x] & bits) != 0) | ((v - v) != 0) | (not (vr[x] > 0))
            o[x] = b
            n_good += not b
    return out, n_good


@nb.njit(cache=True, nogil=True)
def _nodata_and_count(img, mask, bad, n_image):  # pragma: no cover - compiled
    """findArtifacts' per-epoch bookkeeping in one pass: the NaN pixels of the warpDiff (its
    NO_DATA spans), returned, and +1 in ``n_image`` where the pixel is finite and has no bit
    of ``bad`` (the approximate PSF-matched nImage); numpy took four passes and three planes."""
    ny, nx = img.shape
    nodata = np.empty((ny, nx), np.bool_)
    for y in range(ny):
        ir, mr, nr, o = img[y], mask[y], n_image[y], nodata[y]
        for x in range(nx):
            v = ir[x]
            nd = (v - v) != 0
            o[x] = nd
            nr[x] += (not nd) & ((mr[x] & bad) == 0)
    return nodata


def scale_variance(exposure: Exposure, mask_planes: Sequence[str], limit: float = 10.0, want_variance: bool = True) -> tuple[float, np.ndarray | None]:
    """LSST ``ScaleVarianceTask``: the factor and the rescaled variance (input untouched; the
    variance is ``None`` with ``want_variance=False``).

    The factor is (0.74 IQR(image/sqrt(var)))^2 over good pixels after removing a 32-px
    background; if it exceeds ``limit`` the image-based estimate (0.74 IQR(image))^2 / median(var)
    is tried; if that also exceeds ``limit``, :class:`InputError` is raised.
    """
    img, var = exposure.image, exposure.variance
    unusable, n_good = _unusable_for_scaling(img, var, exposure.mask, np.int32(exposure.mask_planes.bitmask(mask_planes, strict=False, field="scaleWarpVariance.maskPlanes")))
    if n_good < 2:
        return 1.0, exposure.variance.copy() if want_variance else None
    # in the image's precision, as LSST (a float32 image minus its float32 background, over the
    # float32 sqrt(variance)); the quartiles are read from the planes with unusable pixels masked
    dtype = np.float32 if img.dtype == np.float32 and var.dtype == np.float32 else np.float64
    resid = binned_background(img, unusable, 32, dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.subtract(img, resid, out=resid)
        snr = np.sqrt(var, dtype=dtype)
        np.divide(resid, snr, out=snr)  # resid / sqrt(var), one new plane
    q1, q3 = quantiles_masked(snr, unusable, 1, (0.25, 0.75))
    del snr
    factor = (0.74 * (q3 - q1)) ** 2
    if factor > limit:
        q1, q3 = quantiles_masked(resid, unusable, 1, (0.25, 0.75))
        factor = (0.74 * (q3 - q1)) ** 2 / median_masked(var, unusable)
        if factor > limit:
            raise InputError(f"variance scaling factor {factor:.2f} exceeds limit {limit}")
    return float(factor), (exposure.variance * factor).astype(exposure.dtype, copy=False) if want_variance else None


class WarpDiffs(Sequence):
    """The warpDiffs of a CompareWarp run as a lazy sequence (see ``CompareWarpPipeline.warp_diffs``).

    ``variance_factors[i]`` is ScaleVariance's factor for epoch i (None when not rescaled).
    """

    def __init__(self, psf_matched: Sequence[Exposure | None], template: Exposure, factors: Sequence[float | None]) -> None:
        self._pm, self._tmpl, self.variance_factors = list(psf_matched), template, list(factors)

    def __len__(self) -> int:
        return len(self._pm)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._diff(i, None)

    def scratch(self, i: int):
        """``self[i]`` with its planes in the calling worker thread's scratch arrays, which its
        next call overwrites (:func:`~toolkit.parallel.worker_scratch`): for per-epoch work that
        reads a diff once (candidate detection), so that epochs on two threads fault in two
        pairs of planes, not one pair per epoch.  With mixed precisions this is ``self[i]``."""
        return self._diff(i, worker_scratch)

    def _diff(self, i: int, scratch):
        w, f = self._pm[i], self.variance_factors[i]
        if w is None:
            return None
        t = self._tmpl
        if len({w.image.dtype, t.image.dtype, w.variance.dtype, t.variance.dtype}) != 1:
            # mixed precisions: numpy's promotions, on new planes
            var = (w.variance if f is None else (w.variance * f).astype(w.dtype, copy=False)) + t.variance
            return Exposure(w.image - t.image, var, w.mask, w.mask_planes, psf=w.psf, xy0=w.xy0, wcs=w.wcs, copy=False)
        if scratch is None:
            img, var = np.empty(w.shape, w.dtype), np.empty(w.shape, w.dtype)
        else:
            img, var = scratch("warp_diff_image", w.shape, w.dtype), scratch("warp_diff_variance", w.shape, w.dtype)
        np.subtract(w.image, t.image, out=img)
        if f is None:
            np.add(w.variance, t.variance, out=var)
        else:
            np.multiply(w.variance, f, out=var)  # (w.variance * f).astype(w.dtype), in place
            var += t.variance
        return Exposure(img, var, w.mask, w.mask_planes, psf=w.psf, xy0=w.xy0, wcs=w.wcs, copy=False)


class CandidateImages(Sequence):
    """Per-epoch candidate label images (0 = none, 1..n after the prefilter), each made when it
    is asked for from the stored pixel indices: N int32 planes held at once would be a third
    of a 10-warp input stack's memory for data that is mostly zeros."""

    def __init__(self, found: Sequence[tuple[np.ndarray, np.ndarray, int]], shape: tuple[int, int]) -> None:
        self._found, self._shape = list(found), tuple(shape)

    def __len__(self) -> int:
        return len(self._found)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        flat, lv, _ = self._found[i]
        out = np.zeros(self._shape, np.int32)
        out.ravel()[flat] = lv
        return out


@dataclass
class CompareWarpResult:
    """Everything :func:`compare_warp_coadd` produced (same fields as the pipeline's stages)."""

    coadd: Exposure
    n_image: np.ndarray
    input_map: np.ndarray
    template: Exposure
    epoch_count: np.ndarray
    n_image_psf_matched: np.ndarray
    artifact_masks: list[dict[str, np.ndarray]]
    candidates: CandidateImages  # label images per epoch, made on access
    timings: dict[str, float]
    coadd_result: CoaddResult


def _sky_offset_note(offsets: list[float], cands: list[tuple], nodata: list[np.ndarray]) -> str | None:
    """The :class:`SkyOffsetWarning` text for the epochs whose warpDiff offset is beyond
    :data:`SKY_OFFSET_LIMIT` (None if there are none), with each one's share of its pixels with
    data inside its candidates: a sky left in puts most of the warp there, and so does one
    bright feature that covers most of a small patch (a trail), which the median cannot tell
    apart."""
    far = [(i, o) for i, o in enumerate(offsets) if abs(o) > SKY_OFFSET_LIMIT]
    if not far:
        return None

    def covered(i):
        # grown footprints reach into the no-data pixels: those are not counted
        has_data = ~nodata[i].ravel()
        inside = int(np.count_nonzero(has_data[cands[i][0]]))
        return 100.0 * inside / max(int(np.count_nonzero(has_data)), 1)

    listed = ", ".join(f"epoch {i}: {o:+.1f} ({covered(i):.0f} % of it in candidates)" for i, o in far)
    return (
        f"{len(far)} of {len(offsets)} PSF-matched warps differ from the static-sky "
        f"template by a clipped median of more than {SKY_OFFSET_LIMIT:g} sigma per pixel "
        f"({listed}). Either their sky is not subtracted to the common level "
        "CompareWarp needs (LSST's warps are), and their artifact candidates cover the "
        "offset instead; or something bright covers most of such a warp (a trail "
        "across a small patch), which this median cannot tell from a sky level"
    )


class CompareWarpPipeline:
    """Lazily computed, cached CompareWarp stages.

    Parameters
    ----------
    direct_warps : sequence of Exposure
    psf_matched_warps : sequence of Exposure or None, optional
        In the direct-warp order; ``None`` entries mark missing PSF-matched warps (that epoch
        is then NO_DATA everywhere).  If the argument is omitted they are computed by matching to
        ``model_psf`` (LSST's 7.7-px double Gaussian by default).
    config : CompareWarpConfig, optional
    progress : callable(stage, fraction), optional
    bright_objects : astropy Table, optional
        Bright-object regions painted on the coadd when ``doMaskBrightObjects`` is set (LSST's
        ``brightObjectMask`` input; see :func:`toolkit.interp.mask_bright_objects`).  An input
        like the warps: after replacing it, call :meth:`invalidate`.
    """

    def __init__(self, direct_warps: Sequence[Exposure], psf_matched_warps: Sequence[Exposure | None] | None = None, config: CompareWarpConfig | None = None, model_psf=None, progress: Callable[[str, float], None] | None = None, bright_objects: Any = None) -> None:
        if len(direct_warps) == 0:
            raise InputError("CompareWarp needs at least one direct warp")
        self.direct_warps = list(direct_warps)
        for i, w in enumerate(self.direct_warps):
            if not isinstance(w, Exposure):
                raise InputError(f"direct warp {i} is a {type(w).__name__}, not an Exposure")
        if psf_matched_warps is not None and len(psf_matched_warps) != len(self.direct_warps):
            raise InputError(f"{len(psf_matched_warps)} PSF-matched warps for {len(self.direct_warps)} direct warps")
        for i, w in enumerate(psf_matched_warps or ()):
            if w is not None and not isinstance(w, Exposure):
                raise InputError(f"PSF-matched warp {i} is a {type(w).__name__}, not an Exposure (or None for a missing one)")
        self._given_matched = None if psf_matched_warps is None else list(psf_matched_warps)
        self.config = as_config(config, CompareWarpConfig)
        self.model_psf = DoubleGaussianPsf(7.7) if model_psf is None else model_psf
        self.progress = progress
        self.bright_objects = bright_objects
        self._cache: dict[str, tuple[str, Any]] = {}
        # (stack key, per-epoch clipped flat indices, result) of the latest coadd stage
        self._last_coadd: tuple[str, list[np.ndarray], CoaddResult] | None = None
        # (candidates + protected key, per-epoch inputs of the filter rule), see _filter_inputs
        self._filter_inputs_cache: tuple[str, list] | None = None
        # (candidates + maskStreaks key, per-epoch STREAK pixels before growth), see _raw_streaks
        self._raw_streaks_cache: tuple[str, list] | None = None
        self.run_counts = {s: 0 for s in STAGES}
        self.timings: dict[str, float] = {}
        self._local = threading.local()  # per thread: progress reports held for the caller

    # ------------------------------------------------------------------ caching machinery
    def _cfg(self, *names: str) -> str:
        c = self.config
        return json.dumps({n: _plain(c.get_dotted(n)) for n in names}, sort_keys=True)

    def _stage(self, name: str, key: str, compute: Callable[[], Any]) -> tuple[str, Any]:
        hit = self._cache.get(name)
        full_key = f"{name}|{key}"
        if hit is not None and hit[0] == full_key:
            return hit
        t = time.perf_counter()
        self._report(name, 0.0)
        value = compute()
        self.timings[name] = time.perf_counter() - t
        self.run_counts[name] += 1
        self._report(name, 1.0)
        self._cache[name] = (full_key, value)
        return self._cache[name]

    def _report(self, stage: str, fraction: float) -> None:
        if self.progress is None:
            return
        held = getattr(self._local, "held", None)
        if held is not None:  # a side stage's worker thread: the caller's thread reports it
            held.append((stage, fraction))
        else:
            self.progress(stage, fraction)

    def _progress_for(self, stage: str) -> Callable[[float], None] | None:
        if self.progress is None:
            return None
        return lambda f: self._report(stage, f)

    def invalidate(self) -> None:
        """Drop every cached stage (e.g. after replacing the inputs)."""
        self._cache.clear()
        self._last_coadd = None
        self._filter_inputs_cache = None
        self._raw_streaks_cache = None

    def _beside(self, pool: ThreadPoolExecutor, compute: Callable[[], Any]) -> Callable[[], Any]:
        """Start ``compute`` (a stage) in ``pool``; the returned function waits for it and then
        replays its progress reports in the calling thread (UI callbacks are not thread-safe)."""
        held: list[tuple[str, float]] = []

        def call():
            self._local.held = held
            try:
                return compute()
            finally:
                self._local.held = None

        future = pool.submit(call)

        def join():
            try:
                return future.result()
            finally:
                for stage, fraction in held:
                    self.progress(stage, fraction)  # type: ignore[misc]
                held.clear()

        return join

    def _compute_upstream(self) -> None:
        """Everything the coadd needs, with the two side stages run beside the main chain.

        ``weights`` (direct warps only) and ``protected`` (template only) are off the chain
        psf_matched -> template -> warp_diffs -> candidates -> filter -> coadd, and their serial
        parts (block medians, labelling, single-threaded numpy passes) would leave a core idle:
        in a worker thread they fill the gaps of the chain's own, not quite two-core, stages
        (~0.25 s less per 10-warp run at 2048^2 on 2 cores).  Cached stages return at once.  The
        timings of overlapped stages are wall times while sharing the cores.
        """
        if n_threads(2) < 2:
            return
        # on an error in the chain, leaving the block waits for the side stages (their own errors
        # are then dropped in favour of the chain's)
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="diffstack-side") as pool:
            weights = self._beside(pool, self._weights)
            self._template()
            protected = self._beside(pool, self._protected)
            self._candidates()
            weights()
            protected()

    # ------------------------------------------------------------------ stages
    def _psf_matched(self):
        def run():
            if self._given_matched is not None:
                return self._given_matched
            missing = [i for i, w in enumerate(self.direct_warps) if w.psf is None]
            if missing:
                raise InputError(f"direct warp(s) {', '.join(map(str, missing))} have no PSF: PSF matching needs one (give psf= to each Exposure, or pass psf_matched_warps)")
            workers = 1 if n_threads(len(self.direct_warps)) > 1 else -1  # epochs in parallel, not FFTs
            edge, order = self.config.psfMatchArrayEdge, self.config.psfMatchSpatialKernelOrder
            return map_epochs(lambda w: match_to_psf(w, self.model_psf, workers=workers, array_edge=edge, spatial_order=order), self.direct_warps, self._progress_for("psf_matched"))

        # the fields matter only to the warps made here: given ones keep every later stage
        key = "inputs" if self._given_matched is not None else "inputs" + self._cfg("psfMatchArrayEdge", "psfMatchSpatialKernelOrder")
        return self._stage("psf_matched", key, run)

    @property
    def psf_matched_warps(self) -> list[Exposure | None]:
        """The PSF-matched warps, as given or made from the direct warps (None: missing)."""
        return self._psf_matched()[1]

    def _template(self):
        pk, pm = self._psf_matched()
        key = pk + self._cfg("assembleStaticSkyModel")

        def run():
            epochs = [i for i, w in enumerate(pm) if w is not None]
            if not epochs:
                raise InputError("no PSF-matched warps to build the template from")
            try:
                return assemble_coadd([pm[i] for i in epochs], self.config.assembleStaticSkyModel).coadd
            except InputError as exc:
                if self._given_matched is not None or not str(exc).startswith("no usable warps"):
                    raise
                # the user's warps may be fine: PSF matching made every pixel NO_DATA
                raise InputError(f"static-sky template: none of the PSF-matched warps made from the direct warps (epochs {epochs}; warp numbers below count those) has a usable pixel ({exc}). PSF matching marks NO_DATA within its kernel's reach (10 px) of the image edge and of every NaN or NO_DATA pixel, so an image under ~21 px on a side, or one with scattered NaN pixels, loses them all") from None

        return self._stage("template", key, run)

    @property
    def template(self) -> Exposure:
        """The static-sky template (``assembleStaticSkyModel`` on the PSF-matched warps)."""
        return self._template()[1]

    def _protected(self):
        tk, tmpl = self._template()
        key = tk + self._cfg("doPreserveContainedBySource", "detectTemplate")

        def run():
            if not self.config.doPreserveContainedBySource:
                return ProtectedFootprints(np.zeros(tmpl.shape, np.int32))
            d = self.config.detectTemplate
            # SourceDetectionTask reads the PSF's width at the PSF's average position (for the
            # template's CoaddPsf, LSST's weighted mean of its inputs' positions)
            sigma = tmpl.psf.determinant_radius() if tmpl.psf is not None else self.model_psf.determinant_radius()
            # detectTemplate's doTempLocalBackground and reEstimateBackground change nothing here:
            # SourceDetectionTask thresholds the smoothed image *before* the temporary local
            # background is subtracted (that only re-detects the peaks inside each footprint,
            # updatePeaks, and leaves the footprints as they are), and the re-estimated
            # background only modifies LSST's clone of the template after detection.  Seeds are
            # looked for only where the whole smoothing kernel lies on the image (edge_nan).
            # findArtifacts clears every mask plane of the template before this detection
            # (clearAllMaskPlanes), so detectTemplate.statsMask selects nothing: a 'stdev'
            # threshold takes the clipped scatter of every finite smoothed pixel
            simg, svar = smooth_for_detection(tmpl.image, tmpl.variance, sigma, d.nSigmaForKernel, edge_nan=True)
            var, thr = threshold_for(simg, svar, d.thresholdValue, d.thresholdType, None)
            # finalizeFootprints: returnOriginalFootprints keeps the ungrown footprints;
            # combinedGrow=False grows each on its own, so grown footprints may overlap
            grow = 0 if d.returnOriginalFootprints else grow_radius(d.nSigmaToGrow, sigma)
            combined = d.combinedGrow or grow == 0
            flat, lv, n = footprint_pixels(simg, var, thr, "positive", d.minPixels, grow, d.includeThresholdMultiplier, isotropic=d.isotropicGrow, combined=combined)
            lab = np.zeros(tmpl.shape, np.int32)
            lab.ravel()[flat] = lv
            return ProtectedFootprints(lab, None if combined else (flat, lv, n))

        return self._stage("protected", key, run)

    @property
    def protected(self) -> "ProtectedFootprints":
        """The protected footprints with their containment test (:class:`ProtectedFootprints`)."""
        return self._protected()[1]

    @property
    def protected_footprints(self) -> np.ndarray:
        """Label image of the protected (template) footprints (0 = none; where footprints
        overlap, with ``detectTemplate.combinedGrow=False``, the later one's label)."""
        return self._protected()[1].labels

    def _warp_diffs(self):
        pk, pm = self._psf_matched()
        tk, tmpl = self._template()
        key = pk + tk + self._cfg("doScaleWarpVariance", "scaleWarpVariance")

        def run():
            # only the variance factors are kept; each warpDiff is made when it is asked for
            # (a subtraction, ~20 ms at 2k^2), which saves N image+variance planes of memory
            sv = self.config.scaleWarpVariance

            def factor_of(item):
                i, w = item
                if w is None or not self.config.doScaleWarpVariance:
                    return None
                try:
                    return scale_variance(w, sv.maskPlanes, sv.limit, want_variance=False)[0]
                except InputError as exc:
                    log.warning("epoch %d: variance not rescaled (%s)", i, exc)
                    return None

            factors = map_epochs(factor_of, enumerate(pm), self._progress_for("warp_diffs"))
            return WarpDiffs(pm, tmpl, factors)

        return self._stage("warp_diffs", key, run)

    @property
    def warp_diffs(self) -> WarpDiffs:
        """Per-epoch warpDiffs (PSF-matched warp minus template, variances added), made on access;
        ``None`` for a missing PSF-matched warp."""
        return self._warp_diffs()[1]

    def _candidates(self):
        wk, diffs = self._warp_diffs()
        key = wk + self._cfg("detect", "doPrefilterArtifacts", "prefilterArtifactsMaskPlanes", "prefilterArtifactsRatio", "badMaskPlanes")

        def run():
            c = self.config
            shape = self.direct_warps[0].shape

            n_image = np.zeros(shape, np.int32)
            lock = threading.Lock()

            def detect(i):
                d = diffs.scratch(i)  # read here only: the thread's scratch planes
                if d is None:
                    return (np.zeros(0, np.int64), np.zeros(0, np.int32), 0), np.ones(shape, bool), np.zeros(shape, bool), 0.0
                bad = np.int32(d.mask_planes.bitmask(c.badMaskPlanes, strict=False, field="badMaskPlanes"))
                with lock:  # summed as epochs finish, not held until all have
                    nodata = _nodata_and_count(d.image, d.mask, bad, n_image)
                sigma = d.psf.determinant_radius(d.bbox.center)
                stats_bad = None
                if c.detect.thresholdType == "stdev":
                    stats_bad = (d.mask & np.int32(d.mask_planes.bitmask(c.detect.statsMask, strict=False, field="detect.statsMask"))) != 0
                var, thr = threshold_for(d.image, d.variance, c.detect.thresholdValue, c.detect.thresholdType, stats_bad)
                # combinedGrow is moot here: findArtifacts merges the positive footprints with
                # the negative ones, which unions and relabels them whether or not they were
                # grown together
                grow = 0 if c.detect.returnOriginalFootprints else grow_radius(c.detect.nSigmaToGrow, sigma)
                flat, lv, n = footprint_pixels(d.image, var, thr, c.detect.thresholdPolarity, c.detect.minPixels, grow, c.detect.includeThresholdMultiplier, isotropic=c.detect.isotropicGrow)
                if n and c.doPrefilterArtifacts:
                    pb = np.int32(d.mask_planes.bitmask(c.prefilterArtifactsMaskPlanes, strict=False, field="prefilterArtifactsMaskPlanes"))
                    good = ((d.mask.ravel()[flat] & pb) == 0).astype(float)
                    area = np.bincount(lv, minlength=n + 1)
                    ngood = np.bincount(lv, weights=good, minlength=n + 1)
                    with np.errstate(invalid="ignore", divide="ignore"):
                        keep = ngood / area > c.prefilterArtifactsRatio
                    keep[0] = False
                    sel = keep[lv]
                    flat = flat[sel]
                    # relabel the kept candidates 1..m in their old order
                    new = np.cumsum(keep).astype(np.int32)
                    lv = new[lv[sel]]
                    n = int(new[-1])
                edge = d.get_plane("EDGE") if "EDGE" in d.mask_planes else np.zeros(shape, bool)
                return (flat, lv, n), nodata, edge, _median_offset(d.image, d.variance)

            found = map_epochs(detect, range(len(diffs)), self._progress_for("candidates"))
            epoch_count = np.zeros(shape, np.int32)
            cands, nodata, edge, offsets = [], [], [], []
            for cand, nd, ed, off in found:
                epoch_count.ravel()[cand[0]] += 1
                cands.append(cand)
                nodata.append(nd)
                edge.append(ed)
                offsets.append(off)
            # LSST assumes sky-subtracted warps and says nothing otherwise; here a warp left with
            # its sky (or a different background) would silently make most of itself one
            # candidate, found in every epoch and so never clipped
            note = _sky_offset_note(offsets, cands, nodata)
            if note is not None:
                warn(note, SkyOffsetWarning)
            edge_any = np.zeros(shape, bool)  # applyAltEdgeMask's region: EDGE in any epoch
            for e in edge:
                edge_any |= e
            return dict(candidates=cands, epoch_count=epoch_count, n_image=n_image, nodata=nodata, edge=edge, edge_any=edge_any, offsets=np.array(offsets))

        return self._stage("candidates", key, run)

    @property
    def epoch_count(self) -> np.ndarray:
        """How many epochs have an artifact candidate at each pixel (LSST's epochCountImage)."""
        return self._candidates()[1]["epoch_count"]

    @property
    def warp_diff_offsets(self) -> np.ndarray:
        """Per epoch, the sigma-clipped median of warpDiff / sigma per pixel (0 for a missing
        PSF-matched warp).

        Near 0 for sky-subtracted warps; beyond :data:`SKY_OFFSET_LIMIT` a
        :class:`SkyOffsetWarning` is given (diffstack only, LSST has no such check).
        """
        return self._candidates()[1]["offsets"].copy()

    @property
    def sky_offset_note(self) -> str | None:
        """The :class:`SkyOffsetWarning` text for the current candidates (None when no epoch
        is beyond :data:`SKY_OFFSET_LIMIT`): the warning is given once, when the candidates
        are made; this says it again for a display that outlives it."""
        c = self._candidates()[1]
        return _sky_offset_note(list(c["offsets"]), c["candidates"], c["nodata"])

    @property
    def n_image_psf_matched(self) -> np.ndarray:
        """Approximate nImage of the PSF-matched warps (what filterArtifacts uses)."""
        return self._candidates()[1]["n_image"]

    def candidate_image(self, epoch: int) -> np.ndarray:
        """Label image of epoch ``epoch``'s candidates after the prefilter."""
        return CandidateImages(self._candidates()[1]["candidates"], self.direct_warps[0].shape)[epoch]

    def _streaks(self):
        ck, cand = self._candidates()
        pk, prot = self._protected()
        key = ck + pk + self._cfg("doFilterMorphological", "maskStreaks", "growStreakFp", "doPreserveContainedBySource")

        def run():
            if not self.config.doFilterMorphological:
                return [None] * len(cand["candidates"])
            found = self._raw_streaks(ck, cand)
            preserve = prot if self.config.doPreserveContainedBySource else None
            xy0 = self.direct_warps[0].xy0
            return [None if w is None else streak_clip_mask(f, w.psf, self.config.growStreakFp, preserve, xy0) for f, w in zip(found, self.psf_matched_warps)]

        return self._stage("streaks", key, run)

    def _raw_streaks(self, ck: str, cand: dict) -> list[np.ndarray]:
        """MaskStreaksTask's STREAK pixels per epoch, before the split, the protection test and
        the growth: the Hough transforms are most of the streak stage's time and depend only on
        the candidates and ``maskStreaks``, so a change of ``detectTemplate`` or
        ``growStreakFp`` reuses them."""
        key = ck + self._cfg("maskStreaks")
        if self._raw_streaks_cache is not None and self._raw_streaks_cache[0] == key:
            return self._raw_streaks_cache[1]
        from .streaks import find_streaks

        shape = self.direct_warps[0].shape

        def one(found):
            # a missing PSF-matched warp has no candidates, hence no streaks
            det = np.zeros(shape, bool)
            det.ravel()[found[0]] = True
            return find_streaks(det, self.config.maskStreaks)

        # epochs side by side: the Hough transform (most of the time) releases the GIL
        found = map_epochs(one, cand["candidates"], self._progress_for("streaks"))
        self._raw_streaks_cache = (key, found)
        return found

    def _filter(self):
        ck, cand = self._candidates()
        pk, prot = self._protected()
        sk, streaks = self._streaks()
        key = ck + pk + sk + self._cfg("maxNumEpochs", "maxFractionEpochsLow", "maxFractionEpochsHigh", "spatialThreshold", "doPreserveContainedBySource")

        def run():
            c = self.config
            fixed = self._filter_inputs(ck + pk, cand, prot)

            def one(i):
                flat, lv, n = cand["candidates"][i]
                clipped = np.zeros(self.direct_warps[0].shape, bool)
                cf = np.zeros(0, np.int64)
                labels = np.zeros(0, int)
                if n:
                    area, nbar, cnt, contained = fixed[i]
                    eff = np.minimum(c.maxFractionEpochsLow * nbar, c.maxNumEpochs + c.maxFractionEpochsHigh * nbar).astype(np.int64)
                    below = (cnt > 0) & (cnt <= eff[lv])
                    nbelow = np.bincount(lv, weights=below.astype(float), minlength=n + 1)
                    with np.errstate(invalid="ignore", divide="ignore"):
                        clip = nbelow / area > c.spatialThreshold
                    clip[0] = False
                    if c.doPreserveContainedBySource and contained is not None:
                        clip &= ~contained
                    cf = flat[clip[lv]]  # sorted, as flat is
                    clipped.ravel()[cf] = True
                    labels = np.nonzero(clip)[0]
                if streaks[i] is not None:
                    clipped |= streaks[i]
                    cf = np.union1d(cf, np.flatnonzero(streaks[i]))
                return {"CLIPPED": clipped, "NO_DATA": cand["nodata"][i], "EDGE": cand["edge"][i]}, labels, cf

            out = map_epochs(one, range(len(cand["candidates"])))
            masks = [o[0] for o in out]
            clipped_labels = [o[1] for o in out]
            clipped_flat = [o[2] for o in out]
            return dict(masks=masks, clipped_labels=clipped_labels, clipped_flat=clipped_flat)

        return self._stage("filter", key, run)

    def _filter_inputs(self, key: str, cand: dict, prot: "ProtectedFootprints") -> list:
        """Per epoch what filterArtifacts reads that no filter parameter changes: each
        candidate's area and mean nImage, the epoch count under its pixels, and whether it lies
        inside one protected footprint (None when there are none).  Kept while the candidates
        and the protected footprints are, so a slider move only applies the rule."""
        if self._filter_inputs_cache is not None and self._filter_inputs_cache[0] == key:
            return self._filter_inputs_cache[1]
        count = cand["epoch_count"].ravel()
        nimg = cand["n_image"].ravel()

        def one(i):
            flat, lv, n = cand["candidates"][i]
            if not n:
                return None
            area = np.bincount(lv, minlength=n + 1).astype(float)
            nbar = np.bincount(lv, weights=nimg[flat], minlength=n + 1) / np.maximum(area, 1)
            return area, nbar, count[flat], prot.contains(flat, lv, n)

        data = map_epochs(one, range(len(cand["candidates"])))
        self._filter_inputs_cache = (key, data)
        return data

    @property
    def artifact_masks(self) -> list[dict[str, np.ndarray]]:
        """Per epoch ``{"CLIPPED", "NO_DATA", "EDGE"}`` boolean masks (LSST's altMaskList)."""
        return self._filter()[1]["masks"]

    def _weights(self):
        key = self._cfg("badMaskPlanes", "sigmaClip", "clipIter")
        return self._stage("weights", key, lambda: compute_weights(self.direct_warps, self.config))

    def _coadd(self):
        self._compute_upstream()
        fk, filt = self._filter()
        ck, cand = self._candidates()
        wk, (weights, _) = self._weights()
        top = [n for n in self.config.field_names() if n in _ASSEMBLE_FIELDS]
        # what the stack depends on apart from the CLIPPED masks: while it is unchanged, a new
        # coadd is the previous one restacked where some epoch's CLIPPED bit changed
        sk = ck + wk + self._cfg(*top)

        def run():
            # Stacking is per pixel, so a stack that differs from the previous one only in some
            # pixels' CLIPPED bits is the previous one restacked at those pixels: after a slider
            # move, usually a few candidates' worth.  The first time, it is one full stack.
            new_flat = filt["clipped_flat"]
            prev = self._last_coadd
            common = dict(
                alt_masks=filt["masks"], extra_bad_planes=["CLIPPED"], use_psf_matched_polygons=True,
                alt_edge_mask=cand["edge_any"], weights=weights, keep_raw=True, bright_objects=self.bright_objects,
            )
            if prev is not None and prev[0] == sk:
                npix = int(np.prod(self.direct_warps[0].shape))
                res = assemble_coadd(self.direct_warps, self.config, base=prev[2], pixels=_changed_pixels(prev[1], new_flat, npix), **common)
            else:
                self._last_coadd = None  # its planes are not needed: let them go before stacking
                res = assemble_coadd(self.direct_warps, self.config, **common)
            self._last_coadd = (sk, new_flat, res)
            return res

        return self._stage("coadd", fk + sk, run)

    @property
    def coadd_result(self) -> CoaddResult:
        """The final stack with its nImage, input map, weights and timings."""
        return self._coadd()[1]

    @property
    def coadd(self) -> Exposure:
        """The artifact-rejected coadd (CLIPPED epochs left out pixel by pixel)."""
        return self.coadd_result.coadd

    def run(self) -> CompareWarpResult:
        """Compute (or fetch from cache) every stage and bundle the results."""
        r = self.coadd_result
        cand = self._candidates()[1]
        return CompareWarpResult(
            coadd=r.coadd, n_image=r.n_image, input_map=r.input_map, template=self.template,
            epoch_count=cand["epoch_count"], n_image_psf_matched=cand["n_image"],
            artifact_masks=self.artifact_masks, candidates=CandidateImages(cand["candidates"], self.direct_warps[0].shape),
            timings=dict(self.timings), coadd_result=r,
        )


def _changed_pixels(old: Sequence[np.ndarray], new: Sequence[np.ndarray], npix: int) -> np.ndarray:
    """Sorted flat indices that are in ``old[i]`` or ``new[i]`` but not both, for any epoch i.

    Done with scatters into two scratch arrays (O(clipped pixels), one final scan) rather than
    ``np.setxor1d``/``np.unique``, which sort: with 30 epochs of clipped pixels the sorts alone
    took about a second at 2048^2.
    """
    seen = np.zeros(npix, bool)
    changed = np.zeros(npix, bool)
    for a, b in zip(old, new):
        seen[a] = True
        changed[b[~seen[b]]] = True  # newly clipped
        seen[a] = False
        seen[b] = True
        changed[a[~seen[a]]] = True  # no longer clipped
        seen[b] = False
    return np.flatnonzero(changed)


def _contained_in_one_footprint(t: np.ndarray, lv: np.ndarray, n: int) -> np.ndarray:
    """Per label 0..n: True when every pixel of the candidate has the same nonzero footprint id.

    ``t`` is the protected-footprint id under each candidate pixel, ``lv`` the candidate label.
    Compares each pixel with one representative per label (O(pixels); ``ndimage.minimum`` and
    ``maximum`` with labels sort the pixels, which cost 50 ms per epoch at 2k^2).
    """
    rep = np.zeros(n + 1, t.dtype)
    rep[lv] = t  # any pixel of the label will do
    differs = np.bincount(lv, weights=(t != rep[lv]), minlength=n + 1)
    return (differs == 0) & (rep > 0)


class ProtectedFootprints(NamedTuple):
    """The protected template footprints (doPreserveContainedBySource).

    ``labels`` is their label image (0 = none).  With ``detectTemplate.combinedGrow=False``
    grown footprints may overlap, which a label image cannot hold: ``overlapping`` then has
    them as ``(flat indices, labels, n)``, a pixel once per footprint covering it.
    """

    labels: np.ndarray
    overlapping: tuple[np.ndarray, np.ndarray, int] | None = None

    def contains(self, flat: np.ndarray, lv: np.ndarray, n: int) -> np.ndarray | None:
        """Per label 0..n of a set of regions (pixel ``flat`` indices, labels ``lv``): True when
        every pixel of the region lies in one and the same footprint, afw's
        ``footprint.spans.contains`` for some footprint.  None when there are no footprints."""
        if self.overlapping is None:
            t = self.labels.ravel()[flat]
            return _contained_in_one_footprint(t, lv, n) if self.labels.any() else None
        fflat, flab, nf = self.overlapping
        if nf == 0:
            return None
        # every (region, footprint) pair at each region pixel; contained when a pair's count
        # is the region's area (a footprint lists a pixel once)
        order = np.argsort(fflat, kind="stable")
        sf, sl = fflat[order], flab[order]
        lo = np.searchsorted(sf, flat, "left")
        cnt = np.searchsorted(sf, flat, "right") - lo
        total = int(cnt.sum())
        out = np.zeros(n + 1, bool)
        if total == 0:
            return out
        starts = np.cumsum(cnt) - cnt
        idx = np.arange(total) - np.repeat(starts, cnt) + np.repeat(lo, cnt)
        key = np.repeat(lv.astype(np.int64), cnt) * (nf + 1) + sl[idx]
        pairs, counts = np.unique(key, return_counts=True)
        region = pairs // (nf + 1)
        area = np.bincount(lv, minlength=n + 1)
        out[region[counts == area[region]]] = True
        out[0] = False
        return out


def streak_clip_mask(streaks: np.ndarray, psf: Psf, grow_fp: float, protected: "np.ndarray | ProtectedFootprints | None" = None, xy0: tuple[int, int] = (0, 0)) -> np.ndarray:
    """What findArtifacts clips for one epoch's STREAK pixels (reference §3.3, step 6).

    The pixels are split into connected streaks as afw's ``SpanSet.split`` splits them: spans
    in adjacent rows join when their x ranges overlap, i.e. 4-connectivity (unlike footprint
    detection's 8).  A streak lying entirely inside one protected template footprint
    (``protected``, a label image or :class:`ProtectedFootprints`; None when
    doPreserveContainedBySource is off) is dropped,
    as LSST does since 2025-10; every other streak is dilated with the circular stencil by
    ``int(grow_fp * r)``, r the PSF's determinant radius at the streak's centroid (parent
    pixel coordinates, hence ``xy0``), so a spatially varying PSF grows each streak by its own
    width.
    """
    labels, n = ndimage.label(streaks)
    out = np.zeros(streaks.shape, bool)
    if n == 0:
        return out
    flat = np.flatnonzero(labels)
    lv = labels.ravel()[flat]
    keep = np.ones(n + 1, bool)
    if protected is not None:
        if not isinstance(protected, ProtectedFootprints):
            protected = ProtectedFootprints(np.asarray(protected))
        contained = protected.contains(flat, lv, n)
        if contained is not None:
            keep &= ~contained
    area = np.bincount(lv, minlength=n + 1)
    ys, xs = np.divmod(flat, streaks.shape[1])
    cx = np.bincount(lv, weights=xs, minlength=n + 1) / np.maximum(area, 1) + xy0[0]
    cy = np.bincount(lv, weights=ys, minlength=n + 1) / np.maximum(area, 1) + xy0[1]
    radius = np.zeros(n + 1, np.int64)
    for k in np.nonzero(keep[1:])[0] + 1:
        radius[k] = int(grow_fp * psf.determinant_radius((cx[k], cy[k])))
    # dilation distributes over a union: one growth per distinct radius is exact
    for r in np.unique(radius[1:][keep[1:]]):
        sel = np.zeros(streaks.shape, bool)
        pick = keep[lv] & (radius[lv] == r)
        sel.ravel()[flat[pick]] = True
        out |= grow_mask(sel, int(r))
    return out


def _plain(v: Any) -> Any:
    if hasattr(v, "to_dict"):
        return v.to_dict()
    if isinstance(v, tuple):
        return list(v)
    return v


_ASSEMBLE_FIELDS = {
    "badMaskPlanes", "subregionSize", "statistic", "doOnlineForMean", "sigmaClip", "clipIter",
    "calcErrorFromInputVariance", "doInterp", "interpImage", "doNImage", "maskPropagationThresholds",
    "removeMaskPlanes", "doMaskBrightObjects", "brightObjectMaskName",
}


def compare_warp_coadd(direct_warps: Sequence[Exposure], psf_matched_warps: Sequence[Exposure | None] | None = None, config: CompareWarpConfig | None = None, progress: Callable[[str, float], None] | None = None, bright_objects: Any = None) -> CompareWarpResult:
    """One-call CompareWarp: build the pipeline and run every stage."""
    return CompareWarpPipeline(direct_warps, psf_matched_warps, config, progress=progress, bright_objects=bright_objects).run()
