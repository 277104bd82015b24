"""Real-data loading: variance, SAT/NO_DATA, PSF measurement, photometric scales, noise
correlation, and the shipped DECam/JWST sets."""

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage

from toolkit import Exposure, GaussianPsf, InputError
from toolkit.errors import FitsReadError
from toolkit.real_data import (
    apply_scales, estimate_variance, find_psf_stars, header_gain, header_saturation, load_image, measure_psf,
    noise_correlation_factor, photometric_scales,
)
from toolkit.sim import render_points


def star_field(n_stars=30, size=256, sigma=2.0, sky_sigma=10.0, seed=0, flux=(2e4, 2e5), gain=None):
    """Isolated Gaussian stars on a grid (so the PSF finder has enough of them) plus noise."""
    rng = np.random.default_rng(seed)
    k = int(np.ceil(np.sqrt(n_stars)))
    g = np.linspace(30, size - 30, k)
    xx, yy = np.meshgrid(g, g)
    x = xx.ravel()[:n_stars] + rng.uniform(-0.5, 0.5, n_stars)
    y = yy.ravel()[:n_stars] + rng.uniform(-0.5, 0.5, n_stars)
    f = rng.uniform(*flux, n_stars)
    clean = render_points((size, size), x, y, f, sigma)
    noisy = clean + rng.normal(0, sky_sigma, clean.shape)
    if gain is not None:
        noisy += rng.normal(0, np.sqrt(np.clip(clean, 0, None) / gain))
    return noisy, clean, (x, y, f)


def write_fits(path, data, **cards):
    hdr = fits.Header()
    for k, v in cards.items():
        hdr[k] = v
    fits.PrimaryHDU(data.astype(np.float32), hdr).writeto(path)
    return path


def test_variance_has_sky_and_source_terms():
    img, clean, _ = star_field(n_stars=9, gain=2.0, seed=1)
    var, sky = estimate_variance(img, gain=2.0)
    blank = clean < 1e-3
    # sky term: the rms of 10 -> 100, to the accuracy of a 32-px box estimate (~5 %)
    assert np.median(var[blank]) == pytest.approx(100.0, rel=0.05)
    assert abs(np.median(sky[blank])) < 1.0
    peak = clean > 0.5 * clean.max()
    expected = 100.0 + clean[peak] / 2.0
    # the source term uses the noisy image, so pixel by pixel it scatters by ~sigma/gain
    assert np.median(var[peak] / expected) == pytest.approx(1.0, rel=0.05)


def test_sky_variance_is_unbiased():
    """Pure Gaussian noise (rms 10, 512^2) through the box estimator: the sky variance must be
    100 to within its own scatter.  Each 32^2 box's rms scatters by ~1 % (2 % in variance), and
    the median over the 256 boxes (3x3 median-filtered, so ~28 independent) by ~0.5 %: 1.5 % is
    3 sigma.  The clipped standard deviation alone gave 96.9 (3-sigma clipping stops at 2.95
    sigma, see clipped_std_ratio)."""
    for seed in (0, 1, 2):
        img = np.random.default_rng(seed).normal(100.0, 10.0, (512, 512))
        var, _ = estimate_variance(img)
        assert np.median(var) == pytest.approx(100.0, rel=0.015)


def test_clipped_std_ratio_matches_astropy_clipping():
    """astropy's iterated 3-sigma clipping of 10^6 unit Gaussians leaves a std of
    clipped_std_ratio(3) (std error ~0.0008 at this size: 4 sigma is 0.003); at 2.5 sigma too."""
    from astropy.stats import sigma_clipped_stats

    from toolkit.stats import clipped_std_ratio

    x = np.random.default_rng(0).normal(size=1_000_000)
    for k, expect in ((3.0, 0.98485), (2.5, 0.93656)):
        assert clipped_std_ratio(k) == pytest.approx(expect, abs=1e-5)
        _, _, std = sigma_clipped_stats(x, sigma=k, maxiters=20)
        assert std == pytest.approx(clipped_std_ratio(k), abs=0.003)


def test_clipped_noise_is_sigma_clipped_stats_corrected():
    """clipped_noise keeps sigma_clipped_stats' selection (its mean, median and std, the std
    divided by clipped_std_ratio and squared), and with 1 % of large outliers it returns the
    noise's variance: 4.0 to within its scatter (10^5 values: ~0.5 % in variance; 2 % is 4
    sigma), where the clipped sample's own variance is 3 % low."""
    from astropy.stats import sigma_clipped_stats

    from toolkit.stats import clipped_noise, clipped_std_ratio

    rng = np.random.default_rng(3)
    x = rng.normal(10.0, 2.0, 100_000)
    x[::100] += rng.uniform(20, 200, 1000)  # sources and cosmic rays
    mean, median, var = clipped_noise(x, 3.0, maxiters=10)
    ref = sigma_clipped_stats(x, sigma=3.0, maxiters=10)
    assert (mean, median) == pytest.approx(ref[:2], rel=1e-12)
    assert var == pytest.approx((ref[2] / clipped_std_ratio(3.0)) ** 2, rel=1e-12)
    assert var == pytest.approx(4.0, rel=0.02) and ref[2] ** 2 < 0.975 * 4.0
    assert np.isnan(clipped_noise(np.array([]))[2])


def test_header_gain_and_saturation():
    assert header_gain({"GAINA": 4.0, "GAINB": 3.0}) == pytest.approx(3.5)
    assert header_gain({"GAIN": 2.0, "GAINA": 9.0}) == 2.0
    assert header_gain({}) is None
    with pytest.raises(InputError, match="GAIN"):
        header_gain({"GAIN": -1})
    assert header_saturation({"SATURATA": 46000.0, "SATURATB": 42000.0, "AVSKY": 4000.0}) == pytest.approx(38000.0)
    assert header_saturation({"SATURATE": 1000.0}) == 1000.0


@pytest.mark.parametrize("method, n_stars", [("epsf", 30), ("moffat", 6), ("gaussian", 6)])
def test_measured_psf_matches_the_stars(method, n_stars):
    img, _, _ = star_field(n_stars=n_stars, sigma=2.0, seed=2)
    var = np.full(img.shape, 100.0)
    psf = measure_psf(img, var, size=21, method=method)
    k = psf.compute_kernel_image()
    assert k.shape == (21, 21) and k.sum() == pytest.approx(1.0)
    # determinant radius of the true (pixel-integrated sigma=2) PSF
    true = GaussianPsf(2.0, size=21).determinant_radius()
    assert psf.determinant_radius() == pytest.approx(true, rel=0.05)
    c = np.array([(k * np.arange(21)[None, :]).sum(), (k * np.arange(21)[:, None]).sum()])
    assert np.allclose(c, 10.0, atol=0.05)  # centred (ZOGY checks centroids to 0.2 px)


def test_measured_psf_from_a_shallow_or_crowded_cutout():
    """Without two isolated stars of peak S/N >= 20, the Moffat fit falls back to fainter
    stars (peak S/N 12-18), or to stars whose fainter neighbours lie >= 3 FWHM away with the
    neighbours' pixels left out: either way the radius is the true one."""
    true = GaussianPsf(2.0, size=21).determinant_radius()
    # peak S/N s of a sigma-2 star on sky sigma 10: flux = s * 10 * 2 pi sigma^2
    rng = np.random.default_rng(5)
    faint, _, _ = star_field(n_stars=9, sigma=2.0, seed=5, flux=(12 * 10 * 8 * np.pi, 18 * 10 * 8 * np.pi))
    var = np.full(faint.shape, 100.0)
    assert len(find_psf_stars(faint, var, fwhm=4.0, size=25, min_snr=20.0)) < 2
    psf = measure_psf(faint, var, size=21)
    assert psf.determinant_radius() == pytest.approx(true, rel=0.05)
    with pytest.raises(InputError, match="isolated"):
        measure_psf(faint, var, size=21, method="epsf")  # an ePSF needs the isolated bright stars
    # bright stars, each with a companion of 30 % of its flux 14.8 px away (inside its box)
    x, y = np.meshgrid(np.linspace(30, 200, 3), np.linspace(30, 200, 3))
    x, y = x.ravel() + rng.uniform(-0.5, 0.5, 9), y.ravel() + rng.uniform(-0.5, 0.5, 9)
    f = rng.uniform(5e4, 1e5, 9)
    clean = render_points((256, 256), np.r_[x, x + 10.5], np.r_[y, y + 10.5], np.r_[f, 0.3 * f], 2.0)
    crowded = clean + rng.normal(0, 10.0, clean.shape)
    assert len(find_psf_stars(crowded, var, fwhm=4.0, size=25, min_snr=20.0)) < 2
    assert len(find_psf_stars(crowded, var, fwhm=4.0, size=25, min_snr=20.0, min_separation=12.0)) >= 2
    psf = measure_psf(crowded, var, size=21)
    assert psf.determinant_radius() == pytest.approx(true, rel=0.05)
    # a neighbour 7 px away (inside 2.5 FWHM, where photutils >= 3 hides fainter peaks by
    # default) still disqualifies the star, and one just outside the box spills in
    pair = render_points((128, 128), [60.0, 67.0, 40.0, 40.0 + 13.5], [64.0, 64.0, 30.0, 30.0], [8e4, 2.4e4, 8e4, 2.4e4], 2.0) + rng.normal(0, 10.0, (128, 128))
    assert len(find_psf_stars(pair, np.full(pair.shape, 100.0), fwhm=4.7, size=21, min_snr=20.0)) == 0


def test_load_image_masks_and_psf(tmp_path):
    img, clean, _ = star_field(n_stars=20, gain=4.0, seed=3, flux=(2e4, 3e5))
    img[5, 7] = np.nan
    sat_level = 0.6 * clean.max()
    path = write_fits(tmp_path / "img.fits", img, GAIN=4.0, SATURATE=sat_level + 500.0, AVSKY=500.0)
    e = load_image(path, psf_size=21)
    assert e.psf is not None and e.metadata["GAIN"] == 4.0
    sat = (e.mask & e.bitmask("SAT")) != 0
    nod = (e.mask & e.bitmask("NO_DATA")) != 0
    assert nod[5, 7] and nod.sum() == 1 and e.image[5, 7] == 0 and np.isfinite(e.variance).all()
    assert sat[img >= sat_level].all()  # SATURATE - AVSKY, grown by one pixel
    assert sat.sum() <= ndimage.binary_dilation(img >= sat_level).sum()
    # PSF stars avoid saturated ones; the radius is still the true one
    assert e.psf.determinant_radius() == pytest.approx(GaussianPsf(2.0, size=21).determinant_radius(), rel=0.05)


def test_load_image_errors(tmp_path):
    bad = tmp_path / "bad.fits"
    bad.write_text("not a fits file")
    with pytest.raises(FitsReadError):
        load_image(bad)
    blank = write_fits(tmp_path / "blank.fits", np.random.default_rng(0).normal(0, 1, (128, 128)), GAIN=1.0)
    with pytest.raises(InputError, match="stars"):
        load_image(blank)
    with pytest.raises(InputError, match="odd"):
        measure_psf(np.zeros((64, 64)), np.ones((64, 64)), size=20)
    with pytest.raises(InputError, match="noise_kind"):
        load_image(blank, noise=blank, noise_kind="rms")


def test_photometric_scales_recover_a_throughput_change():
    img, _, _ = star_field(n_stars=16, seed=4)
    var = np.full(img.shape, 100.0)
    a = Exposure(img, var, psf=GaussianPsf(2.0, size=21))
    b = Exposure(img * 0.8 + np.random.default_rng(5).normal(0, 8, img.shape), var * 0.64, psf=GaussianPsf(2.0, size=21))
    s = photometric_scales([a, b])
    assert s[0] == 1.0 and s[1] == pytest.approx(1.25, rel=0.01)
    scaled = apply_scales([a, b], s)
    assert scaled[1].variance[0, 0] == pytest.approx(0.64 * 100 * s[1] ** 2, rel=1e-6)
    assert b.variance[0, 0] == pytest.approx(64.0)  # input untouched
    for bad in (2, -1, 0.5):
        with pytest.raises(InputError, match="reference must be the index of one of the 2 exposures"):
            photometric_scales([a, b], reference=bad)


def test_noise_correlation_factor_white_and_correlated():
    rng = np.random.default_rng(6)
    psf = GaussianPsf(2.0, size=21)
    white = [Exposure(rng.normal(0, 1, (256, 256)), np.ones((256, 256)), psf=psf) for _ in range(4)]
    f_white = noise_correlation_factor(white)
    # std of a clipped variance ratio over ~40k correlated pixels: a few percent
    assert f_white == pytest.approx(1.0, abs=0.08)
    # two 1024^2 pairs: the factor scatters by 0.008 per pair over seeds, so 0.006 for their
    # median (mean); 3 sigma is 0.018, which the uncorrected clipped std (0.966) fails
    big = [Exposure(rng.normal(0, 1, (1024, 1024)), np.ones((1024, 1024)), psf=psf) for _ in range(4)]
    assert noise_correlation_factor(big) == pytest.approx(1.0, abs=0.018)
    smooth = []
    for _ in range(4):
        n = ndimage.gaussian_filter(rng.normal(0, 1, (256, 256)), 0.8)
        smooth.append(Exposure(n, np.full(n.shape, n.var()), psf=psf))  # right per pixel, not per PSF
    assert noise_correlation_factor(smooth) > 1.8


def test_noise_correlation_factor_of_a_pair_with_sources_in_different_units():
    """A simulated ZOGY pair (stars, galaxies, transients; white noise) with different PSFs and
    the science image in other units than the template: each image is calibrated by its
    photo_calib and convolved with the other's PSF, so the static sources cancel and the
    factor is ~1 (over seeds 0-9: 0.988-1.028, sd 0.010; 0.05 is 5 sd), the same whatever
    units the science image is in.  (Without the calibration the 1.3x flux mismatch left the
    sources in the difference: 1.04.)"""
    from toolkit.sim import simulate_pair

    p = simulate_pair(size=512, seed=1)
    s, r = p.science, p.reference
    f = noise_correlation_factor([s, r])
    assert f == pytest.approx(1.0, abs=0.05)
    k = np.float32(s.photo_calib / 40.0)
    counts = Exposure(s.image * k, s.variance * k**2, s.mask, s.mask_planes, psf=s.psf, photo_calib=40.0)
    assert noise_correlation_factor([counts, r]) == pytest.approx(f, rel=1e-4)


def test_shipped_data_load():
    from toolkit.datasets import decam_paths, jwst_paths, load_jwst_pair

    d = decam_paths()
    assert [len(v) for v in d.values()] == [5, 5]
    h = fits.getheader(d["OBS04"][0])
    assert header_gain(h) == pytest.approx(3.984, rel=1e-3) and header_saturation(h) < h["SATURATE"]
    assert all(p.exists() for role in jwst_paths().values() for p in role.values())
    sci, ref = load_jwst_pair(psf_size=51)
    assert sci.shape == ref.shape == (900, 900)
    assert sci.psf.compute_kernel_image().shape == (51, 51)
    assert 1.5 < sci.psf.determinant_radius() * 2.3548 < 2.5  # F200W at 0.031"/px


def test_jwst_layout_brings_its_own_noise_map(tmp_path):
    """A JWST pipeline file (image in SCI, its 1-sigma error in ERR, more extensions after):
    load_image takes ERR as the noise map when none is given (ERR^2 is the variance, no sky
    estimate), says so in the metadata, and a map given by the user still wins; a plain image
    without ERR still gets the estimated variance."""
    from toolkit.real_data import load_image

    rng = np.random.default_rng(5)
    sci = rng.normal(0.0, 0.3, (96, 96)).astype(np.float32)
    sci[40:43, 50:53] += 50.0  # a star, so the PSF can be measured
    err = np.full(sci.shape, 0.3, np.float32)
    err[:, :10] = 0.6  # not what a sky estimate would give
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(sci, name="SCI"), fits.ImageHDU(err, name="ERR"), fits.ImageHDU(np.ones_like(sci), name="WHT")]
    fits.HDUList(hdus).writeto(tmp_path / "i2d.fits")
    psf = GaussianPsf(1.5, size=15)
    e = load_image(tmp_path / "i2d.fits", psf=psf, subtract_sky=False)
    assert e.metadata["DSNOISE"] == "ERR"
    np.testing.assert_allclose(e.variance, err.astype(np.float64) ** 2, rtol=1e-6)
    fits.writeto(tmp_path / "other_err.fits", np.full(sci.shape, 0.5, np.float32))
    given = load_image(tmp_path / "i2d.fits", psf=psf, noise=tmp_path / "other_err.fits", subtract_sky=False)
    assert "DSNOISE" not in given.metadata and np.allclose(given.variance, 0.25)
    fits.writeto(tmp_path / "plain.fits", sci)
    plain = load_image(tmp_path / "plain.fits", psf=psf, gain=1e6)  # no source term to speak of
    # the sky variance 0.09 from nine 32^2 boxes: over 20 seeds 0.966-1.015 of it (sd 1.3 %);
    # 5 % is ~4 sd
    assert "DSNOISE" not in plain.metadata and np.median(plain.variance) == pytest.approx(0.09, rel=0.05)
