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
