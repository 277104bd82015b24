"""Row interpolation over masked runs (InterpImageTask as diffstack applies it)."""

import numpy as np

from toolkit.interp import _interp_rows_into


def reference(arr, bad, fallback):
    """The rule written out pixel by pixel: a run between good pixels l and r gets
    v_l + (v_r - v_l) (x - l) / (r - l); a run touching a row end gets the fallback."""
    out = arr.copy()
    ny, nx = arr.shape
    for y in range(ny):
        x = 0
        while x < nx:
            if not bad[y, x]:
                x += 1
                continue
            s = x
            while x < nx and bad[y, x]:
                x += 1
            left, right = s - 1, x
            for c in range(s, x):
                if left < 0 or right >= nx:
                    out[y, c] = fallback
                else:
                    vl = arr[y, left]
                    # the difference in the array's precision, the interpolation in float64
                    out[y, c] = vl + np.float64(arr[y, right] - vl) * ((c - left) / (right - left))
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
