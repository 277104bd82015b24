"""Helpers shared by the benchmark scripts: timing, peak memory, input sizes."""

from __future__ import annotations

import time
import tracemalloc
from contextlib import contextmanager

import numpy as np


@contextmanager
def measure(out: dict, key: str):
    """Record wall time (s) and peak traced allocation (bytes) of the block in ``out[key]``.

    numpy reports its buffers to ``tracemalloc``, so the peak covers the arrays the block makes
    (scipy.fft's internal work buffers are not traced; they are small next to the images).
    """
    tracemalloc.start()
    tracemalloc.reset_peak()
    t = time.perf_counter()
    try:
        yield
    finally:
        dt = time.perf_counter() - t
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out[key] = (dt, peak)


def exposure_bytes(exposures) -> int:
    return int(sum(e.image.nbytes + e.variance.nbytes + e.mask.nbytes for e in exposures if e is not None))


def astropy_baseline(exposures, sigma: float = 3.0, maxiters: int = 2, repeat: int = 3) -> float:
    """Time astropy's sigma_clip(axis=0) + mean on the image cube (the usual hand-rolled coadd):
    the median of ``repeat`` runs, since one run on this shared VM varies by up to 60 %."""
    from astropy.stats import sigma_clip

    cube = np.stack([e.image for e in exposures])
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        clipped = sigma_clip(cube, sigma=sigma, maxiters=maxiters, axis=0, masked=True)
        clipped.mean(axis=0)
        times.append(time.perf_counter() - t)
        del clipped
    return float(np.median(times))


def warm_up() -> float:
    """Run a tiny CompareWarp once so numba's compiled kernels are loaded (or compiled, on the
    first run after an install; they are cached on disk) before anything is timed.  Returns
    the seconds it took."""
    from toolkit.compare_warp import CompareWarpPipeline
    from toolkit.sim import simulate_stack

    t = time.perf_counter()
    stack = simulate_stack(n_epochs=4, size=96, seed=1, psf_matched=False, keep_truth_images=False)
    CompareWarpPipeline(stack.direct_warps).run()
    return time.perf_counter() - t


def gb(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


def size_epochs_main(doc: str, run) -> None:
    """Shared command line of the stack benchmarks: ``--size`` and ``--epochs``, then ``run(size, n)``."""
    import argparse
    import warnings

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--epochs", type=int, nargs="+", default=[10, 30])
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    for n in args.epochs:
        run(args.size, n)
