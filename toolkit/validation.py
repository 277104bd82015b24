"""Truth-based quality numbers for simulated stacks (what the CompareWarp acceptance checks use).

The coadd is a weighted mean over the inputs that survived at each pixel, so the part of an
artifact that is left in the coadd can be computed *without noise*: with the coadd's input map
(who contributed where) and weights, the artifact's contribution is
``sum_i w_i u_i a_i / sum_i w_i u_i``.  Comparing it with the same sum over the inputs a plain
mean would have used (no CLIPPED) gives the removed fraction exactly, which a direct
``coadd - truth`` sum cannot do for faint trails whose flux is comparable to the noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from .coadd import assemble_coadd
from .sim import ARTIFACT_KINDS, SimulatedStack

__all__ = ["artifact_removal", "contribution", "star_flux_errors"]


def contribution(values: np.ndarray, input_map: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted-mean contribution of per-epoch ``values`` (N, ny, nx) given a coadd input map."""
    n = values.shape[0]
    used = np.unpackbits(input_map, axis=0, count=n).astype(bool)
    w = np.asarray(weights, float).reshape(-1, 1, 1)
    sw = np.where(used, w, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sw > 0, np.where(used, w * values, 0.0).sum(0) / sw, 0.0)


def _unclipped_map(pipeline) -> np.ndarray:
    """Input map of the final stack with the same NO_DATA/EDGE alt masks but nothing CLIPPED."""
    masks = [{k: (np.zeros_like(v) if k == "CLIPPED" else v) for k, v in m.items()} for m in pipeline.artifact_masks]
    res = assemble_coadd(pipeline.direct_warps, pipeline.config, alt_masks=masks, extra_bad_planes=["CLIPPED"], use_psf_matched_polygons=True, weights=pipeline.coadd_result.weights)
    return res.input_map


def artifact_removal(stack: SimulatedStack, pipeline) -> dict[str, dict[str, float]]:
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


def star_flux_errors(stack: SimulatedStack, pipeline, radius: float = 2.0, min_snr: float = 50.0, artifact_margin: int = 12) -> dict[str, Any]:
    """Relative aperture-flux errors of the CompareWarp coadd at non-saturated stars.

    The reference is the noiseless per-epoch sky stacked with the *plain* (unclipped) input map,
    so only what clipping removed and the noise show up.  The aperture radius is in units of
    the largest epoch PSF sigma.  Stars whose aperture S/N (from the coadd variance) is below
    ``min_snr``, that touch NO_DATA or that lie within ``artifact_margin`` px of an artifact in
    any epoch are skipped.  Returns per-class arrays of relative errors
    of the real coadd and their expected noise (``*_sigma``), and the noise-free relative change
    that clipping alone caused (``*_clip``: the noiseless sky stacked with the final input map
    against the plain one), for ``static`` and ``variable`` stars.
    """
    nl = stack.truth["noiseless"].astype(np.float64)
    r = pipeline.coadd_result
    coadd = r.coadd
    ref = contribution(nl, _unclipped_map(pipeline), r.weights)
    got = contribution(nl, r.input_map, r.weights)
    # an artifact's PSF-matched footprint reaches about a kernel half-width beyond its pixels
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
