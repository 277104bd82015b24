import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from toolkit.cli import main
from toolkit.io import read_exposure


def test_simulate_writes_readable_dataset(tmp_path):
    assert main(["simulate", "--kind", "stack", "--size", "64", "--epochs", "3", "--seed", "1", "--out", str(tmp_path / "s")]) == 0
    warps = sorted((tmp_path / "s").glob("direct_warp_*.fits"))
    assert len(warps) == 3
    e = read_exposure(warps[0])
    assert e.shape == (64, 64) and e.psf is not None and e.metadata["BUNIT"] == "nJy"
    assert main(["simulate", "--kind", "pair", "--size", "128", "--out", str(tmp_path / "p")]) == 0
    assert read_exposure(tmp_path / "p" / "science.fits").photo_calib != 1.0


def test_console_script_installed(tmp_path):
    exe = shutil.which("diffstack") or str(__import__("pathlib").Path(sys.executable).parent / "diffstack")
    r = subprocess.run([exe, "simulate", "--size", "48", "--epochs", "2", "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert np.isfinite(read_exposure(tmp_path / "direct_warp_000.fits").image).any()


def test_bad_input_one_line_error(tmp_path, capsys):
    assert main(["simulate", "--size", "8", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and "size must be at least" in err[-1]
    # a FITS file (or a folder) where the config belongs, directly or through config.load, and
    # a mask plane the config misspells: one line naming the file or the field
    assert main(["simulate", "--kind", "pair", "--size", "64", "--out", str(tmp_path / "p")]) == 0
    capsys.readouterr()
    sci, tmpl = str(tmp_path / "p" / "science.fits"), str(tmp_path / "p" / "reference.fits")
    (tmp_path / "load.py").write_text("config.load('p/science.fits')\n")
    (tmp_path / "typo.py").write_text("config.ignoreMaskPlanes = ['BAD', 'EGDE']\n")
    for cfg, match in ((sci, "science.fits is not text"), (str(tmp_path / "p"), "is a directory"),
                       (str(tmp_path / "load.py"), "load.py, line 1: config.load: file .*science.fits is not text"),
                       (str(tmp_path / "typo.py"), "ignoreMaskPlanes: unknown mask plane 'EGDE'")):
        assert main(["zogy", sci, tmpl, "--config", cfg, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), err
    # an --out that is a file (or below one) is named before any work, for every command
    for argv in (["zogy", sci, tmpl, "--out", sci], ["coadd", sci, "--out", sci + "/sub"], ["simulate", "--out", tmpl]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert re.search(r"--out .*\.fits exists and is not a directory", err[-1]), err
    assert not (tmp_path / "o").exists()


def test_cli_coadd_and_zogy_equal_the_api(tmp_path):
    """An exported config run through the CLI gives the same arrays as the Python API."""
    from toolkit.cli import main
    from toolkit.compare_warp import CompareWarpPipeline
    from toolkit.config import CompareWarpConfig, ZogyConfig
    from toolkit.io import read_exposure, read_mask_fits
    from toolkit.zogy import zogy

    assert main(["simulate", "--size", "80", "--epochs", "4", "--seed", "5", "--out", str(tmp_path / "sim")]) == 0
    cfg = CompareWarpConfig()
    cfg.spatialThreshold = 0.3
    cfg.detect.thresholdValue = 6.0
    cfg.to_pex_override(path=tmp_path / "cw.py")
    assert main(["coadd", str(tmp_path / "sim"), "--psf-matched", str(tmp_path / "sim"), "--config", str(tmp_path / "cw.py"), "--out", str(tmp_path / "co")]) == 0
    direct = [read_exposure(p) for p in sorted((tmp_path / "sim").glob("direct_warp_*.fits"))]
    matched = [read_exposure(p) for p in sorted((tmp_path / "sim").glob("psf_matched_warp_*.fits"))]
    api = CompareWarpPipeline(direct, matched, config=cfg).run()
    got = read_exposure(tmp_path / "co" / "coadd.fits")
    np.testing.assert_array_equal(got.image, api.coadd.image)
    np.testing.assert_array_equal(got.variance, api.coadd.variance)
    np.testing.assert_array_equal(got.mask, api.coadd.mask)
    m, planes = read_mask_fits(tmp_path / "co" / "artifact_mask_002.fits")
    np.testing.assert_array_equal((m & planes.bitmask(["CLIPPED"])) != 0, api.artifact_masks[2]["CLIPPED"])
    # bright-object regions from a table file, with doMaskBrightObjects set by a -c override
    from astropy.table import Table

    table = Table(rows=[("box", 30.0, 40.0, 9.0, 5.0)], names=("type", "x", "y", "width", "height"))
    table.write(tmp_path / "bright.ecsv")
    assert main(["coadd", str(tmp_path / "sim"), "--psf-matched", str(tmp_path / "sim"), "--config", str(tmp_path / "cw.py"), "-c", "doMaskBrightObjects=True", "--bright-objects", str(tmp_path / "bright.ecsv"), "--out", str(tmp_path / "bo")]) == 0
    cfg.doMaskBrightObjects = True
    api = CompareWarpPipeline(direct, matched, config=cfg, bright_objects=table).run()
    got = read_exposure(tmp_path / "bo" / "coadd.fits")
    np.testing.assert_array_equal(got.mask, api.coadd.mask)
    assert got.get_plane("BRIGHT_OBJECT").sum() == 10 * 6  # LSST's box: int(x - w/2) .. int(x + w/2) inclusive
    assert main(["coadd", str(tmp_path / "sim"), "--bright-objects", str(tmp_path / "nothere.ecsv"), "--out", str(tmp_path / "bx")]) == 2
    # the plain AssembleCoadd task, MEANCLIP by its class default, with an override
    from toolkit.coadd import assemble_coadd
    from toolkit.config import AssembleCoaddConfig

    assert main(["coadd", str(tmp_path / "sim"), "--task", "assemble", "-c", "sigmaClip=2.5", "--out", str(tmp_path / "as")]) == 0
    acfg = AssembleCoaddConfig()
    acfg.sigmaClip = 2.5
    want = assemble_coadd(direct, acfg)
    got = read_exposure(tmp_path / "as" / "coadd.fits")
    np.testing.assert_array_equal(got.image, want.coadd.image)
    np.testing.assert_array_equal(got.mask, want.coadd.mask)

    assert main(["simulate", "--kind", "pair", "--size", "96", "--seed", "2", "--out", str(tmp_path / "pair")]) == 0
    zc = ZogyConfig()
    zc.doAstrometricNoise = True
    (tmp_path / "z.yaml").write_text(zc.to_yaml())
    assert main(["zogy", str(tmp_path / "pair" / "science.fits"), str(tmp_path / "pair" / "reference.fits"), "--config", str(tmp_path / "z.yaml"), "--out", str(tmp_path / "z")]) == 0
    res = zogy(read_exposure(tmp_path / "pair" / "science.fits"), read_exposure(tmp_path / "pair" / "reference.fits"), zc)
    np.testing.assert_array_equal(read_exposure(tmp_path / "z" / "diff.fits").image, res.diff.image)
    from astropy.io import fits

    np.testing.assert_array_equal(fits.getdata(tmp_path / "z" / "scorr.fits"), res.scorr.astype(np.float32))


def test_cli_config_commands(tmp_path, capsys):
    from toolkit.cli import main
    from toolkit.config import config_from_file, CompareWarpConfig, preset

    assert main(["config", "export", "--preset", "hsc", "--format", "yaml", "--out", str(tmp_path / "h.yaml")]) == 0
    assert config_from_file(tmp_path / "h.yaml", CompareWarpConfig) == preset("hsc")
    capsys.readouterr()
    assert main(["config", "diff", "lsst", str(tmp_path / "h.yaml")]) == 0
    out = capsys.readouterr().out
    assert "detect.thresholdValue" in out or "badMaskPlanes" in out
    assert main(["config", "diff", "hsc", str(tmp_path / "h.yaml")]) == 0
    assert capsys.readouterr().out.strip() == "(identical)"
    import pytest

    with pytest.raises(SystemExit) as exc:
        main(["config", "show", "--preset", "nonsense"])
    assert exc.value.code == 2
    assert main(["zogy", str(tmp_path / "missing.fits"), str(tmp_path / "missing.fits"), "--out", str(tmp_path)]) == 2


def test_cli_pipetask_style_overrides(tmp_path, capsys):
    """``-c [label:]field=value`` as pipetask reads it, after --config, in order; a bad value
    is a one-line error naming the option."""
    from toolkit.cli import main
    from toolkit.config import CompareWarpConfig, ZogyConfig, config_from_file

    out = tmp_path / "cw.py"
    args = ["config", "export", "--preset", "hsc", "--out", str(out), "-c", "assembleCoadd:maxNumEpochs=3",
            "-c", "badMaskPlanes=[NO_DATA, BAD]", "-c", "detect.thresholdValue=6", "-c", "maxNumEpochs=4"]
    assert main(args) == 0
    cfg = config_from_file(out, CompareWarpConfig)
    assert cfg.maxNumEpochs == 4 and cfg.badMaskPlanes == ["NO_DATA", "BAD"]
    assert cfg.detect.thresholdValue == 6.0 and isinstance(cfg.detect.thresholdValue, float)
    assert "config.detect.thresholdValue = 6.0" in out.read_text()
    assert main(["config", "export", "--preset", "zogy", "--out", str(tmp_path / "z.py"), "-c", "doFitFluxRatio=True"]) == 0
    # a diffstack-only option is no LSST field: not exported as one, but said in a comment
    text = (tmp_path / "z.py").read_text()
    assert "config.doFitFluxRatio" not in text and "#   doFitFluxRatio = True" in text
    assert not config_from_file(tmp_path / "z.py", ZogyConfig).doFitFluxRatio
    capsys.readouterr()
    assert main(["config", "show", "-c", "maxNumEpochs=lots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "-c 'maxNumEpochs=lots'" in err[0] and "integer" in err[0]
    assert main(["config", "show", "-c", "maxNumEpochs"]) == 2
    assert "expected [label:]field=value" in capsys.readouterr().err


def test_pipetask_value_reads_strings_as_pipetask_does():
    from toolkit.config import pipetask_value

    assert pipetask_value("3") == 3 and pipetask_value("-2.5") == -2.5 and pipetask_value("1e-3") == 1e-3
    assert pipetask_value("True") is True and pipetask_value("true") == "true"  # a bare name is its text
    assert pipetask_value("[NO_DATA, 'BAD']") == ["NO_DATA", "BAD"] and pipetask_value("(10000, 200)") == (10000, 200)
    assert pipetask_value("s3://bucket/x.py") == "s3://bucket/x.py"  # does not parse: stays the string
    assert pipetask_value("__import__('os')") == "__import__('os')"  # calls are not evaluated
    assert pipetask_value(["3", "BAD", 4]) == [3, "BAD", 4] and pipetask_value({"a": "2"}) == {"a": 2}


def test_cli_zogy_on_plain_fits_images(tmp_path, capsys):
    """Plain FITS images (no VARIANCE/MASK/PSF extensions) go through real_data.load_image, as a
    notebook would load them: the CLI's arrays equal the API's; the shipped JWST pair's noise maps
    and WebbPSF stamps are taken from the options; errors name the file and the option."""
    from astropy.io import fits

    from toolkit.datasets import decam_paths, jwst_paths
    from toolkit.real_data import load_image
    from toolkit.zogy import zogy

    a, b = decam_paths()["OBS18"][0], decam_paths()["OBS04"][0]
    assert main(["zogy", str(a), str(b), "--out", str(tmp_path / "d")]) == 0
    assert "plain FITS image" in capsys.readouterr().err
    res = zogy(load_image(a), load_image(b))
    np.testing.assert_array_equal(read_exposure(tmp_path / "d" / "diff.fits").image, res.diff.image)
    np.testing.assert_array_equal(fits.getdata(tmp_path / "d" / "scorr.fits"), res.scorr.astype(np.float32))

    j = jwst_paths()
    s, t = j["science"], j["template"]
    args = ["zogy", str(s["image"]), str(t["image"]), "--science-noise", str(s["noise"]), "--template-noise", str(t["noise"]), "--science-psf", str(s["psf"]), "--template-psf", str(t["psf"]), "--psf-size", "51", "--out", str(tmp_path / "j")]
    assert main(args) == 0
    res = zogy(load_image(s["image"], noise=s["noise"], psf=s["psf"], psf_size=51), load_image(t["image"], noise=t["noise"], psf=t["psf"], psf_size=51))
    assert res.diff.psf.compute_kernel_image().shape == (51, 51)
    np.testing.assert_array_equal(read_exposure(tmp_path / "j" / "diff.fits").image, res.diff.image)

    # a starless plain image: the error names the file and the option that would help
    fits.PrimaryHDU(np.random.default_rng(0).normal(100, 5, (96, 96)).astype(np.float32)).writeto(tmp_path / "flat.fits")
    assert main(["zogy", str(tmp_path / "flat.fits"), str(b), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "flat.fits" in err and "--science-psf" in err
    # the afw layout carries its own variance and PSF: the plain-image options are refused
    assert main(["zogy", str(tmp_path / "d" / "diff.fits"), str(b), "--science-psf", str(s["psf"]), "--out", str(tmp_path / "g")]) == 2
    assert "plain FITS images" in capsys.readouterr().err


def test_cli_scale_fluxes_matches_the_notebook_recipe(tmp_path, capsys):
    """``--scale-fluxes`` does what notebook 04 does by hand (photometric_scales, apply_scales) for
    plain images whose zero points differ: a template made 1.7x brighter is put back on the
    science image's scale, and a coadd of three DECam exposures equals the API's."""
    from astropy.io import fits

    from toolkit.compare_warp import CompareWarpPipeline
    from toolkit.datasets import decam_paths
    from toolkit.real_data import apply_scales, load_image, photometric_scales
    from toolkit.zogy import zogy

    def brighter(src, factor, dst):  # the file with another zero point: pixels, SATURATE, 1/GAIN x factor
        with fits.open(src) as hdul:
            data, hdr = hdul[0].data.astype(np.float32) * np.float32(factor), hdul[0].header.copy()
        hdr["SATURATE"] = hdr["SATURATE"] * factor
        hdr["GAIN"] = hdr["GAIN"] / factor
        fits.PrimaryHDU(data, hdr).writeto(dst)
        return dst

    a, b = decam_paths()["OBS18"][0], decam_paths()["OBS04"][0]
    brighter(b, 1.7, tmp_path / "bright.fits")
    assert main(["zogy", str(a), str(tmp_path / "bright.fits"), "--scale-fluxes", "--out", str(tmp_path / "z")]) == 0
    err = capsys.readouterr().err
    sci, tmpl = load_image(a), load_image(tmp_path / "bright.fits")
    s = photometric_scales([sci, tmpl])[1]
    assert f"bright.fits {s:.4f}" in err
    # the factor is the unscaled pair's divided by 1.7 (aperture photometry is linear)
    assert abs(s * 1.7 / photometric_scales([sci, load_image(b)])[1] - 1) < 1e-4
    api = zogy(sci, apply_scales([tmpl], [s])[0])
    got = read_exposure(tmp_path / "z" / "diff.fits")
    np.testing.assert_array_equal(got.image, api.diff.image)
    # unscaled, the 1.7x template leaves its stars in D; scaled, D at the bright stars is ~noise
    unscaled = zogy(sci, tmpl)
    stars = sci.image > 50 * np.sqrt(sci.variance)
    assert np.abs(got.image[stars]).mean() < 0.5 * np.abs(unscaled.diff.image[stars]).mean()

    files = decam_paths()["OBS04"][:3]
    files[1] = brighter(files[1], 1.3, tmp_path / "b1.fits")
    assert main(["coadd", *map(str, files), "--scale-fluxes", "--out", str(tmp_path / "c")]) == 0
    exps = [load_image(f) for f in files]
    scales = photometric_scales(exps)
    # the brightened file's factor is the original's / 1.3 (same exposures, so the same aperture)
    assert abs(scales[1] * 1.3 / photometric_scales([exps[0], load_image(decam_paths()["OBS04"][1]), exps[2]])[1] - 1) < 1e-4
    want = CompareWarpPipeline(apply_scales(exps, scales)).run().coadd
    got = read_exposure(tmp_path / "c" / "coadd.fits")
    np.testing.assert_array_equal(got.image, want.image)
    np.testing.assert_array_equal(got.variance, want.variance)

    # too few stars to measure a scale: the error names the option and the file
    shape = fits.getdata(b).shape
    fits.PrimaryHDU(np.random.default_rng(0).normal(100, 5, shape).astype(np.float32)).writeto(tmp_path / "flat.fits")
    yy, xx = np.mgrid[-7:8, -7:8]
    fits.PrimaryHDU(np.exp(-(xx**2 + yy**2) / 8.0)).writeto(tmp_path / "psf.fits")
    assert main(["zogy", str(tmp_path / "flat.fits"), str(b), "--science-psf", str(tmp_path / "psf.fits"), "--scale-fluxes", "--out", str(tmp_path / "f")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--scale-fluxes" in last and "flat.fits" in last and "stars" in last


def test_cli_afw_file_without_a_readable_psf(tmp_path, capsys):
    """An afw-layout file whose PSF diffstack cannot read (LSST keeps Piff/CoaddPsf models in
    archive tables): the PSF is measured from its stars, as for a plain image, or taken from
    --science-psf; a file that has its own PSF still refuses the option."""
    from astropy.io import fits

    from toolkit.cli import main
    from toolkit.exposure import Exposure
    from toolkit.io import read_exposure, write_exposure
    from toolkit.psf import GaussianPsf
    from toolkit.real_data import measure_psf
    from toolkit.sim import render_points

    # sixteen isolated bright stars on a grid, so the measurement has what it needs
    rng = np.random.default_rng(3)
    xy = np.array([(x, y) for x in range(32, 256, 56) for y in range(32, 256, 56)], float) + rng.uniform(-0.5, 0.5, (16, 2))
    flux = rng.uniform(2e4, 6e4, 16)
    images = {}
    for name, sigma in (("sci", 1.9), ("ref", 1.4)):
        model = render_points((256, 256), xy[:, 0], xy[:, 1], flux, sigma, sampled=True)
        var = np.full((256, 256), 100.0) + model
        images[name] = Exposure((model + rng.standard_normal(model.shape) * np.sqrt(var)).astype(np.float32), var.astype(np.float32), psf=GaussianPsf(sigma))
    sci, ref = images["sci"], images["ref"]
    write_exposure(Exposure(sci.image, sci.variance, psf=None), tmp_path / "sci.fits")
    write_exposure(ref, tmp_path / "ref.fits")
    assert read_exposure(tmp_path / "sci.fits").psf is None
    assert main(["zogy", str(tmp_path / "sci.fits"), str(tmp_path / "ref.fits"), "--psf-size", "21", "--out", str(tmp_path / "a")]) == 0
    assert "PSF measured from its stars" in capsys.readouterr().err
    want = measure_psf(sci.image, sci.variance, size=21).compute_kernel_image()
    truth = sci.psf.compute_kernel_image(size=21)
    assert np.abs(want - truth).max() < 0.05 * truth.max()  # what the CLI measures is the true PSF
    # a given stamp is used as given (cropped and normalised)
    fits.PrimaryHDU(truth).writeto(tmp_path / "psf.fits")
    assert main(["zogy", str(tmp_path / "sci.fits"), str(tmp_path / "ref.fits"), "--science-psf", str(tmp_path / "psf.fits"), "--psf-size", "21", "--out", str(tmp_path / "b")]) == 0
    assert "PSF from" in capsys.readouterr().err
    # the template has its own PSF: the option is refused for it
    assert main(["zogy", str(tmp_path / "sci.fits"), str(tmp_path / "ref.fits"), "--template-psf", str(tmp_path / "psf.fits"), "--out", str(tmp_path / "c")]) == 2
    assert "plain FITS images" in capsys.readouterr().err


def test_cli_zogy_noise_correlation(tmp_path, capsys):
    """``--noise-correlation``: resampled images' noise is correlated, so their per-pixel variance
    planes make Scorr too wide; ``auto`` is ZogyConfig's doMeasureNoiseCorrelation (the same
    arrays as the API), which brings std(Scorr) back to ~1; a given factor is
    noiseCorrelationFactor; a bad one is refused by name."""
    from astropy.io import fits
    from scipy import ndimage

    from toolkit.exposure import Exposure
    from toolkit.io import write_exposure
    from toolkit.psf import GaussianPsf
    from toolkit.zogy import zogy

    rng = np.random.default_rng(12)
    exps = []
    for sigma_psf in (2.2, 1.6):
        # smoothed by a 0.8-px Gaussian, with its true per-pixel variance: on the PSF scale the
        # noise has ~7x the variance those planes predict
        n = ndimage.gaussian_filter(rng.normal(0, 10.0, (320, 320)), 0.8).astype(np.float32)
        exps.append(Exposure(n, np.full(n.shape, n.var(), np.float32), psf=GaussianPsf(sigma_psf, size=25)))
    for e, name in zip(exps, ("sci", "tmpl")):
        write_exposure(e, tmp_path / f"{name}.fits")
    base = ["zogy", str(tmp_path / "sci.fits"), str(tmp_path / "tmpl.fits")]

    assert main(base + ["--out", str(tmp_path / "plain")]) == 0
    assert main(base + ["--noise-correlation", "auto", "--out", str(tmp_path / "auto")]) == 0
    api = zogy(*exps, {"doMeasureNoiseCorrelation": True})
    f = api.noise_correlation
    assert f"noise correlation factor {f:.3f} (± {api.noise_correlation_error:.2g}, measured" in capsys.readouterr().err
    got = fits.getdata(tmp_path / "auto" / "scorr.fits")
    np.testing.assert_array_equal(got, api.scorr.astype(np.float32))
    inner = (slice(30, -30),) * 2
    plain = fits.getdata(tmp_path / "plain" / "scorr.fits")[inner].std()
    # over 8 seeds the factor was 6.7-7.3 and the corrected std(Scorr) 0.990-1.006 (260^2 pixels
    # correlated over ~60 px^2 give ~0.5 % scatter); 0.03 is 6 sigma
    assert plain > 2.0
    assert abs(got[inner].std() - 1.0) < 0.03
    # both planes x f scale Scorr by exactly 1/sqrt(f) (the kernels and padding noise scale with it)
    assert abs(plain / got[inner].std() - np.sqrt(f)) < 1e-3

    assert main(base + ["--noise-correlation", "1.5", "--out", str(tmp_path / "given")]) == 0
    given = fits.getdata(tmp_path / "given" / "scorr.fits")[inner]
    assert abs(plain / given.std() - np.sqrt(1.5)) < 1e-3
    for bad in ("0", "-2", "inf", "lots"):
        with pytest.raises(SystemExit):
            main(base + ["--noise-correlation", bad, "--out", str(tmp_path / "bad")])
        assert "--noise-correlation" in capsys.readouterr().err


def test_cli_zogy_bad_pixel_maps(tmp_path, capsys):
    """``--science-mask``: a bad-pixel map's non-zero pixels become BAD in the science exposure
    and so in the difference's mask; the transient catalog's ``mask`` column tells the entries
    a hot column makes from real ones (which carry no bit).  The option is for plain images."""
    from astropy.io import fits
    from astropy.table import Table

    from toolkit.sim import simulate_pair

    p = simulate_pair(size=160, seed=3, n_transients=3, source_noise=False)
    sci = (p.science.image * np.float32(p.science.photo_calib)).copy()
    sci[:, 70] += 500.0  # a hot column the detector's bad-pixel map knows about
    fits.writeto(tmp_path / "sci.fits", sci)
    fits.writeto(tmp_path / "tmpl.fits", p.reference.image)
    bpm = np.zeros(sci.shape, np.uint8)
    bpm[:, 70] = 1
    fits.writeto(tmp_path / "bpm.fits", bpm)
    for e, name in ((p.science, "sci"), (p.reference, "tmpl")):
        fits.writeto(tmp_path / f"{name}_psf.fits", e.psf.compute_kernel_image())
    base = ["zogy", str(tmp_path / "sci.fits"), str(tmp_path / "tmpl.fits"), "--science-psf", str(tmp_path / "sci_psf.fits"), "--template-psf", str(tmp_path / "tmpl_psf.fits")]
    assert main(base + ["--science-mask", str(tmp_path / "bpm.fits"), "--out", str(tmp_path / "m")]) == 0
    assert "bad pixels from" in capsys.readouterr().err
    diff = fits.open(tmp_path / "m" / "diff.fits")
    bad_bit = int(diff["MASK"].header["MP_BAD"])
    assert np.array_equal((diff["MASK"].data[:, 70] >> bad_bit) & 1, np.ones(sci.shape[0], np.int64))
    cat = Table.read(tmp_path / "m" / "transients.ecsv")
    on_column = np.abs(cat["x"] - 70) < 1.5
    assert on_column.any() and (cat["mask"][on_column] & (1 << bad_bit) != 0).all()
    assert (cat["mask"][~on_column] & (1 << bad_bit) == 0).all()
    assert main(base + ["--out", str(tmp_path / "n")]) == 0
    plain = Table.read(tmp_path / "n" / "transients.ecsv")
    assert (plain["mask"] & (1 << bad_bit) == 0).all()
    # a file with its own MASK plane (the afw layout) takes no bad-pixel map
    capsys.readouterr()
    assert main(["zogy", str(tmp_path / "m" / "diff.fits"), str(tmp_path / "tmpl.fits"), "--science-mask", str(tmp_path / "bpm.fits"), "--out", str(tmp_path / "x")]) == 2
    assert "--*-mask are for plain FITS images" in capsys.readouterr().err
