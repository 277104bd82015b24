"""AssembleCoadd speed and memory: MEANCLIP and MEAN against astropy's sigma_clip.

For 10 and 30 simulated warps of 2048^2 (options below) it times ``assemble_coadd`` with
MEANCLIP (LSST's AssembleCoaddConfig defaults: 3 sigma, 2 iterations) and with MEAN, and, in the
same process, astropy's ``sigma_clip(cube, sigma=3, maxiters=2, axis=0)`` + mean on the same
image cube (no masks, no weights, no variance: less work than LSST's statistic).  Peak memory
is the traced peak during the call against the size of the input stack (image + variance +
mask of every warp).

Targets (issue 3): MEANCLIP time <= 2x astropy's; peak memory <= 2x the input stack.

Usage: python benchmarks/bench_coadd.py [--size 2048] [--epochs 10 30]
"""

from __future__ import annotations

from _common import astropy_baseline, exposure_bytes, gb, measure, size_epochs_main

from toolkit.coadd import assemble_coadd
from toolkit.config import AssembleCoaddConfig
from toolkit.sim import simulate_stack


def run(size: int, n: int) -> None:
    stack = simulate_stack(n_epochs=n, size=size, seed=7, psf_matched=False, keep_truth_images=False)
    warps = stack.direct_warps
    in_bytes = exposure_bytes(warps)
    base = astropy_baseline(warps)
    print(f"\n== {n} warps of {size}^2 (input stack {gb(in_bytes)}); astropy sigma_clip(axis=0)+mean: {base:.2f} s")
    for stat in ("MEANCLIP", "MEAN"):
        cfg = AssembleCoaddConfig()
        cfg.statistic = stat
        cfg.doInterp = False  # interpolation is post-processing, not stacking
        res: dict = {}
        with measure(res, stat):
            out = assemble_coadd(warps, cfg)
        t, peak = res[stat]
        print(f"{stat:8s} {t:6.2f} s  ratio to astropy {t / base:5.2f}  (stack {out.timings['stack']:.2f} s, weights {out.timings['weights']:.2f} s)"
              f"  peak {gb(peak)} = {peak / in_bytes:.2f}x input")


if __name__ == "__main__":
    size_epochs_main(__doc__, run)
