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
