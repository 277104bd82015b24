"""AssembleCoadd semantics (reference §2 and §5.1) and PSF matching."""

import warnings

import numpy as np
import pytest

from toolkit import ConfigError, DoubleGaussianPsf, Exposure, GaussianPsf, InputError
from toolkit.coadd import assemble_coadd
from toolkit.config import AssembleCoaddConfig
from toolkit.psf_matching import PsfMatchingWarning, match_to_psf
from toolkit.sim import render_points
from toolkit.stats import stack_statistic


def const_stack(values, variances, shape=(8, 9), masks=None):
    out = []
    for i, (x, v) in enumerate(zip(values, variances)):
        m = None if masks is None else masks[i]
        out.append(Exposure(np.full(shape, x, np.float64), np.full(shape, v, np.float64), m, psf=GaussianPsf(1.5), metadata={"BUNIT": "nJy"}))
    return out


def test_weighted_mean_and_variance():
    xs, vs = [1.0, 2.0, 4.0], [1.0, 2.0, 4.0]
    cfg = AssembleCoaddConfig(statistic="MEAN", doInterp=False)
    r = assemble_coadd(const_stack(xs, vs), cfg)
    w = 1 / np.array(vs)
    np.testing.assert_allclose(r.coadd.image, (w * xs).sum() / w.sum(), rtol=1e-14)
    np.testing.assert_allclose(r.coadd.variance, (w * w * vs).sum() / w.sum() ** 2, rtol=1e-14)
    np.testing.assert_allclose(r.weights, w)
    assert (r.n_image == 3).all()


def test_given_weights_checked_and_zero_leaves_a_warp_out():
    from toolkit import InputError

    stack = const_stack([1.0, 2.0, 4.0], [1.0, 2.0, 4.0])
    cfg = AssembleCoaddConfig(statistic="MEAN", doInterp=False)
    w = np.array([1.0, 0.0, 0.25])
    r = assemble_coadd(stack, cfg, weights=w)
    np.testing.assert_allclose(r.coadd.image, (1.0 + 0.25 * 4.0) / 1.25, rtol=1e-14)
    assert set(r.skipped) == {1} and (r.n_image == 2).all()
    assert w[1] == 0.0 and r.weights is not w  # the caller's array is neither kept nor edited
    for bad, match in (([1.0, 1.0], "3 numbers"), ([[1.0, 1.0, 1.0]], "shape"), ([1.0, np.nan, 1.0], "warp 1: nan"), ([1.0, 1.0, -2.0], "warp 2: -2.0"), (["a", 1, 1], "3 numbers")):
        with pytest.raises(InputError, match=match):
            assemble_coadd(stack, cfg, weights=bad)


def test_meanclip_worked_example():
    x = np.array([1.0, 10.0, 10.0, 20.0]).reshape(4, 1)
    ones = np.ones_like(x)
    st = stack_statistic(x, ones, ones.astype(bool), np.ones(4), "MEANCLIP", 1.5, 3)
    assert st.value[0] == 10.0 and st.n_clipped[0] == 2
    st3 = stack_statistic(x, ones, ones.astype(bool), np.ones(4), "MEANCLIP", 3.0, 1)
    assert st3.n_clipped[0] == 0  # all four survive the first pass at 3 sigma
    assert st3.value[0] == pytest.approx(10.25)


def test_meanclip_through_assemble_sets_clipped_plane():
    r = assemble_coadd(const_stack([1, 10, 10, 20], [1, 1, 1, 1]), AssembleCoaddConfig(sigmaClip=1.5, clipIter=3, doInterp=False))
    assert np.all(r.coadd.image == 10)
    assert r.coadd.get_plane("CLIPPED").all() and r.coadd.get_plane("INEXACT_PSF").all()
    assert r.epochs_at(0, 0) == [1, 2]


@pytest.mark.parametrize("n_sat,expect", [(1, False), (2, True)])
def test_sat_propagation(n_sat, expect):
    shape = (4, 4)
    masks = [np.zeros(shape, np.int32) for i in range(10)]
    for m in masks[:n_sat]:
        m[1:3, 1:3] = 2  # SAT = bit 1, on a 2x2 patch
    r = assemble_coadd(const_stack([1.0] * 10, [1.0] * 10, shape, masks), AssembleCoaddConfig(statistic="MEAN"))
    assert r.coadd.get_plane("SAT")[1:3, 1:3].all() == expect
    assert r.coadd.get_plane("SAT").sum() == (4 if expect else 0)
    assert r.coadd.get_plane("REJECTED")[1:3, 1:3].all()  # SAT is in the and-mask: rejected inputs
    assert (r.n_image[1:3, 1:3] == 10 - n_sat).all() and r.n_image[0, 0] == 10


def test_fully_masked_pixel_is_nan_no_data_only():
    shape = (3, 3)
    masks = [np.zeros(shape, np.int32) for _ in range(3)]
    for m in masks:
        m[1, 1] = 1  # BAD everywhere at (1, 1)
    r = assemble_coadd(const_stack([1.0, 2, 3], [1.0] * 3, shape, masks), AssembleCoaddConfig(doInterp=False))
    assert np.isnan(r.coadd.image[1, 1])
    assert r.coadd.mask[1, 1] == 1 << r.coadd.mask_planes["NO_DATA"]
    assert r.n_image[1, 1] == 0
    # with interpolation it is filled and flagged INTRP, keeping NO_DATA
    r2 = assemble_coadd(const_stack([1.0, 2, 3], [1.0] * 3, shape, masks))
    assert np.isfinite(r2.coadd.image[1, 1]) and r2.coadd.get_plane("INTRP")[1, 1] and r2.coadd.get_plane("NO_DATA")[1, 1]


def test_tiled_equals_untiled_exactly(small_stack):
    for stat in ("MEANCLIP", "MEAN", "MEDIAN"):
        a = assemble_coadd(small_stack.direct_warps, AssembleCoaddConfig(statistic=stat))
        b = assemble_coadd(small_stack.direct_warps, AssembleCoaddConfig(statistic=stat, subregionSize=(100, 70)))
        np.testing.assert_array_equal(a.coadd.image, b.coadd.image)
        np.testing.assert_array_equal(a.coadd.variance, b.coadd.variance)
        np.testing.assert_array_equal(a.coadd.mask, b.coadd.mask)
        np.testing.assert_array_equal(a.input_map, b.input_map)


def test_online_mean_matches_stack(small_stack):
    cfg = AssembleCoaddConfig(statistic="MEAN")
    a = assemble_coadd(small_stack.direct_warps, cfg)
    b = assemble_coadd(small_stack.direct_warps, AssembleCoaddConfig(statistic="MEAN", doOnlineForMean=True))
    fin = np.isfinite(a.coadd.image)
    np.testing.assert_allclose(b.coadd.image[fin], a.coadd.image[fin], rtol=1e-3, atol=1e-6 * np.abs(a.coadd.image).max())
    np.testing.assert_allclose(b.coadd.variance, a.coadd.variance, rtol=1e-6)
    np.testing.assert_array_equal(a.coadd.mask, b.coadd.mask)


def test_inputs_not_modified(small_stack):
    before = [w.mask.copy() for w in small_stack.direct_warps]
    alt = [{"CLIPPED": np.ones(w.shape, bool)} if i == 0 else None for i, w in enumerate(small_stack.direct_warps)]
    assemble_coadd(small_stack.direct_warps, alt_masks=alt)
    for b, w in zip(before, small_stack.direct_warps):
        np.testing.assert_array_equal(b, w.mask)


def test_config_mask_plane_names():
    """A plane LSST registers but these inputs lack (SPIKE, as lsstCam's overrides add) selects
    nothing; a name LSST does not know is a typo and raises naming the field (afw's
    getPlaneBitMask raises for it too)."""
    masks = [np.zeros((8, 9), np.int32) for _ in range(3)]
    masks[1][2, 3] = 1  # BAD: excluded either way
    ws = const_stack([1.0, 2.0, 4.0], [1, 1, 1], masks=masks)
    plain = assemble_coadd(ws, AssembleCoaddConfig(statistic="MEAN"))
    spike = assemble_coadd(ws, AssembleCoaddConfig(statistic="MEAN", badMaskPlanes=["NO_DATA", "BAD", "SAT", "EDGE", "SPIKE"]))
    np.testing.assert_array_equal(plain.coadd.image, spike.coadd.image)
    assert plain.coadd.image[2, 3] == 2.5 and plain.coadd.image[0, 0] == pytest.approx(7 / 3, rel=1e-15)
    with pytest.raises(ConfigError, match="badMaskPlanes: unknown mask plane 'BADD'"):
        assemble_coadd(ws, AssembleCoaddConfig(badMaskPlanes=["NO_DATA", "BADD"]))
    with pytest.raises(ConfigError, match="removeMaskPlanes: unknown mask plane 'NOT_DEBLENED'"):
        assemble_coadd(ws, AssembleCoaddConfig(removeMaskPlanes=["NOT_DEBLENED"]))


def test_skip_all_nan_warp():
    ws = const_stack([1.0, 2.0, 3.0], [1, 1, 1])
    ws[1] = Exposure(np.full((8, 9), np.nan), np.ones((8, 9)), metadata={"BUNIT": "nJy"})
    r = assemble_coadd(ws, AssembleCoaddConfig(statistic="MEAN"))
    assert 1 in r.skipped and "NaN" in r.skipped[1]
    np.testing.assert_allclose(r.coadd.image, 2.0)


def test_psf_matching_gaussian_to_model():
    shape = (161, 161)
    flux = 1e5
    img = render_points(shape, [80.0], [80.0], [flux], 1.5)
    e = Exposure(img, np.ones(shape), psf=GaussianPsf(1.5, size=31))
    target = DoubleGaussianPsf(7.7)
    m = match_to_psf(e, target)
    from toolkit.psf_matching import matching_kernel
    k = matching_kernel(e.psf, target)
    expect = flux * target.compute_kernel_image(size=k.shape[0])
    h = k.shape[0] // 2
    got = m.image[80 - h : 80 + h + 1, 80 - h : 80 + h + 1]
    # the star is rendered pixel-integrated while the PSF model is sampled: compare with the matched PSF model
    kin = e.psf.compute_kernel_image(size=k.shape[0])
    from toolkit.psf_matching import fft_convolve
    model = flux * fft_convolve(kin, k)
    assert np.abs(model - expect).max() / expect.max() < 1e-3
    assert np.abs(got - expect).max() / expect.max() < 2e-2  # pixel integration vs sampling of the sigma=1.5 input
    # the PSF the matched warp carries is the one its data have: the model drawn on the kernel's
    # box (73 px), not its 23-px default stamp, which leaves out 11 % of the wing's flux
    assert m.psf.size == k.shape[0] > target.size and m.psf.fwhm == target.fwhm
    carried = flux * m.psf.compute_kernel_image()
    assert np.abs(got - carried).max() / carried.max() < 2e-2
    stamp23 = flux * target.compute_kernel_image()
    assert stamp23.max() / got.max() > 1.10  # what the old, unresized PSF claimed
    # white-noise variance propagates as sum(K^2)
    np.testing.assert_allclose(m.variance[80, 80], (k * k).sum(), rtol=1e-6)
    rng = np.random.default_rng(4)
    noise = Exposure(rng.standard_normal((512, 512)), np.ones((512, 512)), psf=GaussianPsf(1.5, size=31))
    mn = match_to_psf(noise, target)
    fin = np.isfinite(mn.image)
    assert np.var(mn.image[fin]) == pytest.approx((k * k).sum(), rel=0.02 * 5)  # correlated noise: ~10 % stat error on 512^2
    assert mn.get_plane("NO_DATA")[0].all() and np.isinf(mn.variance[0]).all()


@pytest.mark.parametrize("flag_nans", [True, False])
def test_psf_matching_incomplete_border_shortcut(flag_nans, monkeypatch):
    """The incomplete border taken from the grown NO_DATA bit plus the edge frame (used when
    every unusable pixel carries NO_DATA) equals the general rule: the OR-grown unusable
    pixels with the outside counted as unusable.  Also checks against scipy's convolution."""
    import scipy.signal

    import toolkit.psf_matching as pm

    rng = np.random.default_rng(8)
    shape = (90, 120)
    img = rng.normal(100, 10, shape)
    var = np.full(shape, 100.0)
    mask = np.zeros(shape, np.int32)
    e0 = Exposure(img, var, mask, psf=GaussianPsf(1.5, size=21))
    nd = np.int32(e0.mask_planes.bitmask(["NO_DATA"]))
    e0.image[20:24, 30:33] = np.nan
    e0.variance[60, 5] = np.inf
    if flag_nans:
        e0.mask[20:24, 30:33] |= nd
        e0.mask[60, 5] |= nd
    e0.mask[70:72, 90:100] |= nd  # flagged, finite values
    fast = match_to_psf(e0, GaussianPsf(3.0), mask_growth=4)
    real = pm._unusable
    monkeypatch.setattr(pm, "_unusable", lambda *a: (lambda r: (r[0], r[1], max(r[2], 1)))(real(*a)))
    general = match_to_psf(e0, GaussianPsf(3.0), mask_growth=4)
    np.testing.assert_array_equal(fast.mask, general.mask)
    np.testing.assert_array_equal(fast.image, general.image)
    np.testing.assert_array_equal(fast.variance, general.variance)
    bad = ~np.isfinite(e0.image) | ~np.isfinite(e0.variance) | ((e0.mask & nd) != 0)
    k = pm.matching_kernel(e0.psf, GaussianPsf(3.0))
    want = scipy.signal.fftconvolve(np.where(bad, 0, e0.image), k, mode="same")
    ok = np.isfinite(fast.image)
    assert ok.sum() > 0.5 * ok.size
    np.testing.assert_allclose(fast.image[ok], want[ok], rtol=1e-10, atol=1e-9 * np.abs(want).max())
    assert not ok[:4].any() and not ok[:, -4:].any() and not ok[20:24, 30:33].any()


def test_psf_matching_array_edge_mirrored():
    """array_edge="EDGE": the planes go on beyond the array as their mirror image, so a flat
    sky stays flat up to the edge (zero padding loses the kernel's wings there), the frame is
    flagged EDGE instead of NO_DATA, and missing pixels inside stay NO_DATA; the values equal
    a convolution of the mirrored planes by scipy."""
    import scipy.signal

    from toolkit.psf_matching import matching_kernel

    shape = (70, 90)
    sky = 5.0
    e = Exposure(np.full(shape, sky, np.float32), np.full(shape, 2.0, np.float32), psf=GaussianPsf(1.5))
    plain = match_to_psf(e, array_edge="NO_DATA")
    edge = match_to_psf(e, array_edge="EDGE")
    h = 10
    frame = np.ones(shape, bool)
    frame[h:-h, h:-h] = False
    assert np.isnan(plain.image[frame]).all()
    np.testing.assert_allclose(edge.image, sky, rtol=1e-5)  # float32 transforms
    k = matching_kernel(e.psf, DoubleGaussianPsf(7.7))
    np.testing.assert_allclose(edge.variance, 2.0 * (k * k).sum(), rtol=1e-4)
    assert np.array_equal(edge.get_plane("EDGE"), frame)
    assert not edge.get_plane("NO_DATA").any()
    # zero padding under-weights the sky wherever the (untruncated) kernel reaches the edge
    inner = plain.image[h:-h, h:-h]
    assert inner.min() < 0.99 * sky
    # noise, a star at the edge and a missing block inside, in float64 against scipy
    rng = np.random.default_rng(3)
    img = rng.normal(0, 1, shape)
    img += render_points(shape, [2.0], [30.0], [3e3], 1.5)
    img[40:44, 50:53] = np.nan
    e = Exposure(img, np.ones(shape), psf=GaussianPsf(1.5))
    m = match_to_psf(e, GaussianPsf(3.0), array_edge="EDGE", mask_growth=4)
    k = matching_kernel(e.psf, GaussianPsf(3.0))
    r = k.shape[0] // 2
    bad = ~np.isfinite(img)
    want = scipy.signal.fftconvolve(np.pad(np.where(bad, 0, img), r, mode="symmetric"), k, mode="same")[r:-r, r:-r]
    missing = m.get_plane("NO_DATA")
    assert missing[40:44, 50:53].all() and not missing[:4].any() and missing.sum() == (4 + 8) * (3 + 8)
    np.testing.assert_allclose(m.image[~missing], want[~missing], rtol=1e-9, atol=1e-9 * np.abs(want).max())
    assert np.isnan(m.image[missing]).all()
    assert e.get_plane("EDGE").sum() == 0 and np.isnan(e.image).sum() == 12  # input untouched
    with pytest.raises(InputError, match="array_edge"):
        match_to_psf(e, array_edge="MIRROR")


def _direct_convolution(plane, kernel_at, x, y, mirror=0):
    """sum_u K_(x, y)(u) plane(x - u) at one pixel: a spatially varying convolution by brute
    force (zeros beyond the plane, or its mirror image over ``mirror`` pixels)."""
    k = kernel_at(x, y)
    h = k.shape[0] // 2
    p = np.pad(plane, h, mode="symmetric") if mirror else np.pad(plane, h)
    return float((k[::-1, ::-1] * p[y : y + 2 * h + 1, x : x + 2 * h + 1]).sum())


def test_psf_matching_follows_a_spatially_varying_psf():
    """A PSF that varies across the warp gets LSST ModelPsfMatchTask's spatially varying kernel
    (Chebyshev order 2 fitted to kernels on the cells' centres): each matched star has the
    target's width wherever it is, where the centre's kernel alone leaves stars at the sides
    about 3 % off; each pixel's value is the convolution with the model's kernel at that pixel
    (its variance with the model of the squared kernel), every local kernel has unit sum, and
    a constant PSF keeps its single kernel (bit for bit)."""
    from toolkit import VaryingGaussianPsf
    from toolkit.psf import determinant_radius
    from toolkit.psf_matching import spatial_matching_kernel

    n = 512
    s0 = 4.0 / 2.3548
    # FWHM 3.5 px at the left edge to 4.5 at the right, and 4 % across in y
    psf = VaryingGaussianPsf(s0, dsigma_dx=(1.0 / 2.3548) / n, dsigma_dy=(0.16 / 2.3548) / n, ref=(n / 2, n / 2))
    xs, ys = np.meshgrid(np.arange(56, n, 80) + 0.3, np.arange(56, n, 80) + 0.6)
    xs, ys = xs.ravel(), ys.ravel()
    sig = np.array([psf.sigma_at((x, y)) for x, y in zip(xs, ys)])
    img = render_points((n, n), xs, ys, np.full(xs.size, 1e5), sig, sampled=True)
    rng = np.random.default_rng(5)
    var = rng.uniform(0.5, 2.0, (n, n))  # a varying variance plane checks the squared kernels
    e = Exposure(img, var, psf=psf)
    target = DoubleGaussianPsf(7.7)
    kw = dict(cell_size=64)
    m = match_to_psf(e, target, **kw)
    flat = match_to_psf(e, target, spatial_order=0)
    assert "spatial order 2 fitted to 64 cells" in m.metadata["PSFMATCH"]
    r_t = determinant_radius(m.psf.compute_kernel_image())
    h = 36

    def widths(matched):
        out = []
        for x, y in zip(xs, ys):
            st = matched.image[int(round(y)) - h : int(round(y)) + h + 1, int(round(x)) - h : int(round(x)) + h + 1]
            if st.shape == (2 * h + 1, 2 * h + 1) and np.isfinite(st).all():
                out.append((x, determinant_radius(st) / r_t - 1, st.sum() / 1e5 - 1))
        return np.array(out)

    w, w0 = widths(m), widths(flat)
    assert np.abs(w[:, 1]).max() < 2e-3  # the 73-px stamps hold all but ~1e-4 of the radius
    assert np.abs(w[:, 2]).max() < 1e-3  # flux kept: every local kernel sums to 1
    sides = np.abs(w0[:, 0] - n / 2) > 150
    assert np.abs(w0[sides, 1]).min() > 0.015  # the centre's kernel alone: stars at the sides off
    model = spatial_matching_kernel(psf, target, e.bbox, kernel_size=73, **kw)
    assert len(model.terms) == 6 and len(model.nodes) == 64
    for x, y in ((5, 7), (100, 400), (256, 256), (470, 30), (506, 505)):
        kxy = model.kernel_at(x, y)
        assert kxy.sum() == pytest.approx(1.0, abs=1e-12)
        sq = model.square_at(x, y)
        # both are order-2 fits of kernels that are not exactly quadratic in x and y: they
        # agree to 0.2 % of the peak at the corners, beyond the outermost cells' centres
        assert np.abs(sq - kxy**2).max() < 5e-3 * (kxy**2).max()
        if np.isfinite(m.image[y, x]):
            assert m.image[y, x] == pytest.approx(_direct_convolution(img, model.kernel_at, x, y), rel=1e-9, abs=1e-9 * img.max())
            assert m.variance[y, x] == pytest.approx(_direct_convolution(var, model.square_at, x, y), rel=1e-9)
    # a mirrored array edge convolves the mirrored planes with the same local kernels
    me = match_to_psf(e, target, array_edge="EDGE", **kw)
    for x, y in ((0, 0), (3, 300), (511, 200)):
        assert me.image[y, x] == pytest.approx(_direct_convolution(img, model.kernel_at, x, y, mirror=1), rel=1e-9, abs=1e-9 * img.max())
        assert me.variance[y, x] == pytest.approx(_direct_convolution(var, model.square_at, x, y, mirror=1), rel=1e-9)
    # a constant PSF: one kernel, whatever the order
    c = Exposure(img, var, psf=GaussianPsf(s0))
    assert spatial_matching_kernel(c.psf, target, c.bbox, **kw) is None
    # a model that could vary but does not is found constant by its kernel images
    assert spatial_matching_kernel(VaryingGaussianPsf(s0), target, c.bbox, **kw) is None
    a, b = match_to_psf(c, target, **kw), match_to_psf(c, target, spatial_order=0)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.variance, b.variance)
    with pytest.raises(InputError, match="spatial kernel order"):
        match_to_psf(e, target, spatial_order=-1)


def test_psf_matching_warns_on_deconvolution():
    e = Exposure(np.zeros((64, 64)), psf=GaussianPsf(5.0))
    with pytest.warns(PsfMatchingWarning, match="narrower"):
        match_to_psf(e, GaussianPsf(2.0))
    # a PSF narrower than the target at the centre but wider at a corner: named there
    from toolkit import VaryingGaussianPsf

    v = Exposure(np.zeros((300, 300)), psf=VaryingGaussianPsf(2.8, dsigma_dx=0.002, ref=(149.5, 149.5)))
    with pytest.warns(PsfMatchingWarning, match=r"narrower than the input PSF at \(299, 0\)"):
        match_to_psf(v, GaussianPsf(3.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        match_to_psf(v, GaussianPsf(3.5))


@pytest.mark.parametrize("polygons", [False, True])
def test_compiled_alt_mask_gather_equals_apply_alt_masks(polygons):
    """The stack gathers each chunk's masks with the alternative masks applied in compiled
    passes; by slice, by flat pixel index and as ``apply_alt_masks`` they must equal LSST's
    applyAltMaskPlanes stated in numpy here (clear the bad bits inside NO_DATA, then set)."""
    from toolkit.coadd import _alt_idx, _alt_operations, _alt_slice, _gather_idx, _gather_slice, apply_alt_masks
    from toolkit.masks import MaskPlanes

    rng = np.random.default_rng(4)
    planes = MaskPlanes()
    for name in ("CLIPPED", "NO_DATA", "EDGE"):
        planes.add(name)
    mask = rng.integers(0, 2**12, (37, 53)).astype(np.int32)
    alt = {k: rng.random(mask.shape) < 0.3 for k in ("NO_DATA", "CLIPPED", "EDGE")}
    bad = ["NO_DATA", "BAD", "SAT"]
    want = mask.copy()
    if polygons:
        np.bitwise_and(want, ~np.int32(planes.bitmask(bad, strict=False)), out=want, where=alt["NO_DATA"])
    for name, sel in alt.items():
        np.bitwise_or(want, np.int32(planes.bitmask([name])), out=want, where=sel)
    np.testing.assert_array_equal(apply_alt_masks(mask, planes.copy(), alt, bad, polygons), want)
    ops = _alt_operations(alt, planes, bad, polygons, mask.shape)
    got = np.empty(mask.size, np.int32)
    _gather_slice(mask, 0, 37, 0, 53, got)
    for sel, bits, keep in ops:
        _alt_slice(got, sel, 0, 37, 0, 53, bits, keep)
    np.testing.assert_array_equal(got.reshape(mask.shape), want)
    idx = np.sort(rng.choice(mask.size, 400, replace=False)).astype(np.intp)
    got_i = np.empty(idx.size, np.int32)
    _gather_idx(mask, idx, got_i)
    for sel, bits, keep in ops:
        _alt_idx(got_i, sel, idx, bits, keep)
    np.testing.assert_array_equal(got_i, want.reshape(-1)[idx])
    if polygons:  # the clearing happened: some NO_DATA pixel lost a BAD bit it had
        b = planes.bitmask(["BAD"])
        assert ((mask & b) != 0)[alt["NO_DATA"]].any() and not ((want & b) != 0)[alt["NO_DATA"]].any()


def test_coadd_psf_follows_each_warps_coverage():
    """A warp covering part of the patch enters the coadd's PSF only there (LSST's CoaddPsf
    takes the inputs whose CCDs contain the point), with the coadd weights renormalised."""
    shape = (40, 50)
    sig = (1.2, 2.0, 2.8)
    var = (1.0, 2.0, 4.0)
    warps = []
    for i, (s, v) in enumerate(zip(sig, var)):
        w = Exposure(np.zeros(shape), np.full(shape, v), psf=GaussianPsf(s, size=25), xy0=(7, 3), metadata={"BUNIT": "nJy"})
        if i == 1:  # the second warp has data only in the bottom half
            w.mask[20:] |= w.mask_planes.bitmask(["NO_DATA"])
            w.image[20:] = np.nan
        warps.append(w)
    r = assemble_coadd(warps, AssembleCoaddConfig(doInterp=False))
    psf = r.coadd.psf
    weights = 1 / np.array(var)
    k = [GaussianPsf(s, size=25).compute_kernel_image() for s in sig]
    both = sum(wi * ki for wi, ki in zip(weights, k)) / weights.sum()
    top = (weights[0] * k[0] + weights[2] * k[2]) / (weights[0] + weights[2])
    np.testing.assert_allclose(psf.compute_kernel_image((7 + 25, 3 + 5)), both, rtol=1e-12)
    np.testing.assert_allclose(psf.compute_kernel_image((7 + 25, 3 + 30)), top, rtol=1e-12)
    assert not np.allclose(both, top)  # the two rules are told apart
    assert r.n_image[5, 25] == 3 and r.n_image[30, 25] == 2
    # a warp with its own plane dictionary (NO_DATA on another bit, the coadd's bit free) is
    # read with its own bit
    from toolkit.masks import MaskPlanes

    own = MaskPlanes(["EDGE", "SAT", "BAD", "NO_DATA"])
    m = np.zeros(shape, np.int32)
    m[20:] = own.bitmask(["NO_DATA"])
    warps[1] = Exposure(warps[1].image, warps[1].variance, m, own, psf=warps[1].psf, xy0=(7, 3), metadata={"BUNIT": "nJy"})
    assert own["NO_DATA"] != warps[0].mask_planes["NO_DATA"]
    psf2 = assemble_coadd(warps, AssembleCoaddConfig(doInterp=False)).coadd.psf
    np.testing.assert_allclose(psf2.compute_kernel_image((7 + 25, 3 + 30)), top, rtol=1e-12)
    np.testing.assert_allclose(psf2.compute_kernel_image((7 + 25, 3 + 5)), both, rtol=1e-12)
