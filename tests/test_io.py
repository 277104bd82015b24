
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from toolkit import DoubleGaussianPsf, Exposure, FitsReadError, GaussianPsf, ImagePsf, InputError
from toolkit.io import read_exposure, read_plain_fits, write_exposure
from toolkit.psf import Psf
from toolkit.sim import make_wcs


def _varying_psf():
    from toolkit.psf import VaryingGaussianPsf

    return VaryingGaussianPsf(2.0, 0.01, -0.005, (20.0, 20.0))


@pytest.mark.parametrize("psf", [GaussianPsf(1.7), DoubleGaussianPsf(7.7), ImagePsf(np.outer([1, 2, 1], [1, 3, 1])), _varying_psf()])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_lossless(tmp_path, psf, dtype):
    rng = np.random.default_rng(1)
    shape = (33, 47)
    e = Exposure(rng.normal(size=shape).astype(dtype), rng.uniform(1, 2, shape).astype(dtype), psf=psf,
                 wcs=make_wcs(shape), xy0=(-123, 45), photo_calib=0.37, metadata={"BUNIT": "nJy", "EPOCH": 3})
    e.set_plane("SAT", e.image > 1.5)
    e.set_plane("CLIPPED", e.image < -1.5)
    path = write_exposure(e, tmp_path / "e.fits")
    r = read_exposure(path)
    assert r.image.dtype == e.image.dtype
    np.testing.assert_array_equal(r.image, e.image)
    np.testing.assert_array_equal(r.variance, e.variance)
    np.testing.assert_array_equal(r.mask, e.mask)
    assert dict(r.mask_planes) == dict(e.mask_planes)
    assert list(r.mask_planes) == list(e.mask_planes)
    assert r.psf == e.psf
    assert r.xy0 == e.xy0 and r.photo_calib == e.photo_calib
    assert r.metadata["BUNIT"] == "nJy" and r.metadata["EPOCH"] == 3
    # same sky position for the same parent pixel
    np.testing.assert_allclose(r.wcs.pixel_to_world_values(-100, 60), e.wcs.pixel_to_world_values(-100, 60), rtol=0, atol=1e-10)
    # the file also reads with a standard FITS WCS at array pixels
    with fits.open(path) as h:
        assert [x.name for x in h] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE", "PSF"]
        assert h["MASK"].header["MP_CLIPPED"] == 9


def test_write_is_atomic(tmp_path, monkeypatch):
    e = Exposure(np.ones((4, 4), np.float32))
    target = tmp_path / "x.fits"
    write_exposure(e, target)
    before = target.read_bytes()

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fits.HDUList, "writeto", boom)
    with pytest.raises(RuntimeError):
        write_exposure(Exposure(np.zeros((4, 4), np.float32)), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.fits"]


def test_plain_fits_with_error_map(tmp_path):
    rng = np.random.default_rng(2)
    img = rng.normal(size=(16, 16)).astype(np.float32)
    sig = np.full((16, 16), 2.0, np.float32)
    fits.writeto(tmp_path / "img.fits", img)
    fits.writeto(tmp_path / "err.fits", sig)
    fits.writeto(tmp_path / "ivar.fits", 1 / sig**2)
    fits.writeto(tmp_path / "mask.fits", (img > 1).astype(np.int16))
    e = read_plain_fits(tmp_path / "img.fits", sigma=tmp_path / "err.fits", mask=tmp_path / "mask.fits")
    np.testing.assert_allclose(e.variance, 4.0)
    np.testing.assert_array_equal(e.get_plane("BAD"), img > 1)
    e2 = read_plain_fits(tmp_path / "img.fits", inverse_variance=tmp_path / "ivar.fits")
    np.testing.assert_allclose(e2.variance, 4.0, rtol=1e-6)


def test_bad_files(tmp_path):
    with pytest.raises(FitsReadError, match="not found"):
        read_exposure(tmp_path / "missing.fits")
    junk = tmp_path / "junk.fits"
    junk.write_text("this is not FITS at all" * 100)
    with pytest.raises(FitsReadError, match="not a readable FITS"):
        read_exposure(junk)
    fits.writeto(tmp_path / "plain.fits", np.zeros((4, 4)))
    with pytest.raises(FitsReadError, match="no IMAGE extension"):
        read_exposure(tmp_path / "plain.fits")
    fits.writeto(tmp_path / "small.fits", np.zeros((3, 3)))
    with pytest.raises(InputError, match="shape"):
        read_plain_fits(tmp_path / "plain.fits", variance=tmp_path / "small.fits")
    # a file cut short (a copy that died half way): astropy reads data lazily and failed later
    # with a bare reshape error; the reader names the file
    whole = tmp_path / "whole.fits"
    write_exposure(Exposure(np.ones((64, 64), np.float32)), whole)
    cut = tmp_path / "cut.fits"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(FitsReadError, match="cut.fits is not a readable FITS"):
        read_exposure(cut)
    with pytest.raises(FitsReadError, match="cut.fits"):
        read_plain_fits(cut)
    from toolkit.io import read_mask_fits

    fits.writeto(tmp_path / "float_mask.fits", np.full((4, 4), 0.5, np.float32))
    with pytest.raises(FitsReadError, match="integer bits"):
        read_mask_fits(tmp_path / "float_mask.fits")


def test_degenerate_cube_reads_as_its_plane(tmp_path):
    """A single plane stored as a (1, ny, nx) cube with a third WCS axis (as some pipelines
    write them) reads as that 2-D image with a 2-axis sky WCS; a cube of several planes gets
    a named error that says what was found."""
    rng = np.random.default_rng(0)
    img = rng.normal(size=(6, 9)).astype(np.float32)
    w = WCS(naxis=3)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN", "FREQ"]
    w.wcs.crval = [150.0, 2.0, 1e9]
    w.wcs.crpix = [5.0, 3.0, 1.0]
    w.wcs.cdelt = [-5e-5, 5e-5, 1e6]
    fits.writeto(tmp_path / "cube1.fits", img[None], w.to_header())
    exp = read_plain_fits(tmp_path / "cube1.fits")
    np.testing.assert_array_equal(exp.image, img)
    assert exp.wcs.naxis == 2
    sky = exp.wcs.pixel_to_world(4.0, 2.0)  # the reference pixel (0-based)
    assert sky.ra.deg == pytest.approx(150.0) and sky.dec.deg == pytest.approx(2.0)
    fits.writeto(tmp_path / "cube2.fits", np.stack([img, img]))
    with pytest.raises(FitsReadError, match=r"only cubes of shape \(2, 6, 9\)"):
        read_plain_fits(tmp_path / "cube2.fits")
    with pytest.raises(FitsReadError, match=r"holds no 2-D image \(data shape \(2, 6, 9\)\)"):
        read_plain_fits(tmp_path / "cube2.fits", hdu=0)


def test_reads_lsst_written_layout(tmp_path):
    """What afw writes: tile-compressed IMAGE/MASK/VARIANCE extensions after an empty primary,
    MP_ cards (HIERARCH for long names) in the mask header, the parent origin as the 'A' WCS,
    BUNIT with the image, and archive tables after the planes."""
    rng = np.random.default_rng(0)
    img = rng.normal(0, 10, (24, 31)).astype(np.float32)
    var = np.full(img.shape, 100, np.float32)
    msk = np.zeros(img.shape, np.int32)
    msk[5, 7] = 1 << 9
    sky = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0, "CRVAL2": 2.0, "CRPIX1": 16.0, "CRPIX2": 12.0,
           "CD1_1": -5.5e-5, "CD2_2": 5.5e-5, "CD1_2": 0.0, "CD2_1": 0.0, "CRVAL1A": 1000, "CRVAL2A": 2000,
           "CRPIX1A": 1, "CRPIX2A": 1, "CTYPE1A": "LINEAR", "CTYPE2A": "LINEAR", "WCSNAMEA": "PARENT", "BUNIT": "nJy"}
    planes = {"HIERARCH MP_" + k: v for k, v in (("BAD", 0), ("SAT", 1), ("NO_DATA", 8), ("STREAK", 9))}

    def hdu(data, name, cards):
        hdr = fits.Header(cards)
        hdr["EXTTYPE"] = name
        return fits.CompImageHDU(data, header=hdr, name=name, compression_type="GZIP_2", quantize_level=0.0)  # lossless

    archive = fits.BinTableHDU.from_columns([fits.Column(name="id", format="J", array=np.arange(3))], name="ARCHIVE_INDEX")
    fits.HDUList([fits.PrimaryHDU(), hdu(img, "IMAGE", sky), hdu(msk, "MASK", planes), hdu(var, "VARIANCE", sky), archive]).writeto(tmp_path / "calexp.fits")
    e = read_exposure(tmp_path / "calexp.fits")
    np.testing.assert_array_equal(e.image, img)
    np.testing.assert_array_equal(e.variance, var)
    assert e.xy0 == (1000, 2000) and e.metadata["BUNIT"] == "nJy"
    assert e.mask_planes.names_in(e.mask[5, 7]) == ["STREAK"] and e.mask_planes["NO_DATA"] == 8
    # the sky WCS is in parent coordinates: the reference pixel (0-based 15, 11 locally)
    c = e.wcs.pixel_to_world(1015.0, 2011.0)
    assert c.ra.deg == pytest.approx(150.0) and c.dec.deg == pytest.approx(2.0)


def test_coadd_psf_round_trip_keeps_its_inputs_and_coverage(tmp_path):
    """A coadd's CoaddPsf is written with its parts (as afw's archive keeps them), so a coadd
    read back gives the same PSF at every position, not one stamp for the whole patch."""
    from toolkit.psf import CoaddPsf, InputCoverage

    shape, xy0 = (40, 50), (-7, 12)
    m = np.zeros((3,) + shape, np.int32)
    m[1, :, 25:] = 1  # input 1 has no data on the right
    m[2, 30:] = 1  # input 2 none at the top
    parts = [GaussianPsf(1.2), _varying_psf(), ImagePsf(np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]))]
    cp = CoaddPsf(parts, [0.7, 1.9, 0.4], coverage=InputCoverage.from_masks(list(m), 1, xy0))
    e = Exposure(np.zeros(shape), np.ones(shape), psf=cp, xy0=xy0)
    path = write_exposure(e, tmp_path / "coadd.fits")
    r = read_exposure(path).psf
    assert isinstance(r, CoaddPsf) and r.average_position == cp.average_position
    for pos in [(-5, 14), (30, 14), (30, 47), (-5, 47), cp.average_position, None]:
        assert list(r.contributors(pos)) == list(cp.contributors(pos))
        np.testing.assert_array_equal(r.compute_kernel_image(pos), cp.compute_kernel_image(pos))
    # a reader that knows nothing of the parts gets the kernel at the average position, and so
    # does this one if the parts are gone
    with fits.open(path) as h:
        assert [x.name for x in h][4:] == ["PSF", "PSF001", "PSF002", "PSF003", "PSFCOVER"]
        np.testing.assert_array_equal(h["PSF"].data, cp.compute_kernel_image())
        fits.HDUList([x.copy() for x in h if x.name != "PSF002"]).writeto(tmp_path / "cut.fits")
    cut = read_exposure(tmp_path / "cut.fits").psf
    assert isinstance(cut, ImagePsf)
    np.testing.assert_array_equal(cut.compute_kernel_image(), cp.compute_kernel_image())
    # without coverage: the parts, and no PSFCOVER
    plain = CoaddPsf(parts[:2], [1.0, 3.0])
    r2 = read_exposure(write_exposure(Exposure(np.zeros(shape), psf=plain), tmp_path / "plain.fits")).psf
    assert isinstance(r2, CoaddPsf) and r2.coverage is None
    np.testing.assert_array_equal(r2.compute_kernel_image((3, 4)), plain.compute_kernel_image((3, 4)))


class _Undescribed(Psf):
    """A user's own PSF model with no description of itself."""

    size = 15

    def _kernel(self, n, position):
        y, x = np.mgrid[:n, :n] - n // 2
        return np.exp(-(x**2 + 2 * y**2) / 8.0)


class _SelfDescribed(_Undescribed):
    """One that describes itself, as a type no diffstack reader knows."""

    def to_dict(self):
        return {"type": "MyModel", "width": 2.0}


@pytest.mark.parametrize("cls", [_Undescribed, _SelfDescribed])
def test_user_psf_models_are_written_as_their_kernel_and_read_back(tmp_path, cls):
    """A PSF class diffstack does not know cannot be rebuilt from a file: it is written as its
    kernel image (with a warning that says so) rather than failing to write, or writing a file
    that fails to read; inside a CoaddPsf, the same for that input."""
    from toolkit.psf import CoaddPsf

    user = cls()
    with pytest.warns(UserWarning, match=f"{type(user).__name__} is not a PSF model diffstack's files can keep"):
        path = write_exposure(Exposure(np.zeros((20, 24)), psf=user), tmp_path / "u.fits")
    r = read_exposure(path).psf
    assert isinstance(r, ImagePsf)
    np.testing.assert_allclose(r.compute_kernel_image(), user.compute_kernel_image(), rtol=1e-15, atol=0)  # renormalised once more
    with fits.open(path) as h:
        assert h["PSF"].header["PSFTYPE"] == "ImagePsf" and type(user).__name__ in h["PSF"].header["PSFM0000"]
    cp = CoaddPsf([GaussianPsf(1.5), user], [1.0, 2.0])
    with pytest.warns(UserWarning, match=f"coadd PSF's inputs: {type(user).__name__} is not"):
        path = write_exposure(Exposure(np.zeros((20, 24)), psf=cp), tmp_path / "c.fits")
    rc = read_exposure(path).psf
    assert isinstance(rc, CoaddPsf) and isinstance(rc.psfs[1], ImagePsf)
    np.testing.assert_allclose(rc.compute_kernel_image((3, 4)), cp.compute_kernel_image((3, 4)), rtol=0, atol=1e-15)


def test_unknown_or_garbled_psf_description_reads_as_the_stored_kernel(tmp_path):
    """A file whose PSF names a model this diffstack does not know (a newer version's) or whose
    description cards are damaged still reads: the stored kernel image is the PSF."""
    path = write_exposure(Exposure(np.zeros((20, 24)), psf=GaussianPsf(1.5)), tmp_path / "g.fits")
    for cards, match in (({"PSFTYPE": "FuturePsf", "PSFM0000": '{"type": "FuturePsf", "a": 1}'}, "'FuturePsf' is unknown"),
                         ({"PSFM0000": '{"type": "Gaussi'}, "not valid JSON")):
        with fits.open(path) as h:
            hdul = fits.HDUList([x.copy() for x in h])
        for k, v in cards.items():
            hdul["PSF"].header[k] = v
        hdul.writeto(tmp_path / "x.fits", overwrite=True)
        with pytest.warns(UserWarning, match=match):
            r = read_exposure(tmp_path / "x.fits").psf
        assert isinstance(r, ImagePsf)
        np.testing.assert_array_equal(r.compute_kernel_image(), GaussianPsf(1.5).compute_kernel_image())


def test_sip_distortion_and_awkward_metadata_round_trip(tmp_path):
    """A WCS with SIP distortion maps the same parent pixel to the same sky position after a
    round trip with xy0 != 0 (astropy keeps SIP's own copy of CRPIX, which must move with it),
    and metadata FITS cards cannot hold (non-ASCII text, control characters, NaN) comes back
    intact instead of failing the write."""
    from astropy.wcs import Sip

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [150.0, 2.0], [40.0, 30.0], [-5e-5, 5e-5]
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    a[2, 0], a[0, 3], b[0, 2] = 2e-6, 1e-8, -3e-6  # 0.02" to 0.3" of distortion across the image
    w.sip = Sip(a, b, None, None, w.wcs.crpix)
    meta = {"BUNIT": "nJy", "OBSERVER": "Ånders", "NOTE": "two\nlines", "SKYLEVEL": float("nan"), "ZP": float("inf")}
    e = Exposure(np.zeros((60, 80), np.float32), wcs=w, xy0=(1000, -400), metadata=meta)
    r = read_exposure(write_exposure(e, tmp_path / "sip.fits"))
    assert r.wcs.sip is not None
    for px, py in [(1000, -400), (1079, -341), (1040.5, -370.25)]:
        sep = e.wcs.pixel_to_world(px, py).separation(r.wcs.pixel_to_world(px, py)).arcsec
        assert sep < 1e-6, (px, py, sep)
    assert r.metadata["OBSERVER"] == "Ånders" and r.metadata["NOTE"] == "two\nlines"
    assert np.isnan(r.metadata["SKYLEVEL"]) and r.metadata["ZP"] == float("inf")


def _afw_archive_file(path, calibs, photocalib_id=3, extra_primary=None, versions=None, constant=None, psf=("PiffPsf", {"piff": ("10B", np.zeros((1, 10), np.uint8))})):
    """A file laid out as afw writes an Exposure with an archive: the planes, then (AR_HDU, 1-based)
    an ARCHIVE_INDEX table and ARCHIVE_DATA tables.  Data catalog 1 holds a stand-in PSF object
    (id 1; ``psf``: its class name and columns); catalog 2 holds PhotoCalib records, one per entry of ``calibs`` (ids 2, 3, ...: two
    objects of one schema share a table, as afw's OutputArchive merges them), with afw's packed
    ``flags`` bit column named by TFLAG1."""
    img = np.full((20, 30), 5.0, np.float32)
    n = len(calibs)
    ids = [1] + [2 + i for i in range(n)]
    index = fits.BinTableHDU.from_columns([
        fits.Column(name="id", format="J", array=ids),
        fits.Column(name="cat.archive", format="J", array=[1] + [2] * n),
        fits.Column(name="cat.persistable", format="J", array=[0] * (n + 1)),
        fits.Column(name="row0", format="J", array=[0] + list(range(n))),
        fits.Column(name="nrows", format="J", array=[1] * (n + 1)),
        fits.Column(name="name", format="64A", array=[psf[0]] + ["PhotoCalib"] * n),
        fits.Column(name="module", format="64A", array=["lsst.meas.algorithms"] + ["lsst.afw.image"] * n),
    ])
    index.header["EXTTYPE"], index.header["EXTNAME"], index.header["AR_CATN"], index.header["AR_NCAT"] = "ARCHIVE_INDEX", "ARCHIVE_INDEX", 0, 3
    psf_cat = fits.BinTableHDU.from_columns([fits.Column(name=k, format=f, array=np.atleast_1d(a)) for k, (f, a) in psf[1].items()])
    psf_cat.header.update({"EXTTYPE": "ARCHIVE_DATA", "AR_CATN": 1, "EXTNAME": psf[0]})
    const = constant if constant is not None else [True] * n
    pc = fits.BinTableHDU.from_columns([
        fits.Column(name="flags", format="1X", array=np.array(const, bool).reshape(n, 1)),
        fits.Column(name="calibrationMean", format="D", array=calibs),
        fits.Column(name="calibrationErr", format="D", array=[0.01] * n),
        fits.Column(name="field", format="J", array=[0] * n),
        fits.Column(name="version", format="J", array=versions if versions is not None else [1] * n),
    ])
    pc.header.update({"EXTTYPE": "ARCHIVE_DATA", "AR_CATN": 2, "EXTNAME": "PhotoCalib", "TFLAG1": "isConstant"})
    primary = fits.PrimaryHDU()
    # cfitsio writes afw's long keys as HIERARCH cards
    primary.header.update({"AR_HDU": 5, "PSF_ID": 1, "HIERARCH PHOTOCALIB_ID": photocalib_id, "VISIT": 1234, "EXP_ID": 77})
    primary.header.update(extra_primary or {})
    planes = [fits.ImageHDU(a, name=nm) for a, nm in ((img, "IMAGE"), (np.zeros(img.shape, np.int32), "MASK"), (img * 0 + 4, "VARIANCE"))]
    fits.HDUList([primary, *planes, index, psf_cat, pc]).writeto(path)
    return path


def test_afw_archive_photo_calib_is_read(tmp_path, recwarn):
    """A calexp keeps its calibration (nJy per ADU) in the archive: read_exposure finds the
    PhotoCalib that PHOTOCALIB_ID names (the second record of a shared table here), drops the
    archive pointers from the metadata (a file diffstack writes has no archive for afw to follow)
    and keeps the rest; a round trip keeps the calibration.  Files from before PhotoCalib carry
    FLUXMAG0 (calibration = AB reference flux / FLUXMAG0).  What cannot be read is named in a
    warning and taken as 1."""
    import warnings

    e = read_exposure(_afw_archive_file(tmp_path / "calexp.fits", [0.25, 0.0631]))
    assert e.photo_calib == 0.0631
    assert not recwarn.list
    assert "AR_HDU" not in e.metadata and "PSF_ID" not in e.metadata and "PHOTOCALIB_ID" not in e.metadata
    assert e.metadata["VISIT"] == 1234 and e.metadata["EXP_ID"] == 77  # 77 is no archive id
    write_exposure(e, tmp_path / "back.fits")
    back = read_exposure(tmp_path / "back.fits")
    assert back.photo_calib == 0.0631 and "AR_HDU" not in fits.getheader(tmp_path / "back.fits")
    assert read_exposure(_afw_archive_file(tmp_path / "first.fits", [0.25, 0.0631], photocalib_id=2)).photo_calib == 0.25

    # a spatially varying calibration: its mean, with a warning that says so
    with pytest.warns(UserWarning, match="varies over the image"):
        assert read_exposure(_afw_archive_file(tmp_path / "vary.fits", [0.5], photocalib_id=2, constant=[False])).photo_calib == 0.5

    # old files: FLUXMAG0 in the primary header, no archive entry
    old = _afw_archive_file(tmp_path / "old.fits", [0.5], photocalib_id=0, extra_primary={"FLUXMAG0": 3.630780547701e9})
    e = read_exposure(old)
    assert e.photo_calib == pytest.approx(1000.0, rel=1e-12) and "FLUXMAG0" not in e.metadata

    # what afw itself would refuse, or an id that is not a PhotoCalib: a warning and 1
    for name, kwargs, match in (
        ("v0.fits", dict(calibs=[0.5], photocalib_id=2, versions=[0]), "version 0"),
        ("psf.fits", dict(calibs=[0.5], photocalib_id=1), "not a PhotoCalib"),
        ("none.fits", dict(calibs=[0.5], photocalib_id=9), "no index entry for PHOTOCALIB_ID 9"),
        ("neg.fits", dict(calibs=[-2.0], photocalib_id=2), "calibrationMean"),
    ):
        with pytest.warns(UserWarning, match=match):
            assert read_exposure(_afw_archive_file(tmp_path / name, **kwargs)).photo_calib == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # diffstack's own files: PHOTOCAL wins and user metadata named like afw's stays
        mine = Exposure(np.zeros((8, 8), np.float32), np.ones((8, 8), np.float32), photo_calib=2.5, metadata={"FLUXMAG0": 1e10, "AR_HDU": 3})
        write_exposure(mine, tmp_path / "mine.fits")
        got = read_exposure(tmp_path / "mine.fits")
    assert got.photo_calib == 2.5 and got.metadata["FLUXMAG0"] == 1e10 and got.metadata["AR_HDU"] == 3


def test_afw_archive_analytic_psfs_are_read(tmp_path):
    """LSST's PSF-matched warps carry their model PSF, a DoubleGaussianPsf, in the archive (and
    simple simulations a GaussianPsf): read_exposure rebuilds them (afw's sigma1, sigma2, b and
    realisation size; b is the wing's central amplitude over the core's, as LSST's
    GaussianPsfFactory sets it), so CompareWarp and ZOGY get the exact model.  A measured model
    (Piff) reads as no PSF, silently: the CLI then says it measures one."""
    import warnings

    from toolkit.psf import DoubleGaussianPsf, GaussianPsf

    dg = ("DoubleGaussianPsf", {"dimensions_x": ("J", 23), "dimensions_y": ("J", 23), "sigma1": ("D", 7.7 / 2.3548), "sigma2": ("D", 2.5 * 7.7 / 2.3548), "b": ("D", 0.1)})
    e = read_exposure(_afw_archive_file(tmp_path / "pm.fits", [1.0], photocalib_id=2, psf=dg))
    want = DoubleGaussianPsf(7.7, size=23)  # LSST's modelPsf for PSF-matched warps
    assert isinstance(e.psf, DoubleGaussianPsf) and e.psf.size == 23
    np.testing.assert_allclose(e.psf.compute_kernel_image(), want.compute_kernel_image(), rtol=1e-13, atol=1e-17)
    g = ("GaussianPsf", {"dimensions_x": ("J", 15), "dimensions_y": ("J", 15), "sigma": ("D", 1.8)})
    e = read_exposure(_afw_archive_file(tmp_path / "g.fits", [1.0], photocalib_id=2, psf=g))
    np.testing.assert_array_equal(e.psf.compute_kernel_image(), GaussianPsf(1.8, size=15).compute_kernel_image())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_exposure(_afw_archive_file(tmp_path / "piff.fits", [1.0], photocalib_id=2)).psf is None
    # a written copy keeps the model as diffstack's own PSF extension
    write_exposure(read_exposure(tmp_path / "pm.fits"), tmp_path / "back.fits")
    assert isinstance(read_exposure(tmp_path / "back.fits").psf, DoubleGaussianPsf)


def _afw_psfex_file(path, comp, pixstep, degree, first, second, average, ndim=2, ngroup=1):
    """A calexp-like file whose archive holds a meas_extensions_psfex ``PsfexPsf`` as afw writes
    it: two catalogs of one object (id 1), the scalars (cat.persistable 0) and the arrays (1)."""
    n, h, w = comp.shape
    ncoeff = n
    index = fits.BinTableHDU.from_columns([
        fits.Column(name="id", format="J", array=[1, 1]),
        fits.Column(name="cat.archive", format="J", array=[1, 2]),
        fits.Column(name="cat.persistable", format="J", array=[0, 1]),
        fits.Column(name="row0", format="J", array=[0, 0]),
        fits.Column(name="nrows", format="J", array=[1, 1]),
        fits.Column(name="name", format="64A", array=["PsfexPsf", "PsfexPsf"]),
        fits.Column(name="module", format="64A", array=["lsst.meas.extensions.psfex"] * 2),
    ])
    index.header.update({"EXTTYPE": "ARCHIVE_INDEX", "EXTNAME": "ARCHIVE_INDEX", "AR_CATN": 0, "AR_NCAT": 3})
    scalars = fits.BinTableHDU.from_columns([
        fits.Column(name="ndim", format="J", array=[ndim]), fits.Column(name="ngroup", format="J", array=[ngroup]),
        fits.Column(name="ncoeff", format="J", array=[ncoeff]), fits.Column(name="_size_size", format="J", array=[3]),
        fits.Column(name="_comp_size", format="J", array=[comp.size]), fits.Column(name="_context_size", format="J", array=[2]),
        fits.Column(name="averagePosition_x", format="D", array=[average[0]]), fits.Column(name="averagePosition_y", format="D", array=[average[1]]),
        fits.Column(name="_pixstep", format="E", array=[pixstep]),
    ])
    scalars.header.update({"EXTTYPE": "ARCHIVE_DATA", "AR_CATN": 1, "EXTNAME": "PsfexPsf"})
    arrays = fits.BinTableHDU.from_columns([
        fits.Column(name="group", format=f"{ndim}J", array=np.zeros((1, ndim), np.int32)),
        fits.Column(name="degree", format=f"{ngroup}J", array=np.full((1, ngroup), degree, np.int32)),
        fits.Column(name="basis", format=f"{ncoeff}D", array=np.zeros((1, ncoeff))),
        fits.Column(name="coeff", format=f"{ncoeff}D", array=np.zeros((1, ncoeff))),
        fits.Column(name="_size", format="3J", array=np.array([[w, h, n]], np.int32)),
        fits.Column(name="_comp", format=f"{comp.size}E", array=comp.astype(np.float32).reshape(1, -1)),
        fits.Column(name="_context_first", format="2D", array=np.array([first], float)),
        fits.Column(name="_context_second", format="2D", array=np.array([second], float)),
    ])
    arrays.header.update({"EXTTYPE": "ARCHIVE_DATA", "AR_CATN": 2, "EXTNAME": "PsfexPsf"})
    img = np.zeros((40, 50), np.float32)
    primary = fits.PrimaryHDU()
    primary.header.update({"AR_HDU": 5, "PSF_ID": 1})
    planes = [fits.ImageHDU(a, name=nm) for a, nm in ((img, "IMAGE"), (np.zeros(img.shape, np.int32), "MASK"), (img + 1, "VARIANCE"))]
    fits.HDUList([primary, *planes, index, scalars, arrays]).writeto(path)
    return path


def test_afw_archive_psfex_psf_is_read(tmp_path):
    """A calexp of LSST's PSFEx era carries its measured PsfexPsf in the archive: read_exposure
    rebuilds it (basis images term-major and row-major, the position polynomial in LSST's
    0-based pixels, averagePosition as the default position), so its kernel at any position is
    the model's: here G(2) at the context centre x = 300 and G(2.5) one scale (200 px) to its
    right, decimated from a half-pixel grid (exact to float32 rounding).  A written copy keeps
    the model (its basis in PSFBASIS); a model LSST never makes (3 contexts) is named in a
    warning and read as no PSF."""
    import warnings

    from toolkit.psf import PsfexPsf

    def gauss(n, step, sigma):
        c = (np.arange(n) - n // 2) * step
        g = np.exp(-0.5 * (c[:, None] ** 2 + c[None, :] ** 2) / sigma**2)
        return g

    g2, g25 = gauss(41, 0.5, 2.0), gauss(41, 0.5, 2.5)
    comp = np.stack([g2, g25 - g2, np.zeros_like(g2)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = read_exposure(_afw_psfex_file(tmp_path / "calexp.fits", comp, 0.5, 1, (300.0, 500.0), (200.0, 1000.0), (350.0, 420.0)))
    psf = e.psf
    assert isinstance(psf, PsfexPsf) and psf.size == 21 and psf.origin == 0.0
    for sigma, x in ((2.0, 300.0), (2.5, 500.0)):
        want = gauss(21, 1.0, sigma)
        np.testing.assert_allclose(psf.compute_kernel_image((x, 7.0)), want / want.sum(), atol=2e-8)
    np.testing.assert_array_equal(psf.compute_kernel_image(), psf.compute_kernel_image((350.0, 420.0)))
    write_exposure(e, tmp_path / "back.fits")
    back = read_exposure(tmp_path / "back.fits")
    assert back.psf == psf and "PSFBASIS" in [h.name for h in fits.open(tmp_path / "back.fits")]
    with pytest.warns(UserWarning, match=r"cannot read the PSF in its afw archive \(its PsfexPsf has 3 context dimension\(s\) in 1 group\(s\)"):
        assert read_exposure(_afw_psfex_file(tmp_path / "ctx3.fits", comp, 0.5, 1, (300.0, 500.0), (200.0, 1000.0), (0.0, 0.0), ndim=3)).psf is None
