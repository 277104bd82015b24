"""The compiled stacking loop equals the readable numpy reference bit for bit.

``reference_stack`` below is the vectorised numpy implementation that ``assemble_coadd`` used
before the loop was compiled (statistic from :func:`toolkit.stats.stack_statistic`, LSST's
output-mask rules written as whole-array operations).  Random stacks exercise every branch: NaN
pixels, masked and fully masked columns, clipping, the propagation thresholds, skipped inputs
(``used_idx``), every statistic, both variance rules and the online quirk.
"""

import numpy as np
import pytest

from toolkit.stack_kernel import STAT_CODES, _sorting_network, stack_pixels
from toolkit.stats import stack_statistic

# bit layout of the random masks: 0 BAD, 1 SAT, 2 EDGE, 3 NO_DATA, 4 CLIPPED, 5 SENSOR_EDGE,
# 6 REJECTED, 7 INTRP, 8 CR
B = dict(BAD=1, SAT=2, EDGE=4, NO_DATA=8, CLIPPED=16, SENSOR_EDGE=32, REJECTED=64, INTRP=128, CR=256)
AND_MASK = B["NO_DATA"] | B["BAD"] | B["SAT"] | B["EDGE"] | B["CLIPPED"]
REMOVE = B["CR"]
REJECTED_SRC = AND_MASK & ~B["NO_DATA"] & ~B["EDGE"] & ~B["CLIPPED"]
TH_BITS = np.array([B["SAT"], B["INTRP"]], np.int32)
TH_VALS = np.array([0.1, 0.5])


def _online_mean(x, v, usable, w, from_input):
    sw, swx, sw2v, sw2, swx2 = (np.zeros(x.shape[1:]) for _ in range(5))
    for k in range(x.shape[0]):
        g = usable[k]
        wk = np.where(g, w[k], 0.0)
        xk = np.where(g, x[k].astype(np.float64), 0.0)
        sw += wk
        swx += wk * xk
        if from_input:
            sw2v += wk * wk * np.where(g, v[k], 0.0)
        else:
            sw2 += wk * wk
            swx2 += wk * xk * xk
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = swx / sw
        if from_input:
            var = sw2v / (sw * sw)
        else:
            var = (swx2 / sw - mean * mean) * (sw * sw) / (sw * sw - sw2) * sw2 / (sw * sw)
    mean[~(sw > 0)] = np.nan
    var[~(sw > 0)] = np.nan
    return mean, var, usable.sum(0), np.zeros(x.shape[1:], int), usable.copy()


def reference_stack(x, v, m, w, statistic, n_sigma, n_iter, from_input, quirk, used_idx, nbytes):
    masked = (m & AND_MASK) != 0
    n_image = (~masked).sum(0)
    m = m & ~REMOVE
    usable = ~masked if quirk else ~masked & np.isfinite(x)
    if statistic == "ONLINE":
        value, variance, n_point, n_clip, keep = _online_mean(x, v, usable, w, from_input)
    else:
        st = stack_statistic(x, v, usable, w, statistic, n_sigma, n_iter, from_input)
        value, variance, n_point, n_clip, keep = st.value, st.variance, st.n_point, st.n_clipped, st.survivors
    full = np.zeros((nbytes * 8,) + x.shape[1:], bool)
    full[used_idx] = keep
    input_map = np.packbits(full, axis=0)
    mk = np.bitwise_or.reduce(np.where(usable, m, 0), axis=0)
    rej = ~usable
    rej_or = np.bitwise_or.reduce(np.where(rej, m, 0), axis=0)
    wcol = w[:, None]
    sw_use = np.where(usable, wcol, 0.0).sum(0)
    for bit, t in zip(TH_BITS, TH_VALS):
        rw = np.where(rej & ((m & bit) != 0), wcol, 0.0).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mk[rw / (sw_use + rw) > t] |= bit
    mk[n_clip > 0] |= B["CLIPPED"]
    has_rej = rej.any(0)
    mk[has_rej & ((rej_or & REJECTED_SRC) != 0)] |= B["REJECTED"]
    mk[has_rej & ((rej_or & B["EDGE"]) != 0)] |= B["SENSOR_EDGE"]
    mk[has_rej & ((rej_or & B["CLIPPED"]) != 0)] |= B["CLIPPED"]
    mk[n_point == 0] = B["NO_DATA"]
    return value, variance, mk, n_image, n_clip, input_map


def random_stack(rng, n, npix, dtype):
    truth = rng.normal(100, 30, npix)
    v = rng.uniform(50, 200, (n, npix)).astype(dtype)
    x = (truth + rng.normal(0, 1, (n, npix)) * np.sqrt(v)).astype(dtype)
    out = rng.random((n, npix)) < 0.1  # outliers that clipping must catch
    x[out] += rng.choice([-1, 1], out.sum()) * rng.uniform(50, 500, out.sum())
    x[rng.random((n, npix)) < 0.03] = np.nan
    bits = np.array(list(B.values()), np.int32)
    m = np.zeros((n, npix), np.int32)
    for b, p in zip(bits, (0.03, 0.05, 0.02, 0.04, 0.03, 0.02, 0.01, 0.1, 0.05)):
        m[rng.random((n, npix)) < p] |= b
    m[:, :7] = B["NO_DATA"]  # fully masked columns
    x[:, 7:9] = 5.0  # identical values: zero scatter
    w = rng.uniform(0.005, 0.02, n)
    return x, v, m, w


@pytest.mark.parametrize("n", [1, 2, 5, 10, 61, 70])
@pytest.mark.parametrize("statistic", ["MEAN", "MEDIAN", "MEANCLIP", "ONLINE"])
@pytest.mark.parametrize("from_input", [True, False])
def test_kernel_matches_numpy_reference(n, statistic, from_input):
    rng = np.random.default_rng(1000 + n)
    npix = 3000
    dtype = np.float32 if n % 2 else np.float64
    x, v, m, w = random_stack(rng, n, npix, dtype)
    used_idx = np.sort(rng.choice(n + 3, n, replace=False))  # some input positions were skipped
    nbytes = (n + 3 + 7) // 8
    for quirk in ([False, True] if statistic == "ONLINE" else [False]):
        for n_sigma, n_iter in [(3.0, 2), (1.5, 3), (2.5, 1), (3.0, 0)]:
            out = (np.empty(npix, dtype), np.empty(npix, dtype)) + tuple(np.empty(npix, np.int32) for _ in range(3))
            imap = np.empty((nbytes, npix), np.uint8)
            stack_pixels(x, v, m, w, np.int32(AND_MASK), np.int32(REMOVE), STAT_CODES[statistic], n_sigma, n_iter, from_input, quirk,
                         TH_BITS, TH_VALS, B["CLIPPED"], B["REJECTED"], B["SENSOR_EDGE"], B["NO_DATA"], B["EDGE"], np.int32(REJECTED_SRC),
                         used_idx.astype(np.int64), *out, imap)
            ref = reference_stack(x, v, m, w, statistic, n_sigma, n_iter, from_input, quirk, used_idx, nbytes)
            names = ("value", "variance", "mask", "n_image", "n_clip")
            for name, a, b in zip(names, out, ref):
                np.testing.assert_array_equal(a, np.asarray(b).astype(a.dtype), err_msg=f"{name} ({statistic}, n={n}, {n_sigma}x{n_iter})")
            np.testing.assert_array_equal(imap, ref[5])
            if statistic == "MEANCLIP" and n >= 5 and n_iter > 0:
                assert (out[4] > 0).mean() > 0.2  # clipping really happened


@pytest.mark.parametrize("n", list(range(1, 17)) + [23, 40, 64])
def test_sorting_network_sorts(n):
    """The pruned Batcher network used for stacks of up to 64 inputs.  A comparator network
    sorts every input iff it sorts every 0/1 input (Knuth's 0-1 principle): exhaustive up to
    16 inputs; random values, ties and +inf padding beyond."""
    net = _sorting_network(n)
    assert net.shape[1] == 2 and (net[:, 0] < net[:, 1]).all() and (net < n).all()
    if n <= 16:
        vals = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(float).T  # (n, 2^n) columns
    else:
        rng = np.random.default_rng(n)
        vals = np.round(rng.normal(0, 3, (n, 4000)))  # many ties
        vals[rng.random(vals.shape) < 0.2] = np.inf
    s = vals.copy()
    for a, b in net:
        lo, hi = np.minimum(s[a], s[b]), np.maximum(s[a], s[b])
        s[a], s[b] = lo, hi
    np.testing.assert_array_equal(s, np.sort(vals, axis=0))
