"""The per-pixel stacking loop of ``assemble_coadd``, compiled with numba.

Why compiled and hand-written: afw's ``statisticsStack`` works pixel by pixel (sort the usable
inputs, quartiles, clip iterations, weighted sums, the output-mask rules).  Vectorised over the
stack axis in numpy (see :func:`toolkit.stats.stack_statistic`, kept as the readable reference) the
same work needs ~20 full-size float64 temporaries and a sort along the stack axis, and it was the
largest cost of every CompareWarp stage that stacks.  Here each block of 64 pixels is carried
through every step while its inputs sit in L1 cache, and every step is a loop over the block's
pixels for one input at a time: those loops have no branches and no dependence between pixels,
so the compiler turns them into SIMD instructions (several pixels per instruction).  The sort is
a fixed sorting network applied to whole rows of the block, for the same reason.

The arithmetic follows the numpy reference operation by operation and in the same order
(sequential sums over the inputs, float64 throughout, numpy's error model): a pixel's sums skip
nothing, they add exact zeros for inputs that do not take part, as the reference's ``np.where``
does, so the results are bit-identical; ``tests/test_stack_kernel.py`` checks that on random
stacks with masks, NaNs and every statistic.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .stats import IQR_TO_SIGMA

__all__ = ["STAT_CODES", "stack_pixels"]

#: statistic name -> kernel code; "ONLINE" is MEAN from running sums (doOnlineForMean)
STAT_CODES = {"MEAN": 0, "MEDIAN": 1, "MEANCLIP": 2, "ONLINE": 3}

_JIT = dict(cache=True, nogil=True, error_model="numpy")

#: pixels carried through the steps together (scratch rows of 64 float64 = 512 bytes)
_BLOCK = 64
#: stacks up to this many inputs are sorted by a network, larger ones by numpy's sort per pixel
_MAX_NETWORK = 64


@nb.njit(**_JIT)
def _sorting_network(n):  # pragma: no cover - compiled
    # Batcher's odd-even merge sort for the next power of two >= n, as comparator pairs (lo, hi),
    # with every comparator that touches a slot >= n dropped: filled with +inf, those slots
    # never move, so the pruned network sorts n values (Knuth, TAOCP 5.3.4, algorithm M)
    t = 1
    while t < n:
        t *= 2
    pairs = np.empty((max(n * n, 1), 2), np.int64)
    k_out = 0
    p = 1
    while p < t:
        k = p
        while k >= 1:
            for j in range(k % p, t - k, 2 * k):
                for i in range(min(k, t - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        pairs[k_out, 0] = i + j
                        pairs[k_out, 1] = i + j + k
                        k_out += 1
            k //= 2
        p *= 2
    return pairs[:k_out].copy()


@nb.njit(**_JIT)
def _sort_columns(s, nb_, net, tmp):  # pragma: no cover - compiled
    # sorts each of the first nb_ columns of s (usable values, +inf elsewhere)
    n_in = s.shape[0]
    if n_in <= _MAX_NETWORK:
        for k in range(net.shape[0]):
            ra = s[net[k, 0]]
            rb = s[net[k, 1]]
            for j in range(nb_):
                x = ra[j]
                y = rb[j]
                ra[j] = min(x, y)
                rb[j] = max(x, y)
        return
    for j in range(nb_):
        for i in range(n_in):
            tmp[i] = s[i, j]
        tmp.sort()
        for i in range(n_in):
            s[i, j] = tmp[i]


@nb.njit(**_JIT)
def _quantile(s, j, n, q):  # pragma: no cover - compiled
    # linear interpolation at q (n - 1) in sorted column j, as stats._quantile_sorted
    if n == 0:
        return np.nan
    idx = q * (n - 1)
    lo = int(np.floor(idx))
    hi = min(lo + 1, n - 1)
    frac = idx - lo
    vlo = s[lo, j]
    return vlo + frac * (s[hi, j] - vlo)


@nb.njit(**_JIT)
def _sums(xs, keep, w, center, nb_, sw, sw2, swd, swdd):  # pragma: no cover - compiled
    # per pixel j < nb_: sum w, sum w^2, sum w d, sum w d^2 over the kept inputs, d = x - center
    # (stats._weighted_mean_var: the others add exact zeros)
    for j in range(nb_):
        sw[j] = 0.0
        sw2[j] = 0.0
        swd[j] = 0.0
        swdd[j] = 0.0
    for i in range(xs.shape[0]):
        wi = w[i]
        kr = keep[i]
        xr = xs[i]
        for j in range(nb_):
            k = kr[j]
            wk = wi if k else 0.0
            d = (xr[j] - center[j]) if k else 0.0
            wd = wk * d
            sw[j] += wk
            sw2[j] += wk * wk
            swd[j] += wd
            swdd[j] += wd * d


@nb.njit(**_JIT)
def stack_pixels(
    x, v, m, w, and_mask, remove, stat, n_sigma, n_iter, from_input, quirk,
    th_bits, th_vals, b_clipped, b_rejected, b_sensor_edge, b_no_data, b_edge, rejected_src, used_idx,
    value, variance, out_mask, n_image, n_clip, input_map,
):  # pragma: no cover - compiled
    """Stack the columns of ``x``/``v``/``m`` (shape (N, P), one column per pixel).

    ``m`` holds the inputs' masks with the alternative masks already applied.  Writes, per pixel:
    ``value``, ``variance``, ``out_mask`` (LSST's output-mask rules, before processResults),
    ``n_image`` (inputs not in the and-mask), ``n_clip`` (usable inputs clipped) and the packed
    ``input_map`` bits of the inputs that contributed (input i is ``used_idx[i]``).
    Row-contiguous (N, P) inputs are read fastest.
    """
    n_in, n_pix = x.shape
    B = _BLOCK
    n_th = th_bits.size
    tmp = np.empty(n_in)
    xs = np.empty((n_in, B))  # the block's inputs in float64
    s = np.empty((n_in, B))  # sort buffer: usable values, +inf elsewhere
    usable = np.empty((n_in, B), np.bool_)
    keep = np.empty((n_in, B), np.bool_)
    n_img = np.empty(B, np.int64)
    n_point = np.empty(B, np.int64)
    n_keep = np.empty(B, np.int64)
    mk = np.empty(B, np.int32)
    rej_or = np.empty(B, np.int32)
    sw_use = np.empty(B)
    rw = np.empty((max(n_th, 1), B))
    center = np.empty(B)
    hw = np.empty(B)
    iqr_hw = np.empty(B)
    shift = np.empty(B)
    sw = np.empty(B)
    sw2 = np.empty(B)
    swd = np.empty(B)
    swdd = np.empty(B)
    swv = np.empty(B)
    val = np.empty(B)
    var = np.empty(B)
    bit_byte = np.empty(n_in, np.int64)
    bit_value = np.empty(n_in, np.uint8)
    for i in range(n_in):
        bit_byte[i] = used_idx[i] >> 3
        bit_value[i] = np.uint8(1 << (7 - (used_idx[i] & 7)))
    sorts = stat == 1 or stat == 2
    # the network only where it is used (its pair table grows as n^2 before pruning)
    net = _sorting_network(n_in) if sorts and n_in <= _MAX_NETWORK else np.empty((0, 2), np.int64)
    for p0 in range(0, n_pix, B):
        nb_ = min(B, n_pix - p0)
        for j in range(nb_):
            n_img[j] = 0
            n_point[j] = 0
            mk[j] = 0
            rej_or[j] = 0
            sw_use[j] = 0.0
        for k in range(n_th):
            for j in range(nb_):
                rw[k, j] = 0.0
        # ---- usable inputs, the and-mask count, OR of usable/rejected masks, threshold weights
        # Inner loops run over 1-D row views (indexing the 2-D arrays there keeps the compiler
        # from vectorising them: 3x slower) and use & and | (Python's and/or short-circuit: a
        # branch per pixel).
        for i in range(n_in):
            wi = w[i]
            xr = x[i, p0 : p0 + nb_]
            mr = m[i, p0 : p0 + nb_]
            ur = usable[i]
            xsr = xs[i]
            sr = s[i]
            for j in range(nb_):
                xi = np.float64(xr[j])
                u = ((mr[j] & and_mask) == 0) & (quirk | ((xi - xi) == 0.0))  # x - x == 0: finite
                ur[j] = u
                xsr[j] = xi
                sr[j] = xi if u else np.inf
            for j in range(nb_):
                n_img[j] += 1 if (mr[j] & and_mask) == 0 else 0
            for j in range(nb_):
                u = ur[j]
                n_point[j] += 1 if u else 0
                sw_use[j] += wi if u else 0.0
            for j in range(nb_):
                mi = mr[j] & ~remove
                u = ur[j]
                mk[j] |= mi if u else 0
                rej_or[j] |= 0 if u else mi
            for k in range(n_th):
                bit = th_bits[k] & ~remove
                rwr = rw[k]
                for j in range(nb_):
                    hit = (~ur[j]) & ((mr[j] & bit) != 0)
                    rwr[j] += wi if hit else 0.0
        keep[:, :nb_] = usable[:, :nb_]
        for j in range(nb_):
            n_keep[j] = n_point[j]
        if sorts:
            _sort_columns(s, nb_, net, tmp)
        if stat == 1:  # MEDIAN: value and (pi/2) var/n around it, no clipping
            for j in range(nb_):
                center[j] = _quantile(s, j, n_point[j], 0.5)
            _sums(xs, usable, w, center, nb_, sw, sw2, swd, swdd)
            for j in range(nb_):
                md = swd[j] / sw[j]
                var_w = (swdd[j] / sw[j] - md * md) * (sw[j] * sw[j]) / (sw[j] * sw[j] - sw2[j])
                val[j] = center[j] if n_point[j] > 0 else np.nan
                var[j] = (np.pi / 2) * var_w / n_point[j]
        elif stat == 3:  # online running sums (AccumulatorMeanStack)
            for j in range(nb_):
                sw[j] = 0.0
                swd[j] = 0.0
                swv[j] = 0.0
                sw2[j] = 0.0
                swdd[j] = 0.0
            for i in range(n_in):
                wi = w[i]
                ur = usable[i]
                xsr = xs[i]
                vr = v[i, p0 : p0 + nb_]
                for j in range(nb_):
                    u = ur[j]
                    wk = wi if u else 0.0
                    xk = xsr[j] if u else 0.0
                    sw[j] += wk
                    swd[j] += wk * xk
                if from_input:
                    for j in range(nb_):
                        wk = wi if ur[j] else 0.0
                        swv[j] += wk * wk * (np.float64(vr[j]) if ur[j] else 0.0)
                else:
                    for j in range(nb_):
                        wk = wi if ur[j] else 0.0
                        xk = xsr[j] if ur[j] else 0.0
                        sw2[j] += wk * wk
                        swdd[j] += wk * xk * xk
            for j in range(nb_):
                a = sw[j]
                mean = swd[j] / a
                if from_input:
                    vj = swv[j] / (a * a)
                else:
                    vj = (swdd[j] / a - mean * mean) * (a * a) / (a * a - sw2[j]) * sw2[j] / (a * a)
                if not a > 0:
                    mean = np.nan
                    vj = np.nan
                val[j] = mean
                var[j] = vj
        else:
            if stat == 2:  # MEANCLIP: median +- n_sigma 0.741 IQR, then the weighted clipped mean
                for j in range(nb_):
                    c = n_point[j]
                    center[j] = _quantile(s, j, c, 0.5)
                    iqr_hw[j] = n_sigma * IQR_TO_SIGMA * (_quantile(s, j, c, 0.75) - _quantile(s, j, c, 0.25))
                    hw[j] = iqr_hw[j]
                # every iteration for every pixel, as the reference: an iteration that keeps the
                # same inputs as the one before changes nothing that matters
                for it in range(n_iter):
                    for j in range(nb_):
                        n_keep[j] = 0
                    for i in range(n_in):
                        ur = usable[i]
                        kr = keep[i]
                        xsr = xs[i]
                        for j in range(nb_):
                            kn = ur[j] & (abs(xsr[j] - center[j]) <= hw[j])
                            kr[j] = kn
                            n_keep[j] += 1 if kn else 0
                    if it == n_iter - 1:
                        break
                    for j in range(nb_):
                        shift[j] = center[j] if (center[j] - center[j]) == 0.0 else 0.0
                    _sums(xs, keep, w, shift, nb_, sw, sw2, swd, swdd)
                    for j in range(nb_):
                        md = swd[j] / sw[j]
                        center_new = shift[j] + md
                        var_c = (swdd[j] / sw[j] - md * md) * (sw[j] * sw[j]) / (sw[j] * sw[j] - sw2[j])
                        if not (var_c - var_c) == 0.0:
                            var_c = 0.0
                        var_c = max(var_c, 0.0)
                        nk = n_keep[j]
                        hw[j] = iqr_hw[j] if nk <= 1 else n_sigma * np.sqrt(var_c)
                        if nk >= 1:
                            center[j] = center_new
            # shift by the first kept value so the scatter sums do not cancel
            for j in range(nb_):
                shift[j] = 0.0
                sw[j] = 0.0  # here: "a kept value was seen"
            for i in range(n_in):
                kr = keep[i]
                xsr = xs[i]
                for j in range(nb_):
                    first = kr[j] & (sw[j] == 0.0)
                    shift[j] = xsr[j] if first else shift[j]
                    sw[j] = 1.0 if kr[j] else sw[j]
            for j in range(nb_):
                if not (shift[j] - shift[j]) == 0.0:
                    shift[j] = 0.0
            _sums(xs, keep, w, shift, nb_, sw, sw2, swd, swdd)
            if from_input:
                for j in range(nb_):
                    swv[j] = 0.0
                for i in range(n_in):
                    wi = w[i]
                    kr = keep[i]
                    vr = v[i, p0 : p0 + nb_]
                    for j in range(nb_):
                        swv[j] += (wi * wi * np.float64(vr[j])) if kr[j] else 0.0
            for j in range(nb_):
                a = sw[j]
                val[j] = shift[j] + swd[j] / a
                if from_input:
                    vj = swv[j] / (a * a)
                else:
                    md = swd[j] / a
                    vj = (swdd[j] / a - md * md) * (a * a) / (a * a - sw2[j]) * sw2[j] / (a * a)
                none = n_keep[j] == 0
                val[j] = np.nan if none else val[j]
                var[j] = np.nan if none else vj
        # ---- outputs
        value[p0 : p0 + nb_] = val[:nb_]
        variance[p0 : p0 + nb_] = var[:nb_]
        n_image[p0 : p0 + nb_] = n_img[:nb_]
        n_clip[p0 : p0 + nb_] = n_point[:nb_] - n_keep[:nb_]
        input_map[:, p0 : p0 + nb_] = 0
        for i in range(n_in):
            bv = bit_value[i]
            kr = keep[i]
            ir = input_map[bit_byte[i], p0 : p0 + nb_]
            for j in range(nb_):
                ir[j] |= bv if kr[j] else np.uint8(0)
        # output mask: OR of usable inputs, propagation thresholds, CLIPPED, rejection map
        for j in range(nb_):
            mj = mk[j]
            for k in range(n_th):
                if rw[k, j] / (sw_use[j] + rw[k, j]) > th_vals[k]:
                    mj |= th_bits[k]
            if n_point[j] - n_keep[j] > 0:
                mj |= b_clipped
            if n_point[j] < n_in:
                if (rej_or[j] & rejected_src) != 0:
                    mj |= b_rejected
                if (rej_or[j] & b_edge) != 0:
                    mj |= b_sensor_edge
                if (rej_or[j] & b_clipped) != 0:
                    mj |= b_clipped
            if n_point[j] == 0:
                mj = b_no_data
            out_mask[p0 + j] = mj
