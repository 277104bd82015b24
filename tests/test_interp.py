"""Row interpolation over masked runs (InterpImageTask as diffstack applies it)."""

import numpy as np

from toolkit.interp import _interp_rows_into


def reference(arr, bad, fallback):
    """The rule in a different formulation (the vectorised numpy one diffstack used before the
    compiled scan): runs from where the mask changes along each row, every run pixel at once;
    a run between good pixels l and r gets v_l + (v_r - v_l) (x - l) / (r - l) (the difference
    in the array's precision, the rest in float64), a run touching a row end the fallback."""
    out = arr.copy()
    nx = arr.shape[1]
    change = np.diff(bad.astype(np.int8), axis=1, prepend=np.int8(0), append=np.int8(0))
    rows, start = np.nonzero(change == 1)
    _, stop = np.nonzero(change == -1)
    if rows.size == 0:
        return out
    length = stop - start
    run = np.repeat(np.arange(rows.size), length)
    col = start[run] + (np.arange(run.size) - np.repeat(np.cumsum(length) - length, length))
    left, right = start - 1, stop
    edge = (left < 0) | (right >= nx)
    vl = arr[rows, np.clip(left, 0, nx - 1)][run]
    vr = arr[rows, np.clip(right, 0, nx - 1)][run]
    with np.errstate(invalid="ignore", divide="ignore"):
        interp = vl + (vr - vl) * ((col - left[run]) / (right - left)[run])
    out[rows[run], col] = np.where(edge[run], fallback, interp)
    return out


def test_runs_filled_as_the_rule_says_and_fallback_only_when_needed():
    rng = np.random.default_rng(8)
    for trial in range(120):
        ny, nx = (int(v) for v in rng.integers(1, 30, 2))
        a = (rng.standard_normal((ny, nx)) * 100).astype(np.float32 if trial % 2 else np.float64)
        bad = rng.random((ny, nx)) < rng.uniform(0, 0.9)
        calls = []

        def fb():
            calls.append(1)
            return 7.25

        got = a.copy()
        _interp_rows_into(got, bad, fb)
        np.testing.assert_array_equal(got, reference(a, bad, 7.25))
        touches_end = bool(bad[:, 0].any() or bad[:, -1].any())
        assert len(calls) == int(touches_end)  # evaluated once, and only if a run touches an end
        np.testing.assert_array_equal(got[~bad], a[~bad])  # good pixels untouched


def test_bright_object_masks_follow_lsst_set_bright_object_masks():
    """LSST's rules: the centre rounded to the nearest pixel; a box from int(x - w/2) to
    int(x + w/2) inclusive; a circle is afw's stencil of radius int(r) (r from arcsec with the
    plate scale at the bbox centre); shapes clipped to the image; other types skipped with a
    warning; rotated boxes refused."""
    import pytest
    from astropy.table import Table

    from toolkit.detection import circular_stencil
    from toolkit.errors import InputError
    from toolkit.exposure import Exposure
    from toolkit.interp import mask_bright_objects
    from toolkit.sim import make_wcs

    wcs = make_wcs((80, 100))  # 0.2"/px
    exp = Exposure(np.zeros((80, 100), np.float32), np.ones((80, 100), np.float32), wcs=wcs)
    ra, dec = wcs.pixel_to_world_values(60.3, 50.6)
    rows = Table(
        rows=[("box", 20.6, 30.4, 7.0, 4.0, np.nan, np.nan, np.nan), ("circle", np.nan, np.nan, np.nan, np.nan, 1.1, float(ra), float(dec)), ("box", 97.0, 2.0, 9.0, 9.0, np.nan, np.nan, np.nan)],
        names=("type", "x", "y", "width", "height", "radius_arcsec", "ra", "dec"),
    )
    # LSST's form (ra/dec, sizes in arcsec) and diffstack's (pixels), as separate tables
    boxes = rows[[0, 2]]["type", "x", "y", "width", "height"]
    circle = rows[[1]]["type", "radius_arcsec", "ra", "dec"]
    mask_bright_objects(exp, boxes)
    mask_bright_objects(exp, circle)
    got = exp.get_plane("BRIGHT_OBJECT")
    want = np.zeros((80, 100), bool)
    want[28:33, 17:25] = True  # centre (21, 30): columns int(17.5)..int(24.5), rows int(28)..int(32)
    want[51 - 5 : 51 + 6, 60 - 5 : 60 + 6] |= circular_stencil(5)  # 1.1" / 0.2" = 5.5 -> 5; centre (60, 51)
    want[0:7, 92:100] = True  # box at (97, 2), 9 px: columns 92..101 and rows -2..6, clipped
    np.testing.assert_array_equal(got, want)
    with pytest.warns(UserWarning, match="'ellipse'.*skipped"):
        mask_bright_objects(exp, Table(rows=[("ellipse", 10.0, 10.0, 3.0)], names=("type", "x", "y", "radius")))
    with pytest.raises(InputError, match="angle"):
        mask_bright_objects(exp, Table(rows=[("box", 10.0, 10.0, 3.0, 3.0, 30.0)], names=("type", "x", "y", "width", "height", "angle")))
    with pytest.raises(InputError, match="WCS"):
        mask_bright_objects(Exposure(np.zeros((8, 8), np.float32), np.ones((8, 8), np.float32)), circle)
    with pytest.raises(InputError, match="row 0: its centre is not finite"):
        mask_bright_objects(exp, Table(rows=[("circle", np.nan, 3.0, 2.0)], names=("type", "x", "y", "radius")))
    with pytest.raises(InputError, match="row 0: radius must be finite and >= 0"):
        mask_bright_objects(exp, Table(rows=[("circle", 3.0, 3.0, -2.0)], names=("type", "x", "y", "radius")))


def test_interpolate_over_plane_options():
    """InterpImageTask's options: the edge fallback (MEDIAN, MEAN, MEANCLIP, USER; clamped at
    zero unless negativeFallbackAllowed), useFallbackValueAtEdge=False (the nearest good pixel of
    the row, the fallback only for a row with no good pixel), transpose (columns), INTRP set
    and NO_DATA kept; the input untouched."""
    from toolkit.exposure import Exposure
    from toolkit.interp import fallback_value, interpolate_over_plane

    rng = np.random.default_rng(4)
    img = rng.normal(5.0, 1.0, (6, 12)).astype(np.float32)
    img[0, 0] = 40.0  # an outlier: mean and clipped mean differ
    var = np.full((6, 12), 2.0, np.float32)
    exp = Exposure(img, var)
    nd = np.zeros((6, 12), bool)
    nd[1, 4:7] = True  # interior run
    nd[2, :3] = True  # left-edge run
    nd[3, 9:] = True  # right-edge run
    nd[5, :] = True  # a whole row
    exp.set_plane("NO_DATA", nd)
    before = exp.image.copy()
    good = ~nd

    out = interpolate_over_plane(exp)
    np.testing.assert_array_equal(exp.image, before)  # not in place unless asked
    med = fallback_value(img, good, "MEDIAN")
    assert med == np.median(img[good])
    np.testing.assert_allclose(out.image[1, 4:7], img[1, 3] + (img[1, 7] - img[1, 3]) * np.array([1, 2, 3]) / 4, rtol=1e-6)
    assert np.all(out.image[2, :3] == np.float32(med)) and np.all(out.image[3, 9:] == np.float32(med)) and np.all(out.image[5] == np.float32(med))
    assert (out.get_plane("INTRP") == nd).all() and (out.get_plane("NO_DATA") == nd).all()
    np.testing.assert_allclose(out.variance[nd], 2.0)

    near = interpolate_over_plane(exp, use_fallback_at_edge=False)
    assert np.all(near.image[2, :3] == img[2, 3]) and np.all(near.image[3, 9:] == img[3, 8])
    assert np.all(near.image[5] == np.float32(med))  # no information in the row: the fallback

    np.testing.assert_allclose(fallback_value(img, good, "MEAN"), img[good].astype(np.float64).mean(), rtol=1e-6)
    assert fallback_value(img, good, "MEANCLIP") < fallback_value(img, good, "MEAN")  # the outlier clipped
    assert fallback_value(img, good, "USER", user_value=-3.0) == 0.0
    assert fallback_value(img, good, "USER", user_value=-3.0, allow_negative=True) == -3.0
    assert fallback_value(img - 100, good, "MEDIAN") == 0.0

    cols = interpolate_over_plane(Exposure(img.T.copy(), var.T.copy(), exp.mask.T.copy(), exp.mask_planes), transpose=True)
    np.testing.assert_array_equal(cols.image.T, out.image)


def test_interpolate_over_plane_names_bad_arguments():
    """A typo in the plane or the fallback type is an error, not a silent no-op; a plane LSST
    registers that these inputs lack (STREAK here) selects nothing, as in config lists."""
    import pytest

    from toolkit.errors import ConfigError
    from toolkit.exposure import Exposure
    from toolkit.interp import interpolate_over_plane

    exp = Exposure(np.ones((4, 6), np.float32))
    exp.set_plane("NO_DATA", np.eye(4, 6, dtype=bool))
    with pytest.raises(ConfigError, match="unknown mask plane 'NODATA'"):
        interpolate_over_plane(exp, "NODATA")
    with pytest.raises(ConfigError, match="fallbackValueType must be one of"):
        interpolate_over_plane(exp, fallback_type="MODE")
    with pytest.raises(ConfigError, match="fallbackUserValue must be finite"):
        interpolate_over_plane(exp, fallback_type="USER", user_value=np.nan)
    same = interpolate_over_plane(exp, "STREAK")
    assert not same.get_plane("INTRP").any() and np.array_equal(same.image, exp.image)
