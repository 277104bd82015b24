"""Per-epoch work on a small thread pool.

Most per-epoch steps of CompareWarp (PSF matching, ScaleVariance, candidate detection) are
long numpy/scipy calls that release the GIL, so on a laptop's few cores running epochs side by
side in threads roughly divides their wall time by the core count, with no copies of the inputs
(processes would pickle every warp).  Results come back in input order, and progress is
reported from the calling thread, so callbacks that touch a UI need no locking.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = ["map_epochs", "map_row_halves", "n_threads", "worker_scratch"]

T = TypeVar("T")


def n_threads(n_items: int) -> int:
    """Threads worth using for ``n_items`` independent items: at most one per core.

    ``DIFFSTACK_THREADS`` in the environment caps it (``1`` runs everything serially).
    """
    cap = os.environ.get("DIFFSTACK_THREADS")
    cores = os.cpu_count() or 1
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


def map_row_halves(fn: Callable[[slice], T], ny: int) -> list[T]:
    """``fn`` on the two halves of ``ny`` rows (one slice below 64 rows), side by side on two
    threads: for compiled or numpy passes over one plane that release the GIL."""
    halves = [slice(0, ny // 2), slice(ny // 2, ny)] if ny >= 64 else [slice(0, ny)]
    with ThreadPoolExecutor(len(halves)) as ex:
        return list(ex.map(fn, halves))


def map_band_halves(fn: Callable[[list[slice]], Any], n: int, band: int, threads: int = 2) -> None:
    """``fn`` on the bands of ``band`` columns that cover ``n`` columns: the first half of the
    bands and the second half side by side on two threads (all of them in one call when
    ``threads`` is 1).  ``fn`` gets a list of slices, so it can reuse its own scratch arrays
    from band to band; for compiled or FFT work that releases the GIL."""
    bands = [slice(j, min(j + band, n)) for j in range(0, n, band)]
    if threads <= 1 or len(bands) < 2:
        fn(bands)
        return
    half = (len(bands) + 1) // 2
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(fn, [bands[:half], bands[half:]]))


_scratch = threading.local()


def worker_scratch(name: str, shape: tuple[int, ...], dtype: Any) -> Any:
    """A work array kept by the calling worker thread under ``name`` and handed out again on
    its next call with the same shape and dtype (its contents are then overwritten by the
    caller): per-epoch steps on :func:`map_epochs`' threads fault in one array per thread,
    not one per epoch, and the arrays go with their threads.  On the main thread every call
    gets a new array, so nothing is held once a call returns."""
    import numpy as np

    dtype = np.dtype(dtype)
    shape = tuple(int(v) for v in shape)
    if threading.current_thread() is threading.main_thread():
        return np.empty(shape, dtype)
    held = getattr(_scratch, "arrays", None)
    if held is None:
        held = _scratch.arrays = {}
    a = held.get(name)
    if a is None or a.shape != shape or a.dtype != dtype:
        a = held[name] = np.empty(shape, dtype)
    return a
