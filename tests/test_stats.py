"""Scalar statistics of whole planes: the masked order statistics must equal numpy's exactly."""

import numpy as np
import pytest

from toolkit.stats import meanclip_masked, meanclip_scalar, median_masked, median_of, quantiles_masked, quantiles_of


def _planes():
    """Planes that stress the float32 key histogram: NaN/inf, ties, +-0, negative values,
    a narrow range (every value in a few top bins), a wide one, and tiny sizes."""
    rng = np.random.default_rng(2024)
    out = []
    for n, scale, offset in ((1, 1.0, 0.0), (2, 1.0, 0.0), (7, 3.0, -2.0), (1000, 1e-3, 100.0), (50_000, 50.0, -10.0), (300_001, 1e6, 0.0)):
        x = (rng.standard_normal(n) * scale + offset).astype(np.float32)
        out.append(x)
    ties = np.round(rng.standard_normal(20_000) * 3).astype(np.float32)
    ties[::5] = -0.0
    ties[1::5] = 0.0
    out.append(ties)
    bad = (rng.standard_normal(40_000) * 10).astype(np.float32)
    bad[rng.integers(0, bad.size, 4000)] = np.nan
    bad[rng.integers(0, bad.size, 50)] = np.inf
    bad[rng.integers(0, bad.size, 50)] = -np.inf
    out.append(bad)
    return out


@pytest.mark.parametrize("i", range(8))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masked_order_statistics_equal_numpy(i, dtype):
    x = _planes()[i].astype(dtype)
    rng = np.random.default_rng(i)
    mask = np.where(rng.random(x.size) < 0.2, 4, 0).astype(np.int32) | rng.integers(0, 2, x.size).astype(np.int32)
    usable = np.isfinite(x) & ((mask & 4) == 0)
    qs = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
    got = quantiles_masked(x, mask, 4, qs)
    if usable.any():
        want = np.percentile(x[usable].astype(np.float64), [100 * q for q in qs])
        assert got == list(want)  # exact, not approximately
        assert median_masked(x, mask, 4) == median_of(x, usable)
        assert median_masked(x, ~usable) == median_of(x, usable)  # a boolean mask marks bad pixels
        # the clip sums may be vectorised in a different order for the masked plane and the
        # selection: equal to float64 round-off on the values' scale
        scale = float(np.abs(x[usable]).max())
        assert abs(meanclip_masked(x, mask, 4, 3.0, 3) - meanclip_scalar(x[usable], 3.0, 3)) <= 1e-12 * scale
        assert quantiles_masked(x, None, 0, (0.5,)) == [float(np.median(x[np.isfinite(x)].astype(np.float64)))]
        # a mask whose bad bit is set nowhere (the passes after the first then skip it)
        clean = mask & ~np.int32(4)
        assert abs(meanclip_masked(x, clean, 4, 3.0, 3) - meanclip_masked(x, None, 0, 3.0, 3)) <= 1e-12 * scale
        assert quantiles_masked(x, clean, 4, qs) == quantiles_masked(x, None, 0, qs)
        # of x * c without that plane (ZOGY's calibration): bit-identical to making it first
        for c in (1.3, 0.37, 1.69):
            xc = x * x.dtype.type(c)
            assert quantiles_masked(x, mask, 4, qs, scale=c) == quantiles_masked(xc, mask, 4, qs)
            assert meanclip_masked(x, mask, 4, 3.0, 3, scale=c) == meanclip_masked(xc, mask, 4, 3.0, 3)
    else:
        assert all(np.isnan(got)) and np.isnan(median_masked(x, mask, 4)) and np.isnan(meanclip_masked(x, mask, 4))


def test_masked_statistics_do_not_modify_or_copy_semantics():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 80)).astype(np.float32)
    mask = np.zeros(x.shape, np.int32)
    mask[:10] = 2
    x0, m0 = x.copy(), mask.copy()
    a = meanclip_masked(x, mask, 2)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(mask, m0)
    # a non-contiguous view (a grid cell) gives the same as its copy
    assert meanclip_masked(x[5:40, 3:70], mask[5:40, 3:70], 2) == meanclip_masked(x[5:40, 3:70].copy(), mask[5:40, 3:70].copy(), 2)
    assert abs(a - meanclip_scalar(x[10:], 3.0, 2)) <= 1e-12 * float(np.abs(x).max())
    # and it is the clipped mean: an outlier beyond 3 sigma does not move it
    y = x.copy()
    y[20, 20] = 1e6
    assert abs(meanclip_masked(y, mask, 2) - a) < 0.01
    assert quantiles_of(x[10:].ravel(), (0.5,)) == quantiles_masked(x, mask, 2, (0.5,))
    with pytest.raises(ValueError, match="mask has"):
        meanclip_masked(x, mask[:5], 2)


@pytest.mark.parametrize("kind", ["gauss", "skewed", "bimodal", "integers", "constant", "cauchy", "wide-second-window", "mostly-tail"])
def test_one_pass_clip_iterations_select_what_full_passes_select(kind):
    """The clip iterations after the first read a core's sums and a tail's values kept by one
    pass; wherever a window leaves the core or reaches past the tail the iteration takes a
    full pass.  Every case, those paths included, gives the plain MEANCLIP / STDEVCLIP of the
    usable values to float64 round-off on the values' scale."""
    from toolkit.stats import stdevclip_masked

    rng = np.random.default_rng(11)
    n = 300_000
    x = {
        "gauss": rng.normal(100, 5, n),
        "skewed": 100 + rng.gamma(0.5, 20, n),
        "bimodal": np.where(rng.random(n) < 0.5, rng.normal(0, 1, n), rng.normal(30, 1, n)),
        "integers": rng.poisson(3, n).astype(float),
        "constant": np.full(n, 7.25),
        "cauchy": rng.standard_cauchy(n),
        # a narrow core in a broad base: the IQR's sigma is small, the clipped std of its
        # window is not, so the second window reaches past the kept tail (a full pass)
        "wide-second-window": np.where(rng.random(n) < 0.55, rng.normal(0, 1, n), rng.normal(0, 40, n)),
        # a flat plateau: more than a quarter of the values fall in the tail (a full pass)
        "mostly-tail": rng.uniform(-1, 1, n) ** 3,
    }[kind].astype(np.float32)
    mask = np.where(rng.random(n) < 0.1, 4, 0).astype(np.int32)
    usable = (mask & 4) == 0
    scale = float(np.abs(x[usable]).max()) or 1.0
    for n_iter in (2, 3, 5):
        assert abs(meanclip_masked(x, mask, 4, 3.0, n_iter) - meanclip_scalar(x[usable], 3.0, n_iter)) <= 1e-12 * scale
    # STDEVCLIP against its definition: the last selection's standard deviation
    vals = x[usable].astype(np.float64)
    q25, med, q75 = np.percentile(vals, [25, 50, 75])
    c, hw = med, 2.5 * 0.741301109252802 * (q75 - q25)
    for _ in range(3):
        sel = vals[(vals >= c - hw) & (vals <= c + hw)]
        c, sd = sel.mean(), sel.std(ddof=1) if sel.size > 1 else np.nan
        hw = 2.5 * sd if sel.size > 1 else hw
    got = stdevclip_masked(x, mask, 4, 2.5, 3)
    assert (np.isnan(got) and np.isnan(sd)) or abs(got - sd) <= 1e-10 * scale


def test_large_plane_quartiles_exact_when_the_sample_guesses_wrong():
    """A large float32 plane's first pass also makes the second-level histograms of the top
    bins a 64-block sample points to (and splits the pixels for the clip passes about the
    sample's median).  Where the sample is unrepresentative (here every sampled pixel is 0 and
    the rest are not) the guess misses: the quartiles come from a second pass and the clip
    iterations from full passes, and all are still exact."""
    rng = np.random.default_rng(3)
    n = 2**20
    x = (5 + rng.standard_normal(n)).astype(np.float32)
    starts = np.linspace(0, n - 1024, 64).astype(np.int64)
    x[(starts[:, None] + np.arange(1024)).ravel()] = 0.0  # 6 % of the pixels: below the quartiles
    qs = (0.1, 0.25, 0.5, 0.75)
    assert quantiles_masked(x, None, 0, qs) == list(np.percentile(x.astype(np.float64), [100 * q for q in qs]))
    assert abs(meanclip_masked(x, None, 0, 3.0, 3) - meanclip_scalar(x, 3.0, 3)) <= 1e-12 * 10
    # and where it guesses right (the same values, shuffled): the same numbers
    y = rng.permutation(x)
    assert quantiles_masked(y, None, 0, qs) == quantiles_masked(x, None, 0, qs)
    assert abs(meanclip_masked(y, None, 0, 3.0, 3) - meanclip_masked(x, None, 0, 3.0, 3)) <= 1e-12 * 10
