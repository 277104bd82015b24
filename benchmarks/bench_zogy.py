"""ZOGY speed and memory against two baselines measured in the same process.

For simulated float32 pairs of 1024^2, 2048^2 and 4096^2 (LSST-like PSFs, variance planes with
source noise, masks) it times the full engine ``toolkit.zogy.zogy`` with its defaults (padding,
variance planes as images, masks, non-finite handling, D, V_D, S, V_S, Scorr, P_D, P_S and the
transient catalog) and compares it with:

* **FFT floor**: the fewest real transforms any ZOGY with variance planes needs at the engine's
  padded cell size and precision: 4 forward (science, template and their variance planes) and
  4 inverse (D, V_D, S, V_S).  Nothing else: no kernels, no products, no padding.
* **minimal ZOGY**: D, S and Scorr straight from the paper's equations in float64 with constant
  variance maps, no padding and no grid: 13 real transforms of the image (2 PSFs, 2 images, D,
  S, 2 score kernels, their 2 squares, 2 variance maps and V_S).

Each time is the median of ``--repeat`` interleaved runs (default 5), and each ratio is given
three ways: the ratio of those medians; the median of the run-by-run ratios (an engine run and
the baseline run beside it see the same machine speed, so drifts of a shared machine cancel);
and the fastest engine run over the fastest baseline run (``timeit``'s rule: the fastest run
is the least disturbed one).  The engine's kernel cache is cleared before each run so every
run does the full work.  Peak memory is the traced peak of one engine run.

Targets (issue 8, at 2048^2): engine <= 1.2x the minimal ZOGY and <= 2x the FFT floor; peak
memory <= 1 GB.

``--psf moffat`` gives the pair truncated Moffat PSF models instead of the simulator's
Gaussians.  Which path the kernels took is printed: the coarse frequency step of P_D and P_S
(1: the full grid, where their tails would alias) and how many kernels were squared on a box
or on the full cell (LSST's square, which long-tailed whitening kernels of truncated stamps
need; it costs four more cell-size transforms).

Usage: python benchmarks/bench_zogy.py [--sizes 1024 2048 4096] [--repeat 3] [--psf moffat]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import scipy.fft as sfft
from _common import gb, measure

from toolkit.psf_matching import _embed_origin
from toolkit import Exposure, ImagePsf
from toolkit.sim import simulate_pair
from toolkit.zogy import _cell_kernels, _cell_kernels_cached, _irfft2, zogy


def fft_floor(shape: tuple[int, int], dtype) -> float:
    """4 rfft2 + 4 irfft2 at ``shape`` in ``dtype`` (the irreducible transforms)."""
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape).astype(dtype) for _ in range(4)]
    t = time.perf_counter()
    spectra = [sfft.rfft2(a, workers=-1) for a in arrays]
    for s in spectra:
        _irfft2(s, shape, overwrite=True)  # the faster of scipy's irfft2 and this
    return time.perf_counter() - t


def fresh_pages(nbytes: int) -> float:
    """Time to allocate and write ``nbytes`` of new 16 MB planes, all held until the end (as
    a result's planes are): what this machine charges for memory the process has not used."""
    n = 4 * 2**20  # float32 elements in 16 MB
    t = time.perf_counter()
    held = [np.ones(n, np.float32) for _ in range(max(1, nbytes // (4 * n)))]
    dt = time.perf_counter() - t
    del held
    return dt


def _new_bytes(res) -> int:
    """Bytes of the distinct new planes a ZOGY result holds (views count by their base)."""
    arrays = [res.diff.image, res.diff.variance, res.diff.mask, res.score.image, res.score.variance, res.score.mask, res.scorr]
    bases = {id(a.base if a.base is not None else a): (a.base if a.base is not None else a) for a in arrays}
    return sum(b.nbytes for b in bases.values())


def minimal_zogy(N, R, Pn, Pr, var_n: float, var_r: float, fn: float = 1.0, fr: float = 1.0):
    """The paper's D, S and Scorr (eqs. 13, 12, 25-26) with constant variance maps, float64."""
    shape = N.shape
    pn = sfft.rfft2(_embed_origin(Pn, shape), workers=-1)
    pr = sfft.rfft2(_embed_origin(Pr, shape), workers=-1)
    nh = sfft.rfft2(N.astype(np.float64), workers=-1)
    rh = sfft.rfft2(R.astype(np.float64), workers=-1)
    pn2, pr2 = np.abs(pn) ** 2, np.abs(pr) ** 2
    den2 = var_n * fr**2 * pr2 + var_r * fn**2 * pn2
    den2 = np.maximum(den2, 1e-300)
    D = sfft.irfft2((fr * pr * nh - fn * pn * rh) / np.sqrt(den2), s=shape, workers=-1)
    kn_h = fn * fr**2 * np.conj(pn) * pr2 / den2
    kr_h = fr * fn**2 * np.conj(pr) * pn2 / den2
    S = sfft.irfft2(kn_h * nh - kr_h * rh, s=shape, workers=-1)
    kn = sfft.irfft2(kn_h, s=shape, workers=-1)
    kr = sfft.irfft2(kr_h, s=shape, workers=-1)
    vn = sfft.rfft2(np.full(shape, var_n), workers=-1)
    vr = sfft.rfft2(np.full(shape, var_r), workers=-1)
    VS = sfft.irfft2(sfft.rfft2(kn**2, workers=-1) * vn + sfft.rfft2(kr**2, workers=-1) * vr, s=shape, workers=-1)
    return D, S, S / np.sqrt(VS)


def truncated_moffat(fwhm: float, beta: float = 2.5, size: int = 41) -> np.ndarray:
    """A Moffat profile cut to a ``size`` stamp, normalised: what a measured PSF model's
    stamp looks like (wings cut at the stamp's edge)."""
    yy, xx = np.mgrid[:size, :size] - size // 2
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    k = (1 + (xx**2 + yy**2) / alpha**2) ** (-beta)
    return k / k.sum()


def run(size: int, repeat: int, psf: str = "gauss") -> None:
    pair = simulate_pair(size=size, seed=1)
    sci, ref = pair.science, pair.reference
    if psf == "moffat":
        # the same images with truncated Moffat models of the same FWHMs (4 and 3 px), as
        # measured models come: non-separable stamps with cut wings.  The stars stay Gaussian,
        # so the catalog also lists some star residuals; only the timing is of interest.
        sci = Exposure(sci.image, sci.variance, sci.mask, psf=ImagePsf(truncated_moffat(4.0)), photo_calib=sci.photo_calib)
        ref = Exposure(ref.image, ref.variance, ref.mask, psf=ImagePsf(truncated_moffat(3.0)), photo_calib=ref.photo_calib)

    def engine():
        _cell_kernels_cached.cache_clear()
        return zogy(sci, ref)

    res = engine()  # warm-up (imports, pocketfft plans, numba's cached kernels)
    outer = res.cells[0]["outer"].shape
    pn, pr = sci.psf.compute_kernel_image(), ref.psf.compute_kernel_image()
    vn, vr = float(np.median(sci.variance)), float(np.median(ref.variance))
    minimal_zogy(sci.image, ref.image, pn, pr, vn, vr)
    # the three are interleaved, run after run, so that drifts in this shared machine's speed
    # hit all of them alike; each figure is the median over the runs
    te, tf, tmin, tp = [], [], [], []
    probe = 100 * 2**20
    for _ in range(repeat):
        t = time.perf_counter()
        res = engine()
        te.append(time.perf_counter() - t)
        tf.append(fft_floor(outer, sci.dtype))
        tp.append(fresh_pages(probe))
        t = time.perf_counter()
        minimal_zogy(sci.image, ref.image, pn, pr, vn, vr)
        tmin.append(time.perf_counter() - t)
    t_engine, t_floor, t_min = (statistics.median(a) for a in (te, tf, tmin))
    # each engine run sits next to its floor run, so their ratio sees the same machine speed;
    # the median of those ratios is the figure least moved by this shared machine's drifts
    r_floor = statistics.median(e / f for e, f in zip(te, tf))
    r_min = statistics.median(e / m for e, m in zip(te, tmin))
    # and best against best (timeit's rule: the fastest run is the one least disturbed)
    b_floor, b_min = min(te) / min(tf), min(te) / min(tmin)
    mem: dict = {}
    with measure(mem, "engine"):
        engine()
    peak = mem["engine"][1]
    tm = res.timings
    ker = _cell_kernels(sci.psf.compute_kernel_image(), ref.psf.compute_kernel_image(), *res.flux_scalings, res.cells[0]["var_science"], res.cells[0]["var_template"], outer, True, np.dtype(sci.dtype).type)
    boxed, _, full, _, low = ker.fused_squares()
    print(f"\n== {size}^2 float32 pair, {'Gaussian PSF models' if psf == 'gauss' else '41-px truncated Moffat PSF models (beta 2.5)'}, padded cell {outer[0]}x{outer[1]}")
    # (the cells' setup: noise levels (clipped means), copies into the cell, padding, kernels,
    # mask OR, as tasks on two threads; the Fourier step's time includes it)
    print(f"engine       {t_engine:6.3f} s   (prepare {tm['prepare']:.3f}, cell setup {tm['cells_setup']:.3f}, transforms and products {tm['fourier'] - tm['cells_setup']:.3f}, rest {tm['total'] - tm['prepare'] - tm['fourier']:.3f})")
    print(f"FFT floor    {t_floor:6.3f} s   (8 real transforms at {outer[0]}x{outer[1]}, {np.dtype(sci.dtype).name})  engine/floor   = {t_engine / t_floor:5.2f}, run by run {r_floor:5.2f}, best/best {b_floor:5.2f}  (target <= 2)")
    print(f"minimal ZOGY {t_min:6.3f} s   (13 float64 transforms at {size}^2, constant variance)        engine/minimal = {t_engine / t_min:5.2f}, run by run {r_min:5.2f}, best/best {b_min:5.2f}  (target <= 1.2)")
    print(f"kernel path: P_D/P_S coarse step {ker.coarse}; squared kernels on a box {len(boxed)} ({len(low)} of them from their cross terms: {', '.join(str(f[0].shape[1]) for f in low.values()) or '-'}), on the full cell {len(full)}")
    print(f"peak traced memory {gb(peak)} (target <= 1 GB at 2048^2); inputs {gb(2 * (sci.image.nbytes + sci.variance.nbytes + sci.mask.nbytes))}")
    # the engine's result is new planes (D, V_D, S, V_S in their padded cells, Scorr, two
    # masks), the floor's four spectra; where new pages are slow, the engine is slowed more
    floor_new = 4 * outer[0] * (outer[1] // 2 + 1) * 2 * np.dtype(sci.dtype).itemsize
    print(f"new memory: 100 MB of new planes took {1e3 * statistics.median(tp):.0f} ms (median; {1e3 * min(tp):.0f}-{1e3 * max(tp):.0f} over the runs); a result holds {_new_bytes(res) / 2**20:.0f} MB of new planes, the floor's spectra {floor_new / 2**20:.0f} MB")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--psf", choices=["gauss", "moffat"], default="gauss", help="PSF models: the simulator's Gaussians (compact kernels, the fastest path) or truncated Moffat stamps as measured models give (long-tailed kernels: LSST's full-cell squares)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    for n in args.sizes:
        run(n, args.repeat, args.psf)
