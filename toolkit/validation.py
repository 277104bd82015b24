"""Truth-based quality numbers for simulated stacks (what the CompareWarp acceptance checks use).

The coadd is a weighted mean over the inputs that survived at each pixel, so the part of an
artifact that is left in the coadd can be computed *without noise*: with the coadd's input map
(who contributed where) and weights, the artifact's contribution is
``sum_i w_i u_i a_i / sum_i w_i u_i``.  Comparing it with the same sum over the inputs a plain
mean would have used (no CLIPPED) gives the removed fraction exactly, which a direct
``coadd - truth`` sum cannot do for faint trails whose flux is comparable to the noise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from .coadd import assemble_coadd
from .sim import ARTIFACT_KINDS, SimulatedStack

if TYPE_CHECKING:
    from astropy.table import Table

    from .compare_warp import CompareWarpPipeline

__all__ = ["artifact_driven_clips", "artifact_leftovers", "artifact_removal", "contribution", "star_flux_errors"]


def contribution(values: np.ndarray, input_map: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted-mean contribution of per-epoch ``values`` (N, ny, nx) given a coadd input map."""
    n = values.shape[0]
    used = np.unpackbits(input_map, axis=0, count=n).astype(bool)
    w = np.asarray(weights, float).reshape(-1, 1, 1)
    sw = np.where(used, w, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sw > 0, np.where(used, w * values, 0.0).sum(0) / sw, 0.0)


def _map_with_clipped(pipeline, clipped: list[np.ndarray] | None) -> np.ndarray:
    """Input map of the final stack with the same NO_DATA/EDGE alt masks and ``clipped`` as
    the per-epoch CLIPPED masks (None: nothing clipped)."""
    masks = []
    for i, m in enumerate(pipeline.artifact_masks):
        c = np.zeros_like(m["CLIPPED"]) if clipped is None else clipped[i]
        masks.append({k: (c if k == "CLIPPED" else v) for k, v in m.items()})
    res = assemble_coadd(pipeline.direct_warps, pipeline.config, alt_masks=masks, extra_bad_planes=["CLIPPED"], use_psf_matched_polygons=True, weights=pipeline.coadd_result.weights)
    return res.input_map


def _unclipped_map(pipeline) -> np.ndarray:
    """Input map of the final stack with the same NO_DATA/EDGE alt masks but nothing CLIPPED."""
    return _map_with_clipped(pipeline, None)


def artifact_driven_clips(stack: SimulatedStack, pipeline: CompareWarpPipeline) -> list[np.ndarray]:
    """Per epoch, the parts of the CLIPPED mask that an injected artifact caused: the
    8-connected clipped regions that hold at least one of that epoch's artifact pixels.

    A clipped candidate is the artifact's footprint in the PSF-matched warp difference, which
    reaches well beyond the artifact's own pixels (a 500-sigma trail's is ~50 px wide), so stars
    beside an artifact lose that epoch by design; LSST flags such coadd pixels INEXACT_PSF.
    What is left of the CLIPPED mask, regions with no artifact pixel, are false clips."""
    art = stack.truth["artifact_mask"]
    out = []
    for e, m in enumerate(pipeline.artifact_masks):
        lab, n = ndimage.label(m["CLIPPED"], structure=np.ones((3, 3), bool))
        hit = np.zeros(n + 1, bool)
        hit[np.unique(lab[art[e]])] = True
        hit[0] = False
        out.append(hit[lab])
    return out


def artifact_removal(stack: SimulatedStack, pipeline: CompareWarpPipeline) -> dict[str, dict[str, float]]:
    """Fraction of each artifact kind's flux removed from the CompareWarp coadd.

    Returns ``{kind: {"injected", "remaining", "removed_fraction", "n_pixels"}}`` where
    *injected* is the flux a plain mean of the same usable inputs would carry and *remaining*
    what the CompareWarp coadd carries (both summed over the kind's pixels, nJy).
    """
    art = stack.truth["artifact_flux"].astype(np.float64)
    kind = stack.truth["artifact_kind"]
    r = pipeline.coadd_result
    plain = _unclipped_map(pipeline)
    out: dict[str, dict[str, float]] = {}
    for k, name in ARTIFACT_KINDS.items():
        sel = kind == k
        if not sel.any():
            continue
        a = np.where(sel, art, 0.0)
        region = sel.any(0)
        inj = float(contribution(a, plain, r.weights)[region].sum())
        rem = float(contribution(a, r.input_map, r.weights)[region].sum())
        out[name] = {"injected": inj, "remaining": rem, "removed_fraction": 1.0 - rem / inj if inj else float("nan"), "n_pixels": int(region.sum())}
    return out


def artifact_leftovers(stack: SimulatedStack, pipeline: CompareWarpPipeline, kind: str = "cosmic_ray", min_fraction: float = 1e-3) -> Table:
    """Why each artifact of ``kind`` that CompareWarp left (partly) in the coadd was kept.

    One row per artifact (an 8-connected group of that kind's pixels in one epoch) with more
    than ``min_fraction`` of its coadd flux left: ``epoch``, ``x``, ``y`` (centroid),
    ``injected`` and ``remaining`` (as :func:`artifact_removal`) and ``reason``:

    * ``"not detected"``: no candidate of its epoch covers it;
    * ``"prefiltered"``: no candidate covers it and at least 95 % of its pixels carry a
      ``prefilterArtifactsMaskPlanes`` bit in the PSF-matched warp (``doPrefilterArtifacts``
      dropped it; e.g. a BAD column that PSF matching grew into a strip);
    * ``"protected"``: its unclipped candidates lie each inside one protected template
      footprint (``doPreserveContainedBySource``);
    * ``"not transient"``: a candidate covers it but too few of the candidate's pixels were
      transient (``spatialThreshold``), usually because it merged with other outliers there;
    * ``"partly clipped"``: it was clipped, but some of its pixels lie outside the clip.

    Returns an astropy Table (empty when nothing is left).
    """
    from astropy.table import Table

    code = {v: k for k, v in ARTIFACT_KINDS.items()}
    if kind not in code:
        raise ValueError(f"unknown artifact kind {kind!r}; choose from {', '.join(code)}")
    art = stack.truth["artifact_flux"]
    kinds = stack.truth["artifact_kind"]
    r = pipeline.coadd_result
    plain = _unclipped_map(pipeline)
    prot = pipeline.protected
    cfg = pipeline.config
    rows = []
    for e in range(art.shape[0]):
        this = kinds[e] == code[kind]
        lab, n = ndimage.label(this, structure=np.ones((3, 3), bool))
        if not n:
            continue
        # the contributions are per pixel, so one map per epoch serves all its artifacts
        a = np.zeros(art.shape, np.float64)
        a[e][this] = art[e][this]
        inj_map = contribution(a, plain, r.weights)
        rem_map = contribution(a, r.input_map, r.weights)
        del a
        cand = pipeline.candidate_image(e)
        cflat = np.flatnonzero(cand)
        contained = prot.contains(cflat, cand.ravel()[cflat], int(cand.max()))
        clipped = pipeline.artifact_masks[e]["CLIPPED"]
        pm = pipeline.psf_matched_warps[e]
        for lv, sl in enumerate(ndimage.find_objects(lab), start=1):
            sel = lab[sl] == lv  # this artifact's pixels within its bounding box
            inj = float(inj_map[sl][sel].sum())
            rem = float(rem_map[sl][sel].sum())
            if not inj or rem <= min_fraction * inj:
                continue
            labels = np.setdiff1d(np.unique(cand[sl][sel]), [0])
            if labels.size == 0:
                reason = "not detected"
                if pm is not None and cfg.doPrefilterArtifacts:
                    bits = pm.mask_planes.bitmask(cfg.prefilterArtifactsMaskPlanes, strict=False)
                    if np.mean((pm.mask[sl][sel] & bits) != 0) >= 0.95:
                        reason = "prefiltered"
            elif clipped[sl][sel].any():
                reason = "partly clipped"
            else:
                inside = bool(contained is not None and contained[labels].all())
                reason = "protected" if inside and cfg.doPreserveContainedBySource else "not transient"
            ys, xs = np.nonzero(sel)
            rows.append((e, float(xs.mean() + sl[1].start), float(ys.mean() + sl[0].start), inj, rem, reason))
    names = ("epoch", "x", "y", "injected", "remaining", "reason")
    if not rows:
        return Table(names=names, dtype=(int, float, float, float, float, str))
    return Table(rows=rows, names=names)


def star_flux_errors(stack: SimulatedStack, pipeline: CompareWarpPipeline, radius: float = 2.0, min_snr: float = 50.0, artifact_margin: int = 12, intended_clips: bool = True) -> dict[str, Any]:
    """Relative aperture-flux errors of the CompareWarp coadd at non-saturated stars.

    The reference is the noiseless per-epoch sky stacked with the input map that has only the
    artifact-driven clips (:func:`artifact_driven_clips`; ``intended_clips=False``: nothing
    clipped), so what false clips removed and the noise show up.  A star beside a bright trail
    loses that epoch inside the trail's wide PSF-matched footprint by design, which changes a
    direct coadd's core flux by up to ~1 % (the epochs' PSFs differ); that is not a false clip.
    The aperture radius is in units of the largest epoch PSF sigma.  Stars whose aperture S/N
    (from the coadd variance) is below ``min_snr``, that touch NO_DATA or that lie within
    ``artifact_margin`` px of an artifact pixel in any epoch (whose leftover flux would add
    to the star's) are skipped.  Returns per-class arrays of relative errors of the real coadd
    and their expected noise (``*_sigma``), and the noise-free relative change that false
    clips alone caused (``*_clip``: the noiseless sky stacked with the final input map against
    the reference), for ``static`` and ``variable`` stars.
    """
    nl = stack.truth["noiseless"].astype(np.float64)
    r = pipeline.coadd_result
    coadd = r.coadd
    base = _map_with_clipped(pipeline, artifact_driven_clips(stack, pipeline)) if intended_clips else _unclipped_map(pipeline)
    ref = contribution(nl, base, r.weights)
    got = contribution(nl, r.input_map, r.weights)
    # leftover artifact flux: an artifact's PSF-matched footprint reaches about a kernel
    # half-width beyond its pixels
    hit = ndimage.binary_dilation(stack.truth["artifact_mask"].any(0), iterations=artifact_margin) if artifact_margin else stack.truth["artifact_mask"].any(0)
    stars = stack.catalogs["stars"]
    rad = radius * float(np.max(stack.truth["psf_sigma"]))
    ny, nx = coadd.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    res: dict[str, Any] = {k: [] for k in ("static", "static_sigma", "static_clip", "variable", "variable_sigma", "variable_clip")}
    for s in stars:
        if s["saturated"]:
            continue
        x, y = float(s["x"]), float(s["y"])
        if not (rad < x < nx - 1 - rad and rad < y < ny - 1 - rad):
            continue
        y0, y1, x0, x1 = int(y - rad) - 1, int(y + rad) + 2, int(x - rad) - 1, int(x + rad) + 2
        ap = (xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2 <= rad * rad
        img = coadd.image[y0:y1, x0:x1][ap]
        var = coadd.variance[y0:y1, x0:x1][ap]
        if not (np.all(np.isfinite(img)) and np.all(np.isfinite(var))) or coadd.get_plane("NO_DATA")[y0:y1, x0:x1][ap].any():
            continue
        f_ref = ref[y0:y1, x0:x1][ap].sum()
        sig = np.sqrt(var.sum())
        if not f_ref > 0 or f_ref / sig < min_snr:
            continue
        if hit[y0:y1, x0:x1][ap].any():
            continue  # an artifact crosses the star: clipping that epoch there is intended
        key = "variable" if s["variable"] else "static"
        res[key].append((img.sum() - f_ref) / f_ref)
        res[key + "_sigma"].append(sig / f_ref)
        res[key + "_clip"].append((got[y0:y1, x0:x1][ap].sum() - f_ref) / f_ref)
    return {k: np.asarray(v) for k, v in res.items()}
