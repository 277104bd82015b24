"""Regenerate the PSFEx reference files in this folder (not run by the tests).

Needs Debian's ``source-extractor`` and ``psfex`` packages (SExtractor 2.25.0, PSFEx 3.21.1
when these files were made).  A 1024^2 image of 500 pixel-integrated Gaussian stars whose
width grows across the field (sigma = 1.6 + 0.6 x/1024 + 0.2 y/1024, 0-based pixels) with
Poisson noise is catalogued by SExtractor (41x41 vignettes), and PSFEx fits a degree-2
position polynomial at two samplings (0.5 px: resampling is decimation; 0.7 px: Lanczos-3).
PSFEx's own SNAPSHOTS_IMRES check image holds the model at a 3x3 grid of positions resampled
to image pixels: what ``toolkit.psf.PsfexPsf`` must reproduce.

Usage: python make_reference.py   (in a scratch directory; copies the outputs here)
"""

import shutil
import subprocess
from pathlib import Path

import numpy as np
from astropy.io import fits

HERE = Path(__file__).parent
PARAMS = "X_IMAGE\nY_IMAGE\nXWIN_IMAGE\nYWIN_IMAGE\nFLUX_APER(1)\nFLUXERR_APER(1)\nFLUX_RADIUS\nELONGATION\nFLAGS\nSNR_WIN\nVIGNET(41,41)\n"


def star_image(n: int = 1024, nstar: int = 500, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((n, n))
    xs, ys = rng.uniform(20, n - 20, nstar), rng.uniform(20, n - 20, nstar)
    flux = 10 ** rng.uniform(4.0, 5.3, nstar)
    sub = np.linspace(-0.4, 0.4, 5)
    for x, y, f in zip(xs, ys, flux):
        s = 1.6 + 0.6 * x / n + 0.2 * y / n
        sl = (slice(max(0, int(y) - 15), int(y) + 16), slice(max(0, int(x) - 15), int(x) + 16))
        yy, xx = np.mgrid[sl]
        g = sum(np.exp(-0.5 * ((xx + a - x) ** 2 + (yy + b - y) ** 2) / s**2) for a in sub for b in sub)
        img[sl] += f * g / g.sum()
    return rng.poisson(img + 100.0).astype(np.float32)


def main() -> None:
    hdr = fits.Header()
    hdr["GAIN"], hdr["SATURATE"] = 1.0, 1e9
    fits.writeto("sim.fits", star_image(), hdr, overwrite=True)
    Path("sex.param").write_text(PARAMS)
    Path("default.sex").write_text(subprocess.run(["source-extractor", "-dd"], capture_output=True, text=True).stdout)
    Path("default.psfex").write_text(subprocess.run(["psfex", "-dd"], capture_output=True, text=True).stdout)
    subprocess.run(["source-extractor", "sim.fits", "-c", "default.sex", "-PARAMETERS_NAME", "sex.param", "-CATALOG_TYPE", "FITS_LDAC",
                    "-CATALOG_NAME", "sim.cat", "-FILTER_NAME", "/usr/share/source-extractor/default.conv", "-DETECT_THRESH", "10",
                    "-PHOT_APERTURES", "10", "-GAIN", "1.0", "-SATUR_LEVEL", "1e9", "-VERBOSE_TYPE", "QUIET"], check=True)
    for samp in ("0.5", "0.7"):
        subprocess.run(["psfex", "sim.cat", "-c", "default.psfex", "-PSFVAR_KEYS", "X_IMAGE,Y_IMAGE", "-PSFVAR_DEGREES", "2",
                        "-PSF_SAMPLING", samp, "-PSF_SIZE", "31,31", "-BASIS_TYPE", "PIXEL_AUTO", "-CHECKIMAGE_TYPE", "SNAPSHOTS_IMRES",
                        "-CHECKIMAGE_NAME", f"snap_s{samp}.fits", "-PSFVAR_NSNAP", "3", "-CHECKPLOT_TYPE", "NONE", "-WRITE_XML", "N",
                        "-PSF_SUFFIX", f".s{samp}.psf", "-VERBOSE_TYPE", "QUIET"], check=True)
        shutil.copy(f"sim.s{samp}.psf", HERE / f"sim_s{samp}.psf")
        shutil.copy(f"snap_s{samp}_sim.fits", HERE / f"sim_s{samp}_snapshots.fits")


if __name__ == "__main__":
    main()
