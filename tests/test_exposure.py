import numpy as np
import pytest
from astropy.nddata import CCDData, StdDevUncertainty

from toolkit import Box, Exposure, GaussianPsf, InputError, MaskPlanes
from toolkit.masks import remap_mask


def make(shape=(20, 30), dtype=np.float32):
    rng = np.random.default_rng(0)
    return Exposure(rng.normal(size=shape).astype(dtype), np.full(shape, 2.0, dtype), psf=GaussianPsf(1.5), xy0=(10, -4))


def test_construction_validates_shapes_and_dtypes():
    img = np.zeros((10, 12), np.float32)
    with pytest.raises(InputError, match="variance shape"):
        Exposure(img, np.zeros((10, 11), np.float32))
    with pytest.raises(InputError, match="mask shape"):
        Exposure(img, mask=np.zeros((9, 12), np.int32))
    with pytest.raises(InputError, match="float32 or float64"):
        Exposure(np.zeros((10, 12), np.int64))
    with pytest.raises(InputError, match="2-D"):
        Exposure(np.zeros(10, np.float32))
    with pytest.raises(InputError, match="integer bit mask"):
        Exposure(img, mask=np.zeros((10, 12), np.float32))
    with pytest.raises(InputError, match="photo_calib"):
        Exposure(img, photo_calib=-1)
    with pytest.raises(InputError, match="wcs must be an astropy.wcs.WCS"):
        Exposure(img, wcs="RA---TAN")
    with pytest.raises(InputError, match="metadata must be a mapping"):
        Exposure(img, metadata=[("BUNIT", "nJy")])


def test_inputs_not_modified_and_copied():
    img = np.ones((5, 5), np.float32)
    e = Exposure(img)
    e.image[0, 0] = 7
    assert img[0, 0] == 1


def test_planes_get_set_unknown():
    e = make()
    e.set_plane("SAT", e.image > 1)
    assert np.array_equal(e.get_plane("SAT"), e.image > 1)
    with pytest.raises(InputError, match="unknown mask plane 'NOPE'"):
        e.get_plane("NOPE")
    e.set_plane("CLIPPED", e.image < -1)  # added on demand at the next free bit
    assert e.mask_planes["CLIPPED"] == 9
    assert np.array_equal(e.get_plane("CLIPPED"), e.image < -1)
    e.clear_plane("SAT")
    assert not e.get_plane("SAT").any()
    assert e.mask_planes.names_in(1 << 9 | 1 << 8) == ["NO_DATA", "CLIPPED"]


def test_cutout_parent_coordinates():
    e = make()
    c = e.cutout(Box(12, -2, 5, 4))
    assert c.xy0 == (12, -2)
    np.testing.assert_array_equal(c.image, e.image[2:6, 2:7])
    with pytest.raises(InputError, match="not inside"):
        e.cutout(Box(0, 0, 5, 5))


def test_ccddata_round_trip():
    e = make()
    e.set_plane("CR", e.image > 1.5)
    e.metadata["BUNIT"] = "nJy"
    ccd = e.to_ccddata()
    assert isinstance(ccd, CCDData)
    back = Exposure.from_ccddata(ccd, psf=e.psf)
    np.testing.assert_array_equal(back.image, e.image)
    np.testing.assert_array_equal(back.variance, e.variance)
    np.testing.assert_array_equal(back.mask, e.mask)
    assert back.xy0 == e.xy0 and dict(back.mask_planes) == dict(e.mask_planes)
    # stddev uncertainty from another tool becomes variance
    other = CCDData(np.ones((4, 4)), uncertainty=StdDevUncertainty(np.full((4, 4), 3.0)), unit="adu")
    assert np.allclose(Exposure.from_ccddata(other).variance, 9.0)


def test_remap_mask_between_dictionaries():
    src = {"BAD": 0, "CLIPPED": 3}
    tgt = MaskPlanes()
    m = np.array([[1, 8, 9]], np.int32)
    out = remap_mask(m, src, tgt)
    assert tgt["CLIPPED"] == 9
    assert out.tolist() == [[1, 1 << 9, 1 | 1 << 9]]


def test_big_endian_planes_as_astropy_reads_them(tmp_path):
    """FITS stores big-endian numbers and ``fits.getdata`` returns them as stored: Exposures built
    from them hold native copies (the inputs untouched), and ZOGY, CompareWarp and the clipped
    statistics give exactly what they give on native arrays."""
    from astropy.io import fits

    from toolkit.compare_warp import compare_warp_coadd
    from toolkit.psf import ImagePsf
    from toolkit.psf_matching import or_box
    from toolkit.stats import meanclip_masked
    from toolkit.zogy import zogy

    rng = np.random.default_rng(4)
    n = 64
    planes = []
    for i in range(4):
        path = tmp_path / f"w{i}.fits"
        fits.HDUList([fits.PrimaryHDU(rng.normal(0, 2, (n, n)).astype(np.float32)), fits.ImageHDU(np.full((n, n), 4.0, np.float32)), fits.ImageHDU(np.zeros((n, n), np.int32))]).writeto(path)
        with fits.open(path) as h:
            planes.append(tuple(np.array(h[k].data) for k in range(3)))
    assert all(not a.dtype.isnative for p in planes for a in p)  # what astropy hands over
    psf_be = GaussianPsf(1.8).compute_kernel_image().astype(">f8")
    big = [Exposure(*p, psf=ImagePsf(psf_be) if i == 0 else GaussianPsf(1.5 + 0.1 * i), copy=False) for i, p in enumerate(planes)]
    nat = [Exposure(*(a.astype(a.dtype.newbyteorder("=")) for a in p), psf=ImagePsf(psf_be.astype(np.float64)) if i == 0 else GaussianPsf(1.5 + 0.1 * i)) for i, p in enumerate(planes)]
    assert all(e.image.dtype.isnative and e.variance.dtype.isnative and e.mask.dtype == np.int32 for e in big)
    assert not planes[0][0].dtype.isnative  # the caller's arrays are left as they were
    z_big, z_nat = zogy(big[0], big[1]), zogy(nat[0], nat[1])
    np.testing.assert_array_equal(z_big.diff.image, z_nat.diff.image)
    np.testing.assert_array_equal(z_big.scorr, z_nat.scorr)
    c_big, c_nat = compare_warp_coadd(big), compare_warp_coadd(nat)
    np.testing.assert_array_equal(c_big.coadd.image, c_nat.coadd.image)
    x, m = planes[0][0], (rng.random((n, n)) < 0.1).astype(">i4")
    assert meanclip_masked(x, m, 1, 3.0, 3) == meanclip_masked(x.astype(np.float32), m.astype(np.int32), 1, 3.0, 3)
    np.testing.assert_array_equal(or_box(m, 2), or_box(m.astype(np.int32), 2))


@pytest.mark.parametrize("copy", [True, False])
def test_masked_array_pixels_become_nan_and_no_data(copy):
    """np.asarray drops a masked array's mask; the Exposure keeps it as NO_DATA (NaN pixels),
    and neither the caller's data nor its mask is touched."""
    data = np.arange(20, dtype=np.float32).reshape(4, 5)
    img = np.ma.masked_array(data, mask=np.zeros((4, 5), bool))
    img.mask[1, 2] = True
    var = np.ma.masked_array(np.full((4, 5), 2.0, np.float32), mask=np.zeros((4, 5), bool))
    var.mask[3, 0] = True
    user_mask = np.zeros((4, 5), np.int32)
    e = Exposure(img, var, user_mask, copy=copy)
    bad = np.zeros((4, 5), bool)
    bad[1, 2] = bad[3, 0] = True
    assert np.array_equal(e.get_plane("NO_DATA"), bad)
    assert np.isnan(e.image[bad]).all() and np.isnan(e.variance[bad]).all()
    assert np.array_equal(e.image[~bad], data[~bad])
    assert np.array_equal(e.variance[~bad], np.full((4, 5), 2.0)[~bad])
    # the caller's arrays are unchanged
    assert np.array_equal(data, np.arange(20, dtype=np.float32).reshape(4, 5))
    assert not np.isnan(var.data).any() and not user_mask.any()
    # a masked array with nothing masked is a plain array
    plain = Exposure(np.ma.masked_array(data), var.data)
    assert not plain.get_plane("NO_DATA").any() and np.array_equal(plain.image, data)


def test_mask_planes_from_names_and_bad_planes():
    planes = MaskPlanes(["BAD", "SAT", "NO_DATA"])
    assert dict(planes) == {"BAD": 0, "SAT": 1, "NO_DATA": 2}
    with pytest.raises(InputError, match="given twice"):
        MaskPlanes(["BAD", "BAD"])
    with pytest.raises(InputError, match="need an order"):
        MaskPlanes({"BAD", "SAT"})
    with pytest.raises(InputError, match="mapping name -> bit"):
        MaskPlanes("BAD")
    with pytest.raises(InputError, match="bits must be"):
        MaskPlanes({"BAD": 40})


def test_ccddata_wcs_maps_array_pixels(tmp_path):
    """CCDData's WCS maps its array pixels (what astropy, photutils and ``ccd.write`` assume),
    so with xy0 != 0 it is the Exposure's parent-frame WCS moved by -xy0, SIP included; the
    way back restores the parent frame."""
    from astropy.wcs import Sip

    from toolkit.sim import make_wcs

    e = make()
    w = make_wcs(e.shape)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    a = np.zeros((3, 3))
    a[2, 0] = 3e-5
    w.sip = Sip(a, np.zeros((3, 3)), None, None, w.wcs.crpix)
    e.wcs = w
    ccd = e.to_ccddata()
    x0, y0 = e.xy0
    for ix, iy in [(0, 0), (29, 19), (7, 11)]:
        assert ccd.wcs.pixel_to_world(ix, iy).separation(e.wcs.pixel_to_world(ix + x0, iy + y0)).arcsec < 1e-6
    ccd.write(tmp_path / "c.fits")  # astropy's own writer and reader: array pixels too
    again = CCDData.read(tmp_path / "c.fits")
    assert again.wcs.pixel_to_world(7, 11).separation(e.wcs.pixel_to_world(7 + x0, 11 + y0)).arcsec < 1e-6
    back = Exposure.from_ccddata(ccd)
    assert back.xy0 == e.xy0
    assert back.wcs.pixel_to_world(17, 7).separation(e.wcs.pixel_to_world(17, 7)).arcsec < 1e-6
    # and through astropy's FITS writer and reader: planes, xy0, calibration and metadata
    # that FITS cards cannot hold all come back
    e.set_plane("CR", e.image > 1.5)
    e.metadata.update({"BUNIT": "nJy", "OBSERVER": "Ånders", "lower_key": {"a": [1, 2]}})
    e.to_ccddata().write(tmp_path / "d.fits")
    r = Exposure.from_ccddata(CCDData.read(tmp_path / "d.fits"))  # (astropy writes the boolean mask, not our bit flags)
    assert r.xy0 == e.xy0 and dict(r.mask_planes) == dict(e.mask_planes)
    assert r.metadata["OBSERVER"] == "Ånders" and r.metadata["lower_key"] == {"a": [1, 2]}
    assert r.wcs.pixel_to_world(17, 7).separation(e.wcs.pixel_to_world(17, 7)).arcsec < 1e-6
