"""Footprint detection as LSST's ``SourceDetectionTask.detectFootprints`` does it for CompareWarp.

Thresholding in per-pixel sigma (``pixel_stdev``, inclusive), 8-connected labelling of row
runs (afw's footprint rule; the numbering of ``scipy.ndimage.label`` with a 3x3 structure,
against which the tests check it), ``minPixels`` applied before growth, isotropic growth with
afw's circular stencil (half-width ``int(sqrt(r^2 - dy^2))`` per row; ``isotropicGrow=False``:
the Manhattan stencil), and the union-and-relabel of ``combinedGrow`` and of the
positive/negative merge (``combinedGrow=False``: footprints grown one by one, overlaps kept).
"""

from __future__ import annotations

import numba as nb
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from .errors import ConfigError, InputError

__all__ = ["circular_stencil", "threshold_for", "threshold_footprints", "footprint_pixels", "grow_radius", "grow_mask", "binned_background", "smooth_for_detection", "smoothing_kernel_width"]

_EIGHT = np.ones((3, 3), bool)


def circular_stencil(r: int) -> np.ndarray:
    """afw's isotropic growth stencil of radius ``r``."""
    r = int(r)
    st = np.zeros((2 * r + 1, 2 * r + 1), bool)
    for dy in range(-r, r + 1):
        dx = int(np.sqrt(r * r - dy * dy))
        st[dy + r, r - dx : r + dx + 1] = True
    return st


def grow_radius(n_sigma: float, psf_sigma: float) -> int:
    """SourceDetectionTask's growth radius in pixels, ``int(nSigmaToGrow * sigma_PSF + 0.5)``."""
    return int(n_sigma * psf_sigma + 0.5)


def grow_mask(sel: np.ndarray, r: int, labels: np.ndarray | None = None) -> np.ndarray:
    """Dilate a boolean mask by afw's circular stencil of radius ``r`` (zeros outside).

    ``ndimage.binary_dilation`` sweeps the stencil over every pixel, O(pixels r^2).  Footprints
    usually cover a small part of an image, so each group of them (``labels``, or 8-connected
    groups of ``sel``) is dilated on its own bounding box plus ``r``; when the boxes are large
    the mask is convolved with the stencil by FFT and thresholded at 1/2 (the counts are
    integers, the float32 round-off is < 1e-3).  Both give exactly the dilation.
    """
    r = int(r)
    if r <= 0 or not sel.any():
        return sel.copy()
    st = circular_stencil(r)
    if labels is None:
        labels, _ = ndimage.label(sel, structure=_EIGHT)
    boxes = [b for b in ndimage.find_objects(labels) if b is not None]
    covered = sum((b[0].stop - b[0].start + 2 * r) * (b[1].stop - b[1].start + 2 * r) for b in boxes)
    if covered > sel.size // 8:
        if r <= 2:  # a 5x5 stencil sweep is as cheap as the transforms (~50 ms at 2k^2)
            return ndimage.binary_dilation(sel, structure=st)
        from .psf_matching import fft_convolve

        return fft_convolve(sel.astype(np.float32), st.astype(np.float32)) > 0.5
    ny, nx = sel.shape
    out = np.zeros_like(sel)
    for b in boxes:
        y0, y1 = max(b[0].start - r, 0), min(b[0].stop + r, ny)
        x0, x1 = max(b[1].start - r, 0), min(b[1].stop + r, nx)
        # dilate with r pixels of zero border so the clipped edges behave like the full image
        sub = np.zeros((y1 - y0 + 2 * r, x1 - x0 + 2 * r), bool)
        sub[r:-r, r:-r] = sel[y0:y1, x0:x1]
        out[y0:y1, x0:x1] |= ndimage.binary_dilation(sub, structure=st)[r:-r, r:-r]
    return out


THRESHOLD_TYPES = ("pixel_stdev", "stdev", "variance", "value")


def threshold_for(image: np.ndarray, variance: np.ndarray, threshold: float, threshold_type: str = "pixel_stdev", stats_bad: np.ndarray | None = None) -> tuple[np.ndarray | None, float]:
    """``(variance or None, threshold)`` for :func:`footprint_pixels`, by LSST's
    ``SourceDetectionTask.makeThreshold`` and afw's ``Threshold`` types:

    * ``pixel_stdev``: ``threshold`` times each pixel's ``sqrt(variance)``;
    * ``stdev``: ``threshold`` times the STDEVCLIP (3 sigma, 3 iterations) of the (smoothed)
      image's finite pixels outside ``stats_bad`` (the ``statsMask`` planes);
    * ``variance``: the same with every finite pixel (afw's ``Threshold::getValue(image)``
      takes the image's STDEVCLIP, unmasked, and uses its square root of the square);
    * ``value``: ``threshold`` itself, in image units.
    """
    from .stats import stdevclip_masked

    if threshold_type == "pixel_stdev":
        return variance, threshold
    if threshold_type == "value":
        return None, threshold
    if threshold_type not in THRESHOLD_TYPES:
        raise ConfigError(f"thresholdType must be one of {', '.join(THRESHOLD_TYPES)}, got {threshold_type!r}")
    bad = stats_bad if (threshold_type == "stdev" and stats_bad is not None) else None
    sd = stdevclip_masked(image, None if bad is None else bad.astype(np.int32), 1 if bad is not None else 0)
    if not (np.isfinite(sd) and sd > 0):
        # afw raises for a non-positive standard deviation too
        raise InputError(f"thresholdType={threshold_type!r}: the image's clipped standard deviation is {sd}; cannot set a threshold")
    return None, threshold * sd


def threshold_footprints(image: np.ndarray, variance: np.ndarray, threshold: float, polarity: str = "both", min_pixels: int = 1, grow: int = 0, include_multiplier: float = 1.0) -> tuple[np.ndarray, int]:
    """Labelled footprints (int32 labels 1..n) of ``|image| >= threshold * sqrt(variance)``."""
    flat, labels, n = footprint_pixels(image, variance, threshold, polarity, min_pixels, grow, include_multiplier)
    lab = np.zeros(image.shape, np.int32)
    lab.reshape(-1)[flat] = labels
    return lab, n


def footprint_pixels(image: np.ndarray, variance: np.ndarray | None, threshold: float, polarity: str = "both", min_pixels: int = 1, grow: int = 0, include_multiplier: float = 1.0, isotropic: bool = True, combined: bool = True, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`threshold_footprints` as ``(flat indices, labels, n)`` of the footprint pixels,
    the indices ascending: no label image is made.  ``variance=None`` thresholds an image that
    is in sigma units already (a score image) at ``threshold``.

    Each polarity's seeds (``image >= t sigma`` and ``-image >= t sigma``, compared in the
    planes' precision; NaN never passes) are labelled 8-connected, components with fewer than
    ``min_pixels`` pixels dropped, and so are those none of whose pixels reaches
    ``include_multiplier * threshold`` sigma (afw's ``includeThresholdMultiplier``: a footprint
    extends to the threshold but needs a pixel that high to be kept), the rest grown by afw's
    circular stencil of radius ``grow`` (``isotropic=False``, ``isotropicGrow``: its Manhattan
    stencil, ``|dx| + |dy| <= grow``), clipped at the image edge; the union of both polarities
    is labelled again, 1..n in raster order of each footprint's first pixel
    (``scipy.ndimage.label``'s numbering).

    ``combined=False`` is ``combinedGrow=False``: each footprint is grown on its own and not
    merged with those its growth reaches, so footprints may overlap.  The result then lists
    each footprint's pixels in turn (positive footprints first, each in raster order of its
    first pixel): a pixel appears once per footprint that covers it.

    ``rows``: ascending row indices that hold every seed, for a caller that knows them (ZOGY
    counts them as it makes Scorr); only those rows are read.  The result is the same as
    without, provided no other row holds a seed.

    Why compiled: footprints cover a few per cent of a warp, so everything runs on row runs
    (afw's own footprint representation) after one thresholding pass: ~10x less work than
    three ``ndimage.label`` passes and the dilations over full planes, and it releases the GIL
    so epochs detect side by side.
    """
    if polarity not in ("positive", "negative", "both"):
        raise ValueError(f"thresholdPolarity must be positive, negative or both, got {polarity!r}")
    img = np.asarray(image)
    if variance is None:  # the image is in units of sigma already (a score image)
        if img.ndim != 2:
            raise ValueError(f"image must be 2-D, got shape {img.shape}")
        dtype = np.result_type(img.dtype, np.float32)
        var = np.ones((1, 1), dtype)  # read as sigma = 1 everywhere: no plane is made
    else:
        var = np.asarray(variance)
        if img.shape != var.shape or img.ndim != 2:
            raise ValueError(f"image {img.shape} and variance {var.shape} must be the same 2-D shape")
        dtype = np.result_type(img.dtype, var.dtype, np.float32)
        var = np.ascontiguousarray(var, dtype)
    img = np.ascontiguousarray(img, dtype)
    if not include_multiplier > 0:
        raise ValueError(f"includeThresholdMultiplier must be > 0, got {include_multiplier}")
    scan = np.arange(img.shape[0], dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    flat, labels, n = _footprint_pixels(img, var, dtype.type(threshold), polarity != "negative", polarity != "positive", int(min_pixels), max(int(grow), 0), dtype.type(threshold * include_multiplier), bool(isotropic), bool(combined), scan)
    return flat, labels, int(n)


@nb.njit(cache=True, nogil=True)
def _push_run(runs, n, y, x0, x1):  # pragma: no cover - compiled
    if n == runs.shape[0]:
        bigger = np.empty((2 * runs.shape[0], 3), np.int64)
        bigger[:n] = runs
        runs = bigger
    runs[n, 0] = y
    runs[n, 1] = x0
    runs[n, 2] = x1
    return runs, n + 1


@nb.njit(cache=True, nogil=True)
def _push_grown(out, n, run, half, ny, nx):  # pragma: no cover - compiled
    """Push the rows of ``run`` (y, x0, x1) grown by a stencil of per-row half-widths
    ``half`` (offsets -r..r), clipped to the image."""
    r = (half.size - 1) // 2
    for dy in range(-r, r + 1):
        yy = run[0] + dy
        if 0 <= yy < ny:
            out, n = _push_run(out, n, yy, max(run[1] - half[dy + r], 0), min(run[2] + half[dy + r], nx - 1))
    return out, n


@nb.njit(cache=True, nogil=True)
def _run_edge(runs, n, start, y, x):  # pragma: no cover - compiled
    """A polarity's flag changes at x: a run starts there, or the open one ends at x - 1."""
    if start < 0:
        return runs, n, x
    runs, n = _push_run(runs, n, y, start, x - 1)
    return runs, n, -1


@nb.njit(cache=True, nogil=True)
def _find(parent, i):  # pragma: no cover - compiled
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@nb.njit(cache=True, nogil=True)
def _label_runs(runs, n):  # pragma: no cover - compiled
    """Component label (0..m-1, raster order of first run) of each of ``n`` row runs sorted by
    (y, x0) and disjoint within a row; 8-connected: runs in adjacent rows touch when their x
    ranges overlap after widening by one pixel."""
    parent = np.arange(n)
    ps, pe = 0, 0  # the previous row's runs
    i = 0
    while i < n:
        y = runs[i, 0]
        j = i
        while j < n and runs[j, 0] == y:
            j += 1
        if pe > ps and runs[ps, 0] == y - 1:
            k = ps
            for a in range(i, j):
                while k < pe and runs[k, 2] < runs[a, 1] - 1:
                    k += 1
                kk = k
                while kk < pe and runs[kk, 1] <= runs[a, 2] + 1:
                    ra, rb = _find(parent, a), _find(parent, kk)
                    if ra != rb:
                        if ra < rb:
                            parent[rb] = ra
                        else:
                            parent[ra] = rb
                    kk += 1
        ps, pe = i, j
        i = j
    label = np.full(n, -1, np.int64)
    comp = np.empty(n, np.int64)
    m = 0
    for a in range(n):
        r = _find(parent, a)
        if label[r] < 0:
            label[r] = m
            m += 1
        comp[a] = label[r]
    return comp, m


@nb.njit(cache=True, nogil=True)
def _sorted_merged(runs, n):  # pragma: no cover - compiled
    """Runs sorted by (y, x0) with overlapping or abutting runs of a row merged."""
    if n == 0:
        return runs[:0].copy()
    key = np.empty(n, np.int64)
    width = 0
    for a in range(n):
        width = max(width, runs[a, 2] + 2)
    for a in range(n):
        key[a] = runs[a, 0] * width + runs[a, 1]
    order = np.argsort(key)
    out = np.empty((n, 3), np.int64)
    m = 0
    for t in range(n):
        a = order[t]
        if m > 0 and out[m - 1, 0] == runs[a, 0] and runs[a, 1] <= out[m - 1, 2] + 1:
            out[m - 1, 2] = max(out[m - 1, 2], runs[a, 2])
        else:
            out[m, 0] = runs[a, 0]
            out[m, 1] = runs[a, 1]
            out[m, 2] = runs[a, 2]
            m += 1
    return out[:m]


@nb.njit(cache=True, nogil=True)
def _footprint_pixels(img, var, thr, want_pos, want_neg, min_pixels, r, thr_include, isotropic, combined, rows):  # pragma: no cover - compiled
    ny, nx = img.shape
    unit = var.shape[0] == 1 and var.shape[1] == 1 and (ny > 1 or nx > 1)  # a 1x1 variance: sigma units
    pos = np.empty((1024, 3), np.int64)
    neg = np.empty((1024, 3), np.int64)
    npos = 0
    nneg = 0
    flags = np.empty(nx + 1, np.uint8)  # bit 0: positive seed, bit 1: negative seed
    flags[nx] = 0  # a sentinel that closes the last run
    edges = np.empty(nx + 2, np.int64)
    kinds = np.empty(nx + 2, np.uint8)
    for yi in range(rows.size):
        y = rows[yi]
        # a branch-free loop the compiler vectorises (sqrt included), then a scan for runs
        # that mostly sees zeros
        seen = 0
        for x in range(nx):
            v = img[y, x]
            t = thr if unit else thr * np.sqrt(var[y, x])
            f = np.uint8(want_pos and v >= t) | (np.uint8(want_neg and -v >= t) << np.uint8(1))
            flags[x] = f
            seen |= f
        if seen == 0:
            continue
        # run ends of this row into scratch (no array reassignment inside the scan)
        nb_ = 0
        prev = np.uint8(0)
        for x in range(nx + 1):
            f = flags[x]
            if f != prev:
                edges[nb_] = x
                kinds[nb_] = f ^ prev
                nb_ += 1
                prev = f
        p0 = -1
        q0 = -1
        for e in range(nb_):
            x = edges[e]
            k = kinds[e]
            if k & 1:
                pos, npos, p0 = _run_edge(pos, npos, p0, y, x)
            if k & 2:
                neg, nneg, q0 = _run_edge(neg, nneg, q0, y, x)
    # half-widths per row offset of afw's circular stencil, or of its Manhattan one
    # (isotropicGrow=False)
    half = np.empty(2 * r + 1, np.int64)
    for dy in range(-r, r + 1):
        half[dy + r] = int(np.sqrt(np.float64(r * r - dy * dy))) if isotropic else r - abs(dy)
    grown = np.empty((1024, 3), np.int64)
    ng = 0
    # combinedGrow=False: each footprint grown on its own (they may overlap), emitted as it is
    sep = np.empty((1024, 3), np.int64)
    nsr = 0
    nsep = 0
    for which in range(2):
        runs = pos if which == 0 else neg
        n = npos if which == 0 else nneg
        if n == 0:
            continue
        comp, m = _label_runs(runs, n)
        size = np.zeros(m, np.int64)
        for a in range(n):
            size[comp[a]] += runs[a, 2] - runs[a, 1] + 1
        # afw keeps a footprint only if one of its pixels also passes the include threshold
        # (includeThresholdMultiplier x the threshold); at or below the threshold all do
        good = np.ones(m, np.bool_)
        if thr_include > thr:
            good[:] = False
            for a in range(n):
                c = comp[a]
                if good[c]:
                    continue
                y = runs[a, 0]
                for x in range(runs[a, 1], runs[a, 2] + 1):
                    v = img[y, x] if which == 0 else -img[y, x]
                    if v >= (thr_include if unit else thr_include * np.sqrt(var[y, x])):
                        good[c] = True
                        break
        if not combined:
            order = np.argsort(comp, kind="mergesort")  # runs grouped by footprint, in order
            t = 0
            while t < n:
                c = comp[order[t]]
                u = t
                while u < n and comp[order[u]] == c:
                    u += 1
                if size[c] >= min_pixels and good[c]:
                    one = np.empty((16, 3), np.int64)
                    n1 = 0
                    for q in range(t, u):
                        one, n1 = _push_grown(one, n1, runs[order[q]], half, ny, nx)
                    fp = _sorted_merged(one, n1)
                    nsep += 1
                    for b in range(fp.shape[0]):
                        # the footprint's number rides in the run's row, offset past the image
                        sep, nsr = _push_run(sep, nsr, nsep * ny + fp[b, 0], fp[b, 1], fp[b, 2])
                t = u
            continue
        for a in range(n):
            if size[comp[a]] < min_pixels or not good[comp[a]]:
                continue
            grown, ng = _push_grown(grown, ng, runs[a], half, ny, nx)
    if not combined:
        flat, labels = _run_pixels(sep, nsr, sep[:nsr, 0] // ny, ny, nx)
        return flat, labels, nsep
    final = _sorted_merged(grown, ng)
    nf = final.shape[0]
    comp, m = _label_runs(final, nf)
    flat, labels = _run_pixels(final, nf, comp + 1, ny, nx)
    return flat, labels, m


@nb.njit(cache=True, nogil=True)
def _run_pixels(runs, n, labs, ny, nx):  # pragma: no cover - compiled
    """Flat indices and labels of the pixels of ``n`` row runs, run ``a`` labelled ``labs[a]``;
    a run's row is read modulo ``ny`` (the one-by-one footprints carry their number above it)."""
    total = 0
    for a in range(n):
        total += runs[a, 2] - runs[a, 1] + 1
    flat = np.empty(total, np.int64)
    labels = np.empty(total, np.int32)
    k = 0
    for a in range(n):
        base = (runs[a, 0] % ny) * nx
        for x in range(runs[a, 1], runs[a, 2] + 1):
            flat[k] = base + x
            labels[k] = labs[a]
            k += 1
    return flat, labels


def binned_background(image: np.ndarray, bad: np.ndarray, bin_size: int, dtype: npt.DTypeLike = np.float64) -> np.ndarray:
    """Smooth background: median per ``bin_size`` block of good pixels, bilinearly interpolated
    between block centres (clamped at the outer ones), returned in ``dtype``.

    A stand-in for afw's MEANCLIP-binned Akima-spline background (used only for the temporary
    backgrounds of ScaleVariance and template detection); photutils' Background2D gives similar
    results several times slower.  Blocks are sorted all at once (bad pixels as +inf, so the good
    ones come first); the interpolation (compiled) writes each output row from two rows of the
    x-interpolated block grid, ~4x faster than the 2048x64x2048 matrix product it replaces.
    """
    ny, nx = image.shape
    by, bx = max(1, int(np.ceil(ny / bin_size))), max(1, int(np.ceil(nx / bin_size)))
    pad_y, pad_x = by * bin_size - ny, bx * bin_size - nx
    dtype_b = np.float32 if image.dtype == np.float32 else np.float64
    with np.errstate(invalid="ignore"):
        unusable = bad | ~np.isfinite(image)
    if pad_y or pad_x:
        a = np.pad(np.where(unusable, np.inf, image).astype(dtype_b, copy=False), ((0, pad_y), (0, pad_x)), constant_values=np.inf)
        blocks = a.reshape(by, bin_size, bx, bin_size).transpose(0, 2, 1, 3).reshape(by, bx, -1)
        n = np.isfinite(blocks).sum(axis=2)
    else:
        # each block made contiguous straight from the image: one strided copy and +inf over the
        # unusable pixels, where where/transpose took two full copies
        blocks = np.empty((by, bx, bin_size, bin_size), dtype_b)
        view = blocks.transpose(0, 2, 1, 3)  # image layout, a view of blocks
        view[...] = image.reshape(view.shape)
        np.copyto(view, np.inf, where=unusable.reshape(view.shape))
        blocks = blocks.reshape(by, bx, -1)
        n = bin_size * bin_size - np.count_nonzero(unusable.reshape(view.shape), axis=(1, 3))
    # numpy's sort is SIMD-vectorised: all blocks at once (in place: the blocks are our own
    # copy) beat a compiled per-block selection
    blocks.sort(axis=2)
    lo = np.take_along_axis(blocks, (np.maximum(n - 1, 0) // 2)[..., None], 2)[..., 0].astype(np.float64)
    hi = np.take_along_axis(blocks, (n // 2)[..., None].clip(max=blocks.shape[2] - 1), 2)[..., 0].astype(np.float64)
    med = np.where(n > 0, 0.5 * (lo + hi), np.nan)
    if np.all(np.isnan(med)):
        return np.zeros((ny, nx), dtype)
    med = np.where(np.isnan(med), np.nanmedian(med), med)
    by, bx = med.shape
    # along x first (by rows of nx, small): two block centres per pixel.  Not a matrix product
    # with the interpolation weights: OpenBLAS called from the epochs' worker threads spins its
    # own threads on the busy cores, which cost ~20 ms per call where the work is 0.3 ms.
    j0, j1, fx = _bracketing_centres(nx, bx, bin_size)
    rows = med[:, j0] * (1.0 - fx) + med[:, j1] * fx
    out = np.empty((ny, nx), dtype)
    _blend_rows(rows, *_bracketing_centres(ny, by, bin_size), out)
    return out


@nb.njit(cache=True, nogil=True)
def _blend_rows(rows, i0, i1, f, out):  # pragma: no cover - compiled
    # on 1-D row views indexed by the loop counter alone, so the inner loop is a SIMD loop
    # (indexed as rows[a, x] it stayed scalar: ~3x slower)
    for y in range(out.shape[0]):
        ra, rb, w = rows[i0[y]], rows[i1[y]], f[y]
        o = out[y]
        for x in range(o.size):
            o[x] = (1.0 - w) * ra[x] + w * rb[x]


def _bracketing_centres(n: int, nb: int, bin_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``n`` pixels: the block centres below and above it and the fraction of the
    way from the first to the second (0 beyond the outer centres, where both are the same)."""
    pos = _centre_positions(n, nb, bin_size)
    i0 = np.minimum(np.floor(pos).astype(np.intp), nb - 1)
    return i0, np.minimum(i0 + 1, nb - 1), pos - i0


def _centre_positions(n: int, nb: int, bin_size: int) -> np.ndarray:
    """Fractional block-centre coordinate of each of ``n`` pixels, clamped to [0, nb - 1]."""
    centres = (np.arange(nb) + 0.5) * bin_size - 0.5
    return np.clip(np.interp(np.arange(n), centres, np.arange(nb)), 0, nb - 1)


def smoothing_kernel_width(sigma: float, n_sigma_for_kernel: float = 7.0) -> int:
    """Odd full width of LSST's detection smoothing kernel: ``nSigmaForKernel * sigma`` rounded,
    then up to odd (``SourceDetectionTask.calculateKernelSize``)."""
    return (int(n_sigma_for_kernel * sigma + 0.5) // 2) * 2 + 1


def smooth_for_detection(image: np.ndarray, variance: np.ndarray, sigma: float, n_sigma_for_kernel: float = 7.0, edge_nan: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Convolve with a Gaussian of ``sigma`` (odd width ``(int(7 sigma + 0.5)//2)*2+1``), the
    variance with the squared kernel, as LSST's detection smoothing does.

    ``edge_nan``: the smoothed image is NaN within half a kernel width of the edge, so that no
    threshold passes there.  LSST's ``SourceDetectionTask.convolveImage`` thresholds only the
    part the whole kernel covers (its ``middle``, the bbox shrunk by the kernel), while the
    footprints found inside may still grow into that border.
    """
    from .psf_matching import fft_convolve

    w = smoothing_kernel_width(sigma, n_sigma_for_kernel)
    x = np.arange(w) - w // 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    k = np.outer(g, g)
    k /= k.sum()
    # float32 data are smoothed in float32 transforms (errors ~1e-7 of the peak, far below any
    # detection threshold); the kernels stay exact
    img = np.where(np.isfinite(image), image, 0).astype(image.dtype, copy=False)
    var = np.where(np.isfinite(variance), variance, 0).astype(variance.dtype, copy=False)
    simg = fft_convolve(img, k)
    h = w // 2
    if edge_nan and h:
        for sl in ((slice(0, h),), (slice(-h, None),), (slice(None), slice(0, h)), (slice(None), slice(-h, None))):
            simg[sl] = np.nan
    return simg, fft_convolve(var, k * k)
