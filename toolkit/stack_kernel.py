"""The per-pixel stacking loop of ``assemble_coadd``, compiled with numba.

Why compiled and hand-written: afw's ``statisticsStack`` works pixel by pixel (sort the usable
inputs, quartiles, clip iterations, weighted sums, the output-mask rules).  Vectorised over the
stack axis in numpy (see :func:`toolkit.stats.stack_statistic`, kept as the readable reference) the
same work needs ~20 full-size float64 temporaries and a sort along the stack axis, and it was the
largest cost of every CompareWarp stage that stacks.  One loop per pixel touches each input once.

The arithmetic follows the numpy reference operation by operation and in the same order
(sequential sums over the epochs, float64 throughout, numpy's error model), so the results are
bit-identical; ``tests/test_stack_kernel.py`` checks that on random stacks with masks, NaNs and
every statistic.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .stats import IQR_TO_SIGMA

__all__ = ["STAT_CODES", "stack_pixels"]

#: statistic name -> kernel code; "ONLINE" is MEAN from running sums (doOnlineForMean)
STAT_CODES = {"MEAN": 0, "MEDIAN": 1, "MEANCLIP": 2, "ONLINE": 3}

_JIT = dict(cache=True, nogil=True, error_model="numpy")


@nb.njit(**_JIT)
def _sort_prefix(buf, n):  # pragma: no cover - compiled
    # insertion sort: a stack has tens of inputs, where it beats a general sort
    if n > 48:
        buf[:n] = np.sort(buf[:n])
        return
    # branch-free: a compare-exchange (min/max) sweep per insertion instead of an early-exit
    # search, whose mispredicted branches cost more than the extra exchanges (the values are
    # finite: only usable inputs are sorted)
    for i in range(1, n):
        for j in range(i, 0, -1):
            a = buf[j - 1]
            b = buf[j]
            buf[j - 1] = min(a, b)
            buf[j] = max(a, b)


@nb.njit(**_JIT)
def _quantile(buf, n, q):  # pragma: no cover - compiled
    # linear interpolation at q (n - 1), as stats._quantile_sorted
    if n == 0:
        return np.nan
    idx = q * (n - 1)
    lo = int(np.floor(idx))
    hi = min(lo + 1, n - 1)
    frac = idx - lo
    vlo = buf[lo]
    return vlo + frac * (buf[hi] - vlo)


@nb.njit(**_JIT)
def _weighted_sums(x, v, p, sel, w, center, with_v):  # pragma: no cover - compiled
    # sums over the selected inputs of pixel p, shifted by ``center`` (stats._weighted_mean_var):
    # sum w, sum w^2, sum w d, sum w d^2 and, when ``with_v``, sum w^2 v
    sw = 0.0
    sw2 = 0.0
    swd = 0.0
    swdd = 0.0
    swv = 0.0
    for i in range(sel.size):
        if sel[i]:
            wi = w[i]
            d = np.float64(x[i, p]) - center
            wd = wi * d
            sw += wi
            sw2 += wi * wi
            swd += wd
            swdd += wd * d
            if with_v:
                swv += wi * wi * np.float64(v[i, p])
    return sw, sw2, swd, swdd, swv


@nb.njit(**_JIT)
def _debiased_var(sw, sw2, swd, swdd):  # pragma: no cover - compiled
    md = swd / sw
    return (swdd / sw - md * md) * (sw * sw) / (sw * sw - sw2)


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
    """
    n_in, n_pix = x.shape
    buf = np.empty(n_in)
    usable = np.empty(n_in, np.bool_)
    keep = np.empty(n_in, np.bool_)
    n_th = th_bits.size
    rw = np.empty(n_th)
    for p in range(n_pix):
        n_img = 0
        n_point = 0
        mk = np.int32(0)
        rej_or = np.int32(0)
        sw_use = 0.0
        for k in range(n_th):
            rw[k] = 0.0
        c = 0
        for i in range(n_in):
            mi = m[i, p]
            masked = (mi & and_mask) != 0
            if not masked:
                n_img += 1
            mi = mi & ~remove
            xi = np.float64(x[i, p])
            u = (not masked) and (quirk or np.isfinite(xi))
            usable[i] = u
            if u:
                n_point += 1
                mk |= mi
                sw_use += w[i]
                buf[c] = xi
                c += 1
            else:
                rej_or |= mi
                for k in range(n_th):
                    if (mi & th_bits[k]) != 0:
                        rw[k] += w[i]
        n_keep = n_point
        for i in range(n_in):
            keep[i] = usable[i]
        if stat == 1:  # MEDIAN: value and (pi/2) var/n around it, no clipping
            _sort_prefix(buf, c)
            med = _quantile(buf, c, 0.5)
            sw, sw2, swd, swdd, _ = _weighted_sums(x, v, p, usable, w, med, False)
            var_w = _debiased_var(sw, sw2, swd, swdd)
            val = med if n_point > 0 else np.nan
            var = (np.pi / 2) * var_w / n_point
        elif stat == 3:  # online running sums (AccumulatorMeanStack)
            sw = 0.0
            swx = 0.0
            sw2v = 0.0
            sw2 = 0.0
            swx2 = 0.0
            for i in range(n_in):
                if usable[i]:
                    wi = w[i]
                    xi = np.float64(x[i, p])
                    sw += wi
                    swx += wi * xi
                    if from_input:
                        sw2v += wi * wi * np.float64(v[i, p])
                    else:
                        sw2 += wi * wi
                        swx2 += wi * xi * xi
            val = swx / sw
            if from_input:
                var = sw2v / (sw * sw)
            else:
                var = (swx2 / sw - val * val) * (sw * sw) / (sw * sw - sw2) * sw2 / (sw * sw)
            if not sw > 0:
                val = np.nan
                var = np.nan
        else:
            if stat == 2:  # MEANCLIP: median +- n_sigma 0.741 IQR, then the weighted clipped mean
                _sort_prefix(buf, c)
                center = _quantile(buf, c, 0.5)
                iqr_hw = n_sigma * IQR_TO_SIGMA * (_quantile(buf, c, 0.75) - _quantile(buf, c, 0.25))
                hw = iqr_hw
                for it in range(n_iter):
                    nk = 0
                    changed = False
                    for i in range(n_in):
                        kn = usable[i] and abs(np.float64(x[i, p]) - center) <= hw
                        changed |= kn != keep[i]
                        keep[i] = kn
                        nk += kn
                    n_keep = nk
                    # an iteration that keeps the same inputs as the one before would compute
                    # the same centre and width again, and so would every later one: the
                    # remaining iterations cannot change anything (results identical)
                    if it == n_iter - 1 or (it > 0 and not changed):
                        break
                    cs = center if np.isfinite(center) else 0.0
                    sw, sw2, swd, swdd, _ = _weighted_sums(x, v, p, keep, w, cs, False)
                    center_new = cs + swd / sw
                    var_c = _debiased_var(sw, sw2, swd, swdd)
                    if not np.isfinite(var_c):
                        var_c = 0.0
                    var_c = max(var_c, 0.0)
                    hw = iqr_hw if nk <= 1 else n_sigma * np.sqrt(var_c)
                    if nk >= 1:
                        center = center_new
            # shift by the first kept value so the scatter sums do not cancel
            ref = 0.0
            for i in range(n_in):
                if keep[i]:
                    ref = np.float64(x[i, p])
                    break
            if not np.isfinite(ref):
                ref = 0.0
            sw, sw2, swd, swdd, swv = _weighted_sums(x, v, p, keep, w, ref, from_input)
            val = ref + swd / sw
            if from_input:
                var = swv / (sw * sw)
            else:
                var = _debiased_var(sw, sw2, swd, swdd) * sw2 / (sw * sw)
            if n_keep == 0:
                val = np.nan
                var = np.nan
        value[p] = val
        variance[p] = var
        n_image[p] = n_img
        n_clip[p] = n_point - n_keep
        for j in range(input_map.shape[0]):
            input_map[j, p] = 0
        for i in range(n_in):
            if keep[i]:
                j = used_idx[i]
                input_map[j >> 3, p] |= np.uint8(1 << (7 - (j & 7)))
        # output mask: OR of usable inputs, propagation thresholds, CLIPPED, rejection map
        for k in range(n_th):
            if rw[k] / (sw_use + rw[k]) > th_vals[k]:
                mk |= th_bits[k]
        if n_point - n_keep > 0:
            mk |= b_clipped
        if n_point < n_in:
            if (rej_or & rejected_src) != 0:
                mk |= b_rejected
            if (rej_or & b_edge) != 0:
                mk |= b_sensor_edge
            if (rej_or & b_clipped) != 0:
                mk |= b_clipped
        if n_point == 0:
            mk = b_no_data
        out_mask[p] = mk
