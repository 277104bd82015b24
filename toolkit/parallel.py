"""Per-epoch work on a small thread pool.

Most per-epoch steps of CompareWarp (PSF matching, ScaleVariance, candidate detection) are
long numpy/scipy calls that release the GIL, so on a laptop's few cores running epochs side by
side in threads roughly divides their wall time by the core count, with no copies of the inputs
(processes would pickle every warp).  Results come back in input order, and progress is
reported from the calling thread, so callbacks that touch a UI need no locking.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = ["fft_workers", "map_calls", "map_epochs", "map_pair", "map_row_blocks", "map_tasks", "n_threads", "one_blas_thread", "worker_scratch"]

T = TypeVar("T")


@functools.lru_cache(maxsize=1)
def _cpu_count() -> int:
    # os.cpu_count() reads the system each call (~14 us): ZOGY's grid asks thousands of times
    return os.cpu_count() or 1


def n_threads(n_items: int) -> int:
    """Threads worth using for ``n_items`` independent items: at most one per core.

    ``DIFFSTACK_THREADS`` in the environment caps it (``1`` runs everything serially).
    """
    cap = os.environ.get("DIFFSTACK_THREADS")
    cores = _cpu_count()
    if cap:
        try:
            cores = max(1, min(cores, int(cap)))
        except ValueError:
            raise ConfigError(f"DIFFSTACK_THREADS must be a positive integer, got {cap!r}") from None
    return max(1, min(cores, n_items))


def map_epochs(fn: Callable[..., T], items: Sequence[Any] | Iterable[Any], progress: Callable[[float], None] | None = None) -> list[T]:
    """``[fn(x) for x in items]``, computed on up to one thread per core.

    ``progress(fraction)`` is called in the calling thread after each result, in order.  The
    first exception raised by ``fn`` propagates (the remaining items are still finished by the
    pool, as ``concurrent.futures`` does).
    """
    items = list(items)
    k = n_threads(len(items))
    out: list[T] = []
    with ThreadPoolExecutor(max_workers=k) if k > 1 else nullcontext() as pool:
        for r in pool.map(fn, items) if pool is not None else map(fn, items):
            out.append(r)
            if progress:
                progress(len(out) / len(items))
    return out


#: planes with fewer rows than this are passed over in the calling thread: starting two threads
#: (~0.1-0.3 ms) costs more than a pass over a small plane (ZOGY's grid cells are 160 rows)
MIN_THREADED_ROWS = 384


#: transforms of fewer elements than this run on one thread: pocketfft's threads cost more
#: than they save there (a 160^2 rfft2 took 64 us on one thread and 214 us on two)
MIN_THREADED_FFT = 2**18


def fft_workers(size: int | None = None) -> int:
    """``workers`` for scipy.fft: every core, or ``DIFFSTACK_THREADS`` of them; one for a
    transform of fewer than :data:`MIN_THREADED_FFT` elements (``size``)."""
    if size is not None and size < MIN_THREADED_FFT:
        return 1
    return n_threads(_cpu_count())


#: row blocks per plane that :func:`map_row_blocks` hands out: enough that a thread slowed for a
#: while does fewer of them, few enough that the calls' overhead stays negligible
ROW_BLOCKS = 8


def map_row_blocks(fn: Callable[[slice], Any], ny: int) -> None:
    """``fn`` on blocks of ``ny`` rows that cover them once, on two threads that take the next
    block when done with one, for compiled or numpy passes over one plane that release the GIL;
    one call on all rows for a plane of fewer than :data:`MIN_THREADED_ROWS` rows or under
    ``DIFFSTACK_THREADS=1``.  ``fn`` must not depend on how the rows are cut."""
    if ny < MIN_THREADED_ROWS or n_threads(2) < 2:
        fn(slice(0, ny))
        return
    step = -(-ny // ROW_BLOCKS)

    def run(blocks: Iterable[slice]) -> None:
        for sl in blocks:
            fn(sl)

    _drain_on_two_threads(run, [slice(j, min(j + step, ny)) for j in range(0, ny, step)])


class _Helper:
    """A kept daemon thread that runs one call at a time, handed to it by :func:`_beside`.

    Why not a ``ThreadPoolExecutor`` per pass: on this kind of machine starting a thread costs
    ~0.3-0.7 ms, and a ZOGY run at 2048^2 made ~10 two-thread passes (~20 thread starts, ~8 ms
    of its ~0.26 s).  A helper goes back to the idle list once its caller has collected the
    call's result (:meth:`result`), and a pass takes an idle one or starts a new one when none
    is idle (two runs at once, a pass inside a pass), so no call ever waits for another to
    free a thread, and no call can be handed a helper whose last result is still uncollected.
    """

    def __init__(self) -> None:
        self._call: tuple | None = None
        self._ready = threading.Condition(threading.Lock())
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="diffstack-helper", daemon=True)
        self.thread.diffstack_helper = True  # type: ignore[attr-defined]  # see worker_scratch
        self.thread.start()

    def _loop(self) -> None:
        while True:
            with self._ready:
                while self._call is None:
                    self._ready.wait()
                fn, arg = self._call
            if fn is None:
                return  # let go (see result)
            try:
                self._result, self._error = fn(arg), None
            except BaseException as exc:  # handed to the caller, which re-raises it
                self._result, self._error = None, exc
            # the call's references go before the caller is told
            fn = arg = None
            with self._ready:
                self._call = None
            self._done.set()

    def submit(self, fn: Callable[[Any], Any] | None, arg: Any) -> None:
        self._done.clear()
        with self._ready:
            self._call = (fn, arg)
            self._ready.notify()

    def result(self) -> Any:
        """Wait for the call to end; its value, or its exception raised here.  The helper is
        then idle again (or let go, when enough are idle)."""
        self._done.wait()
        value, error = self._result, self._error
        self._result = self._error = None
        if not _release(self):
            self.submit(None, None)  # enough idle helpers: this one's thread ends
        if error is not None:
            raise error
        return value


#: idle helpers kept for the next pass (more than a run at once ever needs are let go)
_MAX_IDLE = 4
_idle: list[_Helper] = []
_idle_lock = threading.Lock()


def _release(helper: _Helper) -> bool:
    """Put a helper whose result was collected back on the idle list; False if the list is
    full."""
    with _idle_lock:
        if len(_idle) < _MAX_IDLE:
            _idle.append(helper)
            return True
        return False


def _beside(fn: Callable[[Any], Any], arg: Any) -> _Helper:
    """Start ``fn(arg)`` on an idle helper thread (a new one when none is idle); the caller
    collects it with ``.result()``."""
    with _idle_lock:
        helper = _idle.pop() if _idle else None
    if helper is None:
        helper = _Helper()
    helper.submit(fn, arg)
    return helper


def _forget_helpers() -> None:
    # a forked child has none of its parent's threads: its idle list must not name them
    _idle.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers)


def _pair_on_two_threads(fn: Callable[[Any], T], a: Any, b: Any) -> list[T]:
    """``[fn(a), fn(b)]`` with ``fn(b)`` on a helper thread and ``fn(a)`` in the calling one.
    An exception of either is raised once both have ended (the first one's, if both fail)."""
    helper = _beside(fn, b)
    try:
        ra = fn(a)
    except BaseException:
        try:
            helper.result()
        except BaseException:
            pass  # the calling thread's exception is the one raised
        raise
    return [ra, helper.result()]


def map_pair(fn: Callable[[Any], T], a: Any, b: Any, threaded: bool = True) -> list[T]:
    """``[fn(a), fn(b)]``, side by side on two threads (the calling one and a helper) when
    ``threaded`` (work big enough to pay for them) and ``DIFFSTACK_THREADS`` allows two; else
    one after the other."""
    if not threaded or n_threads(2) < 2:
        return [fn(a), fn(b)]
    return _pair_on_two_threads(fn, a, b)


def map_calls(calls: Sequence[Callable[[], T]], threaded: bool = True) -> list[T]:
    """``[c() for c in calls]``, on two threads (the calling one and a helper) that take the next
    call when done with one, when ``threaded`` and ``DIFFSTACK_THREADS`` allows two; else one
    after the other.  For a few unequal tasks that release the GIL (three tasks on two threads
    end sooner than a pair of them followed by the third).  The first exception raised (in the
    order of ``calls``) propagates once both threads have ended."""
    # (map_tasks without needs: each thread takes the next call in list order)
    return map_tasks(calls, threaded=threaded)


def map_tasks(calls: Sequence[Callable[[], T]], needs: Sequence[Iterable[int]] | None = None, threaded: bool = True) -> list[T]:
    """``[c() for c in calls]``, where call ``i`` starts only once the calls ``needs[i]`` (all
    earlier in the list) have returned: on two threads (the calling one and a helper) when
    ``threaded`` and ``DIFFSTACK_THREADS`` allows two, each taking the first call in list order
    whose needs are met, and waiting only while none is; else in list order.

    For a few unequal tasks of which some need others' results: a plain queue
    (:func:`map_calls`) either starts a dependent task early and leaves its thread waiting, or
    queues it late and leaves it off to a late start; here a thread takes whatever is ready.
    A call that raises is not retried, and the calls that need it (directly or not) are not
    made; the first exception in list order propagates once both threads have ended.  The
    list order is the priority: put the calls on the longest chain first.
    """
    n = len(calls)
    need = [frozenset(x) for x in needs] if needs is not None else [frozenset()] * n
    if len(need) != n:
        raise ValueError(f"map_tasks: {len(need)} needs for {n} calls")
    for i, nd in enumerate(need):
        if any(not 0 <= j < i for j in nd):
            raise ValueError(f"map_tasks: call {i} needs {sorted(nd)}; a call may need only calls before it")
    out: list[Any] = [None] * n
    errors: dict[int, BaseException] = {}
    if not threaded or n < 2 or n_threads(2) < 2:
        failed: set[int] = set()
        for i, c in enumerate(calls):
            if need[i] & failed:
                failed.add(i)
                continue
            try:
                out[i] = c()
            except BaseException as exc:  # the caller re-raises the first one
                errors[i] = exc
                failed.add(i)
    else:
        pending = list(range(n))
        done: set[int] = set()
        bad: set[int] = set()
        ready = threading.Condition(threading.Lock())

        def take() -> int | None:
            # the first pending call whose needs are met (None: nothing left); a call whose
            # needs failed is dropped as failed.  No deadlock: the first pending call's needs
            # are earlier calls, each done, failed or running on the other thread
            with ready:
                while True:
                    for i in list(pending):
                        if need[i] & bad:
                            pending.remove(i)
                            bad.add(i)
                            ready.notify_all()
                        elif need[i] <= done:
                            pending.remove(i)
                            return i
                    if not pending:
                        return None
                    ready.wait()

        def run(_: Any) -> None:
            while (i := take()) is not None:
                try:
                    out[i] = calls[i]()
                    ok = True
                except BaseException as exc:  # the caller re-raises the first one
                    errors[i] = exc
                    ok = False
                with ready:
                    (done if ok else bad).add(i)
                    ready.notify_all()

        _pair_on_two_threads(run, None, None)
    if errors:
        raise errors[min(errors)]
    return out


class _SharedIterator:
    """One iterator for both threads: each takes the next part (a band, a block of rows) when
    it is done with its last, so a thread that is slowed (a shared machine's other tenants, the
    GIL held by the other's Python steps) does fewer parts instead of holding up the pass."""

    def __init__(self, parts: Sequence[slice]) -> None:
        self._it = iter(parts)
        self._lock = threading.Lock()

    def __iter__(self) -> _SharedIterator:
        return self

    def __next__(self) -> slice:
        with self._lock:
            return next(self._it)


def _drain_on_two_threads(fn: Callable[[Iterable[slice]], Any], parts: Sequence[slice]) -> None:
    """``fn`` on two threads (the calling one and a helper), both handed one
    :class:`_SharedIterator` of ``parts``: between them they pass every part once.  Why not a
    fixed half each: on a shared 2-core machine one thread is often slowed for tens of
    milliseconds, and with fixed halves a pass waited for it."""
    shared = _SharedIterator(parts)
    _pair_on_two_threads(fn, shared, shared)


def map_bands(fn: Callable[[Iterable[slice]], Any], n: int, band: int, threads: int = 2) -> None:
    """``fn`` on the bands of ``band`` columns that cover ``n`` columns, on two threads that
    share one iterator of the bands (all of them in one call when ``threads`` or
    ``DIFFSTACK_THREADS`` is 1).  ``fn`` gets an iterable of slices, so it can reuse its own
    scratch arrays from band to band; for compiled or FFT work that releases the GIL.  The
    bands are disjoint, so which thread does which does not change the values."""
    bands = [slice(j, min(j + band, n)) for j in range(0, n, band)]
    if threads <= 1 or len(bands) < 2 or n_threads(2) < 2:
        fn(bands)
        return
    _drain_on_two_threads(fn, bands)


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread() -> Any:
    """A context in which BLAS and LAPACK calls run on one thread.

    Why: OpenBLAS's threads spin for a while after each threaded call before they sleep; on a
    2-core machine that took a core from diffstack's own threads for ~25 ms after a 41x41 SVD,
    an 81x80 matrix product or a 2160x1081 matrix-vector product (a ZOGY pass that followed
    ran ~10 % slower).  The engine's few BLAS calls are small and gain nothing from threads.
    The limit is process-wide while inside (OpenBLAS has one thread count); threadpoolctl's
    context costs ~20 us.
    """
    return _blas_controller().limit(limits=1, user_api="blas")


_scratch = threading.local()


def worker_scratch(name: str, shape: tuple[int, ...], dtype: Any) -> Any:
    """A work array kept by the calling worker thread under ``name`` and handed out again on
    its next call with the same shape and dtype (its contents are then overwritten by the
    caller): per-epoch steps on :func:`map_epochs`' threads fault in one array per thread,
    not one per epoch, and the arrays go with their threads.  On the main thread and on the
    kept helper threads of the two-thread passes every call gets a new array, so nothing is
    held once a call returns."""
    import numpy as np

    dtype = np.dtype(dtype)
    shape = tuple(int(v) for v in shape)
    t = threading.current_thread()
    if t is threading.main_thread() or getattr(t, "diffstack_helper", False):
        return np.empty(shape, dtype)
    held = getattr(_scratch, "arrays", None)
    if held is None:
        held = _scratch.arrays = {}
    a = held.get(name)
    if a is None or a.shape != shape or a.dtype != dtype:
        a = held[name] = np.empty(shape, dtype)
    return a
