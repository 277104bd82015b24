"""CompareWarp: LSST's invariant, the temporal/spatial rule on injected squares, caching."""

import re

import numpy as np
import pytest

from toolkit import Exposure, GaussianPsf, DoubleGaussianPsf
from toolkit.coadd import assemble_coadd
from toolkit.compare_warp import CompareWarpPipeline, ProtectedFootprints
from toolkit.config import AssembleCoaddConfig, CompareWarpConfig


@pytest.mark.parametrize("online", [False, True])
def test_lsst_invariant_mask_then_mean(small_stack, online):
    cfg = CompareWarpConfig(doOnlineForMean=online)
    p = CompareWarpPipeline(small_stack.direct_warps, small_stack.psf_matched_warps, cfg)
    coadd = p.coadd
    plain_cfg = AssembleCoaddConfig(statistic="MEAN", badMaskPlanes=["NO_DATA", "BAD", "SAT", "CLIPPED", "REJECTED"], removeMaskPlanes=["NOT_DEBLENDED", "EDGE"], doOnlineForMean=online)
    plain = assemble_coadd(small_stack.direct_warps, plain_cfg, alt_masks=p.artifact_masks, use_psf_matched_polygons=True)
    np.testing.assert_array_equal(plain.coadd.image, coadd.image)
    np.testing.assert_array_equal(plain.coadd.variance, coadd.variance)


def square_stack(n_with, n=10, size=64, seed=0, amp_sigma=20.0):
    rng = np.random.default_rng(seed)
    target = DoubleGaussianPsf(7.7)
    direct, matched = [], []
    for i in range(n):
        img = rng.normal(0, 1, (size, size))
        if i < n_with:
            img[30:35, 30:35] += amp_sigma
        e = Exposure(img.astype(np.float32), np.ones((size, size), np.float32), psf=GaussianPsf(1.5), metadata={"BUNIT": "nJy", "EPOCH": i})
        direct.append(e)
        matched.append(Exposure(img.astype(np.float32), np.ones((size, size), np.float32), psf=target, metadata={"BUNIT": "nJy"}))
    return direct, matched


def test_single_epoch_square_is_clipped():
    direct, matched = square_stack(1)
    p = CompareWarpPipeline(direct, matched, CompareWarpConfig(doScaleWarpVariance=False))
    clipped = p.artifact_masks[0]["CLIPPED"]
    assert clipped[30:35, 30:35].all()
    c = p.coadd
    assert abs(c.image[30:35, 30:35].mean()) < 5 / np.sqrt(9 * 25)  # the +20 is gone
    assert c.get_plane("INEXACT_PSF")[30:35, 30:35].all()


def test_psf_match_array_edge_keeps_the_frame_and_clips_in_it():
    """psfMatchArrayEdge (diffstack only, for PSF-matched warps made here): with LSST's NO_DATA
    the 10-px frame of every made PSF-matched warp drops the direct pixels there from the
    coadd; with EDGE the coadd keeps them (flagged SENSOR_EDGE | INEXACT_PSF) and a square in
    one epoch inside the frame is still clipped.  The field re-runs PSF matching and what
    follows only when the pipeline makes the PSF-matched warps."""
    direct, matched = square_stack(0)
    img = direct[3].image.copy()
    img[2:6, 40:45] += 30.0  # an outlier in one epoch, 2-5 px from the edge
    direct[3] = direct[3].copy()
    direct[3].image[...] = img
    frame = np.ones((64, 64), bool)
    frame[10:-10, 10:-10] = False
    lsst = CompareWarpPipeline(direct, config=CompareWarpConfig(doScaleWarpVariance=False))
    assert lsst.coadd.get_plane("NO_DATA")[frame].all() and not lsst.coadd.get_plane("NO_DATA")[~frame].any()
    p = CompareWarpPipeline(direct, config=CompareWarpConfig(doScaleWarpVariance=False, psfMatchArrayEdge="EDGE"))
    c = p.coadd
    assert not c.get_plane("NO_DATA").any()
    assert c.get_plane("INEXACT_PSF")[frame].all() and c.get_plane("SENSOR_EDGE")[frame].all()
    assert p.artifact_masks[3]["CLIPPED"][2:6, 40:45].all()
    assert abs(c.image[2:6, 40:45].mean()) < 5 / np.sqrt(9 * 20)  # the +30 is gone
    # the clip reaches beyond the frame (the PSF-matched square is wider, and grown), but away
    # from the frame and that clip the two coadds stacked the same pixels
    clipped = np.any([m["CLIPPED"] for m in p.artifact_masks], axis=0)
    assert not clipped[20:].any()
    same = ~frame & ~clipped
    np.testing.assert_array_equal(c.image[same], lsst.coadd.image[same])
    # caching: the field is a PSF-matching input only when the pipeline makes the warps
    runs = dict(p.run_counts)
    p.config.psfMatchArrayEdge = "NO_DATA"
    np.testing.assert_array_equal(p.coadd.image, lsst.coadd.image)
    assert p.run_counts["psf_matched"] == runs["psf_matched"] + 1 and p.run_counts["template"] == runs["template"] + 1
    given = CompareWarpPipeline(direct, matched, CompareWarpConfig(doScaleWarpVariance=False))
    _ = given.coadd
    runs = dict(given.run_counts)
    given.config.psfMatchArrayEdge = "EDGE"
    _ = given.coadd
    assert given.run_counts == runs
    # diffstack only: a pex override leaves it to a comment
    text = CompareWarpConfig(psfMatchArrayEdge="EDGE").to_pex_override()
    assert "config.psfMatchArrayEdge" not in text and "psfMatchArrayEdge = 'EDGE'" in text


def test_psf_match_spatial_kernel_order_follows_a_varying_psf():
    """psfMatchSpatialKernelOrder (diffstack only; LSST's ModelPsfMatch spatialKernelOrder, 2):
    warps whose PSF varies get a spatially varying matching kernel, so a star at the side of
    the warp has the model's width in the PSF-matched warp; 0 uses the centre's kernel (the
    star is then measurably off).  The field re-runs PSF matching and what follows."""
    from toolkit import VaryingGaussianPsf
    from toolkit.psf import determinant_radius
    from toolkit.sim import render_points

    n = 256
    psf = VaryingGaussianPsf(1.7, dsigma_dx=0.5 / n, ref=(n / 2, n / 2))
    x, y = 50.0, 128.0
    img = render_points((n, n), [x], [y], [1e5], [psf.sigma_at((x, y))], sampled=True)
    rng = np.random.default_rng(2)
    direct = [Exposure(img + rng.normal(0, 1, (n, n)), np.ones((n, n)), psf=psf, metadata={"BUNIT": "nJy"}) for _ in range(3)]
    p = CompareWarpPipeline(direct, config=CompareWarpConfig(doScaleWarpVariance=False))
    r_model = determinant_radius(p.model_psf.compute_kernel_image(size=73))

    def star_radius():
        st = p.psf_matched_warps[0].image[int(y) - 36 : int(y) + 37, int(x) - 36 : int(x) + 37]
        return determinant_radius(st) / r_model - 1

    assert abs(star_radius()) < 2e-3
    runs = dict(p.run_counts)
    p.config.psfMatchSpatialKernelOrder = 0
    assert abs(star_radius()) > 0.02
    assert p.run_counts["psf_matched"] == runs["psf_matched"] + 1
    text = p.config.to_pex_override()
    assert "config.psfMatchSpatialKernelOrder" not in text and "psfMatchSpatialKernelOrder = 0" in text


def test_square_in_six_epochs_is_kept():
    direct, matched = square_stack(6)
    p = CompareWarpPipeline(direct, matched, CompareWarpConfig(doScaleWarpVariance=False))
    assert not any(m["CLIPPED"][30:35, 30:35].any() for m in p.artifact_masks)
    assert p.coadd.image[30:35, 30:35].mean() == pytest.approx(12.0, abs=0.5)


def test_candidate_inside_protected_footprint_is_kept():
    direct, matched = square_stack(1)
    p = CompareWarpPipeline(direct, matched, CompareWarpConfig(doScaleWarpVariance=False))
    prot = np.zeros((64, 64), np.int32)
    prot[20:45, 20:45] = 1
    p._stage("protected", p._template()[0] + p._cfg("doPreserveContainedBySource", "detectTemplate"), lambda: ProtectedFootprints(prot))
    assert not p.artifact_masks[0]["CLIPPED"][30:35, 30:35].any()


def test_changing_spatial_threshold_reruns_only_filter_and_stack(small_stack):
    p = CompareWarpPipeline(small_stack.direct_warps, small_stack.psf_matched_warps)
    _ = p.coadd
    before = dict(p.run_counts)
    p.config.spatialThreshold = 0.2
    c2 = p.coadd
    changed = {k for k in p.run_counts if p.run_counts[k] != before[k]}
    assert changed == {"filter", "coadd"}
    fresh = CompareWarpPipeline(small_stack.direct_warps, small_stack.psf_matched_warps, CompareWarpConfig(spatialThreshold=0.2)).coadd
    np.testing.assert_array_equal(fresh.image, c2.image)
    np.testing.assert_array_equal(fresh.mask, c2.mask)
    # the patched restack equals a full stack with the same masks in every output
    full = assemble_coadd(small_stack.direct_warps, p.config, alt_masks=p.artifact_masks, extra_bad_planes=["CLIPPED"], use_psf_matched_polygons=True, alt_edge_mask=p._candidates()[1]["edge_any"])
    r = p.coadd_result
    for a, b in ((full.coadd.image, r.coadd.image), (full.coadd.variance, r.coadd.variance), (full.coadd.mask, r.coadd.mask), (full.n_image, r.n_image), (full.input_map, r.input_map), (full.n_clipped, r.n_clipped)):
        np.testing.assert_array_equal(a, b)
    assert sum(m["CLIPPED"].sum() for m in p.artifact_masks) > 0  # the patch path was exercised
    p.config.detect.thresholdValue = 6.0
    _ = p.coadd
    assert p.run_counts["candidates"] == 2 and p.run_counts["template"] == 1
    # the filter's per-candidate inputs are kept between slider moves: new candidates or new
    # protected footprints must replace them (each step equals a fresh run)
    for dotted, value in (("detectTemplate.thresholdValue", 50.0), ("spatialThreshold", 0.6), ("detect.thresholdValue", 9.0)):
        p.config.set_dotted(dotted, value)
        got = p.coadd_result
        fresh = CompareWarpPipeline(small_stack.direct_warps, small_stack.psf_matched_warps, p.config.copy()).coadd_result
        for a, b in ((fresh.coadd.image, got.coadd.image), (fresh.coadd.mask, got.coadd.mask), (fresh.n_clipped, got.n_clipped)):
            np.testing.assert_array_equal(a, b, err_msg=dotted)


def test_slider_sequence_restacks_only_changed_pixels_and_matches_fresh_runs(small_stack):
    """After the first coadd, each filter change restacks only the pixels whose CLIPPED bit
    changed in some epoch (from the previous coadd); every step must still equal a fresh run
    in every output, including after streak masking toggles and a return to an earlier value."""
    p = CompareWarpPipeline(small_stack.direct_warps, small_stack.psf_matched_warps)
    _ = p.coadd
    steps = [("spatialThreshold", 0.2), ("spatialThreshold", 0.9), ("maxNumEpochs", 0),
             ("doFilterMorphological", True), ("spatialThreshold", 0.5), ("doFilterMorphological", False), ("maxNumEpochs", 2)]
    n_restacked = []
    for name, value in steps:
        prev_flat = [f.copy() for f in p._filter()[1]["clipped_flat"]]
        setattr(p.config, name, value)
        r = p.coadd_result
        new_flat = p._filter()[1]["clipped_flat"]
        n_restacked.append(sum(np.setxor1d(a, b).size for a, b in zip(prev_flat, new_flat)))
        cfg = CompareWarpConfig()
        for k, v in steps[: steps.index((name, value)) + 1]:
            setattr(cfg, k, v)
        fresh = CompareWarpPipeline(small_stack.direct_warps, small_stack.psf_matched_warps, cfg).coadd_result
        for a, b in ((fresh.coadd.image, r.coadd.image), (fresh.coadd.variance, r.coadd.variance), (fresh.coadd.mask, r.coadd.mask),
                     (fresh.n_image, r.n_image), (fresh.input_map, r.input_map), (fresh.n_clipped, r.n_clipped)):
            np.testing.assert_array_equal(a, b)
    # the sequence exercised real changes, and the incremental path (not only the first stack)
    assert sum(n > 0 for n in n_restacked) >= 4
    assert p.run_counts["coadd"] == 1 + len(steps)


def test_artifact_removal_on_simulated_stacks():
    """Noise-free removal fractions (toolkit.validation) on default 10-epoch simulations.

    Fluxes are pooled over four seeds (not chosen: the first four) so one coincidence does not
    decide the test; benchmarks/artifact_removal.py prints the per-seed numbers for ten seeds
    and several configurations.  Cosmic rays are the exception to the issue's 99 %: LSST's
    rules keep those entirely inside a protected template footprint (doPreserveContainedBySource),
    those merged with other outliers at the same pixels, and those in a BAD strip grown by PSF
    matching (doPrefilterArtifacts).  The test checks the protection rule's direction, and that
    what is left for any other reason (not detected, clipped only in part) is under 1 %."""
    from toolkit.config import CompareWarpConfig
    from toolkit.sim import simulate_stack
    from toolkit.validation import artifact_leftovers, artifact_removal, star_flux_errors

    pooled: dict[str, list[float]] = {}
    pooled_off: dict[str, list[float]] = {}
    static_clip, static, static_sigma = [], [], []
    cr_unexplained = 0.0
    for seed in (1, 2, 3, 4):
        stack = simulate_stack(seed=seed)
        p = CompareWarpPipeline(stack.direct_warps, stack.psf_matched_warps)
        cfg = CompareWarpConfig()
        cfg.doPreserveContainedBySource = False
        p_off = CompareWarpPipeline(stack.direct_warps, stack.psf_matched_warps, config=cfg)
        for out, pipe in ((pooled, p), (pooled_off, p_off)):
            for kind, r in artifact_removal(stack, pipe).items():
                acc = out.setdefault(kind, [0.0, 0.0])
                acc[0] += r["injected"]
                acc[1] += r["remaining"]
        left = artifact_leftovers(stack, p, "cosmic_ray", min_fraction=0.0)
        unexplained = ~np.isin(left["reason"], ["protected", "not transient", "prefiltered"])
        cr_unexplained += float(np.sum(left["remaining"][unexplained]))
        stars = star_flux_errors(stack, p)
        static_clip.append(stars["static_clip"])
        static.append(stars["static"])
        static_sigma.append(stars["static_sigma"])

    def removed(acc, kind):
        return 1.0 - acc[kind][1] / acc[kind][0]

    assert removed(pooled, "faint_trail") >= 0.95
    assert removed(pooled, "bright_trail") >= 0.99
    assert removed(pooled, "ghost") >= 0.99
    static_clip, static, static_sigma = (np.concatenate(a) for a in (static_clip, static, static_sigma))
    assert static_clip.size >= 8
    # no false clips at stars: against the stack with only the artifact-driven clips (a star
    # inside a trail's PSF-matched footprint loses that epoch by design)
    assert np.abs(static_clip).max() <= 1e-3
    # what is left of the coadd's star fluxes is noise: within 4 sigma of the noise-free stack
    assert np.all(np.abs(static) <= 4 * static_sigma)
    # cosmic rays on protected (template) footprints are kept by LSST's rule; without it fewer stay
    assert removed(pooled_off, "cosmic_ray") >= 0.9
    assert removed(pooled, "cosmic_ray") < removed(pooled_off, "cosmic_ray")
    # what LSST's three keep rules do not explain is the engine's own miss: under 1 % of the flux
    assert cr_unexplained <= 0.01 * pooled["cosmic_ray"][0]

def test_artifact_driven_clips_separate_intended_from_false_clips():
    """Seed 7: a 500-sigma trail's PSF-matched footprint (~50 px wide) clips that epoch at stars
    12-24 px from the trail, which moves a direct coadd's core flux by ~0.3 %.  Those clips are
    the artifact's; measured against the stack with only such clips, no star loses flux."""
    from toolkit.sim import simulate_stack
    from toolkit.validation import artifact_driven_clips, star_flux_errors

    stack = simulate_stack(seed=7)
    p = CompareWarpPipeline(stack.direct_warps, stack.psf_matched_warps)
    intended = artifact_driven_clips(stack, p)
    art = stack.truth["artifact_mask"]
    for e, m in enumerate(p.artifact_masks):
        clipped = m["CLIPPED"]
        assert not (intended[e] & ~clipped).any()  # a subset of what was clipped
        assert not (clipped & art[e] & ~intended[e]).any()  # holding every clipped artifact pixel
    assert any(i.any() for i in intended)
    plain = star_flux_errors(stack, p, intended_clips=False)
    assert np.abs(plain["static_clip"]).max() > 1e-3  # the epoch lost beside the trail
    assert np.abs(star_flux_errors(stack, p)["static_clip"]).max() == 0.0


def test_artifact_leftovers_account_for_what_is_left_and_name_the_rule():
    """Seed 6 keeps cosmic rays for two of LSST's reasons: inside a protected footprint, and on
    a BAD column that PSF matching grew into a strip (prefiltered).  The rows add up to what
    artifact_removal reports left, and without the protection rule none is 'protected'."""
    from toolkit.config import CompareWarpConfig
    from toolkit.sim import simulate_stack
    from toolkit.validation import artifact_leftovers, artifact_removal

    stack = simulate_stack(seed=6)
    p = CompareWarpPipeline(stack.direct_warps, stack.psf_matched_warps)
    t = artifact_leftovers(stack, p, "cosmic_ray", min_fraction=0.0)
    assert {"protected", "prefiltered"} <= set(t["reason"])
    left = artifact_removal(stack, p)["cosmic_ray"]["remaining"]
    assert np.sum(t["remaining"]) == pytest.approx(left, rel=1e-9)
    bad = stack.psf_matched_warps[0].mask_planes.bitmask(["BAD"])
    for row in t[t["reason"] == "prefiltered"]:
        e, x, y = int(row["epoch"]), int(round(row["x"])), int(round(row["y"]))
        assert stack.psf_matched_warps[e].mask[y, x] & bad  # on the grown BAD strip
        assert not stack.direct_warps[e].mask[y, x] & bad  # but not on the direct warp's column
    cfg = CompareWarpConfig()
    cfg.doPreserveContainedBySource = False
    off = artifact_leftovers(stack, CompareWarpPipeline(stack.direct_warps, stack.psf_matched_warps, config=cfg))
    assert "protected" not in set(off["reason"]) and len(off) < len(t)
    with pytest.raises(ValueError, match="unknown artifact kind"):
        artifact_leftovers(stack, p, "meteor")


def test_variable_stars_keep_their_mean_flux():
    """Variables (flux x0.6-1.4 per epoch) are not clipped: their coadd flux stays the plain mean
    of the epochs to 1 % (issue 4), and what differs from the noise-free stack is noise."""
    from toolkit.sim import simulate_stack
    from toolkit.validation import star_flux_errors

    clip, err, sigma = [], [], []
    for seed in (1, 2, 4):
        stack = simulate_stack(seed=seed, variable_fraction=0.5)
        p = CompareWarpPipeline(stack.direct_warps, stack.psf_matched_warps)
        s = star_flux_errors(stack, p)
        clip.append(s["variable_clip"])
        err.append(s["variable"])
        sigma.append(s["variable_sigma"])
    clip, err, sigma = (np.concatenate(a) for a in (clip, err, sigma))
    assert clip.size >= 6
    assert np.abs(clip).max() <= 0.01
    assert np.all(np.abs(err) <= 4 * sigma)


def test_changed_pixels_is_the_union_of_per_epoch_symmetric_differences():
    from toolkit.compare_warp import _changed_pixels

    rng = np.random.default_rng(0)
    npix = 500
    old = [np.unique(rng.integers(0, npix, k)) for k in (0, 40, 200, 7)]
    new = [np.unique(rng.integers(0, npix, k)) for k in (30, 0, 180, 7)]
    expect = np.unique(np.concatenate([np.setxor1d(a, b) for a, b in zip(old, new)]))
    np.testing.assert_array_equal(_changed_pixels(old, new, npix), expect)
    assert _changed_pixels(old, old, npix).size == 0


def test_threaded_epochs_give_the_serial_result(small_stack, monkeypatch):
    """PSF matching, ScaleVariance, detection and the filter run epochs on threads; the result
    must not depend on it (bit for bit)."""
    warps = small_stack.direct_warps[:6]
    results = []
    for threads in ("1", "2"):
        monkeypatch.setenv("DIFFSTACK_THREADS", threads)
        p = CompareWarpPipeline(warps)
        r = p.coadd_result
        results.append((r.coadd.image, r.coadd.variance, r.coadd.mask, r.input_map, p.epoch_count, p.warp_diffs.variance_factors))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_failed_coadd_runs_leave_no_half_made_state_and_candidates_are_made_on_access(small_stack):
    """A coadd run that fails (the first full stack, or a restack after a slider move, after it
    has stacked) must leave the pipeline giving the right coadd on the next call: the restack
    works on copies, never on the previous coadd's planes."""
    from toolkit import compare_warp as cw

    real_assemble = assemble_coadd
    armed = {"first": True, "restack": False}

    def failing(*args, **kwargs):
        if "alt_masks" in kwargs and armed["first"]:  # the coadd stage's first full stack
            armed["first"] = False
            raise RuntimeError("interrupted")
        if kwargs.get("base") is not None and armed["restack"]:
            armed["restack"] = False
            real_assemble(*args, **kwargs)  # all the work done, then the run fails
            raise RuntimeError("interrupted")
        return real_assemble(*args, **kwargs)

    p = CompareWarpPipeline(small_stack.direct_warps, small_stack.psf_matched_warps)
    cw.assemble_coadd, saved = failing, cw.assemble_coadd
    try:
        with pytest.raises(RuntimeError):
            p.coadd
        r = p.run()
        p.config.spatialThreshold = 0.2
        armed["restack"] = True
        with pytest.raises(RuntimeError):
            p.coadd
        r2 = p.coadd_result
    finally:
        cw.assemble_coadd = saved
    assert not armed["first"] and not armed["restack"]
    good = CompareWarpPipeline(small_stack.direct_warps, small_stack.psf_matched_warps).run()
    np.testing.assert_array_equal(r.coadd.image, good.coadd.image)
    np.testing.assert_array_equal(r.coadd.mask, good.coadd.mask)
    fresh = CompareWarpPipeline(small_stack.direct_warps, small_stack.psf_matched_warps, CompareWarpConfig(spatialThreshold=0.2)).coadd_result
    for x, y in ((fresh.coadd.image, r2.coadd.image), (fresh.coadd.mask, r2.coadd.mask), (fresh.input_map, r2.input_map)):
        np.testing.assert_array_equal(x, y)
    assert p.run_counts["coadd"] == 2  # the failed runs are not counted: first full, one restack
    p.invalidate()  # everything is recomputed, from a full stack again
    r3 = p.coadd_result
    assert p.run_counts["coadd"] == 3 and p.run_counts["candidates"] == 2
    np.testing.assert_array_equal(r3.coadd.image, r2.coadd.image)
    # the candidate images are built from the stored indices on access, and equal the pipeline's
    assert len(r.candidates) == len(small_stack.direct_warps)
    for i in range(len(r.candidates)):
        np.testing.assert_array_equal(r.candidates[i], p.candidate_image(i))
    assert max(int(c.max()) for c in r.candidates) > 0


def test_scale_variance_pixel_based_fallback_and_limit():
    """ScaleVariance (reference 3.3): (0.74 IQR(snr))^2 on unmasked pixels after a 32-px
    background; the image-based estimate when that exceeds the limit; an error if both do."""
    from toolkit.compare_warp import scale_variance
    from toolkit.detection import binned_background
    from toolkit.errors import InputError

    rng = np.random.default_rng(3)
    n = 256
    img = (rng.standard_normal((n, n)) * 2.0 + np.linspace(0, 30, n)).astype(np.float32)  # noise variance 4, a sky gradient
    var = np.ones((n, n), np.float32)
    e = Exposure(img, var)
    bad = e.mask_planes.bitmask(["BAD"])
    e.mask[:16] = bad
    e.image[:16] = 1e6  # masked: must not count
    var0 = e.variance.copy()
    f, v = scale_variance(e, ["BAD"], limit=10.0)
    # N = 61k pixels: the IQR sigma has relative sd 1.17/sqrt(N) = 0.5 %, so f/4 within 5 sd
    assert abs(f / 4.0 - 1.0) < 5 * 2 * 1.17 / np.sqrt(img[16:].size)
    np.testing.assert_array_equal(e.variance, var0)  # input untouched
    np.testing.assert_allclose(v, var0 * f, rtol=1e-6)
    # 45 % of the variance plane 1000x too small: the pixel-based factor (~22) exceeds the limit, the image-based
    # one is (0.74 IQR(residual))^2 / median(variance)
    var2 = np.where(rng.random((n, n)) < 0.45, 1e-3, 1.0).astype(np.float32)
    e2 = Exposure(img, var2, e.mask.copy())
    f2, _ = scale_variance(e2, ["BAD"], limit=10.0)
    usable = (e2.mask & bad) == 0
    resid = img.astype(np.float64) - binned_background(img, ~usable, 32)
    q1, q3 = np.percentile(resid[usable], (25, 75))
    want = (0.74 * (q3 - q1)) ** 2 / np.median(var2[usable])
    assert f2 == pytest.approx(want, rel=1e-5) and 1.0 < f2 < 10.0
    with pytest.raises(InputError, match="exceeds limit"):
        scale_variance(e2, ["BAD"], limit=f2 * 0.9)


def test_side_stages_run_beside_the_chain_and_report_in_the_calling_thread(small_stack, monkeypatch):
    """weights and protected run in a worker thread beside the main chain: every progress report
    must still arrive in the caller's thread (UI callbacks are not thread-safe), each stage runs
    once, and the result equals a run with everything serial (DIFFSTACK_THREADS=1)."""
    import threading

    reports = []

    def progress(stage, fraction):
        reports.append((stage, fraction, threading.get_ident()))

    from toolkit import compare_warp as cw

    ran_in = []
    real_weights = cw.compute_weights

    def weights(*args, **kwargs):
        ran_in.append(threading.current_thread().name)
        return real_weights(*args, **kwargs)

    monkeypatch.setattr(cw, "compute_weights", weights)
    p = CompareWarpPipeline(small_stack.direct_warps, small_stack.psf_matched_warps, progress=progress)
    r = p.run()
    assert len(ran_in) == 1 and ran_in[0].startswith("diffstack-side")  # really beside the chain
    assert {t for _, _, t in reports} == {threading.get_ident()}
    for stage in ("weights", "protected", "template", "candidates", "coadd"):
        assert (stage, 1.0) in [(s, f) for s, f, _ in reports], stage
        assert p.run_counts[stage] == 1, stage
    monkeypatch.setenv("DIFFSTACK_THREADS", "1")
    serial = CompareWarpPipeline(small_stack.direct_warps, small_stack.psf_matched_warps).run()
    for a, b in ((serial.coadd.image, r.coadd.image), (serial.coadd.mask, r.coadd.mask), (serial.epoch_count, r.epoch_count), (serial.input_map, r.input_map)):
        np.testing.assert_array_equal(a, b)


def test_warp_diff_scratch_equals_warp_diff():
    """Candidate detection reads each warpDiff through per-thread scratch planes: on a worker
    thread they must hold warp - template and the rescaled variance plus the template's, as
    ``warp_diffs[i]`` does, and a second call on that thread reuses the same planes."""
    from concurrent.futures import ThreadPoolExecutor

    from toolkit.sim import simulate_stack

    stack = simulate_stack(seed=2, size=128, n_epochs=4)
    p = CompareWarpPipeline(stack.direct_warps, stack.psf_matched_warps)
    diffs = p.warp_diffs
    assert any(f is not None and f != 1.0 for f in diffs.variance_factors)

    def both(i):
        s = diffs.scratch(i)
        return s.image.copy(), s.variance.copy(), s.image.ctypes.data

    with ThreadPoolExecutor(1) as ex:
        got = list(ex.map(both, range(len(diffs))))
    tmpl = p.template
    for i, (img, var, _) in enumerate(got):
        w, f = p.psf_matched_warps[i], diffs.variance_factors[i]
        want_var = (w.variance if f is None else (w.variance * f).astype(w.dtype)) + tmpl.variance
        assert np.array_equal(img, w.image - tmpl.image, equal_nan=True) and np.array_equal(var, want_var, equal_nan=True)
        d = diffs[i]  # the same, on new planes
        assert np.array_equal(d.image, img, equal_nan=True) and np.array_equal(d.variance, var, equal_nan=True)
    assert len({ptr for _, _, ptr in got}) == 1  # one pair of planes for the thread
    assert diffs.scratch(0).image is not diffs.scratch(0).image  # main thread: new planes


def test_a_warp_left_with_its_sky_is_named():
    """A warp whose sky was not subtracted differs from the template everywhere: LSST says
    nothing, diffstack names the epoch (and keeps quiet on sky-subtracted warps)."""
    import warnings

    from toolkit.compare_warp import SKY_OFFSET_LIMIT, SkyOffsetWarning
    from toolkit.sim import simulate_stack

    stack = simulate_stack(seed=2, size=128, n_epochs=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkyOffsetWarning)
        quiet = CompareWarpPipeline(stack.direct_warps, stack.psf_matched_warps)
        offsets = quiet.warp_diff_offsets
    assert offsets.shape == (5,) and np.abs(offsets).max() < SKY_OFFSET_LIMIT
    # a sky of 6 sigma of the PSF-matched warp's noise, left in epoch 2 only
    w, m = stack.direct_warps[2], stack.psf_matched_warps[2]
    level = np.float32(6 * np.sqrt(np.nanmedian(m.variance)))
    before = w.image.copy()
    direct = list(stack.direct_warps)
    matched = list(stack.psf_matched_warps)
    direct[2] = Exposure(w.image + level, w.variance, w.mask, w.mask_planes, psf=w.psf, wcs=w.wcs)
    matched[2] = Exposure(m.image + level, m.variance, m.mask, m.mask_planes, psf=m.psf, wcs=m.wcs)
    p = CompareWarpPipeline(direct, matched)
    with pytest.warns(SkyOffsetWarning, match=r"1 of 5 .*epoch 2: \+\d\.\d \((\d+) % of it in candidates\)") as rec:
        offsets = p.warp_diff_offsets
    assert len(rec) == 1 and offsets[2] > 3 and np.abs(np.delete(offsets, 2)).max() < SKY_OFFSET_LIMIT
    # raised inside the pipeline's cached stages, it is attributed to the line that asked
    assert rec[0].filename == __file__
    # the share given is that of the epoch's candidates in the warp's pixels with data (a
    # part of this one has none, so it is above their share of the whole plane): a 6-sigma sky
    # puts a large part of the warp in candidates (a sky-subtracted epoch has a few %)
    covered = int(re.search(r"\((\d+) % of it", str(rec[0].message)).group(1))
    cand = p.candidate_image(2)
    assert round(100 * np.count_nonzero(cand) / cand.size) <= covered <= 100 and covered > 40
    assert np.count_nonzero(p.candidate_image(0)) < 0.1 * cand.size
    assert np.array_equal(stack.direct_warps[2].image, before, equal_nan=True)


def star_stack(pedestal=0.0, n=10, size=96, flux=2500.0, seed=1):
    """Ten noisy epochs of two equal bright stars, one in the middle and one 4 px from the left
    edge, on a constant pedestal (the PSF-matched warps carry the 7.7-px model PSF, sigma ~3.7)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    s = 3.7
    sky = pedestal + sum(flux / (2 * np.pi * s**2) * np.exp(-((xx - x0) ** 2 + (yy - 48) ** 2) / (2 * s**2)) for x0 in (48, 4))
    direct, matched = [], []
    for i in range(n):
        img = (sky + rng.normal(0, 1, (size, size))).astype(np.float32)
        direct.append(Exposure(img, np.ones((size, size), np.float32), psf=GaussianPsf(1.5)))
        matched.append(Exposure(img, np.ones((size, size), np.float32), psf=DoubleGaussianPsf(7.7)))
    return direct, matched


def test_protected_footprints_follow_lsst_detection():
    """detectTemplate as SourceDetectionTask runs it: seeds only where the whole smoothing
    kernel lies on the image (convolveImage's "middle"), thresholded on the smoothed template
    itself -- the temporary local background only re-detects peaks inside the footprints, so
    doTempLocalBackground does not change them, and a pedestal counts as signal."""
    cfg = CompareWarpConfig(doScaleWarpVariance=False)
    prot = CompareWarpPipeline(*star_stack(), cfg).protected_footprints
    # the middle star (smoothed peak ~600 sigma) is protected; the one 4 px from the edge is as
    # bright but lies in the 13-px border, and its profile drops below 300 sigma before the
    # searched region begins
    assert prot[48, 48] > 0
    assert not prot[:, :20].any()
    # pedestal ~half the threshold: the footprint grows (LSST subtracts no background before
    # thresholding; the 300-sigma isophote moves from ~6 to ~9 px, +9 px growth: area x1.37;
    # with the pedestal removed it would stay ~x1), the same with or without the temporary
    # local background
    direct, matched = star_stack(pedestal=3.6)
    feet = []
    for local in (True, False):
        c = CompareWarpConfig(doScaleWarpVariance=False)
        c.detectTemplate.doTempLocalBackground = local
        feet.append(CompareWarpPipeline(direct, matched, c).protected_footprints > 0)
    np.testing.assert_array_equal(feet[0], feet[1])
    assert feet[0].sum() > 1.2 * (prot > 0).sum()


def test_template_error_names_psf_matching_when_it_leaves_no_pixel():
    """Direct warps smaller than PSF matching's NO_DATA reach (10 px from the edge) give PSF-matched
    warps without a usable pixel: the error says so instead of calling the user's images NaN."""
    from toolkit.errors import InputError

    rng = np.random.default_rng(0)
    warps = [Exposure(rng.normal(0, 2, (8, 8)).astype(np.float32), np.full((8, 8), 4.0, np.float32), psf=GaussianPsf(1.5 + 0.1 * i)) for i in range(3)]
    with pytest.raises(InputError, match=r"static-sky template: none of the PSF-matched warps made from the direct warps \(epochs \[0, 1, 2\].*PSF matching marks NO_DATA"):
        CompareWarpPipeline(warps).run()
    # PSF-matched warps given by the caller that are unusable: the coadd's own message, unchanged
    nan = [Exposure(np.full((8, 8), np.nan, np.float32), np.full((8, 8), 4.0, np.float32), psf=GaussianPsf(2.0)) for _ in range(3)]
    with pytest.raises(InputError, match=r"^no usable warps: 0: image is entirely NaN"):
        CompareWarpPipeline(warps, nan).run()
    # a direct warp without a PSF cannot be PSF-matched: the error names the epoch
    nopsf = [Exposure(w.image, w.variance, psf=None if i == 1 else w.psf) for i, w in enumerate(warps)]
    with pytest.raises(InputError, match=r"direct warp\(s\) 1 have no PSF"):
        CompareWarpPipeline(nopsf).run()


def test_bright_object_masks_reach_the_compare_warp_coadd(small_stack):
    """doMaskBrightObjects with a bright-object table: the CompareWarp coadd carries the plane
    where the table says (as LSST's processResults paints it), and nothing without the flag."""
    from astropy.table import Table

    from toolkit.config import CompareWarpConfig
    from toolkit.interp import mask_bright_objects

    direct, matched = small_stack.direct_warps, small_stack.psf_matched_warps
    table = Table(rows=[("circle", 40.0, 50.0, 6.0)], names=("type", "x", "y", "radius"))
    cfg = CompareWarpConfig()
    cfg.doMaskBrightObjects = True
    coadd = CompareWarpPipeline(direct, matched, config=cfg, bright_objects=table).coadd
    ref = coadd.copy()
    ref.clear_plane("BRIGHT_OBJECT")
    mask_bright_objects(ref, table)
    np.testing.assert_array_equal(coadd.get_plane("BRIGHT_OBJECT"), ref.get_plane("BRIGHT_OBJECT"))
    assert coadd.get_plane("BRIGHT_OBJECT").sum() == 113  # afw's circle of radius 6
    plain = CompareWarpPipeline(direct, matched, bright_objects=table).coadd
    assert "BRIGHT_OBJECT" not in plain.mask_planes or not plain.get_plane("BRIGHT_OBJECT").any()


def test_protected_footprints_follow_detect_template_growth_fields():
    """detectTemplate.isotropicGrow / combinedGrow / returnOriginalFootprints reach the
    protected footprints as SourceDetectionTask.finalizeFootprints applies them; with
    combinedGrow=False a candidate must lie inside one separately grown footprint."""
    from toolkit.detection import footprint_pixels, grow_radius, smooth_for_detection, threshold_for
    from toolkit.sim import simulate_stack

    st = simulate_stack(seed=3, size=128, n_epochs=4)
    cfg = CompareWarpConfig()
    cfg.detectTemplate.thresholdValue = 20.0
    p = CompareWarpPipeline(st.direct_warps, st.psf_matched_warps, config=cfg)
    t = p.template
    sigma = t.psf.determinant_radius(t.bbox.center)
    simg, svar = smooth_for_detection(t.image, t.variance, sigma, 7.0, edge_nan=True)
    var, thr = threshold_for(simg, svar, 20.0, "pixel_stdev")
    r = grow_radius(2.4, sigma)
    default = p.protected
    assert default.overlapping is None and r >= 2
    for field, value, kwargs in (("isotropicGrow", False, dict(grow=r, isotropic=False)), ("returnOriginalFootprints", True, dict(grow=0))):
        setattr(p.config.detectTemplate, field, value)
        flat, lv, n = footprint_pixels(simg, var, thr, "positive", 1, kwargs.pop("grow"), **kwargs)
        want = np.zeros(t.shape, np.int32)
        want.ravel()[flat] = lv
        np.testing.assert_array_equal(p.protected_footprints, want, err_msg=field)
        assert not np.array_equal(p.protected_footprints > 0, default.labels > 0), field
        setattr(p.config.detectTemplate, field, not value)
    p.config.detectTemplate.combinedGrow = False
    sep = p.protected
    flat, lv, n = footprint_pixels(simg, var, thr, "positive", 1, r, combined=False)
    assert sep.overlapping is not None and sep.overlapping[2] == n and np.array_equal(sep.overlapping[0], flat)
    assert flat.size > np.unique(flat).size  # some grown footprints overlap
    # the union is the combined footprints' union; containment differs where they overlap
    np.testing.assert_array_equal(sep.labels > 0, default.labels > 0)
    u, c = np.unique(flat, return_counts=True)
    dup = u[c > 1]
    # a 1-pixel region in an overlap is inside each footprint there; a region over two
    # footprints' private pixels (merged into one by combinedGrow) is inside neither
    one = sep.contains(dup[:1], np.array([1]), 1)
    assert one[1]
    k1, k2 = lv[flat == dup[0]][:2]
    a = flat[lv == k1][~np.isin(flat[lv == k1], flat[lv == k2])][:1]
    b = flat[lv == k2][~np.isin(flat[lv == k2], flat[lv == k1])][:1]
    both = np.concatenate([a, b])
    assert not sep.contains(both, np.array([1, 1]), 1)[1]
    assert default.contains(both, np.array([1, 1]), 1)[1]


def test_candidates_follow_detect_growth_fields():
    """detect.isotropicGrow=False grows candidates with the Manhattan stencil and
    detect.returnOriginalFootprints=True leaves them ungrown (SourceDetectionTask)."""
    from toolkit.detection import footprint_pixels, grow_radius
    from toolkit.sim import simulate_stack

    st = simulate_stack(seed=4, size=128, n_epochs=4)
    cfg = CompareWarpConfig()
    cfg.detect.nSigmaToGrow = 1.0
    cfg.doPrefilterArtifacts = False  # compared with the detections themselves
    p = CompareWarpPipeline(st.direct_warps, st.psf_matched_warps, config=cfg)
    d = p.warp_diffs[0]
    r = grow_radius(1.0, d.psf.determinant_radius(d.bbox.center))
    assert r >= 3
    circle = p.candidate_image(0)
    for field, value, grow, iso in (("isotropicGrow", False, r, False), ("returnOriginalFootprints", True, 0, True)):
        setattr(p.config.detect, field, value)
        flat, lv, n = footprint_pixels(d.image, d.variance, 7.5, "both", 4, grow, isotropic=iso)
        got = p.candidate_image(0)
        np.testing.assert_array_equal(np.flatnonzero(got), flat, err_msg=field)
        assert np.count_nonzero(got) < np.count_nonzero(circle), field
        setattr(p.config.detect, field, not value)


def test_inputs_of_the_wrong_kind_are_named_before_anything_runs():
    from toolkit.errors import InputError

    w = Exposure(np.zeros((20, 20)), np.ones((20, 20)), psf=GaussianPsf(2.0))
    with pytest.raises(InputError, match="direct warp 1 is a ndarray, not an Exposure"):
        CompareWarpPipeline([w, np.zeros((20, 20))])
    with pytest.raises(InputError, match=r"PSF-matched warp 0 is a str, not an Exposure \(or None"):
        CompareWarpPipeline([w, w], psf_matched_warps=["a", None])
    with pytest.raises(InputError, match="2 PSF-matched warps for 1 direct warps"):
        CompareWarpPipeline([w], psf_matched_warps=[w, w])
    CompareWarpPipeline([w, w], psf_matched_warps=[w, None])  # None marks a missing one


def test_coadd_psf_leaves_out_warps_with_no_data_and_restacks_share_the_coverage(small_stack):
    direct = small_stack.direct_warps
    nd = direct[0].mask_planes.bitmask(["NO_DATA"])
    gaps = [i for i, w in enumerate(direct) if ((w.mask[128] & nd) != 0).any()]
    assert gaps, "the fixture should have a chip gap crossing row 128"
    i = gaps[0]
    x = int(np.flatnonzero(direct[i].mask[128] & nd)[0])
    p = CompareWarpPipeline(direct, small_stack.psf_matched_warps)
    psf = p.coadd.psf
    used = [k for k in range(len(direct)) if k not in p.coadd_result.skipped]
    at = [used[k] for k in psf.contributors((x, 128))]
    expect = [k for k in used if (direct[k].mask[128, x] & nd) == 0]
    assert at == expect and i not in at
    # the PSF there is the weighted mean of exactly those warps' PSFs
    w = p.coadd_result.weights[at]
    ref = sum(wk * direct[k].psf.compute_kernel_image((x, 128), size=psf.size) for wk, k in zip(w / w.sum(), at))
    np.testing.assert_allclose(psf.compute_kernel_image((x, 128)), ref, rtol=1e-12)
    # a slider move restacks and keeps the coverage (same warps, same weights)
    p.config.spatialThreshold = 0.3
    assert p.coadd.psf is not psf and p.coadd.psf.coverage is psf.coverage


def test_independent_stack_moffat_psfs_made_psf_matched_warps():
    """A stack built here, not by toolkit.sim: 9 non-square float64 epochs with astropy Moffat
    PSFs of 3-5 px FWHM, sparse stars (DETECTED where the noiseless star light exceeds 3 sigma,
    as a calexp's detection marks them), bright cosmic rays away from the stars and a bright
    trail in one epoch; the pipeline makes the PSF-matched warps itself.  Nearly all artifact
    flux must go (noise-free, from the coadd's input map), and nothing may be clipped away
    from an artifact: a wrongly matched PSF would leave star residuals in the warp diffs.
    Candidates are found in PSF-matched space, so a clip reaches as far as the 7.7-px model
    PSF spreads the artifact above 7.5 sigma (8-9 px for these), plus the 1-px growth: 12 px
    is the allowance, and the cosmic rays fall more than 25 px from any star."""
    from astropy.modeling.functional_models import Moffat2D
    from scipy import ndimage
    from scipy.signal import fftconvolve

    from toolkit import ImagePsf
    from toolkit.masks import MaskPlanes
    from toolkit.validation import contribution

    rng = np.random.default_rng(7)
    n, ny, nx = 9, 200, 260
    sigma_pix = 10.0
    stars = np.zeros((ny, nx))
    sy, sx = rng.integers(20, ny - 20, 12), rng.integers(20, nx - 20, 12)
    stars[sy, sx] = rng.uniform(3e3, 3e4, 12)
    far = ndimage.distance_transform_edt(stars == 0) > 25  # cosmic rays land away from stars
    planes = MaskPlanes()
    det_bit = planes.bitmask(["DETECTED"])
    yy, xx = np.mgrid[:41, :41] - 20
    warps, art = [], np.zeros((n, ny, nx))
    for i in range(n):
        fwhm, beta = rng.uniform(3.0, 5.0), rng.uniform(2.5, 4.0)
        k = Moffat2D(1.0, 0, 0, fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1)), beta)(xx, yy)
        k /= k.sum()
        model = fftconvolve(stars, k, mode="same")
        for _ in range(4):  # cosmic rays: 2-5 sharp pixels in a row, 50-200 sigma
            cy, cx = np.argwhere(far)[rng.integers(far.sum())]
            art[i, cy, cx : cx + rng.integers(2, 6)] = rng.uniform(50, 200) * sigma_pix
        if i == 4:  # a bright trail across the whole image, 2 px wide
            row = (0.35 * np.arange(nx) + 60).astype(int)
            art[i, row, np.arange(nx)] = art[i, row + 1, np.arange(nx)] = 30 * sigma_pix
        img = model + art[i] + rng.normal(0, sigma_pix, (ny, nx))
        mask = np.where(model > 3 * sigma_pix, det_bit, 0).astype(np.int32)
        warps.append(Exposure(img, np.full((ny, nx), sigma_pix**2), mask, planes, psf=ImagePsf(k), metadata={"BUNIT": "nJy", "EPOCH": i}))
    p = CompareWarpPipeline(warps)
    r = p.coadd_result
    used_all = np.zeros_like(r.input_map)
    used_all[0] = 0xFF
    used_all[1] = 0x01
    injected = contribution(art, used_all, r.weights).sum()
    remaining = contribution(art, r.input_map, r.weights).sum()
    assert 1 - remaining / injected >= 0.99
    for i, m in enumerate(p.artifact_masks):
        near = ndimage.distance_transform_edt(art[i] == 0) <= 12
        assert not (m["CLIPPED"] & ~near).any(), f"epoch {i}: pixels clipped away from any artifact"
