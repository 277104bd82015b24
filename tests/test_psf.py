import numpy as np
import pytest

from toolkit import CoaddPsf, DoubleGaussianPsf, GaussianPsf, ImagePsf, InputError, VaryingGaussianPsf
from toolkit.psf import InputCoverage


def test_kernel_images_normalised_and_centred():
    for p in (GaussianPsf(2.0), DoubleGaussianPsf(7.7), ImagePsf(np.ones((4, 4)))):
        k = p.compute_kernel_image()
        assert k.shape[0] % 2 == 1 and k.shape[1] % 2 == 1
        assert k.sum() == pytest.approx(1.0)
        c = k.shape[0] // 2
        y, x = np.mgrid[: k.shape[0], : k.shape[1]]
        if not isinstance(p, ImagePsf):
            assert (k * x).sum() == pytest.approx(c, abs=1e-9)


def test_lsst_model_psf_geometry():
    p = DoubleGaussianPsf(7.7)
    assert p.size == 23
    assert p.sigma1 == pytest.approx(3.27, abs=0.005)
    assert p.sigma2 == pytest.approx(8.17, abs=0.01)
    r = p.determinant_radius()
    # reference quotes ~3.71; what matters is the growth radii it implies
    assert 3.6 < r < 3.75
    assert int(0.4 * r + 0.5) == 1 and int(2.4 * r + 0.5) == 9


def test_resized_psf_draws_the_same_model_on_another_box():
    p = DoubleGaussianPsf(7.7)
    big = p.resized(72)  # made odd, as LSST's kernels are
    assert big.size == 73 and p.size == 23 and big.fwhm == p.fwhm and big.to_dict()["size"] == 73
    k23, k73 = p.compute_kernel_image(), big.compute_kernel_image()
    # same profile, renormalised over the larger box: the 23-px stamp holds 88.7 % of the flux
    np.testing.assert_allclose(k73[25:48, 25:48] / k73[25:48, 25:48].sum(), k23, rtol=1e-12)
    assert k73[25:48, 25:48].sum() == pytest.approx(0.8868, abs=2e-4)
    stamp = ImagePsf(np.outer([1, 2, 1], [1, 2, 1]))
    assert stamp.resized(11) is stamp  # a larger box only adds zeros
    assert stamp.resized(1).compute_kernel_image().tolist() == [[1.0]]
    with pytest.raises(InputError, match="size"):
        p.resized(-3)


@pytest.mark.parametrize("sigma", [1.2, 2.0, 3.3])
def test_determinant_radius_of_gaussian_is_sigma(sigma):
    assert GaussianPsf(sigma, size=61).determinant_radius() == pytest.approx(sigma, rel=1e-4)


def test_varying_and_coadd_psf():
    v = VaryingGaussianPsf(2.0, dsigma_dx=0.01, ref=(0, 0), size=41)
    assert v.determinant_radius((100, 0)) == pytest.approx(3.0, rel=1e-3)
    c = CoaddPsf([GaussianPsf(1.0, size=21), GaussianPsf(2.0, size=21)], [1, 3])
    expect = 0.25 * GaussianPsf(1.0, size=21).compute_kernel_image() + 0.75 * GaussianPsf(2.0, size=21).compute_kernel_image()
    np.testing.assert_allclose(c.compute_kernel_image(), expect)


def test_bad_psfs():
    with pytest.raises(InputError, match="NaN"):
        ImagePsf(np.array([[np.nan, 1], [1, 1]]))
    with pytest.raises(InputError, match="sigma"):
        GaussianPsf(0)
    with pytest.raises(InputError, match="gradients and ref must be finite"):
        VaryingGaussianPsf(2.0, np.nan)
    with pytest.raises(InputError, match="position must be finite"):
        VaryingGaussianPsf(2.0, 0.001).compute_kernel_image((np.nan, 3.0))
    from toolkit.psf_matching import fft_convolve

    with pytest.raises(InputError, match="kernel must be a non-empty 2-D"):
        fft_convolve(np.ones((8, 8)), np.ones(3))
    with pytest.raises(InputError, match="kernel has NaN"):
        fft_convolve(np.ones((8, 8)), np.full((3, 3), np.nan))


def test_or_box_is_the_bitwise_or_over_the_window():
    """Mask growth of PSF matching: every bit ORed over the (2h+1)^2 box, ``outside`` beyond
    the edges, against the plain sum of shifted copies."""
    from toolkit.psf_matching import or_box

    rng = np.random.default_rng(9)
    for trial in range(60):
        ny, nx = (int(v) for v in rng.integers(1, 40, 2))
        h, outside = int(rng.integers(0, 9)), int(rng.integers(0, 2))
        dtype = np.int32 if trial % 2 else np.uint8
        m = (rng.integers(0, 2**7, (ny, nx)) * (rng.random((ny, nx)) < 0.08)).astype(dtype)
        pad = np.pad(m, h, constant_values=outside)
        want = np.zeros_like(m)
        for dy in range(2 * h + 1):
            for dx in range(2 * h + 1):
                want |= pad[dy:dy + ny, dx:dx + nx]
        got = or_box(m, h, outside)
        assert got.dtype == m.dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("workers", [1, -1])
@pytest.mark.parametrize("shape", [(70, 96), (65, 77)])
def test_in_place_row_transforms_without_pocketfft_binding(shape, workers, monkeypatch):
    """Without scipy's pocketfft binding the in-place row transforms fall back to blocked
    copies through scipy.fft: the convolution must not change (same transforms, same values),
    and both must equal scipy.signal's."""
    import scipy.signal

    import toolkit.psf_matching as pm

    rng = np.random.default_rng(3)
    img = rng.normal(0, 1, shape).astype(np.float32)
    k = GaussianPsf(2.0, size=11).compute_kernel_image().astype(np.float32)
    direct = pm.fft_convolve(img, k, workers)
    monkeypatch.setattr(pm, "_pocketfft", None)
    blocked = pm.fft_convolve(img, k, workers)
    np.testing.assert_array_equal(direct, blocked)
    want = scipy.signal.fftconvolve(img.astype(np.float64), k.astype(np.float64), mode="same")
    np.testing.assert_allclose(direct, want, atol=2e-6 * np.abs(want).max(), rtol=0)


def _mean(psfs, weights, n=21):
    w = np.asarray(weights, float) / np.sum(weights)
    return sum(wi * p.compute_kernel_image(size=n) for p, wi in zip(psfs, w))


def test_coadd_psf_uses_only_the_inputs_covering_the_position():
    # LSST's CoaddPsf sums the PSFs of the inputs whose CCDs contain the point, renormalised by
    # their weights; here input 1 has data only in the left half (x < 20) and input 2 nowhere
    # near the top row
    a, b, c = GaussianPsf(1.0, size=21), GaussianPsf(2.0, size=21), GaussianPsf(3.0, size=21)
    shape, nd = (30, 43), 4
    m0 = np.zeros(shape, np.int32)
    m1 = np.zeros(shape, np.int32)
    m1[:, 20:] = nd | 1  # NO_DATA plus an unrelated plane
    m2 = np.full(shape, 1, np.int32)  # only the unrelated plane: covers everywhere
    m2[25:] = nd
    xy0 = (100, 200)
    cov = InputCoverage.from_masks([m0, m1, m2], nd, xy0)
    cp = CoaddPsf([a, b, c], [1, 2, 3], coverage=cov)
    left, right, top = (105, 210), (130, 210), (130, 226)
    np.testing.assert_allclose(cp.compute_kernel_image(left), _mean([a, b, c], [1, 2, 3]), rtol=1e-12)
    np.testing.assert_allclose(cp.compute_kernel_image(right), _mean([a, c], [1, 3]), rtol=1e-12)
    np.testing.assert_allclose(cp.compute_kernel_image(top), a.compute_kernel_image(), rtol=1e-12)
    assert list(cp.contributors(left)) == [0, 1, 2] and list(cp.contributors(top)) == [0]
    # a pixel owns [i - 0.5, i + 0.5): x = 119.49 is pixel 19 (covered), 119.5 is pixel 20
    assert list(cp.contributors((119.49, 210))) == [0, 1, 2]
    assert list(cp.contributors((119.5, 210))) == [0, 2]
    # the packed bits are np.packbits of the covered pixels (43 columns: a partial last byte)
    for m, p in zip((m0, m1, m2), cov.packed):
        np.testing.assert_array_equal(np.unpackbits(p, axis=1, count=shape[1]).astype(bool), (m & nd) == 0)
    # boolean coverage is the same thing spelled the other way
    cb = CoaddPsf([a, b, c], [1, 2, 3], coverage=[(m & nd) == 0 for m in (m0, m1, m2)], xy0=xy0)
    for pos in (left, right, top):
        np.testing.assert_array_equal(cb.compute_kernel_image(pos), cp.compute_kernel_image(pos))
    # outside every input (off the frame): all inputs, where LSST would raise
    np.testing.assert_allclose(cp.compute_kernel_image((0, 0)), _mean([a, b, c], [1, 2, 3]), rtol=1e-12)
    with pytest.raises(InputError, match="position must be finite"):
        cp.compute_kernel_image((np.nan, 3))
    with pytest.raises(InputError, match="of one shape"):
        InputCoverage.from_masks([m0, m1[:, :5]], nd)
    with pytest.raises(InputError, match="boolean arrays of one shape"):
        CoaddPsf([a, b], [1, 1], coverage=[m0, m1])  # integer masks need from_masks and their bits
    with pytest.raises(InputError, match=r"one value or one per mask \(2\), got 3"):
        InputCoverage.from_masks([m0, m1], [4, 4, 4])
    with pytest.raises(InputError, match="2 inputs for 3 PSFs"):
        CoaddPsf([a, b, c], [1, 1, 1], coverage=InputCoverage.from_masks([m0, m1], nd, xy0))
    # per-input bits: in input 2's own dictionary NO_DATA is bit 0 (value 1), which it has
    # everywhere, so it covers nothing; inputs 0 and 1 are read with bit 2
    per = CoaddPsf([a, b, c], [1, 2, 3], coverage=InputCoverage.from_masks([m0, m1, m2], [nd, nd, 1], xy0))
    assert list(per.contributors(left)) == [0, 1] and list(per.contributors(right)) == [0]


def test_coadd_psf_average_position_follows_lsst():
    # weight x good pixels x position, as meas_algorithms' computeAveragePosition
    a, b = GaussianPsf(1.0, size=21), GaussianPsf(2.0, size=21)
    shape = (10, 40)
    left = np.zeros(shape, bool)
    left[:, :10] = True  # centroid x = 4.5, 100 pixels
    full = np.ones(shape, bool)  # centroid x = 19.5, 400 pixels
    cp = CoaddPsf([a, b], [3, 1], coverage=[left, full])
    wa, wb = 0.75 * 100, 0.25 * 400
    assert cp.average_position == pytest.approx(((wa * 4.5 + wb * 19.5) / (wa + wb), 4.5))
    # position None is that position: only input b covers x = 13.1, so its PSF alone
    np.testing.assert_allclose(cp.compute_kernel_image(), b.compute_kernel_image(), rtol=1e-12)
    # two disjoint corners: their mean falls in the gap between them, so the lower-weight
    # input is dropped until the position is covered (LSST's loop)
    c1, c2 = np.zeros(shape, bool), np.zeros(shape, bool)
    c1[:, :5], c2[:, 35:] = True, True
    cp2 = CoaddPsf([a, b], [1, 2], coverage=[c1, c2])
    assert cp2.average_position == pytest.approx((37.0, 4.5))
    np.testing.assert_allclose(cp2.compute_kernel_image(), b.compute_kernel_image(), rtol=1e-12)


def test_input_coverage_centroid_from_packed_bytes_matches_the_pixels():
    rng = np.random.default_rng(7)
    for shape in [(37, 53), (8, 8), (5, 1)]:  # widths with and without a partial last byte
        b = rng.random(shape) < 0.6
        c = InputCoverage.from_boolean([b, np.zeros(shape, bool)], (3, -4))
        ys, xs = np.nonzero(b)
        assert c.centroid(0) == pytest.approx((xs.mean() + 3, ys.mean() - 4, xs.size), rel=1e-14)
        x, y, n = c.centroid(1)
        assert n == 0 and np.isnan(x) and np.isnan(y)


# --------------------------------------------------------------------------- PSFEx models
def _gauss_grid(n: int, step: float, sigma: float) -> np.ndarray:
    """A circular Gaussian of width ``sigma`` (image pixels) sampled every ``step`` pixels on an
    n x n grid centred on pixel n//2 (a PSFEx basis image)."""
    c = (np.arange(n) - n // 2) * step
    return np.exp(-0.5 * (c[:, None] ** 2 + c[None, :] ** 2) / sigma**2)


def _psfex_file(path, basis, samp, degree=1, zero=(101.0, 201.0), scale=(200.0, 400.0), names=("X_IMAGE", "Y_IMAGE")):
    """A ``.psf`` file as PSFEx writes one: an empty primary, then the PSF_DATA table with the
    basis cube in its one-row PSF_MASK column and the polynomial in the header."""
    from astropy.io import fits

    n, h, w = basis.shape
    col = fits.Column(name="PSF_MASK", format=f"{n * h * w}E", dim=f"({w}, {h}, {n})", array=basis.astype(np.float32)[None])
    t = fits.BinTableHDU.from_columns([col], name="PSF_DATA")
    t.header.update({
        "LOADED": 40, "ACCEPTED": 38, "CHI2": 1.1, "POLNAXIS": 2, "POLGRP1": 1, "POLNAME1": names[0],
        "POLZERO1": zero[0], "POLSCAL1": scale[0], "POLGRP2": 1, "POLNAME2": names[1], "POLZERO2": zero[1],
        "POLSCAL2": scale[1], "POLNGRP": 1, "POLDEG1": degree, "PSF_FWHM": 4.7, "PSF_SAMP": samp,
        "PSFNAXIS": 3, "PSFAXIS1": w, "PSFAXIS2": h, "PSFAXIS3": n,
    })
    fits.HDUList([fits.PrimaryHDU(), t]).writeto(path)
    return path


def test_psfex_model_from_a_psf_file(tmp_path):
    """A PSFEx model whose width grows along x: the u term (PSFEx's second, after the constant)
    carries G(2.5) - G(2), so at u = 0 (x = POLZERO1 - 1 in 0-based pixels: PSFEx's contexts
    are 1-based) the kernel is G(2) and at u = 1 it is G(2.5), whatever y; sampled every half
    pixel it is resampled by plain decimation, so these hold to float32 rounding.  The y and
    higher terms are zero here, so a reader that took another term order would see no
    x-dependence or a y-dependence."""
    from toolkit.psf import PsfexPsf
    from toolkit.real_data import psf_from_file

    g2, g25 = _gauss_grid(41, 0.5, 2.0), _gauss_grid(41, 0.5, 2.5)
    basis = np.stack([g2, g25 - g2, np.zeros_like(g2), np.zeros_like(g2), np.zeros_like(g2), np.zeros_like(g2)])
    path = _psfex_file(tmp_path / "img.psf", basis, 0.5, degree=2)
    psf = psf_from_file(path, size=99)
    assert isinstance(psf, PsfexPsf) and psf.size == 21  # int(41 * 0.5) made odd
    assert psf_from_file(path, size=15).size == 15
    for sigma, x in ((2.0, 100.0), (2.5, 300.0)):
        want = _gauss_grid(21, 1.0, sigma)
        want /= want.sum()
        for y in (0.0, 199.0, 900.0):
            np.testing.assert_allclose(psf.compute_kernel_image((x, y)), want, atol=2e-8)
    # half way: the mixture of the two, normalised
    mid = psf.compute_kernel_image((200.0, 0.0))
    mix = 0.5 * (_gauss_grid(21, 1.0, 2.0) + _gauss_grid(21, 1.0, 2.5))
    np.testing.assert_allclose(mid, mix / mix.sum(), atol=2e-8)
    # default position: the context centre
    np.testing.assert_array_equal(psf.compute_kernel_image(), psf.compute_kernel_image((100.0, 200.0)))
    # a model sampled off the pixel grid (0.7 px) goes through PSFEx's Lanczos-3 resampling;
    # for this well-sampled Gaussian it is within 0.3 % of the peak (0.29 % measured)
    odd = PsfexPsf(_gauss_grid(41, 0.7, 2.0), 0.7, 0, (0.0, 0.0), (1.0, 1.0))
    want = _gauss_grid(21, 1.0, 2.0)
    want /= want.sum()
    assert odd.size == 29 and np.abs(odd.compute_kernel_image(size=21) - want).max() < 0.003 * want.max()


def test_psfex_files_that_are_not_understood_say_why(tmp_path):
    from toolkit.psf import PsfexPsf
    from toolkit.real_data import psf_from_file

    g = _gauss_grid(25, 1.0, 2.0)[None]
    with pytest.raises(InputError, match=r"^/\S*mag\.psf: PSFEx contexts X_IMAGE, MAG_AUTO"):
        psf_from_file(_psfex_file(tmp_path / "mag.psf", np.concatenate([g, g, g]), 1.0, names=("X_IMAGE", "MAG_AUTO")))
    with pytest.raises(InputError, match="a degree-1 polynomial in x and y has 3 terms, the basis has 2"):
        psf_from_file(_psfex_file(tmp_path / "short.psf", np.concatenate([g, g]), 1.0))
    with pytest.raises(InputError, match="pixstep must be finite and > 0"):
        PsfexPsf(g, 0.0, 0, (0, 0), (1, 1))
    with pytest.raises(InputError, match="scale non-zero"):
        PsfexPsf(g, 1.0, 0, (0, 0), (0, 1))
    from astropy.io import fits

    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column(name="A", format="E", array=[1.0])])]).writeto(tmp_path / "t.fits")
    with pytest.raises(InputError, match="no image and no PSFEx PSF_MASK table"):
        psf_from_file(tmp_path / "t.fits")


def test_webbpsf_files_give_their_detector_sampled_psf(tmp_path):
    """A WebbPSF/STPSF calc_psf file holds the PSF oversampled (OVERSAMP, OVERDIST) and at the
    detector's sampling (DET_SAMP, DET_DIST): psf_from_file takes DET_DIST (distortion
    included), else DET_SAMP; an oversampled image alone would pose as a PSF four times too
    wide, so it is refused by name."""
    from astropy.io import fits

    from toolkit.real_data import psf_from_file

    def hdu(sigma, step, name, primary=False, oversamp=4):
        img = _gauss_grid(41 if step == 1.0 else 161, step, sigma)
        h = (fits.PrimaryHDU if primary else fits.ImageHDU)(img.astype(np.float32))
        h.header["EXTNAME"] = name
        h.header["OVERSAMP"] = oversamp if name.startswith("OVER") else 1
        h.header["DET_SAMP"] = oversamp
        return h

    full = [hdu(2.0, 0.25, "OVERSAMP", primary=True), hdu(2.0, 1.0, "DET_SAMP"), hdu(2.2, 0.25, "OVERDIST"), hdu(2.2, 1.0, "DET_DIST")]
    fits.HDUList(full).writeto(tmp_path / "webbpsf.fits")
    want = _gauss_grid(25, 1.0, 2.2)
    np.testing.assert_allclose(psf_from_file(tmp_path / "webbpsf.fits").compute_kernel_image(), want / want.sum(), rtol=1e-5, atol=1e-9)
    fits.HDUList(full[:2]).writeto(tmp_path / "nodist.fits")
    want = _gauss_grid(25, 1.0, 2.0)
    np.testing.assert_allclose(psf_from_file(tmp_path / "nodist.fits").compute_kernel_image(), want / want.sum(), rtol=1e-5, atol=1e-9)
    fits.HDUList(full[:1]).writeto(tmp_path / "over.fits")
    with pytest.raises(InputError, match=r"^PSF file .*over.fits: its image \(OVERSAMP\) is oversampled 4x relative to the detector"):
        psf_from_file(tmp_path / "over.fits")


@pytest.mark.parametrize("samp", ["0.5", "0.7"])
def test_psfex_model_reproduces_psfex_own_snapshots(samp):
    """The real thing: PSFEx 3.21.1 fitted a degree-2 model to a simulated star field
    (tests/data/psfex, made by make_reference.py there) and wrote its SNAPSHOTS_IMRES check
    image, the model at a 3x3 grid of positions (u, v = -1/3, 0, 1/3 of the context scale
    about its centre) resampled to image pixels by PSFEx itself.  PsfexPsf read from the .psf
    file must give the same kernels: exactly for 0.5-px sampling (decimation) and to float32
    rounding for 0.7 px (Lanczos-3), measured 1e-17 and 2e-7 of the peak.  A transposed or
    reordered polynomial misses by ~1 %."""
    from pathlib import Path

    from astropy.io import fits

    from toolkit.real_data import psf_from_file

    here = Path(__file__).parent / "data" / "psfex"
    psf = psf_from_file(here / f"sim_s{samp}.psf", size=99)
    snaps = fits.getdata(here / f"sim_s{samp}_snapshots.fits").astype(np.float64)
    nsnap = 3
    w = snaps.shape[0] // nsnap
    for j in range(nsnap):
        for i in range(nsnap):
            u, v = (i - 1) / nsnap, (j - 1) / nsnap
            # the context coordinates are SExtractor's 1-based X_IMAGE, Y_IMAGE
            x, y = u * psf.scale[0] + psf.zero[0] - 1.0, v * psf.scale[1] + psf.zero[1] - 1.0
            ref = snaps[j * w:(j + 1) * w, i * w:(i + 1) * w]
            ref = ref / ref.sum()
            ours = psf.compute_kernel_image((x, y), size=w)
            assert np.abs(ours - ref).max() < 1e-6 * ref.max(), (i, j)


def _adaptive_moments_reference(img, max_iter=100, tol=1e-8):
    # the textbook iteration in plain numpy array passes, every pixel weighted (what the
    # compiled passes must reproduce)
    ny, nx = img.shape
    y, x = np.mgrid[0:ny, 0:nx].astype(float)
    t = img.sum()
    xc, yc = (img * x).sum() / t, (img * y).sum() / t
    dx, dy = x - xc, y - yc
    cov = np.array([[(img * dx * dx).sum(), (img * dx * dy).sum()], [(img * dx * dy).sum(), (img * dy * dy).sum()]]) / t
    for _ in range(max_iter):
        inv = np.linalg.inv(cov)
        w = np.exp(-0.5 * (inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy))
        iw = img * w
        s = iw.sum()
        xc, yc = (iw * x).sum() / s, (iw * y).sum() / s
        dx, dy = x - xc, y - yc
        mw = np.array([[(iw * dx * dx).sum(), (iw * dx * dy).sum()], [(iw * dx * dy).sum(), (iw * dy * dy).sum()]]) / s
        new = np.linalg.inv(np.linalg.inv(mw) - inv)
        done = np.max(np.abs(new - cov)) < tol * max(1.0, np.max(np.abs(cov)))
        cov = new
        if done:
            break
    return cov[0, 0], cov[1, 1], cov[0, 1]


def test_adaptive_moments_recover_an_elliptical_gaussian_and_match_the_plain_iteration():
    """For an off-centre elliptical Gaussian the adaptive moments are its covariance (to the
    pixel sampling's accuracy); for a compact profile in a big stamp (whose far pixels the
    compiled pass skips), a Moffat and a noisy stamp they equal the plain numpy iteration's to
    round-off."""
    from toolkit.psf import adaptive_moments, determinant_radius

    yy, xx = np.mgrid[:61, :61].astype(float)
    cxx, cyy, cxy = 9.0, 4.0, 1.5
    inv = np.linalg.inv([[cxx, cxy], [cxy, cyy]])
    dx, dy = xx - 30.3, yy - 29.8
    g = np.exp(-0.5 * (inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy))
    ixx, iyy, ixy = adaptive_moments(g)
    assert np.allclose([ixx, iyy, ixy], [cxx, cyy, cxy], rtol=0, atol=1e-3)
    assert determinant_radius(g) == pytest.approx((cxx * cyy - cxy**2) ** 0.25, rel=1e-4)
    rng = np.random.default_rng(5)
    r2 = (xx - 30) ** 2 + (yy - 30) ** 2
    stamps = [np.exp(-0.5 * r2 / 0.8**2), (1 + r2 / 4.0) ** -2.5, g + rng.normal(0, 1e-3, g.shape)]
    for st in stamps:
        assert np.allclose(adaptive_moments(st), _adaptive_moments_reference(st), rtol=1e-9, atol=1e-12)
