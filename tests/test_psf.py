import numpy as np
import pytest

from toolkit import CoaddPsf, DoubleGaussianPsf, GaussianPsf, ImagePsf, InputError, VaryingGaussianPsf


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
