"""The ``diffstack`` command line: the same engine as the notebooks, headless.

Subcommands: ``simulate``, ``coadd``, ``zogy``, ``config``.  Errors print one line on stderr
and exit with status 2; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence


from .errors import DiffstackError

__all__ = ["main"]


def _progress(stage: str, fraction: float | None = None) -> None:
    msg = f"[diffstack] {stage}" + (f" {100 * fraction:5.1f}%" if fraction is not None else "")
    print(msg, file=sys.stderr, flush=True)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from astropy.io import fits

    from .io import write_exposure, write_hdul
    from .sim import simulate_pair, simulate_stack

    from .cli_engine import output_dir

    out = output_dir(args.out, create=True)
    if args.kind == "stack":
        _progress(f"simulating {args.epochs} warps of {args.size}^2 (seed {args.seed})")
        sim = simulate_stack(n_epochs=args.epochs, size=args.size, seed=args.seed)
        for i, w in enumerate(sim.direct_warps):
            write_exposure(w, out / f"direct_warp_{i:03d}.fits")
        for i, w in enumerate(sim.psf_matched_warps or []):
            write_exposure(w, out / f"psf_matched_warp_{i:03d}.fits")
        for name, table in sim.catalogs.items():
            table.write(out / f"truth_{name}.ecsv", overwrite=True)
        t = sim.truth
        hdus = fits.HDUList([
            fits.PrimaryHDU(),
            fits.ImageHDU(t["noiseless"], name="NOISELESS"),
            fits.ImageHDU(t["artifact_flux"], name="ARTIFACT_FLUX"),
            fits.ImageHDU(t["artifact_kind"], name="ARTIFACT_KIND"),
        ])
        write_hdul(hdus, out / "truth_images.fits")
    else:
        _progress(f"simulating a {args.size}^2 pair (seed {args.seed})")
        sim = simulate_pair(size=args.size, seed=args.seed)
        write_exposure(sim.science, out / "science.fits")
        write_exposure(sim.reference, out / "reference.fits")
        sim.truth["transients"].write(out / "truth_transients.ecsv", overwrite=True)
        sim.truth["stars"].write(out / "truth_stars.ecsv", overwrite=True)
    _progress(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``diffstack`` argument parser: ``simulate`` here, ``coadd``/``zogy``/``config`` from
    :mod:`toolkit.cli_engine`."""
    p = argparse.ArgumentParser(prog="diffstack", description="CompareWarp coadds and ZOGY subtraction, headless.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("simulate", help="write a simulated stack or pair as FITS plus truth catalogs")
    s.add_argument("--kind", choices=["stack", "pair"], default="stack")
    s.add_argument("--size", type=int, default=256)
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_simulate)
    try:
        from . import cli_engine  # coadd / zogy / config subcommands

        cli_engine.add_subcommands(sub, _progress)
    except ImportError:  # pragma: no cover - during bootstrap of the package only
        pass
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``diffstack`` command line; returns the exit status (2 for bad input, with a
    one-line error on stderr instead of a traceback)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    # a printed warning is one line, as an error is, not Python's file:line and source line
    # (parse_args included: options that read files can warn).  The format, not showwarning,
    # is replaced: astropy's logger wraps showwarning, and a caller recording the warnings
    # (pytest) never formats them.
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"diffstack {command}: warning: {message}\n"
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except (DiffstackError, FileNotFoundError, ValueError) as exc:
        print(f"diffstack {command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
