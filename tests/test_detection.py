"""Footprint detection: the run-based implementation against a plain scipy.ndimage reference."""

import numpy as np
import pytest
from scipy import ndimage

from toolkit.detection import circular_stencil, footprint_pixels, grow_mask, threshold_footprints

EIGHT = np.ones((3, 3), bool)


def manhattan_stencil(r):
    """afw's Stencil.MANHATTAN (isotropicGrow=False): |dx| + |dy| <= r."""
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return np.abs(x) + np.abs(y) <= r


def reference(image, variance, threshold, polarity, min_pixels, grow, include=1.0, isotropic=True, combined=True):
    """SourceDetectionTask's rules written the obvious way: full-plane labels and dilations;
    a component is kept if it has ``min_pixels`` pixels and one reaching ``include`` times the
    threshold (afw's includeThresholdMultiplier).  ``combined=False`` returns the list of
    separately grown footprints (boolean planes) instead of a label image."""
    with np.errstate(invalid="ignore"):
        sig = np.sqrt(variance)
        seeds = []
        if polarity in ("positive", "both"):
            seeds.append((image >= threshold * sig, image >= threshold * include * sig))
        if polarity in ("negative", "both"):
            seeds.append((-image >= threshold * sig, -image >= threshold * include * sig))
    out = np.zeros(image.shape, bool)
    separate = []
    for s, high in seeds:
        lab, n = ndimage.label(s, structure=EIGHT)
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        keep = sizes >= min_pixels
        if include > 1.0:
            keep &= np.bincount(lab[high], minlength=n + 1) > 0
        keep[0] = False
        stencil = circular_stencil(grow) if isotropic else manhattan_stencil(grow)
        if not combined:
            separate += [ndimage.binary_dilation(lab == k, structure=stencil) if grow > 0 else lab == k for k in np.nonzero(keep)[0]]
            continue
        sel = keep[lab]
        if grow > 0 and sel.any():
            sel = ndimage.binary_dilation(sel, structure=stencil)
        out |= sel
    if not combined:
        return separate
    lab, n = ndimage.label(out, structure=EIGHT)
    return lab.astype(np.int32), n


def test_footprints_equal_the_ndimage_reference_on_random_fields():
    rng = np.random.default_rng(11)
    for trial in range(150):
        ny, nx = (int(v) for v in rng.integers(1, 60, 2))
        dtype = np.float32 if trial % 2 else np.float64
        img = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), rng.uniform(0, 1.5)) * 3
        img = img.astype(dtype)
        var = rng.uniform(0.1, 2.0, (ny, nx)).astype(dtype)
        if trial % 5 == 0:
            img[rng.random((ny, nx)) < 0.05] = np.nan
        if trial % 7 == 0:
            var[rng.random((ny, nx)) < 0.05] = -1.0  # sqrt is NaN: never a seed
        t = float(rng.uniform(0.5, 3.0))
        polarity = ("positive", "negative", "both")[trial % 3]
        mp, grow = int(rng.integers(1, 6)), int(rng.integers(0, 5))
        include = 1.0 if trial % 4 else float(rng.uniform(0.5, 2.5))
        want, n_want = reference(img, var, t, polarity, mp, grow, include)
        got, n_got = threshold_footprints(img, var, t, polarity, mp, grow, include)
        assert n_got == n_want, trial
        np.testing.assert_array_equal(got, want)  # the same pixels and the same numbering
        flat, labels, n = footprint_pixels(img, var, t, polarity, mp, grow, include)
        assert n == n_want and np.all(np.diff(flat) > 0)
        np.testing.assert_array_equal(labels, want.ravel()[flat])


def test_manhattan_and_separate_growth_equal_the_reference():
    """isotropicGrow=False grows with afw's Manhattan stencil; combinedGrow=False grows each
    footprint on its own (overlaps kept, nothing merged), listed footprint by footprint."""
    rng = np.random.default_rng(12)
    n_overlap = 0
    for trial in range(60):
        ny, nx = (int(v) for v in rng.integers(5, 60, 2))
        img = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), rng.uniform(0, 1.5)) * 3
        var = rng.uniform(0.1, 2.0, (ny, nx))
        t = float(rng.uniform(0.5, 3.0))
        polarity = ("positive", "negative", "both")[trial % 3]
        mp, grow = int(rng.integers(1, 4)), int(rng.integers(0, 6))
        want, n_want = reference(img, var, t, polarity, mp, grow, isotropic=False)
        flat, labels, n = footprint_pixels(img, var, t, polarity, mp, grow, isotropic=False)
        assert n == n_want, trial
        np.testing.assert_array_equal(labels, want.ravel()[flat])
        assert np.count_nonzero(want) == flat.size
        sep = reference(img, var, t, polarity, mp, grow, isotropic=trial % 2 == 0, combined=False)
        flat, labels, n = footprint_pixels(img, var, t, polarity, mp, grow, isotropic=trial % 2 == 0, combined=False)
        assert n == len(sep), trial
        for k, fp in enumerate(sep, start=1):
            np.testing.assert_array_equal(np.sort(flat[labels == k]), np.flatnonzero(fp))
        n_overlap += flat.size - np.unique(flat).size
    assert n_overlap > 0  # the trials did exercise overlapping footprints
    # the Manhattan stencil is not the circular one once r >= 2
    assert not np.array_equal(manhattan_stencil(3), circular_stencil(3))


def test_footprint_edge_cases():
    img = np.zeros((9, 9), np.float32)
    var = np.ones((9, 9), np.float32)
    img[0, 0] = img[8, 8] = 10.0  # corners: growth is clipped at the edge
    img[4, 4] = -10.0
    lab, n = threshold_footprints(img, var, 5.0, "both", 1, 2)
    want, nw = reference(img, var, 5.0, "both", 1, 2)
    assert n == nw == 3
    np.testing.assert_array_equal(lab, want)
    # minPixels is applied before growth, so a single-pixel seed disappears with min_pixels=2
    assert threshold_footprints(img, var, 5.0, "both", 2, 2)[1] == 0
    # the threshold is inclusive
    assert threshold_footprints(img, var, 10.0, "positive", 1, 0)[1] == 2
    with pytest.raises(ValueError, match="thresholdPolarity"):
        footprint_pixels(img, var, 5.0, "up")
    with pytest.raises(ValueError, match="same 2-D shape"):
        footprint_pixels(img, var[:3], 5.0)
    # includeThresholdMultiplier: a 6-sigma footprint (grown to the 3-sigma isophote) is kept
    # with a 2x include threshold, a 5-sigma one is not, though both pass the threshold itself
    img2 = np.zeros((9, 20), np.float32)
    img2[4, 2:5] = (3.0, 6.0, 3.0)
    img2[4, 12:15] = (3.0, 5.0, 3.0)
    lab2, n2 = threshold_footprints(img2, np.ones_like(img2), 3.0, "positive", 1, 0, include_multiplier=2.0)
    assert n2 == 1 and lab2[4, 2:5].all() and not lab2[4, 12:15].any()
    with pytest.raises(ValueError, match="includeThresholdMultiplier"):
        footprint_pixels(img, var, 5.0, "both", include_multiplier=0.0)


def test_grow_mask_is_the_circular_dilation():
    rng = np.random.default_rng(2)
    for r in (1, 3, 8):
        for density in (0.001, 0.2):  # sparse boxes, and the FFT path
            sel = rng.random((80, 90)) < density
            np.testing.assert_array_equal(grow_mask(sel, r), ndimage.binary_dilation(sel, structure=circular_stencil(r)))


def test_score_image_thresholding_without_variance():
    """variance=None thresholds an image in sigma units (ZOGY's Scorr) at the threshold."""
    rng = np.random.default_rng(4)
    sc = ndimage.gaussian_filter(rng.standard_normal((70, 90)), 1.0) * 8
    sc[5, 5] = np.nan
    for pol in ("positive", "negative"):
        flat, labels, n = footprint_pixels(sc, None, 1.5, pol)
        want, nw = reference(sc, np.ones_like(sc), 1.5, pol, 1, 0)
        assert n == nw > 0
        np.testing.assert_array_equal(labels, want.ravel()[flat])
        assert np.count_nonzero(want) == flat.size


def test_threshold_types_follow_make_threshold():
    """SourceDetectionTask.makeThreshold: pixel_stdev per pixel; stdev = value x STDEVCLIP of the
    image outside statsMask; variance = the same over every finite pixel (afw's Threshold);
    value = absolute.  The clipped std is afw's (median/IQR start, 3 x 3-sigma iterations)."""
    import pytest

    from toolkit.detection import threshold_for
    from toolkit.errors import ConfigError

    rng = np.random.default_rng(11)
    img = rng.normal(0.0, 2.0, (300, 300)).astype(np.float32)
    var = np.full(img.shape, 9.0, np.float32)
    bad = np.zeros(img.shape, bool)
    bad[:, :100] = True
    img[:, :100] *= 10.0  # a noisy strip the statsMask leaves out

    def afw_stdevclip(v):
        v = v[np.isfinite(v)].astype(np.float64)
        q25, med, q75 = np.percentile(v, [25, 50, 75])
        c, hw = med, 3.0 * 0.741301109 * (q75 - q25)
        for i in range(3):
            sel = v[(v >= c - hw) & (v <= c + hw)]
            c, s = sel.mean(), sel.std(ddof=1)
            hw = 3.0 * s
        return s

    v, t = threshold_for(img, var, 5.0, "pixel_stdev")
    assert v is var and t == 5.0
    v, t = threshold_for(img, var, 5.0, "stdev", bad)
    assert v is None and t == pytest.approx(5.0 * afw_stdevclip(img[~bad]), rel=1e-6)
    assert t == pytest.approx(5.0 * 2.0 * 0.985, rel=0.02)  # the clean part's noise, clipped
    v, t_all = threshold_for(img, var, 5.0, "variance", bad)
    assert v is None and t_all == pytest.approx(5.0 * afw_stdevclip(img), rel=1e-6) and t_all > 1.1 * t
    assert threshold_for(img, var, 5.0, "value") == (None, 5.0)
    with pytest.raises(ConfigError, match="thresholdType"):
        threshold_for(img, var, 5.0, "sigma")


def test_compare_warp_honours_detect_template_threshold_type():
    """detectTemplate.thresholdType='value' protects exactly the 8-connected runs of the smoothed
    template at or above the value (grown), not the pixel_stdev default's footprints."""
    from toolkit.compare_warp import CompareWarpPipeline
    from toolkit.config import CompareWarpConfig
    from toolkit.detection import grow_radius, smooth_for_detection, threshold_footprints
    from toolkit.sim import simulate_stack

    st = simulate_stack(seed=3, size=128, n_epochs=4)
    cfg = CompareWarpConfig()
    cfg.detectTemplate.thresholdType = "value"
    cfg.detectTemplate.thresholdValue = 5.0
    p = CompareWarpPipeline(st.direct_warps, st.psf_matched_warps, config=cfg)
    t = p.template
    sigma = t.psf.determinant_radius(t.bbox.center)
    simg, _ = smooth_for_detection(t.image, t.variance, sigma, 7.0, edge_nan=True)
    want, n = threshold_footprints(simg, None, 5.0, "positive", 1, grow_radius(2.4, sigma))
    assert n > 0 and np.array_equal(p.protected_footprints > 0, want > 0)
    default = CompareWarpPipeline(st.direct_warps, st.psf_matched_warps).protected_footprints
    assert not np.array_equal(default > 0, want > 0)


def test_protected_stdev_threshold_ignores_the_template_mask():
    """findArtifacts clears every template mask plane before detectTemplate runs, so a 'stdev'
    threshold takes the clipped scatter of all finite smoothed pixels: a BAD, very noisy strip
    of the template counts, and lowers the protection, as in LSST."""
    from toolkit.compare_warp import CompareWarpPipeline
    from toolkit.config import CompareWarpConfig
    from toolkit.detection import grow_radius, smooth_for_detection, threshold_for, threshold_footprints
    from toolkit.sim import simulate_stack

    st = simulate_stack(seed=3, size=128, n_epochs=4)
    rng = np.random.default_rng(5)
    pm = []
    for w in st.psf_matched_warps:
        w = w.copy()
        noise = np.nanmedian(np.sqrt(w.variance))
        w.image[:, 40:90] += (300 * noise * rng.standard_normal((128, 50))).astype(w.dtype)
        strip = np.zeros(w.shape, bool)
        strip[:, 40:90] = True
        w.set_plane("BAD", strip)
        pm.append(w)
    cfg = CompareWarpConfig()
    cfg.detectTemplate.thresholdType = "stdev"
    cfg.detectTemplate.thresholdValue = 5.0
    p = CompareWarpPipeline(st.direct_warps, pm, config=cfg)
    t = p.template
    assert "BAD" in cfg.detectTemplate.statsMask and (t.mask & t.bitmask("BAD")).any()
    sigma = t.psf.determinant_radius(t.bbox.center)
    simg, svar = smooth_for_detection(t.image, t.variance, sigma, 7.0, edge_nan=True)
    grow = grow_radius(2.4, sigma)
    _, thr = threshold_for(simg, svar, 5.0, "stdev", None)
    want, n = threshold_footprints(simg, None, thr, "positive", 1, grow)
    assert n > 0 and np.array_equal(p.protected_footprints > 0, want > 0)
    # honouring statsMask on the template's own mask would give a much lower threshold
    _, thr_masked = threshold_for(simg, svar, 5.0, "stdev", (t.mask & t.bitmask("BAD")) != 0)
    assert thr_masked < 0.5 * thr
