"""ZOGY: LSST's test_zogy ported (reference §5.2) plus statistical and recovery checks."""

import numpy as np
import pytest
from astropy.stats import sigma_clipped_stats

from toolkit import Box, ConfigError, Exposure, GaussianPsf, ImagePsf, InputError
from toolkit.config import ZogyConfig
from toolkit.sim import render_points, simulate_pair
from toolkit.zogy import generate_grid, split_border, transient_catalog, zogy


def test_fft_convention():
    assert np.real(np.fft.fft2(np.arange(16).reshape(4, 4)))[0, 0] == pytest.approx(120.0, abs=np.finfo(float).eps)


def test_split_border_covers_once():
    bbox = Box(5, 10, 20, 30)
    inner = bbox.dilated(-3, -4)
    img = np.zeros(bbox.shape, int)
    img[inner.slices((5, 10))] = 1
    for b in split_border(inner, bbox):
        img[b.slices((5, 10))] += 1
    assert (img == 1).all()


def test_generate_grid_power_of_two():
    bbox = Box(5, 10, 200, 300)
    cells = generate_grid(bbox, (15, 15), (20, 30), power_of_two=True)
    assert len(cells) == 100
    cover = np.zeros(bbox.shape, int)
    for inner, outer in cells:
        assert outer.width & (outer.width - 1) == 0 and outer.height & (outer.height - 1) == 0
        assert (outer.width, outer.height) == (64, 64)
        cover[inner.slices((5, 10))] += 1
    assert (cover == 1).all()


def test_whole_image_grid_one_cell():
    bbox = Box(5, 10, 200, 300)
    cells = generate_grid(bbox, (15, 15), (200, 300))
    assert len(cells) == 1 and cells[0][0] == bbox


def lsst_fake_images(svar, tvar, n_sources=0, seed=1, var_source_change=0.1, size=256):
    rng = np.random.default_rng(seed)
    im1 = rng.normal(0, np.sqrt(svar), (size, size))
    im2 = rng.normal(0, np.sqrt(tvar), (size, size))
    if n_sources:
        fl = rng.uniform(50, 30000, n_sources)
        xs = rng.uniform(16, size - 5, n_sources)
        ys = rng.uniform(16, size - 5, n_sources)
        c = np.argmin(np.hypot(xs - size / 2, ys - size / 2))
        f1 = fl.copy()
        f1[c] *= 1 + var_source_change
        im1 += render_points((size, size), xs, ys, f1, 3.3, sampled=True)
        im2 += render_points((size, size), xs, ys, fl, 2.2, sampled=True)
    sci = Exposure(im1, np.full((size, size), float(svar)), psf=GaussianPsf(3.3, size=25))
    ref = Exposure(im2, np.full((size, size), float(tvar)), psf=GaussianPsf(2.2, size=25))
    return sci, ref


def test_lsst_sourceless_pair():
    sci, ref = lsst_fake_images(100, 100)
    r = zogy(sci, ref, ZogyConfig(scaleByCalibration=False))
    core = (slice(25, -25), slice(25, -25))
    _, _, std = sigma_clipped_stats(r.diff.image[core], sigma=3, maxiters=3)
    assert std**2 == pytest.approx(200, rel=0.10)
    mean_var, _, _ = sigma_clipped_stats(r.diff.variance[core], sigma=3, maxiters=3)
    assert mean_var == pytest.approx(200, rel=0.05)
    assert r.scorr.max() < 5


def test_lsst_sources_detect_brightened_centre():
    sci, ref = lsst_fake_images(10, 10, n_sources=10)
    r = zogy(sci, ref, ZogyConfig(scaleByCalibration=False))
    assert r.scorr.max() > 5


@pytest.fixture(scope="module")
def noise_pair():
    return simulate_pair(size=1024, seed=11, n_transients=0, star_density=0, source_noise=False)


def test_scorr_is_unit_gaussian_on_noise(noise_pair):
    r = zogy(noise_pair.science, noise_pair.reference)
    sc = r.scorr
    # Scorr pixels are correlated over ~P_S's area, so the std has more scatter than 1/sqrt(2n);
    # 0.02 is the tolerance and ~5x the expected scatter for 1024^2
    assert np.std(sc) == pytest.approx(1.0, abs=0.02)
    # tail: expected count of |Scorr| >= 5 for a unit Gaussian is ~0.6 over 1e6 pixels
    n5 = (np.abs(sc) >= 5).sum()
    assert n5 <= 30  # a correlated blob of a few pixels at most; an edge excess would give hundreds
    edge = np.zeros(sc.shape, bool)
    edge[:32] = edge[-32:] = True
    edge[:, :32] = edge[:, -32:] = True
    assert np.std(sc[edge]) == pytest.approx(1.0, abs=0.04)


def test_transients_recovered_and_snr_predicted():
    p = simulate_pair(size=512, seed=2, source_noise=False)
    r = zogy(p.science, p.reference)
    tr = p.truth["transients"]
    peaks = np.array([r.scorr[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2].max() for x, y in zip(tr["x"], tr["y"])])
    assert np.median(peaks / tr["snr_pred"]) == pytest.approx(1.0, abs=0.05)
    cat = r.catalog
    hit = np.array([np.min(np.hypot(cat["x"] - x, cat["y"] - y)) <= 2 for x, y in zip(tr["x"], tr["y"])])
    strong = tr["snr_pred"] >= 7
    assert hit[strong].mean() >= 0.95
    # no false entries from static stars
    st = p.truth["stars"]
    for row in cat:
        if np.min(np.hypot(tr["x"] - row["x"], tr["y"] - row["y"])) > 3:
            assert np.min(np.hypot(st["x"] - row["x"], st["y"] - row["y"])) > 3 or abs(row["scorr"]) < 5.5


def test_grid_matches_whole_image_in_interiors():
    p = simulate_pair(size=512, seed=4, source_noise=False)
    a = zogy(p.science, p.reference)
    b = zogy(p.science, p.reference, ZogyConfig(doSpatialGrid=True, gridInnerSize=4))
    assert len(b.cells) > 1
    diff = np.abs(a.scorr - b.scorr)
    # differences come from the padding noise near cell borders only
    inner = np.zeros(a.scorr.shape, bool)
    for c in b.cells:
        bx = c["inner"].dilated(-30)
        if bx.width > 0 and bx.height > 0:
            inner[bx.slices()] = True
    assert np.median(diff[inner]) < 0.05


def test_grid_better_for_varying_psf():
    p = simulate_pair(size=512, seed=6, science_fwhm=3.0, science_fwhm_gradient=(0.006, 0.0), n_transients=0, source_noise=False, star_density=2e-3)
    a = zogy(p.science, p.reference)
    b = zogy(p.science, p.reference, ZogyConfig(doSpatialGrid=True, gridInnerSize=3))
    st = p.truth["stars"]
    bright = st[st["flux"] > 2e4]
    def resid(r):
        vals = []
        for x, y in zip(bright["x"], bright["y"]):
            iy, ix = int(round(y)), int(round(x))
            vals.append(np.sqrt(np.mean(r.scorr[iy - 5:iy + 6, ix - 5:ix + 6] ** 2)))
        return np.mean(vals)
    assert resid(b) < resid(a)
    # the difference image's PSF follows the cells: at a position it is that cell's P_D (and
    # the score's its P_S), so it broadens with the science PSF across the image
    left, right = b.cells[0], b.cells[-1]
    for res_psf, key in ((b.diff.psf, "P_D"), (b.score.psf, "P_S")):
        for cell in (left, right):
            at = res_psf.compute_kernel_image(cell["inner"].center)
            np.testing.assert_allclose(at, cell[key] / cell[key].sum(), atol=1e-12)
    widths = [b.diff.psf.determinant_radius(c["inner"].center) for c in (left, right)]
    assert widths[1] > widths[0] + 0.5  # FWHM grows by 0.006 px per px: ~3 px across the image


def test_diff_mask_is_the_or_of_both_masks():
    """The difference's mask is the OR of both inputs' masks (LSST), the template's planes
    translated to the science's dictionary where the two number them differently (a plane
    only the template has is added); the score carries its own copy of it."""
    from toolkit import Exposure
    from toolkit.masks import MaskPlanes
    from toolkit.sim import simulate_pair

    p = simulate_pair(size=96, seed=5)
    rng = np.random.default_rng(1)
    sci_planes = p.science.mask_planes
    m_sci = np.where(rng.random(p.science.shape) < 0.05, sci_planes.bitmask(["CR"]), 0).astype(np.int32)
    # the template numbers SAT and CR the other way round and has a plane of its own
    t_planes = MaskPlanes({"BAD": 0, "CR": 1, "SAT": 3, "GHOST": 9})
    sat_t, cr_t, ghost_t = rng.random((3,) + p.science.shape) < 0.05
    m_t = (sat_t << 3 | cr_t << 1 | ghost_t << 9).astype(np.int32)
    sci = Exposure(p.science.image, p.science.variance, m_sci, sci_planes, psf=p.science.psf)
    tmpl = Exposure(p.reference.image, p.reference.variance, m_t, t_planes, psf=p.reference.psf)
    r = zogy(sci, tmpl)
    planes = r.diff.mask_planes
    want = m_sci | np.where(sat_t, planes.bitmask(["SAT"]), 0) | np.where(cr_t, planes.bitmask(["CR"]), 0) | np.where(ghost_t, planes.bitmask(["GHOST"]), 0)
    np.testing.assert_array_equal(r.diff.mask, want)
    np.testing.assert_array_equal(r.score.mask, want)
    assert not np.shares_memory(r.score.mask, r.diff.mask) and r.score.mask_planes == planes
    assert sci_planes == p.science.mask_planes and "GHOST" not in sci.mask_planes  # inputs untouched


def test_bad_inputs_named():
    sci, ref = lsst_fake_images(10, 10, size=64)
    with pytest.raises(InputError, match="shape"):
        zogy(sci, Exposure(np.zeros((32, 32)), psf=GaussianPsf(2)))
    off = np.zeros((25, 25)); off[12, 14] = 1
    with pytest.raises(InputError, match="centroid") as err:
        zogy(sci, Exposure(ref.image, ref.variance, psf=ImagePsf(off)))
    assert "even side" not in str(err.value)
    # a symmetric 24x24 stamp is centred between pixels: half a pixel off in LSST's convention,
    # and the error says why
    y, x = np.mgrid[:24, :24] - 11.5
    even = np.exp(-(x**2 + y**2) / (2 * 2.0**2))
    with pytest.raises(InputError, match=r"centroid.*template \(24x24\) PSF stamp has an even side"):
        zogy(sci, Exposure(ref.image, ref.variance, psf=ImagePsf(even)))
    with pytest.raises(InputError, match="NaN"):
        zogy(sci, Exposure(ref.image, ref.variance, psf=ImagePsf(np.full((5, 5), np.nan))))
    with pytest.raises(InputError, match="variance"):
        zogy(sci, Exposure(ref.image, np.zeros_like(ref.variance), psf=ref.psf))
    with pytest.raises(InputError, match="entirely NaN"):
        zogy(Exposure(np.full((64, 64), np.nan), sci.variance, psf=sci.psf), ref)
    with pytest.raises(InputError, match=r"science image is empty \(shape \(0, 5\)\)"):
        zogy(Exposure(np.zeros((0, 5)), psf=sci.psf), Exposure(np.zeros((0, 5)), psf=ref.psf))
    # every pixel masked by ignoreMaskPlanes: no noise level to pad and weight with (LSST's
    # NaN mean would have made every output NaN), in whole-image and grid mode alike
    bad = np.full(ref.shape, ref.mask_planes.bitmask(["BAD"]), np.int32)
    masked = Exposure(ref.image, ref.variance, bad, psf=ref.psf)
    for cfg in (None, ZogyConfig(doSpatialGrid=True, gridInnerSize=1)):
        with pytest.raises(InputError, match="template image's noise level.*BAD"):
            zogy(sci, masked, cfg)
    with pytest.raises(ConfigError, match="ignoreMaskPlanes: unknown mask plane 'CRR'"):
        zogy(sci, ref, ZogyConfig(ignoreMaskPlanes=["BAD", "CRR"]))


def test_inputs_not_modified():
    sci, ref = lsst_fake_images(10, 10, n_sources=3, size=64)
    before = sci.image.copy()
    sci.image[3, 3] = np.nan
    before[3, 3] = np.nan
    zogy(sci, ref, ZogyConfig(scaleByCalibration=False, correctBackground=True))
    np.testing.assert_array_equal(sci.image, before)


def _lsst_calculate_fourier_diffim(N1, N2, V1, V2, k1, k2, F1, F2, var1, var2):
    """Reference: LSST's calculateFourierDiffim written out with complex128 numpy FFTs on the
    full padded cell (reference §4.4), to check the engine's small-grid kernel algebra and
    pruned kernel transforms against."""
    from toolkit.zogy import pad_center_origin

    shape = N1.shape
    fft, ifft = np.fft.fft2, lambda a: np.fft.ifft2(a).real
    P1, P2 = fft(pad_center_origin(k1, shape)), fft(pad_center_origin(k2, shape))
    n1, n2, v1, v2 = fft(N1), fft(N2), fft(V1), fft(V2)
    a1, a2 = var1 * F2**2, var2 * F1**2
    fd = np.sqrt(a1 + a2)
    sd = a1 * np.abs(P2) ** 2 + a2 * np.abs(P1) ** 2
    den = np.sqrt(sd)
    c1, c2 = F2 * P2 / den, F1 * P1 / den
    s1 = F1 * F2**2 * P1.conj() * np.abs(P2) ** 2 / sd
    s2 = F2 * F1**2 * P2.conj() * np.abs(P1) ** 2 / sd
    sq = lambda c: fft(ifft(c) ** 2)
    return dict(D=ifft(c1 * n1 - c2 * n2), VD=ifft(sq(c1) * v1 + sq(c2) * v2),
                S=ifft(s1 * n1 - s2 * n2), VS=ifft(sq(s1) * v1 + sq(s2) * v2), F_D=F1 * F2 / fd,
                P_D=ifft(fd * P1 * P2 / den), P_S=ifft(fd**2 * np.abs(P1) ** 2 * np.abs(P2) ** 2 / sd))


@pytest.mark.parametrize("shape", [(180, 200), (540, 600)])
@pytest.mark.parametrize("varying", ["both", "none", "science"])
@pytest.mark.parametrize("stamps", ["truncated", "well-sampled"])
def test_fast_cell_equals_lsst_formulas(varying, stamps, shape, monkeypatch):
    """Truncated 25-px stamps of sigma 3.3/2.2 Gaussians (LSST's test) whiten into long-tailed
    kernels that take the full-cell squares; well-sampled sigma 1.6/1.1 stamps give compact
    kernels that take the boxed squares.  Both must equal LSST's formulas.  (Well-sampled wide
    Gaussians are not usable here: where both spectra sink to rounding level, LSST's c1 and c2
    are ratios of rounding noise and no two FFT implementations agree on D there.)  The
    540x600 cell is large enough for P_D, P_S and the kernels to square to come from every
    second frequency (a 270x300 grid); the 180x200 one takes the full grid."""
    import toolkit.zogy as zmod
    from toolkit.zogy import _cell_kernels, _crop_normalize, _fourier_cell

    fused = []
    real_fused = zmod._fourier_fused
    monkeypatch.setattr(zmod, "_fourier_fused", lambda *a, **k: fused.append(1) or real_fused(*a, **k))
    rng = np.random.default_rng(5)
    s1, s2, size = (3.3, 2.2, 25) if stamps == "truncated" else (1.6, 1.1, 21)
    k1 = GaussianPsf(s1, size=size).compute_kernel_image()
    g2 = GaussianPsf(s2, size=size - 4).compute_kernel_image()
    k2 = ImagePsf(np.roll(g2, 1, axis=1) * 0.3 + g2 * 0.7).compute_kernel_image()
    N1, N2 = rng.normal(0, 10, shape), rng.normal(0, 7, shape)
    # variance planes: both varying, both constant (padding only or a flat sky), or one of each
    V1 = 100 + 50 * rng.random(shape) if varying != "none" else np.full(shape, 100.0)
    V2 = 49 + 20 * rng.random(shape) if varying == "both" else np.full(shape, 49.0)
    F1, F2, var1, var2 = 1.3, 0.8, 100.0, 49.0
    ref = _lsst_calculate_fourier_diffim(N1, N2, V1, V2, k1, k2, F1, F2, var1, var2)
    ker = _cell_kernels(k1, k2, F1, F2, var1, var2, shape, True, np.float64)
    out = _fourier_cell(N1, N2, V1, V2, ker, True, False, (0, 0))
    assert ker.F_D == pytest.approx(ref["F_D"], rel=1e-12)
    # the truncated stamps' P_D has a tail (1e-13 of its energy) that a 270-px period would
    # alias, so it falls back to the full grid; the well-sampled one uses the coarse grid
    assert ker.coarse == (2 if shape == (540, 600) and stamps == "well-sampled" else 1)
    for key, mine in (("P_D", ker.pd), ("P_S", ker.ps)):
        want = _crop_normalize(ref[key], k1.shape)
        np.testing.assert_allclose(_crop_normalize(mine, k1.shape), want, atol=1e-10 * np.abs(want).max(), rtol=0, err_msg=key)
    if varying != "none":
        assert (len(ker.boxed) == 4) == (stamps == "well-sampled")
    # the fused in-place pass takes the cells with both planes varying, a coarse grid and
    # compact kernels; the rest go the unfused way
    assert bool(fused) == (varying == "both" and ker.coarse > 1)
    for key in ("D", "VD", "S", "VS"):
        # c2 = F1 P1 / den is a ratio of two spectra at their rounding level near Nyquist, so
        # any two FFT implementations differ by ~1e-8 of D's scale there; nothing more is allowed
        scale = np.abs(ref[key]).max()
        np.testing.assert_allclose(out[key], ref[key], atol=1e-7 * scale, rtol=0, err_msg=key)


def test_float32_matches_float64_and_cells_fft_friendly():
    p = simulate_pair(size=256, seed=3, source_noise=False)
    cfg = ZogyConfig()
    r32 = zogy(p.science, p.reference, cfg)
    assert p.science.dtype == np.float32 and r32.diff.image.dtype == np.float32
    as64 = [Exposure(e.image.astype(np.float64), e.variance.astype(np.float64), e.mask, e.mask_planes, psf=e.psf, photo_calib=e.photo_calib) for e in (p.science, p.reference)]
    r64 = zogy(*as64, cfg)
    # float32 transforms: errors ~1e-6 of the image scale, far below the noise (Scorr is in
    # sigma).  Near the edges the padding noise differs (float32 and float64 draws differ).
    inner = (slice(40, -40), slice(40, -40))
    np.testing.assert_allclose(r32.scorr[inner], r64.scorr[inner], atol=2e-3, rtol=0)
    np.testing.assert_allclose(r32.diff.variance[inner], r64.diff.variance[inner], rtol=1e-4)
    outer = r32.cells[0]["outer"]
    assert outer.width % 2 == 0 and outer.width < 512  # 256 + 2 x border -> FFT-friendly, not 512
    lsst = zogy(p.science, p.reference, ZogyConfig(powerOfTwoCells=True))
    assert lsst.cells[0]["outer"].width == 512
    # only the padding noise differs: interiors agree
    assert np.median(np.abs(lsst.scorr[inner] - r32.scorr[inner])) < 0.02


@pytest.mark.parametrize("score", [True, False])
@pytest.mark.parametrize("shape", [(540, 600), (774, 777)])  # even; odd width (coarse step 3)
def test_fused_pass_equals_unfused(shape, score, monkeypatch):
    """The fused in-place Fourier pass gives D and S to the bit of the unfused path (same
    kernels, same rounding, same products) and V_D, V_S to float32 round-off (the squared
    kernels come from the float64 coarse spectra there, from the stored float32 ones here)."""
    import toolkit.zogy as zmod

    rng = np.random.default_rng(11)
    k1 = GaussianPsf(1.6, size=21).compute_kernel_image()
    k2 = GaussianPsf(1.2, size=21).compute_kernel_image()
    planes = [rng.normal(0, 10, shape), rng.normal(0, 7, shape), 100 + 50 * rng.random(shape), 49 + 20 * rng.random(shape)]
    planes = [a.astype(np.float32) for a in planes]
    ker = zmod._cell_kernels(k1, k2, 1.3, 0.8, 100.0, 49.0, shape, score, np.float32)
    assert ker.coarse > 1 and not ker.fused_squares()[2]
    inputs = [a.copy() for a in planes]
    fused = zmod._fourier_cell(*inputs, ker, score, False, (0, 0), scale_d=True)
    assert all(np.array_equal(a, b) for a, b in zip(inputs, planes))  # copied: the plain arrays are not wide
    monkeypatch.setattr(zmod._CellKernels, "fused_squares", lambda self: None)
    plain = zmod._fourier_cell(*[a.copy() for a in planes], ker, score, False, (0, 0), scale_d=True)
    for key in ("D", "S") if score else ("D",):
        assert fused[key].dtype == np.float32
        np.testing.assert_array_equal(fused[key], plain[key], err_msg=key)
    for key in ("VD", "VS") if score else ("VD",):
        np.testing.assert_allclose(fused[key], plain[key], rtol=2e-6, err_msg=key)
    assert set(fused) == set(plain)


@pytest.mark.parametrize("fused", [True, False])
def test_fourier_cell_rows_and_finish(fused, monkeypatch):
    """``rows`` and ``finish``: the rows read come out as without them, and ``finish`` sees
    every one of those rows once, with S and V_S as they end up (the fused pass hands them over
    block by block, the other path at the end)."""
    import toolkit.zogy as zmod

    rng = np.random.default_rng(13)
    shape = (540, 600)
    k1 = GaussianPsf(1.6, size=21).compute_kernel_image()
    k2 = GaussianPsf(1.2, size=21).compute_kernel_image()
    planes = [rng.normal(0, 10, shape), rng.normal(0, 7, shape), 100 + 50 * rng.random(shape), 49 + 20 * rng.random(shape)]
    planes = [a.astype(np.float32) for a in planes]
    if not fused:
        monkeypatch.setattr(zmod._CellKernels, "fused_squares", lambda self: None)
    ker = zmod._cell_kernels(k1, k2, 1.3, 0.8, 100.0, 49.0, shape, True, np.float32)
    want = zmod._fourier_cell(*[a.copy() for a in planes], ker, True, False, (0, 0), scale_d=True)
    rows = slice(17, 520)
    seen = np.zeros(rows.stop - rows.start, int)
    got_s = np.full((rows.stop - rows.start, shape[1]), np.nan, np.float32)
    got_v = got_s.copy()

    def finish(sl, S, VS):
        seen[sl] += 1
        got_s[sl], got_v[sl] = S, VS

    got = zmod._fourier_cell(*[a.copy() for a in planes], ker, True, False, (0, 0), scale_d=True, rows=rows, finish=finish)
    assert (seen == 1).all()
    for key in ("D", "VD", "S", "VS"):
        np.testing.assert_array_equal(got[key][rows], want[key][rows], err_msg=key)
    np.testing.assert_array_equal(got_s, want["S"][rows])
    np.testing.assert_array_equal(got_v, want["VS"][rows])


@pytest.mark.parametrize("grid", [False, True])
def test_catalog_from_counted_rows_equals_full_pass(grid):
    """ZOGY counts each row's |Scorr| >= threshold pixels as it makes Scorr, and its catalog's
    footprint pass reads those rows alone: the catalog must equal the one made later from
    Scorr read whole (both signs, blends, a threshold at a pixel's exact value)."""
    from toolkit.detection import footprint_pixels

    p = simulate_pair(size=512, seed=8)
    cfg = ZogyConfig(doSpatialGrid=grid)
    res = zogy(p.science, p.reference, cfg)
    assert len(res.catalog) > 0
    again = transient_catalog(res, cfg.transientThreshold, cfg.transientMinPixels, cfg.transientMinProminence)
    assert len(again) == len(res.catalog)
    for col in res.catalog.colnames:
        np.testing.assert_array_equal(np.asarray(res.catalog[col]), np.asarray(again[col]), err_msg=col)
    # the rows hint: only the rows given are read, and a seed on a row left out is missed
    sc = res.scorr
    full = footprint_pixels(sc, None, 5.0, "positive")
    rows = np.unique(np.asarray(full[0]) // sc.shape[1])
    hinted = footprint_pixels(sc, None, 5.0, "positive", rows=rows)
    assert all(np.array_equal(a, b) for a, b in zip(full[:2], hinted[:2])) and full[2] == hinted[2]
    if len(rows):
        assert footprint_pixels(sc, None, 5.0, "positive", rows=rows[1:])[0].size < full[0].size


def test_single_cell_scorr_is_cleaned_s_over_root_vs():
    """A single cell's Scorr, made block by block as S and V_S come back, equals S / sqrt(V_S)
    of the score exposure (cleaned as LSST does: 0 and 1 where V_S is tiny or a pixel was NaN)."""
    pair = simulate_pair(size=512, seed=21)
    img = pair.science.image.copy()
    img[200, 133] = np.nan
    sci = Exposure(img, pair.science.variance, pair.science.mask, psf=pair.science.psf, photo_calib=pair.science.photo_calib)
    res = zogy(sci, pair.reference)
    assert len(res.cells) == 1
    np.testing.assert_array_equal(res.scorr, res.score.image / np.sqrt(res.score.variance))
    assert res.scorr[200, 133] == 0 and res.score.variance[200, 133] == 1


@pytest.mark.parametrize("score", [True, False])
def test_fused_pass_with_full_cell_squares_equals_unfused(score, monkeypatch):
    """Truncated Moffat stamps whiten into long-tailed D kernels that need LSST's full-cell
    squares, while the score kernels' squares fit a box: the fused pass then reads the former
    from their stored spectra and transforms the latter band by band.  It must give what the
    unfused path gives (same spectra, same products)."""
    import toolkit.zogy as zmod

    def moffat(fwhm, beta, e, n=15):
        yy, xx = np.mgrid[:n, :n] - n // 2
        a = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
        k = (1 + (xx**2 * (1 + e) + yy**2 * (1 - e) + 0.3 * e * xx * yy) / a**2) ** (-beta)
        return k / k.sum()

    rng = np.random.default_rng(12)
    shape = (800, 800)
    planes = [rng.normal(0, 10, shape), rng.normal(0, 7, shape), 100 + 50 * rng.random(shape), 49 + 20 * rng.random(shape)]
    planes = [a.astype(np.float32) for a in planes]
    zmod._cell_kernels_cached.cache_clear()
    ker = zmod._cell_kernels(moffat(3.0, 3.0, 0.1), moffat(3.5, 2.5, 0.0), 1.3, 0.8, 100.0, 49.0, shape, score, np.float32)
    boxed, _, full, stored, _ = ker.fused_squares()
    assert ker.coarse > 1 and full == [0, 1] and boxed == ([2, 3] if score else [])
    assert stored.shape == (2, 800, 401)
    fused = zmod._fourier_cell(*[a.copy() for a in planes], ker, score, False, (0, 0), scale_d=True)
    monkeypatch.setattr(zmod._CellKernels, "fused_squares", lambda self: None)
    plain = zmod._fourier_cell(*[a.copy() for a in planes], ker, score, False, (0, 0), scale_d=True)
    assert set(fused) == set(plain)
    for key in plain:
        np.testing.assert_array_equal(fused[key], plain[key], err_msg=key)


@pytest.mark.parametrize("stamps", ["gaussian", "moffat"])
def test_squares_from_cross_terms_equal_their_transforms(stamps, monkeypatch):
    """The boxed squares' spectra made as products of their cross terms' spectra equal those
    made by transforming the boxed squares (the path taken when no cross terms are allowed)
    to float32 round-off of their peak, and their terms' spectra hold no values whose products
    are float32 subnormals (which made the products ~15x slower)."""
    import toolkit.zogy as zmod

    if stamps == "gaussian":
        k1, k2 = GaussianPsf(1.7, size=21).compute_kernel_image(), GaussianPsf(1.2, size=21).compute_kernel_image()
    else:
        yy, xx = np.mgrid[:31, :31] - 15
        k1 = (1 + (xx**2 * 1.1 + yy**2 * 0.9 + 0.2 * xx * yy) / 2.5**2) ** -2.5
        k2 = (1 + (xx**2 + yy**2) / 2.0**2) ** -3.0
        k1, k2 = k1 / k1.sum(), k2 / k2.sum()
    shape = (800, 780)

    def kernels():
        zmod._cell_kernels_cached.cache_clear()
        return zmod._cell_kernels(k1, k2, 1.3, 0.8, 100.0, 49.0, shape, True, np.float32)

    ker = kernels()
    boxed, _, full, _, low = ker.fused_squares()
    # (the Moffats' whitening kernels square into wider boxes, some of too many terms)
    assert ker.coarse > 1 and low and set(low) <= set(boxed) and not full
    assert stamps == "moffat" or sorted(low) == boxed
    mine = ker.squares()
    tiny = np.finfo(np.float32).tiny
    for a, b in low.values():
        for t in range(a.shape[1]):
            # a term's products: its column spectrum's parts times its row spectrum's
            pa, pb = np.abs(np.ascontiguousarray(a[:, t]).view(np.float32)), np.abs(b[t].view(np.float32))
            assert pa[pa > 0].min() * pb[pb > 0].min() > tiny
    monkeypatch.setattr(zmod, "SQUARE_RANK_MAX", 0)
    ref = kernels()
    assert not ref.fused_squares()[4]
    want = ref.squares()
    for i in low:
        np.testing.assert_allclose(mine[i], want[i], rtol=0, atol=1e-6 * np.abs(want[i]).max(), err_msg=str(i))
    zmod._cell_kernels_cached.cache_clear()


@pytest.mark.parametrize("grid", [False, True])
def test_calibration_applied_as_calibrate_image(grid):
    """scaleByCalibration: the engine multiplies image and variance by c and c^2 while copying
    them into the cells (and reads the noise levels of the scaled planes without making them);
    the result must equal, bit for bit, the subtraction of planes calibrated beforehand, also
    where the product overflows float32 (then the calibrated plane is made and its inf pixels
    are handled as LSST's removeNonFinitePixels does)."""
    p = simulate_pair(size=192, seed=5, science_calib=1.37)
    cfg = ZogyConfig(doSpatialGrid=grid)
    for huge in (False, True):
        s = p.science
        img = s.image.copy()
        if huge:
            img[40, 50] = np.float32(3e38)  # x 1.37 overflows float32
        sci = Exposure(img, s.variance, s.mask, s.mask_planes, psf=s.psf, photo_calib=1.37, xy0=s.xy0)
        c = np.float32(1.37)
        with np.errstate(over="ignore"):
            pre = Exposure(img * c, s.variance * np.float32(1.37**2), s.mask, s.mask_planes, psf=s.psf, photo_calib=1.0, xy0=s.xy0)
        if huge:  # the overflow is reported by name, not by a numpy RuntimeWarning
            with pytest.warns(RuntimeWarning, match=r"calibrating the science image by 1\.37 overflows float32 at 1 pixel"):
                a = zogy(sci, p.reference, cfg)
        else:
            a = zogy(sci, p.reference, cfg)
        b = zogy(pre, p.reference, cfg)
        assert np.array_equal(a.diff.image, b.diff.image)
        assert np.array_equal(a.diff.variance, b.diff.variance)
        assert np.array_equal(a.scorr, b.scorr)
        assert [ci["var_science"] for ci in a.cells] == [ci["var_science"] for ci in b.cells]
        assert np.isfinite(a.diff.image).all()


def test_fit_flux_ratio_and_noise_levels():
    """doFitFluxRatio measures F_n/F_r and the noise levels from the pixels, so neither the
    calibration nor the variance planes need be right.  The science image is in counts at
    1.3 nJy/count, so F_n/F_r = 1/1.3; sky variances 532.5 and 225 counts^2.  Over seeds the
    fitted ratio scatters by ~0.5 % at 512^2 (a few bright stars decide it) and the noise
    levels by ~0.3 %: the tolerances are about 4 sigma."""
    p = simulate_pair(size=512, seed=1, n_transients=10)
    s, r = p.science, p.reference
    cfg = ZogyConfig(scaleByCalibration=False, doFitFluxRatio=True)
    fit = zogy(s, r, cfg)
    assert fit.flux_scalings[0] == pytest.approx(1 / 1.3, rel=0.02) and fit.flux_scalings[1] == 1.0
    assert fit.cells[0]["var_science"] == pytest.approx(30.0**2 / 1.3**2, rel=0.015)
    assert fit.cells[0]["var_template"] == pytest.approx(225.0, rel=0.015)
    # wrong variance planes (x3 and x0.5) and a sky offset in the template change none of it
    wrong = zogy(Exposure(s.image, s.variance * 3, psf=s.psf), Exposure(r.image + 40, r.variance * 0.5, psf=r.psf), cfg)
    assert wrong.flux_scalings[0] == pytest.approx(fit.flux_scalings[0], rel=1e-4)
    for k in ("var_science", "var_template"):
        assert wrong.cells[0][k] == pytest.approx(fit.cells[0][k], rel=1e-4)
    # and Scorr is normalised as with the true calibration and planes: away from transients and
    # bright stars its std is the calibrated run's (both ~1; 1 % is many times their difference)
    cal = zogy(s, r)
    away = np.ones(s.shape, bool)
    for t in (p.truth["transients"], p.truth["stars"][p.truth["stars"]["flux"] > 2e4]):
        for x, y in zip(t["x"], t["y"]):
            away[max(0, int(y) - 12):int(y) + 13, max(0, int(x) - 12):int(x) + 13] = False
    away[:20] = away[-20:] = False
    away[:, :20] = away[:, -20:] = False
    sd_cal, sd_fit = cal.scorr[away].std(), fit.scorr[away].std()
    assert abs(sd_cal - 1) < 0.03 and sd_fit == pytest.approx(sd_cal, rel=0.01)
    # what cannot be fitted says so
    flat = Exposure(np.random.default_rng(0).normal(0, 1, (128, 128)), np.ones((128, 128)), psf=s.psf)
    with pytest.raises(InputError, match="too few bright source pixels"):
        zogy(flat, Exposure(flat.image[::-1].copy(), flat.variance, psf=r.psf), cfg)


def test_noise_correlation_factor_and_its_measurement():
    """noiseCorrelationFactor f multiplies both variance planes: D / F_D stays, V_D grows by f,
    S and V_S shrink by f and Scorr by sqrt(f), also after a flux-ratio fit (which rescales the
    planes first).  doMeasureNoiseCorrelation measures f on the pair's own Scorr, so it is the
    same whatever units the science image is in, and is 1 for white noise."""
    p = simulate_pair(size=384, seed=1)
    s, r = p.science, p.reference
    inner = (slice(40, -40),) * 2
    plain = zogy(s, r)
    f = 2.5
    scaled = zogy(s, r, {"noiseCorrelationFactor": f})
    assert scaled.noise_correlation == f and plain.noise_correlation == 1.0
    # float32 planes: products agree to a few ulps; the padding noise scales with sqrt(f) too,
    # so only the cell interior is compared
    np.testing.assert_allclose(scaled.diff.image[inner], plain.diff.image[inner], rtol=1e-4, atol=1e-4 * np.abs(plain.diff.image).max())
    np.testing.assert_allclose(scaled.diff.variance[inner], f * plain.diff.variance[inner], rtol=1e-5)
    np.testing.assert_allclose(scaled.score.image[inner], plain.score.image[inner] / f, rtol=1e-4, atol=1e-4 * np.abs(plain.score.image).max() / f)
    np.testing.assert_allclose(scaled.scorr[inner], plain.scorr[inner] / np.sqrt(f), rtol=1e-4, atol=1e-4)
    fit_cfg = {"scaleByCalibration": False, "doFitFluxRatio": True}
    fit, fit_f = zogy(s, r, fit_cfg), zogy(s, r, {**fit_cfg, "noiseCorrelationFactor": f})
    np.testing.assert_allclose(fit_f.scorr[inner], fit.scorr[inner] / np.sqrt(f), rtol=1e-4, atol=1e-4)

    measured = zogy(s, r, {"doMeasureNoiseCorrelation": True})
    # white noise (with stars, galaxies and transients): over seeds 0-9 at 512^2 the factor was
    # 0.981-1.032 (sd 0.015, ~3000 independent PSF-sized patches); at 384^2 the sd is ~0.02,
    # so 0.06 is 3 sd
    assert measured.noise_correlation == pytest.approx(1.0, abs=0.06)
    again = zogy(s, r, {"noiseCorrelationFactor": measured.noise_correlation})
    assert np.array_equal(measured.scorr, again.scorr) and np.array_equal(measured.diff.variance, again.diff.variance)
    # the science image in other units (calibration 50): the same factor, as ZOGY sees the
    # pair calibrated (a measurement on the raw difference would see uncancelled sources)
    k = np.float32(s.photo_calib / 50.0)
    counts = Exposure(s.image * k, s.variance * k**2, s.mask, s.mask_planes, psf=s.psf, photo_calib=50.0)
    assert zogy(counts, r, {"doMeasureNoiseCorrelation": True}).noise_correlation == pytest.approx(measured.noise_correlation, rel=1e-4)
    # a science image whose sky was not subtracted (correctBackground does it inside ZOGY):
    # sources are found above the image's median, so the sky is not one big source, and the
    # factor is the one measured without it
    sky = np.float32(40 * np.sqrt(np.median(s.variance)))
    raw = Exposure(s.image + sky, s.variance, s.mask, s.mask_planes, psf=s.psf, photo_calib=s.photo_calib)
    both = {"doMeasureNoiseCorrelation": True, "correctBackground": True}
    assert zogy(raw, r, both).noise_correlation == pytest.approx(zogy(s, r, both).noise_correlation, rel=0.02)
    # nothing left to measure on: said by name
    crowded = s.mask.copy()
    crowded[:, :150] |= s.mask_planes.bitmask(["DETECTED"])  # a 40-px strip is left, less the wings
    crowded[:, 190:] |= s.mask_planes.bitmask(["DETECTED"])
    covered = Exposure(s.image, s.variance, crowded, s.mask_planes, psf=s.psf, photo_calib=s.photo_calib)
    with pytest.raises(InputError, match=r"doMeasureNoiseCorrelation: only \d\.\d % of the pixels are away from sources"):
        zogy(covered, r, {"doMeasureNoiseCorrelation": True})


def test_measured_noise_correlation_error_matches_its_scatter():
    """noise_correlation_error (the scatter over a 4 x 4 grid of tiles / 4) predicts how much
    the measured factor varies from noise draw to noise draw: over ten 384^2 white-noise pairs
    the factors' sd was 1.00x the mean reported error (0.018); the sd of ten values is
    known to ~24 %, so [0.45, 2.0] is a > 2 sd band.  A given factor has no error, and a pair
    too small to measure on well is warned about."""
    factors, errors = [], []
    for seed in range(10):
        p = simulate_pair(size=384, seed=seed)
        r = zogy(p.science, p.reference, {"doMeasureNoiseCorrelation": True})
        factors.append(r.noise_correlation)
        errors.append(r.noise_correlation_error)
    assert 0.45 < np.std(factors, ddof=1) / np.mean(errors) < 2.0
    assert max(errors) < 0.05
    p = simulate_pair(size=384, seed=0)
    assert zogy(p.science, p.reference, {"noiseCorrelationFactor": 2.0}).noise_correlation_error == 0.0
    small = simulate_pair(size=128, seed=2)
    with pytest.warns(RuntimeWarning, match=r"measured factor .* is uncertain"):
        r = zogy(small.science, small.reference, {"doMeasureNoiseCorrelation": True})
    assert not r.noise_correlation_error <= 0.1 * r.noise_correlation


def test_source_noise_term_for_background_only_variance_planes():
    """The paper's source-noise term: with variance planes that hold only the background, Scorr
    at bright stars is inflated (its scatter there is far above 1) unless doSourceNoise adds
    the images' Poisson variance; with LSST-like planes, which already grow with the sources,
    it would count that twice, and a warning says so."""
    import warnings

    from toolkit.exposure import Exposure
    from toolkit.sim import simulate_pair

    def bkg_only(e):
        return Exposure(e.image, np.full_like(e.variance, np.median(e.variance)), e.mask, e.mask_planes, psf=e.psf, photo_calib=e.photo_calib, wcs=e.wcs, metadata=e.metadata)

    plain, fixed = [], []
    for seed in (1, 2, 3):
        pair = simulate_pair(size=512, seed=seed, n_transients=0, star_density=2e-3)
        sci, ref = pair.science, pair.reference
        sel = sci.variance > 2 * np.median(sci.variance)  # where source noise matters
        sel[:30] = sel[-30:] = False
        sel[:, :30] = sel[:, -30:] = False
        on = ZogyConfig()
        on.doSourceNoise = True
        plain.append(zogy(bkg_only(sci), bkg_only(ref)).scorr[sel])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # background-only planes: no double-counting warning
            fixed.append(zogy(bkg_only(sci), bkg_only(ref), on).scorr[sel])
        if seed == 1:
            with pytest.warns(RuntimeWarning, match="variance plane already grows with the sources") as caught:
                zogy(sci, ref, on)
            assert {"science", "template"} <= {str(w.message).split()[2] for w in caught}
    plain, fixed = np.concatenate(plain), np.concatenate(fixed)
    assert plain.size > 400
    assert np.std(plain) > 1.5
    # the pixels near one star are correlated (Scorr is smooth on the PSF scale), so the
    # tolerance is wider than 1/sqrt(2n) of independent pixels
    assert abs(np.std(fixed) - 1.0) < 0.15


def test_astrometric_noise_term_absorbs_a_misregistration():
    """The paper's astrometric-noise terms (eqs. 30-33): a science image misregistered by
    (0.06, 0.08) px leaves dipoles of |Scorr| > 5 at bright stars; with astrometricSigmaX/Y set
    to that error the denominator absorbs them, and Scorr elsewhere stays unit-normal."""
    from scipy import ndimage

    from toolkit.exposure import Exposure
    from toolkit.sim import simulate_pair

    pair = simulate_pair(size=512, seed=1, n_transients=0, star_density=2e-3)
    sci, ref = pair.science, pair.reference
    shifted = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(sci.image.astype(np.float64)), (0.08, -0.06))).real.astype(np.float32)
    moved = Exposure(shifted, sci.variance, sci.mask, sci.mask_planes, psf=sci.psf, photo_calib=sci.photo_calib, wcs=sci.wcs, metadata=sci.metadata)
    cfg = ZogyConfig()
    cfg.doAstrometricNoise, cfg.astrometricSigmaX, cfg.astrometricSigmaY = True, 0.06, 0.08
    plain = zogy(moved, ref).scorr[30:-30, 30:-30]
    with_ast = zogy(moved, ref, cfg).scorr[30:-30, 30:-30]
    assert (np.abs(plain) >= 5).sum() > 20
    assert (np.abs(with_ast) >= 5).sum() == 0
    # 452^2 pixels correlated over ~50 px (the score PSF's area): ~4000 independent values, so
    # the std scatters by 1/sqrt(2 x 4000) = 0.011; 3 sigma
    assert abs(with_ast.std() - 1.0) < 0.035
    # the term is zero where the images are flat: away from sources Scorr is unchanged
    flat = sci.variance[30:-30, 30:-30] < 1.05 * np.median(sci.variance)
    np.testing.assert_allclose(with_ast[flat].std(), plain[flat].std(), rtol=0.02)


def test_catalog_photometry_and_positions_of_transients():
    """The catalog's PSF flux (S / F_S at the sub-pixel peak) recovers the injected fluxes and
    its error describes the scatter; positions are sub-pixel.  Pooled over three pairs (~85
    transients of S/N 5-40): the median flux ratio is within 2 % of 1 (its error is ~0.7 %),
    the pulls have mean within 0.35 and std within 0.25 of 1 (3 sigma for 85 values)."""
    ratios, pulls, offsets = [], [], []
    for seed in (2, 3, 4):
        p = simulate_pair(size=512, seed=seed, source_noise=False)
        cat = zogy(p.science, p.reference).catalog
        assert cat["x"].dtype.kind == "f"
        for t in p.truth["transients"]:
            d = np.hypot(cat["x"] - t["x"], cat["y"] - t["y"])
            i = int(np.argmin(d))
            if d[i] <= 2:
                ratios.append(cat["flux"][i] / t["flux"])
                pulls.append((cat["flux"][i] - t["flux"]) / cat["flux_err"][i])
                offsets.append(d[i])
    assert len(ratios) >= 80
    assert abs(np.median(ratios) - 1) < 0.02
    assert abs(np.mean(pulls)) < 0.35 and abs(np.std(pulls) - 1) < 0.25
    assert np.median(offsets) < 0.25


def test_transient_catalog_threshold_checked():
    from toolkit.sim import simulate_pair
    from toolkit.zogy import transient_catalog

    pair = simulate_pair(size=64, seed=2, n_transients=1)
    res = zogy(pair.science, pair.reference)
    for bad in (0.0, -5.0, np.nan, "5"):
        with pytest.raises(InputError, match="threshold must be a finite number > 0"):
            transient_catalog(res, threshold=bad)
    with pytest.raises(InputError, match="min_pixels"):
        transient_catalog(res, min_pixels=0)
    for bad in (0.0, -1.0, np.inf, "2"):
        with pytest.raises(InputError, match="min_prominence must be a finite number > 0"):
            transient_catalog(res, min_prominence=bad)


def test_catalog_lists_close_transients_apart_and_a_bright_one_once():
    """Two transients 7 px apart (1.75 FWHM of the science PSF) share one |Scorr| >= 5
    footprint; the saddle between them is far below their peaks, so each is an entry, in the
    same footprint.  One entry per footprint (``min_prominence=None``) lists one of them.  Over
    60 single transients of S/N 8-300 no noise peak on a transient's flank is split off."""
    from toolkit.zogy import transient_catalog

    size, svar, tvar = 128, 100.0, 100.0
    rng = np.random.default_rng(7)
    sig_s, sig_r = 4.0 / 2.3548, 3.0 / 2.3548
    # S/N of a point source in the science image alone ~ flux / (sqrt(4 pi) sigma sqrt(var))
    flux = 18 * np.sqrt(4 * np.pi) * sig_s * np.sqrt(svar)
    xs, ys = np.array([60.5, 67.5]), np.array([64.0, 64.0])
    sci = Exposure(rng.normal(0, 10, (size, size)) + render_points((size, size), xs, ys, [flux, flux], sig_s, sampled=True), np.full((size, size), svar), psf=GaussianPsf(sig_s, size=25))
    ref = Exposure(rng.normal(0, 10, (size, size)), np.full((size, size), tvar), psf=GaussianPsf(sig_r, size=25))
    res = zogy(sci, ref)
    cat = res.catalog
    assert len(cat) == 2 and cat["footprint"][0] == cat["footprint"][1] and (cat["npix"] == cat["npix"][0]).all()
    assert np.abs(np.sort(cat["x"]) - xs).max() < 0.5 and np.abs(cat["y"] - 64).max() < 0.5
    saddle = res.scorr[64, 61:67].min()
    assert saddle > 5 and cat["scorr"].min() - saddle > 2  # one footprint, two prominent peaks
    one = transient_catalog(res, min_prominence=None)
    assert len(one) == 1 and one["scorr"][0] == cat["scorr"].max()
    far = transient_catalog(res, min_prominence=1e9)  # what the config's "off" value gives
    assert len(far) == 1 and far["x"][0] == one["x"][0]
    n_split = 0
    for seed in range(3):
        r = np.random.default_rng(100 + seed)
        snr = np.geomspace(8, 300, 20)
        gx, gy = np.meshgrid(np.arange(20, 128, 27.0), np.arange(16, 128, 27.0))
        px, py = gx.ravel()[:20] + r.uniform(-0.5, 0.5, 20), gy.ravel()[:20] + r.uniform(-0.5, 0.5, 20)
        f = snr * np.sqrt(4 * np.pi) * sig_s * np.sqrt(svar)
        sci = Exposure(r.normal(0, 10, (size, size)) + render_points((size, size), px, py, f, sig_s, sampled=True), np.full((size, size), svar), psf=GaussianPsf(sig_s, size=25))
        ref = Exposure(r.normal(0, 10, (size, size)), np.full((size, size), tvar), psf=GaussianPsf(sig_r, size=25))
        c = zogy(sci, ref).catalog
        c = c[c["sign"] > 0]
        n_split += len(c) - len(set(c["footprint"]))
        assert len(set(c["footprint"])) >= 18
    assert n_split == 0


def _moffat_stamp(n, fwhm, beta, ellipticity=0.0, angle=0.0):
    """A unit-sum Moffat stamp from astropy's model (independent of toolkit.sim's renderer)."""
    from astropy.modeling.functional_models import Moffat2D

    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    y, x = np.mgrid[:n, :n] - n // 2
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    # an elliptical Moffat: the circular model evaluated on stretched coordinates
    k = Moffat2D(1.0, 0.0, 0.0, alpha, beta)(u * np.sqrt(1 + ellipticity), v * np.sqrt(1 - ellipticity))
    return k / k.sum()


def test_independent_pair_non_square_moffat_float64():
    """A pair built here, not by toolkit.sim: non-square float64 images, Moffat PSFs (an
    elliptical one for the science image), unequal noise, the same stars in both, transients
    on whole pixels.  Scorr must be a unit Gaussian off the sources, stars must vanish from it,
    and each transient's Scorr must match the paper's S/N a * sqrt(F_S) computed here from the
    two PSF spectra."""
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(2026)
    ny, nx = 480, 640
    pn = _moffat_stamp(41, 4.6, 2.5, ellipticity=0.15, angle=0.5)
    pr = _moffat_stamp(41, 3.0, 3.5)
    var_n, var_r = 60.0, 15.0
    stars = np.zeros((ny, nx))
    sy, sx = rng.integers(30, ny - 30, 40), rng.integers(30, nx - 30, 40)
    stars[sy, sx] = rng.uniform(2e3, 4e4, 40)
    # F_S (paper, F_n = F_r = 1) as a pixel-space sum: Parseval's 1/N on the spectra's sum
    pn_hat, pr_hat = (np.abs(np.fft.fft2(k, s=(256, 256))) ** 2 for k in (pn, pr))
    f_s = np.sum(pn_hat * pr_hat / (var_n * pr_hat + var_r * pn_hat)) / 256**2
    tr = np.zeros((ny, nx))
    ty, tx = rng.integers(40, ny - 40, 25), rng.integers(40, nx - 40, 25)
    keep = [i for i in range(25) if np.all(np.hypot(ty[:i] - ty[i], tx[:i] - tx[i]) > 20) and np.all(np.hypot(sy - ty[i], sx - tx[i]) > 20)]
    ty, tx = ty[keep], tx[keep]
    snr = rng.uniform(15, 40, ty.size)
    tr[ty, tx] = snr / np.sqrt(f_s)
    noise_n, noise_r = rng.normal(0, np.sqrt(var_n), (ny, nx)), rng.normal(0, np.sqrt(var_r), (ny, nx))

    def pair(with_sources):
        n_img = noise_n + (fftconvolve(stars + tr, pn, mode="same") if with_sources else 0)
        r_img = noise_r + (fftconvolve(stars, pr, mode="same") if with_sources else 0)
        return (Exposure(n_img, np.full((ny, nx), var_n), psf=ImagePsf(pn)),
                Exposure(r_img, np.full((ny, nx), var_r), psf=ImagePsf(pr)))

    # the noise alone: Scorr is correlated over P_S's area (~60 px^2), so its std estimated from
    # 3e5 pixels scatters by ~1/sqrt(2 * 3e5 / 60) = 0.01: 0.04 is four times that
    r0 = zogy(*pair(False))
    assert r0.scorr.dtype == np.float64
    assert np.std(r0.scorr) == pytest.approx(1.0, abs=0.04)
    assert (np.abs(r0.scorr) >= 5).sum() <= 10  # a unit Gaussian expects ~0.2 such pixels
    r = zogy(*pair(True))
    ratio = r.scorr[ty, tx] / snr
    # each ratio scatters by 1/snr <= 0.07 (unit noise on Scorr): the median of ~20 by ~0.02
    assert np.median(ratio) == pytest.approx(1.0, abs=0.04)
    away = np.ones((ny, nx), bool)
    for y, x in zip(ty, tx):
        away[y - 15:y + 16, x - 15:x + 16] = False
    assert np.abs(r.scorr[away]).max() < 5.5  # the stars are subtracted (their cores reach 1e3 sigma)
    cat = r.catalog
    found = [np.min(np.hypot(cat["x"] - x, cat["y"] - y)) <= 1.5 for y, x in zip(ty, tx)]
    assert all(found)
    assert len(cat) == ty.size


def test_concurrent_runs_share_the_kernel_cache_safely():
    """ZOGY from several threads at once (an explorer's background run beside a notebook's)
    shares the kernel cache, the kernels' lazily made parts and the engine's scratch buffers,
    and every run still equals a serial one bit for bit.  Constant variance planes give every
    grid cell the same kernels, so the threads ask for one cached object at once."""
    from concurrent.futures import ThreadPoolExecutor

    from toolkit import Exposure
    from toolkit.sim import simulate_pair
    from toolkit.zogy import _cell_kernels_cached

    p = simulate_pair(size=192, seed=6)

    def flat(e):
        return Exposure(e.image, np.full_like(e.variance, float(np.median(e.variance))), e.mask, e.mask_planes, psf=e.psf)

    sci, ref = flat(p.science), flat(p.reference)
    cfg = ZogyConfig()
    cfg.doSpatialGrid = True
    _cell_kernels_cached.cache_clear()
    want = zogy(sci, ref, cfg)
    for _ in range(3):
        _cell_kernels_cached.cache_clear()
        with ThreadPoolExecutor(4) as ex:
            got = list(ex.map(lambda _: zogy(sci, ref, cfg), range(4)))
        for g in got:
            np.testing.assert_array_equal(g.diff.image, want.diff.image)
            np.testing.assert_array_equal(g.diff.variance, want.diff.variance)
            np.testing.assert_array_equal(g.scorr, want.scorr)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ">f4", ">f8"])
def test_plane_scan_counts_finite_and_nonpositive_values_and_finds_the_largest_magnitude(dtype):
    """The input checks' one-pass scan (in the floats' bit patterns) gives what numpy's
    isfinite / <= 0 / abs().max() give, for NaN, +-inf, -0, +0, negatives and subnormals."""
    from toolkit.zogy import _scan_plane

    rng = np.random.default_rng(5)
    a = rng.normal(0, 50, (67, 129))
    a[3, :7] = [np.nan, np.inf, -np.inf, -0.0, 0.0, -1e-310 if np.dtype(dtype).itemsize == 8 else -1e-40, 5e-324 if np.dtype(dtype).itemsize == 8 else 1e-45]
    a[10, 10] = -7e3  # the largest magnitude is a negative value
    a = a.astype(dtype)
    fin = np.isfinite(a)
    want = (int(fin.sum()), int(np.count_nonzero(a[fin] <= 0)), float(np.abs(a[fin]).max()))
    assert _scan_plane(a) == want
    assert _scan_plane(np.full((3, 3), np.nan, dtype)) == (0, 0, 0.0)
    assert _scan_plane(a[::2, 1::3]) == (int(np.isfinite(a[::2, 1::3]).sum()), int(np.count_nonzero(a[::2, 1::3][np.isfinite(a[::2, 1::3])] <= 0)), float(np.abs(a[::2, 1::3][np.isfinite(a[::2, 1::3])]).max()))


def test_low_rank_psf_spectra_equal_the_transformed_rows(monkeypatch):
    """Gaussian (rank 1) and double-Gaussian (rank 2) stamps get their cell spectra from the
    1-D spectra of their column and row terms: equal to the column transforms of their rows to < 1e-14 of
    the peak (the spectrum's DC is 1), and a ZOGY run gives what the row-transform path gives
    to float32 round-off, with the same catalog.  A measured-like stamp (truncated Moffat, high
    rank) keeps the row transforms."""
    import toolkit.zogy as z
    from toolkit import DoubleGaussianPsf

    shape = (270, 300)
    g = GaussianPsf(2.1).compute_kernel_image()
    dg = DoubleGaussianPsf(1.8, 4.5, 0.15).compute_kernel_image()
    yy, xx = np.mgrid[-20:21, -20:21]
    moffat = (1 + (xx**2 + yy**2) / 3.0**2) ** -2.5
    moffat /= moffat.sum()
    cols = slice(0, shape[1] // 2 + 1)
    for stamps, low in (([g, dg], True), ([g, moffat], False)):
        pc = z._PsfColumns(stamps, shape)
        assert (pc.factors is not None) == low
        got = np.empty((2, shape[0], cols.stop), np.complex128)
        pc.band(cols, got, pc.scratch(cols.stop))
        monkeypatch.setattr(z, "LOW_RANK_MAX", 0)
        ref_cols = z._PsfColumns(stamps, shape)
        monkeypatch.undo()
        want = np.empty_like(got)
        ref_cols.band(cols, want, ref_cols.scratch(cols.stop))
        assert np.abs(got - want).max() < 1e-14
        np.testing.assert_allclose(want, np.stack([np.fft.rfft2(z.pad_center_origin(k, shape)) for k in stamps]), atol=1e-14)

    pair = simulate_pair(size=256, seed=9)
    sci = Exposure(pair.science.image, pair.science.variance, pair.science.mask, psf=DoubleGaussianPsf(2.0, 5.0, 0.1), photo_calib=pair.science.photo_calib)
    runs = []
    for rank in (2, 0):
        monkeypatch.setattr(z, "LOW_RANK_MAX", rank)
        z._cell_kernels_cached.cache_clear()
        runs.append(z.zogy(sci, pair.reference))
    z._cell_kernels_cached.cache_clear()
    a, b = runs
    for x, y in ((a.diff.image, b.diff.image), (a.diff.variance, b.diff.variance), (a.score.image, b.score.image), (a.scorr, b.scorr)):
        # float32 results: a few ulp of the largest value of the plane at most
        assert np.abs(x - y).max() <= 8 * np.finfo(np.float32).eps * np.abs(y).max()
    assert len(a.catalog) == len(b.catalog) and np.array_equal(a.catalog["x"], b.catalog["x"])


def test_images_checked_in_their_padded_copy_send_the_run_back_when_not_finite():
    """Images whose sample looks finite are not scanned before their cell is padded (whole-image
    mode); the copy checks every value.  An isolated NaN the sample misses, or a calibration that
    overflows an unscanned image, sends the run back to the scanned path: the result is the
    one the scanned run gives, bit for bit (NaN replaced and remembered, Scorr 0 there)."""
    import toolkit.zogy as z

    pair = simulate_pair(size=256, seed=4)
    img = pair.science.image.copy()
    img[37, 91] = np.nan  # not on the sample's 16-px grid nor an edge
    sci = Exposure(img, pair.science.variance, pair.science.mask, psf=pair.science.psf, photo_calib=pair.science.photo_calib)
    assert z._looks_finite(sci)
    cfg = ZogyConfig()
    seen = []
    got = zogy(sci, pair.reference, cfg, progress=lambda stage, f: seen.append(f))
    assert seen == [1.0]  # the run sent back had reported nothing yet
    want = z._zogy(sci, pair.reference, cfg, True, None, trust_images=False)
    for a, b in ((got.diff.image, want.diff.image), (got.diff.variance, want.diff.variance), (got.scorr, want.scorr), (got.diff.mask, want.diff.mask)):
        np.testing.assert_array_equal(a, b)
    assert got.scorr[37, 91] == 0 and np.isfinite(got.diff.image).all()
    with pytest.raises(z._NotFinite):
        z._zogy(sci, pair.reference, cfg, True, None, trust_images=True)

    # a finite image whose calibration overflows float32: found in the copy, then warned about
    big = pair.science.image.copy()
    big[100, 100] = 3e38
    sci = Exposure(big, pair.science.variance, pair.science.mask, psf=pair.science.psf, photo_calib=7.0)
    ref = Exposure(pair.reference.image, pair.reference.variance, pair.reference.mask, psf=pair.reference.psf, photo_calib=7.0)
    with pytest.warns(RuntimeWarning, match="calibrating the science image by 7 overflows float32 at 1 pixel"):
        res = zogy(sci, ref)
    assert res.scorr[100, 100] == 0


def test_variance_checked_in_its_padded_copy_sends_the_run_back():
    """Variance planes whose sample looks finite and > 0 are not scanned first either: their
    copy into the cell checks every value.  A zero the sample misses gives the scanned run's
    named error; a NaN gives the scanned run's result, bit for bit; a calibration that
    overflows one is warned about once, as the scanned run does."""
    import warnings

    import toolkit.zogy as z

    pair = simulate_pair(size=256, seed=4)
    cfg = ZogyConfig()

    def with_variance(var, calib=None):
        s = pair.science
        return Exposure(s.image, var, s.mask, psf=s.psf, photo_calib=s.photo_calib if calib is None else calib)

    var = pair.science.variance.copy()
    var[37, 91] = 0.0  # off the sample's grid and edges
    sci = with_variance(var)
    assert z._looks_finite(sci)
    with pytest.raises(z._NotFinite):
        z._zogy(sci, pair.reference, cfg, True, None, trust_images=True)
    with pytest.raises(InputError, match=r"science variance plane has zero or negative values \(1 pixels\)"):
        zogy(sci, pair.reference, cfg)

    var = pair.science.variance.copy()
    var[37, 91] = np.nan
    sci = with_variance(var)
    got = zogy(sci, pair.reference, cfg)
    want = z._zogy(sci, pair.reference, cfg, True, None, trust_images=False)
    for a, b in ((got.diff.image, want.diff.image), (got.diff.variance, want.diff.variance), (got.scorr, want.scorr)):
        np.testing.assert_array_equal(a, b)
    assert got.scorr[37, 91] == 0

    var = pair.science.variance.copy()
    var[100, 100] = 3e38  # x 7^2 overflows float32
    ref = Exposure(pair.reference.image, pair.reference.variance, pair.reference.mask, psf=pair.reference.psf, photo_calib=7.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = zogy(with_variance(var, 7.0), ref, cfg)
    msgs = [str(w.message) for w in caught]
    assert sum("calibrating the science variance by 49 overflows float32 at 1 pixel" in m for m in msgs) == 1, msgs
    assert res.scorr[100, 100] == 0
    # a sample with a zero (or a NaN) goes the scanned way from the start
    var = pair.science.variance.copy()
    var[32, 48] = 0.0
    assert not z._looks_finite(with_variance(var))
