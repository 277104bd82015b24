"""diffstack's ZOGY against a pip-installable ZOGY peer on the same simulated pair.

The peer is ProperImage (``properimage`` on PyPI, Sánchez et al. 2019), the ZOGY that pip can
install today; PyZOGY is not on PyPI.  ProperImage's dependencies clash with diffstack's
environment and one of them (tinynpydb 0.1.2) no longer builds (its setup downloads setuptools
over plain HTTP), so it runs in its own virtual environment, in a subprocess::

    python3 -m venv /tmp/peer
    /tmp/peer/bin/pip install --no-deps properimage
    /tmp/peer/bin/pip install astropy sep astroscrappy astroalign scipy numpy joblib pyFFTW attrs
    # tinynpydb is one module: copy tinynpydb.py from its sdist into /tmp/peer's site-packages
    python benchmarks/bench_peers.py --peer-python /tmp/peer/bin/python

Both get the same calibrated float64 images (science and template in nJy).  ProperImage fits
Gaussian PSFs from the images' stars (``fitted_psf=True``), with the flux ratio fixed
(``beta=False``) and no shift fit, its fastest settings; diffstack gets the simulation's PSF
models, as a pipeline would.  Times are wall clock of the whole call, the median of
``--repeat`` runs for diffstack (its kernel cache cleared each time) and one run for the peer
(tens of seconds).  The ratio is printed.

Usage: python benchmarks/bench_peers.py --peer-python PATH [--sizes 1024 2048] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from toolkit.sim import simulate_pair
from toolkit.zogy import _cell_kernels_cached, zogy

PEER_SCRIPT = """
import sys, time, warnings, logging
import numpy as np
warnings.simplefilter("ignore")
logging.disable(logging.CRITICAL)
from properimage import operations as op
from properimage.single_image import SingleImageGaussPSF
d = np.load(sys.argv[1])
t = time.perf_counter()
ref = SingleImageGaussPSF(d["template"])
new = SingleImageGaussPSF(d["science"])
op.subtract(ref=ref, new=new, smooth_psf=False, fitted_psf=True, iterative=False, beta=False, shift=False)
print(time.perf_counter() - t)
"""


def run(size: int, repeat: int, peer_python: str) -> None:
    pair = simulate_pair(size=size, seed=1)
    sci, ref = pair.science, pair.reference

    def engine() -> float:
        _cell_kernels_cached.cache_clear()
        t = time.perf_counter()
        zogy(sci, ref)
        return time.perf_counter() - t

    engine()  # warm-up: imports, FFT plans, compiled kernels
    t_ours = statistics.median(engine() for _ in range(repeat))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pair.npz"
        np.savez(path, science=sci.image.astype(np.float64) * sci.photo_calib, template=ref.image.astype(np.float64) * ref.photo_calib)
        out = subprocess.run([peer_python, "-c", PEER_SCRIPT, str(path)], capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        sys.exit(f"the peer failed:\n{out.stderr[-2000:]}")
    t_peer = float(out.stdout.strip().splitlines()[-1])
    print(f"{size}^2: diffstack {t_ours:7.3f} s   ProperImage {t_peer:7.1f} s   peer/diffstack = {t_peer / t_ours:6.0f}x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-python", required=True, help="python of a virtual environment with properimage installed")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    for n in args.sizes:
        run(n, args.repeat, args.peer_python)
