"""The engine subcommands of ``diffstack``: ``coadd``, ``zogy`` and ``config``.

They call exactly the functions a notebook calls (:class:`~toolkit.compare_warp.CompareWarpPipeline`,
:func:`~toolkit.coadd.assemble_coadd`, :func:`~toolkit.zogy.zogy`) with a config read from a
pipetask override file, a YAML/JSON export or a preset, so a configuration tuned in JupyterLab
gives the same arrays here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from astropy.io import fits

from .config import PRESETS, AssembleCoaddConfig, CompareWarpConfig, LsstConfig, PexStatement, ZogyConfig, config_from_file, parse_override_option, preset
from .errors import ConfigError, InputError
from .exposure import Exposure
from .io import is_afw_layout, read_exposure, write_exposure, write_hdul
from .masks import MaskPlanes

__all__ = ["add_subcommands", "load_config", "noise_correlation_option", "read_input", "scale_fluxes", "write_mask_image"]

_CLASSES = {"compare-warp": CompareWarpConfig, "assemble": AssembleCoaddConfig, "zogy": ZogyConfig}


def load_config(spec: str | None, cls: type[LsstConfig], overrides: Sequence[str] = ()) -> LsstConfig:
    """A config from a file path (.py override, .yaml/.yml, .json; ``pipeline.yaml#label`` for
    one task of an LSST pipeline) or a preset name; defaults if None.  Then ``overrides``,
    pipetask ``-c`` options (``[label:]field=value``, values read as pipetask reads them,
    :func:`~toolkit.config.pipetask_value`), in order."""
    cfg = _load_config(spec, cls)
    for text in overrides or ():
        _, name, value = parse_override_option(text)
        cfg._apply_statements([PexStatement(0, name, value)], f"-c {text!r}: ", None, ())
    if overrides:
        cfg.validate()
    return cfg


def _load_config(spec: str | None, cls: type[LsstConfig]) -> LsstConfig:
    if spec is None:
        return cls()
    if spec in PRESETS and not Path(spec).exists():
        cfg = preset(spec)
        if not isinstance(cfg, cls):
            raise ConfigError(f"preset {spec!r} is a {type(cfg).__name__}, not a {cls.__name__}")
        return cfg
    label = None
    if "#" in spec and not Path(spec).exists():
        spec, label = spec.rsplit("#", 1)
    cfg = config_from_file(spec, cls, label=label)
    cfg.validate()
    return cfg


def write_mask_image(mask: np.ndarray, planes: MaskPlanes, path: Path) -> None:
    """A mask-only FITS (int32 plus ``MP_<plane>`` bit cards), readable by :func:`toolkit.io.read_mask_fits`."""
    hdr = fits.Header()
    for name, bit in planes.items():
        hdr[f"HIERARCH MP_{name}"] = bit
    hdu = fits.ImageHDU(mask.astype(np.int32), header=hdr, name="MASK")
    write_hdul(fits.HDUList([fits.PrimaryHDU(), hdu]), path)


def read_input(path: str | Path, progress: Callable, psf: str | None = None, noise: str | None = None, noise_kind: str = "sigma", role: str | None = None, psf_size: int = 25, afw_layout: bool | None = None, mask: str | None = None) -> Exposure:
    """An Exposure from a FITS file: the afw layout (``IMAGE``/``VARIANCE``/``MASK``/``PSF``
    extensions, what diffstack writes) as stored, or a plain image through
    :func:`toolkit.real_data.load_image`, which estimates what the file lacks (variance from
    the sky and GAIN, SAT and NO_DATA, a PSF measured from the stars) exactly as a notebook
    calling it would.  ``psf`` (a FITS stamp or PSFEx model), ``noise`` (a noise map,
    ``noise_kind`` sigma/variance/inverse_variance), ``mask`` (a bad-pixel map: non-zero is
    BAD) and ``psf_size`` (the measured or given PSF's stamp size) apply to plain images only;
    ``role`` (science/template) names the command-line option in errors; ``afw_layout``:
    :func:`~toolkit.io.is_afw_layout` of the file if already known."""
    if afw_layout if afw_layout is not None else is_afw_layout(path):
        exp = read_exposure(path)
        if noise is not None or mask is not None or (psf is not None and exp.psf is not None):
            raise InputError(f"{path} carries its own variance, mask and PSF (IMAGE/VARIANCE/MASK/PSF extensions); --*-psf, --*-noise and --*-mask are for plain FITS images")
        if exp.psf is None:
            # an afw file written by LSST keeps its PSF model (Piff, CoaddPsf) in archive tables
            # diffstack cannot evaluate: a given stamp, or one measured from the stars as for a
            # plain image
            from .real_data import measure_psf, psf_from_file

            if psf is not None:
                exp.psf = psf_from_file(psf, psf_size)
                progress(f"{path}: afw layout without a readable PSF; PSF from {psf}")
            else:
                bad = (exp.mask & exp.bitmask(["NO_DATA", "SAT", "BAD"], strict=False)) != 0
                try:
                    exp.psf = measure_psf(exp.image, exp.variance, bad=bad, size=psf_size)
                except InputError as exc:
                    hint = f" (a PSF stamp can be given with --{role}-psf)" if role else ""
                    raise InputError(f"{path}: no readable PSF in the file, and measuring one failed: {exc}{hint}") from None
                progress(f"{path}: afw layout without a readable PSF (LSST keeps its model in archive tables); PSF measured from its stars")
        return exp
    from .real_data import load_image

    try:
        exp = load_image(path, psf=psf if psf is not None else "measure", noise=noise, noise_kind=noise_kind, mask=mask, psf_size=psf_size)
    except InputError as exc:
        hint = f" (a PSF stamp can be given with --{role}-psf)" if role and psf is None and "PSF" in str(exc) else ""
        raise InputError(f"{path}: {exc}{hint}") from None
    own = exp.metadata.get("DSNOISE")
    told = [f"noise map {noise}" if noise else (f"noise map: its {own} extension" if own else "variance estimated from the sky and GAIN"), f"PSF {psf}" if psf else "PSF measured from its stars"]
    if mask:
        told.append(f"bad pixels from {mask}")
    progress(f"{path}: plain FITS image ({', '.join(told)})")
    return exp


def scale_fluxes(exposures: list[Exposure], names: list[str], progress: Callable) -> tuple[list[Exposure], np.ndarray]:
    """``--scale-fluxes``: every exposure put on the first one's flux scale from their common
    bright stars (:func:`toolkit.real_data.photometric_scales`, then
    :func:`~toolkit.real_data.apply_scales`: image x s, variance x s^2), as a notebook does for
    plain images whose zero points differ.  The scaled exposures take the first one's
    photometric calibration, so ZOGY's scaleByCalibration treats them alike."""
    from .real_data import apply_scales, photometric_scales

    try:
        s = photometric_scales(exposures, reference=0, names=names)
    except InputError as exc:
        raise InputError(f"--scale-fluxes: {exc}") from None
    progress(f"flux scales to {names[0]}: " + ", ".join(f"{Path(n).name} {v:.4f}" for n, v in zip(names[1:], s[1:])))
    scaled = apply_scales(exposures, s)
    for e in scaled:
        e.photo_calib = exposures[0].photo_calib
    return scaled, s


def noise_correlation_option(text: str) -> str | float:
    """argparse type of ``--noise-correlation``: ``auto`` or a finite factor > 0 (resampling
    makes it > 1, but a user's own measurement is taken as given)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive number, got {text!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"the factor must be finite and > 0, got {text!r}")
    return value


def _fits_files(items: list[str], pattern: str) -> list[Path]:
    files: list[Path] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            found = sorted(p.glob(pattern))
            if not found:
                raise InputError(f"no {pattern} files in directory {p}")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise InputError(f"input not found: {p}")
    return files


def output_dir(path: str | Path, create: bool = False) -> Path:
    """The ``--out`` folder: checked before any work (a file of that name, or a parent that is a
    file, is named) and made when ``create``."""
    out = Path(path)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise InputError(f"--out {out}: {p} exists and is not a directory")
            break
    if create:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--out {out}: cannot create the directory ({exc.strerror})") from None
    return out


def _cmd_coadd(args: argparse.Namespace, progress: Callable) -> int:
    from .coadd import assemble_coadd
    from .compare_warp import CompareWarpPipeline

    output_dir(args.out)
    direct_files = _fits_files(args.warps, args.pattern)
    progress(f"reading {len(direct_files)} warps")
    direct = [read_input(f, progress, psf_size=args.psf_size) for f in direct_files]
    scales = None
    if args.scale_fluxes:
        direct, scales = scale_fluxes(direct, [str(f) for f in direct_files], progress)
    out = output_dir(args.out, create=True)
    bright = None
    if args.bright_objects:
        from astropy.table import Table

        try:
            bright = Table.read(args.bright_objects)
        except Exception as exc:  # astropy raises many kinds for unreadable tables
            raise InputError(f"cannot read the bright-object table {args.bright_objects}: {exc}") from None
    if args.task == "assemble":
        cfg = load_config(args.config, AssembleCoaddConfig, args.override)
        if bright is not None and not cfg.doMaskBrightObjects:
            progress("note: --bright-objects is painted only with doMaskBrightObjects (e.g. -c doMaskBrightObjects=True)")
        res = assemble_coadd(direct, cfg, progress=progress, bright_objects=bright)
        write_exposure(res.coadd, out / "coadd.fits")
        write_hdul(fits.HDUList([fits.PrimaryHDU(res.n_image.astype(np.int32))]), out / "nimage.fits")
        progress(f"wrote {out}")
        return 0
    cfg = load_config(args.config, CompareWarpConfig, args.override)
    matched = None
    if args.psf_matched:
        mfiles = _fits_files(args.psf_matched, args.psf_matched_pattern)
        if len(mfiles) != len(direct):
            raise InputError(f"{len(mfiles)} PSF-matched warps for {len(direct)} direct warps")
        matched = [read_input(f, progress, psf_size=args.psf_size) for f in mfiles]
        if scales is not None:
            # the direct warps' factors: a PSF-matched warp is its direct warp convolved
            from .real_data import apply_scales

            matched = apply_scales(matched, scales)
    if bright is not None and not cfg.doMaskBrightObjects:
        progress("note: --bright-objects is painted only with doMaskBrightObjects (e.g. -c doMaskBrightObjects=True)")
    pipe = CompareWarpPipeline(direct, matched, config=cfg, progress=progress, bright_objects=bright)
    res = pipe.run()
    write_exposure(res.coadd, out / "coadd.fits")
    write_hdul(fits.HDUList([fits.PrimaryHDU(res.n_image.astype(np.int32))]), out / "nimage.fits")
    write_hdul(fits.HDUList([fits.PrimaryHDU(res.epoch_count.astype(np.int32))]), out / "epoch_count.fits")
    write_exposure(res.template, out / "template.fits")
    planes = res.coadd.mask_planes
    for i, (f, m) in enumerate(zip(direct_files, res.artifact_masks)):
        mask = np.zeros(res.coadd.shape, np.int32)
        for name, sel in m.items():
            mask[sel] |= np.int32(planes.bitmask([name]))
        write_mask_image(mask, planes, out / f"artifact_mask_{i:03d}.fits")
    progress(f"wrote {out} (coadd, nimage, epoch_count, template, {len(direct)} artifact masks)")
    return 0


def _cmd_zogy(args: argparse.Namespace, progress: Callable) -> int:
    from .zogy import zogy

    cfg = load_config(args.config, ZogyConfig, args.override)
    output_dir(args.out)
    # both files are checked (readable FITS, which layout) before any work on either
    layout = {role: is_afw_layout(getattr(args, role)) for role in ("science", "template")}
    sci, tmpl = (read_input(getattr(args, role), progress, getattr(args, f"{role}_psf"), getattr(args, f"{role}_noise"), args.noise_kind, role=role, psf_size=args.psf_size, afw_layout=layout[role], mask=getattr(args, f"{role}_mask")) for role in ("science", "template"))
    if args.scale_fluxes:
        sci, tmpl = scale_fluxes([sci, tmpl], [args.science, args.template], progress)[0]
    if args.noise_correlation == "auto":
        cfg.doMeasureNoiseCorrelation = True
    elif args.noise_correlation is not None:
        cfg.doMeasureNoiseCorrelation = False
        cfg.noiseCorrelationFactor = args.noise_correlation
    res = zogy(sci, tmpl, cfg, calculate_score=True, progress=progress)
    if res.noise_correlation != 1.0:
        how = f"± {res.noise_correlation_error:.2g}, measured on the pair's Scorr away from sources" if cfg.doMeasureNoiseCorrelation else "as given"
        progress(f"noise correlation factor {res.noise_correlation:.3f} ({how}): both variance planes were multiplied by it")
    out = output_dir(args.out, create=True)
    write_exposure(res.diff, out / "diff.fits")
    write_exposure(res.score, out / "score.fits")
    write_hdul(fits.HDUList([fits.PrimaryHDU(res.scorr.astype(np.float32))]), out / "scorr.fits")
    cat = res.catalog  # zogy made it with cfg's transientThreshold and transientMinPixels
    cat.write(out / "transients.ecsv", overwrite=True)
    progress(f"wrote {out} (diff, score, scorr, {len(cat)} transients)")
    return 0


def _render(cfg: LsstConfig, fmt: str, all_fields: bool, label: str | None, preset_name: str) -> str:
    if fmt == "pex":
        return cfg.to_pex_override(label=label, only_changed=not all_fields, preset_name=preset_name)
    if fmt == "yaml":
        return cfg.to_yaml()
    return cfg.to_json() + "\n"


def _cmd_config(args: argparse.Namespace, progress: Callable) -> int:
    cls = _CLASSES[args.task]
    if args.action == "diff":
        if len(args.specs) != 2:
            raise InputError("config diff needs two configs (files or preset names)")
        a, b = (load_config(s, cls) for s in args.specs)
        da, db = dict(a.flat_items()), dict(b.flat_items())
        n = 0
        for key in da:
            if da[key] != db.get(key):
                print(f"{key}: {da[key]!r} -> {db.get(key)!r}")
                n += 1
        if n == 0:
            print("(identical)")
        return 0
    spec = args.preset or (args.specs[0] if args.specs else None)
    if args.preset == "zogy" or (spec == "zogy"):
        cls = ZogyConfig
    cfg = load_config(spec, cls, args.override)
    text = _render(cfg, args.format, args.all, args.label, args.preset or (spec or "lsst"))
    if args.action == "export" and args.out:
        from .io import atomic_write

        atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))
        progress(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def add_subcommands(sub: argparse._SubParsersAction, progress: Callable[[str], None]) -> None:
    """Register ``coadd``, ``zogy`` and ``config`` on the ``diffstack`` subparsers."""
    c = sub.add_parser("coadd", help="CompareWarp (or plain AssembleCoadd) coadd of warp FITS files")
    c.add_argument("warps", nargs="+", help="direct-warp FITS files or directories (afw layout, or plain images whose variance and PSF are then estimated)")
    c.add_argument("--pattern", default="direct_warp_*.fits", help="glob used inside directories")
    c.add_argument("--psf-matched", nargs="+", help="PSF-matched warps (files or directories), same order")
    c.add_argument("--psf-matched-pattern", default="psf_matched_warp_*.fits")
    c.add_argument("--config", help="pipetask override (.py), YAML/JSON export, pipeline.yaml#label, or preset name")
    c.add_argument("-c", "--override", action="append", default=[], metavar="[LABEL:]FIELD=VALUE", help="a pipetask -c override, applied after --config (repeatable; the label, if any, is not checked)")
    c.add_argument("--bright-objects", help="table of bright-object regions (ECSV/FITS, columns as toolkit.interp.mask_bright_objects reads them), painted when doMaskBrightObjects is set")
    c.add_argument("--task", choices=["compare-warp", "assemble"], default="compare-warp")
    c.add_argument("--psf-size", type=int, default=25, help="plain images: measured PSF stamp size (default 25)")
    c.add_argument("--scale-fluxes", action="store_true", help="put every input on the first one's flux scale from their common bright stars (plain images with different zero points; LSST warps are already in nJy)")
    c.add_argument("--out", required=True, help="output directory")
    c.set_defaults(func=lambda a: _cmd_coadd(a, progress))

    z = sub.add_parser("zogy", help="ZOGY subtraction science - template")
    z.add_argument("science", help="FITS file: diffstack/afw layout, or a plain image (variance and PSF then estimated, see --science-psf/--science-noise)")
    z.add_argument("template", help="FITS file, as science, on the same pixel grid")
    z.add_argument("--config", help="pipetask override (.py), YAML/JSON export, or 'zogy'")
    z.add_argument("-c", "--override", action="append", default=[], metavar="[LABEL:]FIELD=VALUE", help="a pipetask -c override, applied after --config (repeatable; the label, if any, is not checked)")
    for role in ("science", "template"):
        z.add_argument(f"--{role}-psf", help=f"plain {role} image: its PSF as a FITS stamp or a PSFEx .psf model (spatially varying; else measured from its stars)")
        z.add_argument(f"--{role}-noise", help=f"plain {role} image: its noise map (e.g. JWST ERR; else estimated)")
        z.add_argument(f"--{role}-mask", help=f"plain {role} image: a bad-pixel map, non-zero = BAD (e.g. a DECam ood file, a ZTF mskimg)")
    z.add_argument("--noise-kind", choices=["sigma", "variance", "inverse_variance"], default="sigma", help="what the noise maps hold")
    z.add_argument("--psf-size", type=int, default=25, help="plain images: PSF stamp size (a larger given stamp or PSFEx model is cut to it; default 25)")
    z.add_argument("--scale-fluxes", action="store_true", help="put the template on the science image's flux scale from their common bright stars (plain images with different zero points)")
    z.add_argument("--noise-correlation", type=noise_correlation_option, metavar="auto|FACTOR", help="multiply both variance planes by FACTOR (config noiseCorrelationFactor), or by the factor that makes the pair's Scorr unit-variance away from sources ('auto', config doMeasureNoiseCorrelation), before ZOGY: resampled or drizzled images' noise is larger on the PSF scale than their per-pixel variance says")
    z.add_argument("--out", required=True, help="output directory")
    z.set_defaults(func=lambda a: _cmd_zogy(a, progress))

    g = sub.add_parser("config", help="show, compare or export configs")
    g.add_argument("action", choices=["show", "diff", "export"])
    g.add_argument("specs", nargs="*", help="config files or preset names")
    g.add_argument("--preset", choices=list(PRESETS))
    g.add_argument("-c", "--override", action="append", default=[], metavar="[LABEL:]FIELD=VALUE", help="a pipetask -c override, applied after --config (repeatable; the label, if any, is not checked)")
    g.add_argument("--task", choices=list(_CLASSES), default="compare-warp")
    g.add_argument("--format", choices=["pex", "yaml", "json"], default="pex")
    g.add_argument("--all", action="store_true", help="pex: every field, not only those differing from LSST")
    g.add_argument("--label", help="pipetask label for the usage line (pex)")
    g.add_argument("--out", help="export: file to write (atomically)")
    g.set_defaults(func=lambda a: _cmd_config(a, progress))
