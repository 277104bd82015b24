"""toolkit.parallel: threaded per-epoch map gives the serial answer, in order, with progress."""

import threading

import numpy as np
import pytest

from toolkit.errors import ConfigError
from toolkit.parallel import map_epochs, n_threads


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
