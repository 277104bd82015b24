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
