"""Streak finding (doFilterMorphological): long linear features only, never compact sources."""

import numpy as np

from toolkit.config import CompareWarpConfig, MaskStreaksConfig
from toolkit.detection import grow_mask
from toolkit.streaks import find_streaks


def _line_band(shape, angle_deg, point, half_width):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    a = np.deg2rad(angle_deg)
    # distance from the line through ``point`` with direction (cos a, sin a)
    return np.abs(-(xx - point[0]) * np.sin(a) + (yy - point[1]) * np.cos(a)) <= half_width


def _field(seed=0, shape=(512, 512)):
    """Detections as a crowded PSF-matched warp difference has them: 60 cosmic-ray-like
    elongated blobs (20 x 8 px, the size PSF matching makes of a 1-12 px track), 40 round
    star residuals and one ghost-like disk of radius 40."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    det = np.zeros(shape, bool)
    for _ in range(60):
        x0, y0, a = rng.uniform(20, shape[1] - 20), rng.uniform(20, shape[0] - 20), rng.uniform(0, np.pi)
        u = (xx - x0) * np.cos(a) + (yy - y0) * np.sin(a)
        v = -(xx - x0) * np.sin(a) + (yy - y0) * np.cos(a)
        det |= (np.abs(u) <= 10) & (np.abs(v) <= 4)
    for _ in range(40):
        x0, y0 = rng.uniform(0, shape[1]), rng.uniform(0, shape[0])
        det |= np.hypot(xx - x0, yy - y0) <= rng.uniform(3, 9)
    det |= np.hypot(xx - 300, yy - 200) <= 40
    return det


def test_compact_sources_are_never_streaks():
    """Blobs, star residuals and a large disk in a crowded detection mask: nothing is masked
    (LSST's line-profile fit rejects them; here the continuity test along the line)."""
    cfg = MaskStreaksConfig()
    for seed in range(3):
        det = _field(seed)
        assert det.mean() > 0.05  # crowded: random lines through it collect hundreds of pixels
        assert not find_streaks(det, cfg).any()


def test_a_trail_is_masked_and_only_along_its_band():
    """A 9-px wide trail across the crowded field: every detected pixel within the band
    (absMinimumKernelHeight from the line) is masked, and nothing farther away; with a
    growth, the mask is the band's detections grown by afw's circular stencil."""
    cfg = MaskStreaksConfig()
    det = _field(1)
    trail = _line_band(det.shape, 27.0, (256, 256), 4)
    det_t = det | trail
    mask = find_streaks(det_t, cfg)
    assert mask[trail].all()
    far = ~_line_band(det.shape, 27.0, (256, 256), cfg.absMinimumKernelHeight + 1.5)  # Hough bins are coarse
    assert not mask[far].any()
    grown = find_streaks(det_t, cfg, grow=12)
    np.testing.assert_array_equal(grown, grow_mask(mask, 12))
    # a trail interrupted by chip gaps (10 px) and a NO_DATA edge is still one streak
    broken = trail & ~((np.arange(512) % 160 < 10)[None, :]) & ~(np.arange(512) < 40)[None, :]
    assert find_streaks(det | broken, cfg)[broken].all()
    # a short segment (a meteor 60 px long) is not a satellite trail
    seg = trail & (np.abs(np.arange(512) - 256) < 30)[None, :]
    assert not find_streaks(seg | det, cfg).any()


def test_pipeline_masks_streaks_only_in_trail_epochs():
    """doFilterMorphological on a simulated stack: the trail epochs get streak masks over their
    trails; the other epochs, with their cosmic rays, ghost and star residuals, get none."""
    from toolkit.compare_warp import CompareWarpPipeline
    from toolkit.sim import simulate_stack

    stack = simulate_stack(seed=2, size=384)
    cfg = CompareWarpConfig()
    cfg.doFilterMorphological = True
    p = CompareWarpPipeline(stack.direct_warps, stack.psf_matched_warps, config=cfg)
    streaks = p._streaks()[1]
    kinds = stack.truth["artifact_kind"]
    art = stack.catalogs["artifacts"]
    trail_epochs = set(int(e) for e in art["epoch"][np.isin(art["kind"], [1, 2])])
    assert trail_epochs
    for e, m in enumerate(streaks):
        if e in trail_epochs:
            on_trail = np.isin(kinds[e], [1, 2])
            assert m[on_trail].mean() > 0.9
        else:
            assert not m.any(), e


def test_streak_stage_reuses_its_hough_transforms(monkeypatch):
    """The streak stage follows the protected footprints and growStreakFp, but the Hough
    transforms (its cost) run again only when the candidates or maskStreaks change."""
    import toolkit.streaks
    from toolkit.compare_warp import CompareWarpPipeline
    from toolkit.sim import simulate_stack

    calls = []
    real = toolkit.streaks.find_streaks
    monkeypatch.setattr(toolkit.streaks, "find_streaks", lambda *a, **k: calls.append(1) or real(*a, **k))
    stack = simulate_stack(seed=2, size=256, n_epochs=6)
    cfg = CompareWarpConfig()
    cfg.doFilterMorphological = True
    p = CompareWarpPipeline(stack.direct_warps, stack.psf_matched_warps, config=cfg)
    first = [m.copy() for m in p._streaks()[1]]
    assert len(calls) == 6 and p.run_counts["streaks"] == 1
    p.config.growStreakFp = 2.0
    smaller = p._streaks()[1]
    p.config.set_dotted("detectTemplate.thresholdValue", 50.0)
    p._streaks()
    assert len(calls) == 6 and p.run_counts["streaks"] == 3
    assert any(m.any() for m in first)
    assert all((s <= f).all() for s, f in zip(smaller, first)) and sum(s.sum() for s in smaller) < sum(f.sum() for f in first)
    p.config.set_dotted("maskStreaks.clusterMinimumSize", 60)
    p._streaks()
    assert len(calls) == 12


def _stencil_grow(sel: np.ndarray, r: int) -> np.ndarray:
    """Reference dilation: afw's circular stencil swept over every pixel."""
    from scipy import ndimage

    from toolkit.detection import circular_stencil

    return ndimage.binary_dilation(sel, structure=circular_stencil(r)) if r > 0 else sel.copy()


def test_streak_clip_mask_drops_streaks_inside_one_template_footprint():
    """LSST (since 2025-10) keeps a streak lying wholly inside one protected template footprint;
    the split into streaks is afw's SpanSet.split, 4-connected: a piece touching a protected
    streak only at a corner is a streak of its own and does not stop the other's protection."""
    from toolkit.compare_warp import streak_clip_mask
    from toolkit.psf import GaussianPsf

    shape = (80, 120)
    prot = np.zeros(shape, np.int32)
    prot[5:16, 2:50] = 1
    prot[5:16, 50:60] = 2  # touches footprint 1: a streak over both is in neither
    streaks = np.zeros(shape, bool)
    streaks[10, 5:40] = True  # A: inside footprint 1
    streaks[11, 40:70] = True  # D: touches A at a corner only, runs out of the footprints
    streaks[60, 10:100] = True  # B: outside every footprint
    streaks[13, 45:55] = True  # E: over footprints 1 and 2, contained in neither alone
    psf = GaussianPsf(2.0)
    r = int(2.0 * psf.determinant_radius())
    assert r == 3
    got = streak_clip_mask(streaks, psf, 2.0, prot)
    a = np.zeros(shape, bool)
    a[10, 5:40] = True
    np.testing.assert_array_equal(got, _stencil_grow(streaks & ~a, r))
    # with doPreserveContainedBySource off (no footprints) nothing is dropped
    np.testing.assert_array_equal(streak_clip_mask(streaks, psf, 2.0, None), _stencil_grow(streaks, r))
    # 8-connected, A and D would be one streak, not contained: the split rule decides A's fate
    from scipy import ndimage

    assert ndimage.label(streaks, structure=np.ones((3, 3)))[1] == 3 and ndimage.label(streaks)[1] == 4


def test_streak_clip_mask_grows_each_streak_by_the_psf_at_its_centroid():
    """Each streak is grown by int(growStreakFp x determinant radius) of the PSF at its own
    centroid, in parent coordinates (xy0 added), not one radius for the whole warp."""
    from toolkit.compare_warp import streak_clip_mask
    from toolkit.psf import VaryingGaussianPsf

    shape = (100, 200)
    psf = VaryingGaussianPsf(1.5, dsigma_dx=0.01, ref=(1000.0, 0.0))
    xy0 = (1000, 500)
    streaks = np.zeros(shape, bool)
    streaks[20, 5:45] = True  # centroid x = 1024
    streaks[70, 150:190] = True  # centroid x = 1169.5
    radii = [int(2.0 * psf.determinant_radius((xc, yc))) for xc, yc in ((1024.0, 520.0), (1169.5, 570.0))]
    assert radii[0] < radii[1]
    got = streak_clip_mask(streaks, psf, 2.0, None, xy0)
    left, right = streaks.copy(), streaks.copy()
    left[:, 100:] = False
    right[:, :100] = False
    np.testing.assert_array_equal(got, _stencil_grow(left, radii[0]) | _stencil_grow(right, radii[1]))
