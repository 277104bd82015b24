"""toolkit.parallel: threaded per-epoch map gives the serial answer, in order, with progress."""

import threading

import numpy as np
import pytest

from toolkit.errors import ConfigError
from toolkit.parallel import fft_workers, map_epochs, n_threads


@pytest.mark.parametrize("threads", ["1", "2"])
def test_map_epochs_keeps_order_and_reports_progress_from_the_caller(monkeypatch, threads):
    monkeypatch.setenv("DIFFSTACK_THREADS", threads)
    caller = threading.get_ident()
    seen = []

    def progress(f):
        assert threading.get_ident() == caller
        seen.append(f)

    out = map_epochs(lambda x: x * x, range(7), progress)
    assert out == [x * x for x in range(7)]
    assert seen == [(i + 1) / 7 for i in range(7)]


def test_map_epochs_propagates_errors(monkeypatch):
    monkeypatch.setenv("DIFFSTACK_THREADS", "2")

    def boom(x):
        if x == 3:
            raise ValueError("epoch 3 is bad")
        return x

    with pytest.raises(ValueError, match="epoch 3"):
        map_epochs(boom, range(5))


def test_thread_cap_from_environment(monkeypatch):
    monkeypatch.setenv("DIFFSTACK_THREADS", "1")
    assert n_threads(10) == 1
    monkeypatch.setenv("DIFFSTACK_THREADS", "lots")
    with pytest.raises(ConfigError, match="DIFFSTACK_THREADS"):
        n_threads(10)
    monkeypatch.delenv("DIFFSTACK_THREADS")
    assert 1 <= n_threads(10) <= 10 and n_threads(1) == 1


def test_worker_scratch_is_per_worker_thread_and_never_held_by_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor

    from toolkit.parallel import worker_scratch

    def on_worker():
        a = worker_scratch("t", (4, 5), np.float32)
        b = worker_scratch("t", (4, 5), np.float32)
        c = worker_scratch("t", (4, 6), np.float32)  # another shape: a new array
        d = worker_scratch("u", (4, 6), np.float32)  # another name: its own array
        return a is b, c is not a and c.shape == (4, 6), d is not c

    with ThreadPoolExecutor(1) as ex:
        assert ex.submit(on_worker).result() == (True, True, True)
    assert worker_scratch("t", (4, 5), np.float32) is not worker_scratch("t", (4, 5), np.float32)


def test_diffstack_threads_1_runs_everything_in_the_calling_thread(monkeypatch):
    """DIFFSTACK_THREADS=1 (a shared machine, a batch slot) starts no thread anywhere: not for
    epochs, row or band halves, paired planes, side stages, the stacking pool or pocketfft's
    own threads (Python's counted through ``threading.Thread.start``; pocketfft's, which are
    not Python's, asked for through ``fft_workers()``, which is 1); and the results equal the
    threaded ones bit for bit."""
    from toolkit.compare_warp import compare_warp_coadd
    from toolkit.config import ZogyConfig
    from toolkit.sim import simulate_pair, simulate_stack
    from toolkit.zogy import _cell_kernels_cached, zogy

    stack = simulate_stack(seed=4, size=96, n_epochs=4)
    pair = simulate_pair(size=512, seed=3)
    grid = ZogyConfig()
    grid.doSpatialGrid = True

    def run():
        _cell_kernels_cached.cache_clear()
        cw = compare_warp_coadd(stack.direct_warps)  # PSF matching made here too
        return cw.coadd, zogy(pair.science, pair.reference), zogy(pair.science, pair.reference, grid)

    started = []
    start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self.name), start(self))[1])
    monkeypatch.setenv("DIFFSTACK_THREADS", "1")
    serial = run()
    assert started == [] and fft_workers() == 1
    monkeypatch.setenv("DIFFSTACK_THREADS", "2")
    threaded = run()
    assert len(started) > 0
    (c1, z1, g1), (c2, z2, g2) = serial, threaded
    np.testing.assert_array_equal(c1.image, c2.image)
    np.testing.assert_array_equal(c1.mask, c2.mask)
    for a, b in ((z1, z2), (g1, g2)):
        np.testing.assert_array_equal(a.diff.image, b.diff.image)
        np.testing.assert_array_equal(a.scorr, b.scorr)


def test_band_and_row_maps_cover_each_part_once_and_share_the_work(monkeypatch):
    """map_bands and map_row_blocks hand out bands / row blocks from one iterator that
    both threads draw from: every column and row is passed exactly once, and a thread that is
    held up (here: sleeping on its first band) ends up doing fewer bands, not half of them."""
    import time

    import toolkit.parallel as parallel
    from toolkit.parallel import map_bands, map_row_blocks

    monkeypatch.setenv("DIFFSTACK_THREADS", "2")
    monkeypatch.setattr(parallel, "_cpu_count", lambda: 2)  # two threads on any machine
    n, band = 1081, 16
    seen = np.zeros(n, int)
    per_thread: dict[int, int] = {}
    lock = threading.Lock()
    first = threading.Event()

    def run(group):
        for cols in group:
            if not first.is_set():
                first.set()
                time.sleep(0.3)  # the first thread to start is stalled: the other goes on
            with lock:
                seen[cols] += 1
                per_thread[threading.get_ident()] = per_thread.get(threading.get_ident(), 0) + 1
            time.sleep(0.001)

    map_bands(run, n, band)
    assert np.all(seen == 1)
    counts = sorted(per_thread.values())
    n_bands = -(-n // band)
    assert sum(counts) == n_bands and len(counts) == 2
    assert counts[0] < n_bands // 4  # a fixed half each would give 34 and 34

    rows = np.zeros(1000, int)
    map_row_blocks(lambda sl: rows.__setitem__(sl, rows[sl] + 1), 1000)
    assert np.all(rows == 1)
    small = np.zeros(100, int)  # under MIN_THREADED_ROWS: one call on all rows
    calls = []
    map_row_blocks(lambda sl: (calls.append(sl), small.__setitem__(sl, small[sl] + 1)), 100)
    assert calls == [slice(0, 100)] and np.all(small == 1)


def test_two_thread_passes_reuse_kept_helpers_and_raise_either_sides_error(monkeypatch):
    """map_pair and the band/row passes run one share in the calling thread and one on a kept
    helper thread: a second pass starts no new thread, a pass inside a pass (or two passes at
    once) gets a helper of its own instead of waiting for a busy one, and an exception of
    either share is raised in the caller once both shares have ended."""
    import time

    import toolkit.parallel as parallel
    from toolkit.parallel import map_bands, map_pair

    monkeypatch.setenv("DIFFSTACK_THREADS", "2")
    monkeypatch.setattr(parallel, "_cpu_count", lambda: 2)
    caller = threading.get_ident()
    where = map_pair(lambda _: threading.get_ident(), 0, 1)
    assert where[0] == caller and where[1] != caller
    started = []
    start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self.name), start(self))[1])
    assert map_pair(lambda v: v * 2, 3, 4) == [6, 8]
    assert started == []  # the helper of the first pass was kept

    # nested: the inner pass runs while the outer one holds a helper
    assert map_pair(lambda v: map_pair(lambda w: w + v, 1, 2), 10, 20) == [[11, 12], [21, 22]]

    done = []

    def slow(v):
        if v == "b":
            time.sleep(0.2)
            done.append(v)
            raise KeyError("helper side failed")
        return v

    with pytest.raises(KeyError, match="helper side"):
        map_pair(slow, "a", "b")
    assert done == ["b"]

    def caller_fails(v):
        if v == "a":
            raise ValueError("caller side failed")
        time.sleep(0.2)
        done.append(v)
        return v

    with pytest.raises(ValueError, match="caller side"):
        map_pair(caller_fails, "a", "c")
    assert done == ["b", "c"]  # the helper's share had ended before the error was raised

    def bands_fail(group):
        for cols in group:
            if cols.start == 32:
                raise RuntimeError("band 32")

    with pytest.raises(RuntimeError, match="band 32"):
        map_bands(bands_fail, 200, 16)
    # the helpers are still usable after failures
    assert map_pair(lambda v: -v, 1, 2) == [-1, -2]


def test_map_calls_returns_in_order_and_raises_the_first_error(monkeypatch):
    """map_calls runs a few unequal tasks on two threads: results in the calls' order, every
    call made once, the first failing call's exception (in call order) raised after all ended;
    serial under DIFFSTACK_THREADS=1."""
    import time

    import toolkit.parallel as parallel
    from toolkit.parallel import map_calls

    monkeypatch.setattr(parallel, "_cpu_count", lambda: 2)
    for threads in ("2", "1"):
        monkeypatch.setenv("DIFFSTACK_THREADS", threads)
        made = []
        calls = [lambda i=i: (time.sleep(0.02 * (3 - i)), made.append(i), i * i)[2] for i in range(4)]
        assert map_calls(calls) == [0, 1, 4, 9] and sorted(made) == [0, 1, 2, 3]
        idents = set()
        map_calls([lambda: (time.sleep(0.05), idents.add(threading.get_ident())) for _ in range(3)])
        assert len(idents) == (2 if threads == "2" else 1)

    monkeypatch.setenv("DIFFSTACK_THREADS", "2")

    def fail(msg, delay=0.0):
        def call():
            time.sleep(delay)
            raise ValueError(msg)

        return call

    ended = []
    with pytest.raises(ValueError, match="second"):
        map_calls([lambda: 1, fail("second", 0.05), fail("third"), lambda: (time.sleep(0.1), ended.append(1))])
    assert ended == [1]


def test_a_helper_is_not_handed_out_before_its_result_is_collected(monkeypatch):
    """The helper's share of a pass may end long before the calling thread's; a pass started
    meanwhile inside the calling thread's share (or by another thread) must get another
    helper, and each pass its own results."""
    import time

    import toolkit.parallel as parallel
    from toolkit.parallel import map_pair

    monkeypatch.setenv("DIFFSTACK_THREADS", "2")
    monkeypatch.setattr(parallel, "_cpu_count", lambda: 2)

    def outer(v):
        if v == "slow":  # the calling thread's share: the helper is done with "fast" by now
            time.sleep(0.05)
            inner = [map_pair(lambda w: (v, w), i, -i) for i in range(5)]
            assert inner == [[(v, i), (v, -i)] for i in range(5)]
            return "slow done"
        return "fast done"

    for _ in range(5):
        assert map_pair(outer, "slow", "fast") == ["slow done", "fast done"]


def test_one_blas_thread_limits_blas_inside_and_restores_it():
    """one_blas_thread: BLAS runs on one thread inside (OpenBLAS's threads would otherwise
    spin beside diffstack's own after each call), and the previous count is restored."""
    from threadpoolctl import threadpool_info

    from toolkit.parallel import one_blas_thread

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    if not before:
        pytest.skip("no BLAS library that threadpoolctl can see")
    with one_blas_thread():
        assert all(n == 1 for n in blas_threads())
        x = np.arange(12.0).reshape(3, 4)
        np.testing.assert_array_equal(x @ x.T, np.einsum("ij,kj->ik", x, x))
    assert blas_threads() == before


def test_map_tasks_waits_for_needs_takes_ready_work_first_and_skips_dependents_of_a_failure(monkeypatch):
    """map_tasks: a call starts only after the calls it needs have returned; while it cannot,
    the other thread takes later calls that are ready (so an early dependent call does not
    leave its thread idle); a failing call's dependents (direct or not) are not made and its
    error is raised; serial under DIFFSTACK_THREADS=1, in list order; needs on later calls are
    refused."""
    import time

    import toolkit.parallel as parallel
    from toolkit.parallel import map_tasks

    monkeypatch.setattr(parallel, "_cpu_count", lambda: 2)
    for threads in ("2", "1"):
        monkeypatch.setenv("DIFFSTACK_THREADS", threads)
        log = []
        lock = threading.Lock()

        def call(name, delay, value):
            def run():
                with lock:
                    log.append(("start", name))
                time.sleep(delay)
                with lock:
                    log.append(("end", name))
                return value

            return run

        # a (long) and b (short) first; c needs both; d needs nothing, e needs c
        calls = [call("a", 0.15, 1), call("b", 0.02, 2), call("c", 0.01, 3), call("d", 0.02, 4), call("e", 0.01, 5)]
        out = map_tasks(calls, [(), (), (0, 1), (), (2,)])
        assert out == [1, 2, 3, 4, 5]
        pos = {ev: i for i, ev in enumerate(log)}
        for later, first in (("c", "a"), ("c", "b"), ("e", "c")):
            assert pos[("start", later)] > pos[("end", first)]
        if threads == "2":
            # d, though after c in the list, ran while a was still running
            assert pos[("start", "d")] < pos[("end", "a")]
        else:
            assert [name for kind, name in log if kind == "start"] == list("abcde")

    monkeypatch.setenv("DIFFSTACK_THREADS", "2")
    made = []

    def boom():
        time.sleep(0.02)
        raise ValueError("level failed")

    with pytest.raises(ValueError, match="level failed"):
        map_tasks([boom, lambda: made.append("free"), lambda: made.append("needs boom"), lambda: made.append("needs that")], [(), (), (0,), (2,)])
    assert made == ["free"]
    with pytest.raises(ValueError, match="call 1 needs"):
        map_tasks([lambda: 1, lambda: 2], [(), (1,)])
