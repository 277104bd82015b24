"""How much of each simulated artifact CompareWarp removes, and what clipping does to stars.

Prints, for several simulated 10-epoch stacks and configurations, the fraction of each artifact
kind's flux removed from the coadd (noise-free, from the coadd's input map; see
``toolkit.validation``), and the relative aperture-flux change that clipping caused at stars
away from artifacts (static and variable).  Targets (issue 4): faint trails >= 95 %, bright
trails, cosmic rays and the ghost >= 99 %, static star cores within 0.1 %, variables within 1 %.

With ``--explain``, each configuration also gets, for cosmic rays, the share of their injected
flux left for each of LSST's reasons (``toolkit.validation.artifact_leftovers``).

With ``--cr-density``, the stacks get that many cosmic rays per pixel per epoch instead of the
simulator's default (2.5e-5, about a 90-s DECam exposure; a 30-s LSST visit sees ~3e-6): how
much of what is left comes from cosmic rays crowding each other and the other artifacts.
With ``--star-density`` (default 3e-4, a crowded low-latitude field; ~1e-5 at high latitude), how
much comes from cosmic rays landing on protected template footprints.

With ``--psf-gradient G``, each epoch's PSF width changes by the fraction G across the patch
(``simulate_stack(psf_gradient=G)``) and the pipeline makes the PSF-matched warps itself, so
the ``centre-kernel`` configuration (``psfMatchSpatialKernelOrder=0``: the centre's matching
kernel everywhere) can be compared with LSST's spatially varying kernel.

Usage: python benchmarks/artifact_removal.py [--size 256] [--seeds 1 2 ... 10] [--saturated 2]
       [--configs lsst decam ...] [--explain] [--cr-density 3e-6] [--star-density 1e-5]
       [--psf-gradient 0.1]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from toolkit.compare_warp import CompareWarpPipeline
from toolkit.config import CompareWarpConfig, preset
from toolkit.sim import simulate_stack
from toolkit.validation import artifact_leftovers, artifact_removal, star_flux_errors

CONFIGS = {
    "lsst": {},
    "no-protection": {"doPreserveContainedBySource": False},
    "lsstcam-fl": "lsstcam-fl",
    "streaks": {"doFilterMorphological": True},
    "decam": "decam",
    "centre-kernel": {"psfMatchSpatialKernelOrder": 0},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    ap.add_argument("--saturated", type=int, default=0, help="n_saturated_stars per stack (DMTN-197's failure case: trails crossing them)")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--explain", action="store_true", help="why the cosmic-ray flux left was kept")
    ap.add_argument("--cr-density", type=float, default=None, help="cosmic rays per pixel per epoch (default: the simulator's)")
    ap.add_argument("--star-density", type=float, default=None, help="stars per pixel (default: the simulator's crowded 3e-4; a high-latitude field has ~1e-5), which sets how much of the sky is protected")
    ap.add_argument("--psf-gradient", type=float, default=0.0, help="fractional PSF-width change across the patch per epoch; the pipeline then makes the PSF-matched warps (with the config's psfMatchSpatialKernelOrder)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    kinds = ("faint_trail", "bright_trail", "cosmic_ray", "ghost")
    for name in args.configs:
        spec = CONFIGS[name]
        print(f"\n== config: {name}")
        print(f"{'seed':>4} " + " ".join(f"{k:>13}" for k in kinds) + f" {'static max|clip|':>17} {'variable max|clip|':>19} {'protected':>9}")
        tot = {k: [0.0, 0.0] for k in kinds}
        reasons: dict[str, float] = {}
        for seed in args.seeds:
            extra = {} if args.cr_density is None else {"cosmic_ray_density": args.cr_density}
            if args.star_density is not None:
                extra["star_density"] = args.star_density
            if args.psf_gradient:
                extra.update(psf_gradient=args.psf_gradient, psf_matched=False)
            stack = simulate_stack(seed=seed, size=args.size, n_saturated_stars=args.saturated, **extra)
            cfg = preset(spec) if isinstance(spec, str) else CompareWarpConfig()
            if isinstance(spec, dict):
                for k, v in spec.items():
                    cfg.set_dotted(k, v)
            p = CompareWarpPipeline(stack.direct_warps, stack.psf_matched_warps, config=cfg)  # None: made with cfg
            rem = artifact_removal(stack, p)
            if args.explain:
                for row in artifact_leftovers(stack, p, "cosmic_ray", min_fraction=0.0):
                    reasons[row["reason"]] = reasons.get(row["reason"], 0.0) + float(row["remaining"])
            stars = star_flux_errors(stack, p)
            cells = []
            for k in kinds:
                if k in rem:
                    tot[k][0] += rem[k]["injected"]
                    tot[k][1] += rem[k]["remaining"]
                    cells.append(f"{rem[k]['removed_fraction']:13.4f}")
                else:
                    cells.append(f"{'-':>13}")
            smax = np.abs(stars["static_clip"]).max() if stars["static_clip"].size else np.nan
            vmax = np.abs(stars["variable_clip"]).max() if stars["variable_clip"].size else np.nan
            print(f"{seed:>4} " + " ".join(cells) + f" {smax:17.5f} {vmax:19.5f} {(p.protected_footprints > 0).mean():9.3f}")
        print(f"{'all':>4} " + " ".join(f"{1 - r / i:13.4f}" if i else f"{'-':>13}" for i, r in tot.values()))
        if args.explain and tot["cosmic_ray"][0]:
            inj = tot["cosmic_ray"][0]
            print("     cosmic-ray flux left, by reason: " + (", ".join(f"{k} {v / inj:.4f}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])) or "none"))


if __name__ == "__main__":
    main()
