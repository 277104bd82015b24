"""FITS input and output.

:func:`write_exposure` / :func:`read_exposure` use LSST's afw multi-extension layout: an empty
primary HDU carrying the metadata, then ``IMAGE``, ``MASK`` and ``VARIANCE`` image extensions.
The mask header lists the plane dictionary as ``MP_<NAME> = bit`` cards, every extension carries
the WCS and the parent-frame origin (``LTV1/LTV2`` and the ``A`` alternate WCS, ``CRVAL1A``), and
the PSF kernel goes in an extra ``PSF`` extension whose header records the model, so that a
round trip restores the PSF object exactly.  A coadd's :class:`~toolkit.psf.CoaddPsf` keeps its
parts, as afw's archive does: the ``PSF`` extension holds its kernel at the average position
(what a reader that knows nothing else uses), ``PSF001``, ``PSF002``, ... the inputs' PSFs and
``PSFCOVER`` their coverage bits.  Writes go to a temporary file in the target directory
and are renamed into place, so a crash never leaves a half-written file.

:func:`read_plain_fits` reads images from other tools: one image HDU plus optional separate
variance, inverse-variance or sigma maps and a mask.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from .errors import FitsReadError, InputError, warn
from .exposure import Exposure
from .geom import shifted_wcs
from .masks import MaskPlanes
from .psf import STORED_TYPES, CoaddPsf, ImagePsf, InputCoverage, Psf, psf_from_dict

__all__ = ["write_exposure", "read_exposure", "is_afw_layout", "read_plain_fits", "atomic_write", "write_hdul", "read_mask_fits"]

#: the PSF descriptions a file's ``PSF`` extensions hold (a CoaddPsf's parts follow it)
_FILE_PSF_TYPES = STORED_TYPES | {"CoaddPsf"}
_RESERVED = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "EXTNAME", "PCOUNT", "GCOUNT", "XTENSION", "BZERO", "BSCALE"}


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.exists():
        raise InputError(f"output directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_hdul(hdul: fits.HDUList, path: str | os.PathLike) -> Path:
    """Write an HDU list atomically."""
    return atomic_write(path, lambda tmp: hdul.writeto(tmp, overwrite=True))


def _wcs_header(exposure: Exposure) -> fits.Header:
    hdr = fits.Header()
    x0, y0 = exposure.xy0
    if exposure.wcs is not None:
        # diffstack's WCS maps parent-frame pixels; a FITS WCS maps array pixels, so shift CRPIX
        hdr.update(shifted_wcs(exposure.wcs, -x0, -y0).to_header(relax=True))
    hdr["LTV1"] = (-x0, "minus parent-frame x0 of pixel [0,0]")
    hdr["LTV2"] = (-y0, "minus parent-frame y0 of pixel [0,0]")
    hdr["CRPIX1A"], hdr["CRPIX2A"] = 1.0, 1.0
    hdr["CRVAL1A"], hdr["CRVAL2A"] = float(x0), float(y0)
    hdr["CTYPE1A"], hdr["CTYPE2A"] = "LINEAR", "LINEAR"
    hdr["CUNIT1A"], hdr["CUNIT2A"] = "PIXEL", "PIXEL"
    hdr["WCSNAMEA"] = "PARENT"
    return hdr


def _metadata_cards(metadata: Mapping[str, Any]) -> fits.Header:
    hdr = fits.Header()
    extra = {}
    for key, value in metadata.items():
        k = str(key).upper()
        if k in _RESERVED:
            continue
        if len(k) <= 8 and k.replace("_", "").replace("-", "").isalnum() and isinstance(value, (str, int, float, bool, np.integer, np.floating, np.bool_)):
            if isinstance(value, str) and (len(value) > 68 or not (value.isascii() and value.isprintable())):
                extra[key] = value  # too long for a card, or not FITS's printable ASCII: JSON escapes it
                continue
            if isinstance(value, (float, np.floating)) and not np.isfinite(value):
                extra[key] = float(value)  # FITS cards cannot hold NaN or inf; Python's JSON can
                continue
            hdr[k] = value.item() if isinstance(value, np.generic) else value
        else:
            extra[key] = value
    if extra:
        # Keys that are not FITS keywords (long, lower case, structured) travel as JSON.
        text = json.dumps(extra, default=str)
        hdr["DSMETA"] = "see DSMETAnn cards (JSON)"
        for i in range(0, len(text), 60):
            hdr[f"DSM{i // 60:05d}"] = text[i : i + 60]
    return hdr


def _metadata_from_header(hdr: fits.Header) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    chunks = []
    skip = {"PHOTOCAL", "DSMETA", "INHERIT", "COMMENT", "HISTORY", ""}
    for key, value in hdr.items():
        if key in _RESERVED or key in skip:
            continue
        if key.startswith("DSM") and key[3:].isdigit():
            chunks.append(value)
            continue
        meta[key] = value
    if chunks:
        meta.update(json.loads("".join(chunks)))
    return meta


def write_exposure(exposure: Exposure, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write ``exposure`` to ``path`` in the afw layout (atomically).

    Parameters
    ----------
    exposure : Exposure
    path : path-like
    overwrite : bool
        Refuse to replace an existing file when False.
    """
    if not isinstance(exposure, Exposure):
        raise InputError(f"write_exposure needs an Exposure, got {type(exposure).__name__}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists and overwrite=False")
    primary = fits.PrimaryHDU()
    primary.header.update(_metadata_cards(exposure.metadata))
    primary.header["PHOTOCAL"] = (exposure.photo_calib, "nJy per image unit")
    if "BUNIT" in exposure.metadata:
        primary.header["BUNIT"] = str(exposure.metadata["BUNIT"])
    wcs_hdr = _wcs_header(exposure)
    img = fits.ImageHDU(exposure.image, header=wcs_hdr.copy(), name="IMAGE")
    if "BUNIT" in exposure.metadata:
        img.header["BUNIT"] = str(exposure.metadata["BUNIT"])
    mask_hdr = wcs_hdr.copy()
    for name, bit in exposure.mask_planes.items():
        mask_hdr[f"HIERARCH MP_{name}"] = bit
    msk = fits.ImageHDU(exposure.mask, header=mask_hdr, name="MASK")
    var = fits.ImageHDU(exposure.variance, header=wcs_hdr.copy(), name="VARIANCE")
    hdus = [primary, img, msk, var]
    if exposure.psf is not None:
        hdus.extend(_psf_hdus(exposure.psf))
    return write_hdul(fits.HDUList(hdus), path)


def _psf_hdu(psf: Psf, name: str = "PSF", desc: dict[str, Any] | None = None) -> list[fits.ImageHDU]:
    """The extension ``name`` holding ``psf``: its kernel image, and its description as JSON in
    ``PSFM`` cards; a model with basis images (PsfexPsf) keeps them in ``<name>BASIS``."""
    desc = psf.to_dict() if desc is None else desc
    if desc.get("type") not in _FILE_PSF_TYPES:
        # a user's PSF class describing itself as a type no reader knows: the file keeps what
        # any reader can use, its kernel image (a file that could not be read back is worse).
        # One that does not describe itself already comes as its kernel (Psf.to_dict)
        desc = {"type": "ImagePsf", "array": psf.compute_kernel_image(), "model": type(psf).__name__}
    kernel = psf.compute_kernel_image() if desc["type"] != "ImagePsf" else desc["array"]
    hdu = fits.ImageHDU(np.asarray(kernel, dtype=np.float64), name=name)
    params = {k: v for k, v in desc.items() if k not in ("array", "basis")}
    text = json.dumps(params)
    for i in range(0, len(text), 60):
        hdu.header[f"PSFM{i // 60:04d}"] = text[i : i + 60]
    hdu.header["PSFTYPE"] = desc["type"]
    if "basis" not in desc:
        return [hdu]
    # a reader that does not know the model still has its kernel image in ``name``
    return [hdu, fits.ImageHDU(np.asarray(desc["basis"]), name=f"{name}BASIS")]


def _kept_as_kernel(desc: dict[str, Any]) -> bool:
    """Whether a PSF with this description is written as its kernel image (a user's class)."""
    return bool(desc.get("model")) or desc.get("type") not in _FILE_PSF_TYPES


def _psf_hdus(psf: Psf) -> list[fits.ImageHDU]:
    """The ``PSF`` extension, and for a CoaddPsf its inputs' PSFs and coverage."""
    parts = psf.psfs if isinstance(psf, CoaddPsf) else [psf]
    descs = [p.to_dict() for p in parts]  # once each: a user's class describes itself by its kernel
    user = sorted({type(p).__name__ for p, d in zip(parts, descs) if _kept_as_kernel(d)})
    if user:
        where = "the PSF" if not isinstance(psf, CoaddPsf) else "the coadd PSF's inputs"
        warn(
            f"{where}: {', '.join(user)} is not a PSF model diffstack's files can keep; written as its "
            "kernel image at its default position, it reads back as an ImagePsf"
        )
    if not isinstance(psf, CoaddPsf):
        return _psf_hdu(psf, desc=descs[0])
    cov = psf.coverage
    desc = {"type": "CoaddPsf", "weights": [float(w) for w in psf.input_weights], "coverage": cov is not None}
    if cov is not None:
        desc.update(shape=list(cov.shape), xy0=list(cov.xy0))
    # the main extension's data is the kernel at the average position, so a reader that does
    # not know CoaddPsf still gets the coadd's PSF (an ImagePsf), as before
    hdus = _psf_hdu(psf, desc=desc)
    for i, (p, d) in enumerate(zip(parts, descs)):
        hdus.extend(_psf_hdu(p, name=f"PSF{i + 1:03d}", desc=d))
    if cov is not None:
        hdus.append(fits.ImageHDU(np.stack(cov.packed), name="PSFCOVER"))
    return hdus


def _psf_from_hdu(hdu: fits.ImageHDU, hdul: fits.HDUList | None = None) -> Psf:
    chunks = [v for k, v in hdu.header.items() if k.startswith("PSFM") and k[4:].isdigit()]
    try:
        desc = json.loads("".join(chunks)) if chunks else {"type": "ImagePsf"}
    except ValueError:
        desc = None
    if not isinstance(desc, dict) or desc.get("type") not in _FILE_PSF_TYPES:
        # e.g. a file from a newer diffstack: the kernel image stored with it still serves
        what = f"PSF model {desc.get('type')!r} is unknown to this diffstack" if isinstance(desc, dict) else "the PSF description (PSFM cards) is not valid JSON"
        warn(f"{hdu.name}: {what}; read as its stored kernel image")
        desc = {"type": "ImagePsf"}
    if desc.get("type") == "CoaddPsf":
        names = [h.name for h in hdul] if hdul is not None else []
        parts = [f"PSF{i + 1:03d}" for i in range(len(desc.get("weights", [])))]
        if parts and all(p in names for p in parts) and (not desc.get("coverage") or "PSFCOVER" in names):
            cov = None
            if desc.get("coverage"):
                cube = np.asarray(hdul["PSFCOVER"].data, dtype=np.uint8)
                cov = InputCoverage(list(cube), tuple(desc["shape"]), tuple(desc["xy0"]))
            return CoaddPsf([_psf_from_hdu(hdul[p], hdul) for p in parts], desc["weights"], coverage=cov)
        desc = {"type": "ImagePsf"}  # the parts are missing: the kernel stored with it
    if desc.get("type") == "PsfexPsf":
        basis_name = f"{hdu.name}BASIS"
        if hdul is not None and basis_name in [h.name for h in hdul]:
            return psf_from_dict({**desc, "basis": np.asarray(hdul[basis_name].data)})
        warn(f"{hdu.name}: its PsfexPsf basis images ({basis_name}) are missing; read as its stored kernel image")
        desc = {"type": "ImagePsf"}
    if desc.get("type") == "ImagePsf":
        return ImagePsf(np.asarray(hdu.data, dtype=np.float64), normalize=False)
    return psf_from_dict(desc)


def _open_fits(path: str | os.PathLike) -> fits.HDUList:
    path = Path(path)
    if not path.exists():
        raise FitsReadError(f"FITS file not found: {path}")
    if path.is_dir():
        raise FitsReadError(f"{path} is a directory, not a FITS file")
    try:
        hdul = fits.open(path, memmap=False)
        hdul.verify("silentfix")
        # every HDU's data is read here, where a failure is named: astropy reads lazily, and a
        # truncated file would otherwise fail later as a bare reshape ValueError
        for h in hdul:
            _ = h.header, h.data
        return hdul
    except FitsReadError:
        raise
    except Exception as exc:
        raise FitsReadError(f"{path} is not a readable FITS file ({type(exc).__name__}: {exc})") from None


def _read_wcs(hdr: fits.Header) -> WCS | None:
    if "CTYPE1" not in hdr:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(hdr, relax=True)
        except Exception:
            return None
    if not wcs.has_celestial:
        return None
    # a degenerate cube (e.g. NAXIS3 = 1 with a spectral or Stokes axis) keeps its sky axes only,
    # so pixel_to_world takes (x, y) as for any 2-D image
    return wcs.celestial if wcs.naxis > 2 else wcs


def _xy0(hdr: fits.Header) -> tuple[int, int]:
    if "CRVAL1A" in hdr and hdr.get("WCSNAMEA", "PARENT") == "PARENT":
        return int(round(hdr["CRVAL1A"] - (hdr.get("CRPIX1A", 1.0) - 1))), int(round(hdr["CRVAL2A"] - (hdr.get("CRPIX2A", 1.0) - 1)))
    return -int(hdr.get("LTV1", 0)), -int(hdr.get("LTV2", 0))


#: the AB magnitude zero point's flux in nJy (``lsst.utils`` referenceFlux), which afw's
#: ``FLUXMAG0`` (image units of a 0-mag source) divides to give the calibration
_REFERENCE_FLUX_NJY = 1e23 * 10 ** (48.6 / -2.5) * 1e9


def _archive_unread(path: Any, what: str, why: str) -> None:
    """Warn that ``what`` in an afw archive could not be read and why; returns None, so a
    reader can ``return _archive_unread(...)`` where it gives up."""
    warn(f"{path}: cannot read the {what} in its afw archive ({why})", UserWarning)


def _afw_archive_record(hdul: fits.HDUList, id_key: str, path: Any, what: str, catalog: int = 0) -> tuple[str, Any, fits.BinTableHDU] | None:
    """The archive object that the primary header's ``id_key`` names, in a file written by
    LSST's afw: ``(class name, the first record of its catalog number ``catalog``, the table
    holding it)``, or None when the file has no such object.

    afw's layout: ``AR_HDU`` (1-based) is the ``ARCHIVE_INDEX`` table; the object's entry (its
    ``id``) gives its class ``name`` and where its records are: ``cat.archive`` (the data table,
    1-based after the index) and ``row0``/``nrows`` in it.  A file that names an object it does
    not hold, or whose tables are not laid out so, gives a warning naming ``what`` was not read
    and None, never a guess.
    """
    primary = hdul[0].header
    oid, ar = primary.get(id_key, 0), primary.get("AR_HDU")
    if not oid or ar is None:
        return None

    def give_up(why: str) -> None:
        return _archive_unread(path, what, why)

    try:
        index_hdu = hdul[int(ar) - 1]
        if index_hdu.header.get("EXTTYPE") != "ARCHIVE_INDEX" or not isinstance(index_hdu, fits.BinTableHDU):
            return give_up(f"HDU {ar} (AR_HDU) is not an ARCHIVE_INDEX table")
        index = index_hdu.data
        names = {n.lower(): n for n in index.names}
        cat_col = names.get("cat.archive") or names.get("cat_archive")
        if cat_col is None or not {"id", "row0", "nrows", "name"} <= set(names):
            return give_up(f"its index lacks the id/name/cat.archive/row0/nrows columns (has {list(index.names)})")
        rows = index[index[names["id"]] == int(oid)]
        if len(rows) == 0:
            return give_up(f"no index entry for {id_key} {oid}")
        # an object's catalogs are numbered by cat.persistable; the first (0) holds its own
        # record, and e.g. a PsfexPsf keeps its arrays in a second
        pers = names.get("cat.persistable") or names.get("cat_persistable")
        if pers is not None:
            mine = rows[rows[pers] == catalog]
            if len(mine) == 0:
                return give_up(f"no catalog {catalog} for {id_key} {oid}")
            entry = mine[0]
        elif catalog < len(rows):
            entry = rows[catalog]
        else:
            return give_up(f"no catalog {catalog} for {id_key} {oid}")
        name = str(entry[names["name"]]).strip()
        data_hdu = hdul[int(ar) - 1 + int(entry[cat_col])]
        r0, nr = int(entry[names["row0"]]), int(entry[names["nrows"]])
        if data_hdu.header.get("EXTTYPE") != "ARCHIVE_DATA" or not isinstance(data_hdu, fits.BinTableHDU) or nr < 1 or r0 + nr > len(data_hdu.data):
            return give_up(f"its entry does not point at rows of an ARCHIVE_DATA table (catalog {entry[cat_col]}, rows {r0}..{r0 + nr})")
        return name, data_hdu.data[r0], data_hdu
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        return give_up(f"{type(exc).__name__}: {exc}")


def _afw_photo_calib(hdul: fits.HDUList, path: Any) -> float | None:
    """The photometric calibration (nJy per image unit) that a file written by LSST's afw holds,
    or None when it holds none that can be read.

    afw keeps it as a ``PhotoCalib`` object in the file's archive (``PHOTOCALIB_ID``, see
    :func:`_afw_archive_record`; its ``calibrationMean``) or, in files from before PhotoCalib,
    as the primary header's ``FLUXMAG0``.  A spatially varying calibration (``isConstant``
    false) is replaced by its mean, with a warning: diffstack holds one number per exposure.
    """
    primary = hdul[0].header
    if not primary.get("PHOTOCALIB_ID", 0) or "AR_HDU" not in primary:
        if "FLUXMAG0" not in primary:
            return None
        try:
            fm0 = float(primary["FLUXMAG0"])
        except (TypeError, ValueError):
            fm0 = float("nan")
        if np.isfinite(fm0) and fm0 > 0:
            return _REFERENCE_FLUX_NJY / fm0
        warn(f"{path}: FLUXMAG0 = {primary['FLUXMAG0']!r} is not a positive number; the photometric calibration is taken as 1", UserWarning)
        return None
    what = "PhotoCalib (the photometric calibration is taken as 1)"
    found = _afw_archive_record(hdul, "PHOTOCALIB_ID", path, what)
    if found is None:
        return None
    name, record, table = found

    def give_up(why: str) -> None:
        return _archive_unread(path, what, why)

    cols = set(table.data.names)
    if name != "PhotoCalib":
        return give_up(f"PHOTOCALIB_ID names a {name!r}, not a PhotoCalib")
    if "calibrationMean" not in cols:
        return give_up(f"its catalog has no calibrationMean column (has {sorted(cols)})")
    version = int(record["version"]) if "version" in cols else 0
    if version < 1:
        return give_up(f"PhotoCalib version {version}: version 0 was in maggies, which afw itself refuses")
    mean = float(record["calibrationMean"])
    if not (np.isfinite(mean) and mean > 0):
        return give_up(f"calibrationMean = {mean}")
    # afw packs Flag fields into one bit column, named bit by bit in TFLAGn cards
    flag_names = [table.header.get(f"TFLAG{i}") for i in range(1, 65)]
    flags_col = next((c for c in cols if c.lower() == "flags"), None)
    if "isConstant" in flag_names and flags_col is not None and not bool(np.asarray(record[flags_col]).ravel()[flag_names.index("isConstant")]):
        warn(f"{path}: its PhotoCalib varies over the image; diffstack uses its mean, {mean:.6g} nJy per image unit (LSST's calibrateImage multiplies by the varying field)", UserWarning)
    return mean


def _column_keys(table: fits.BinTableHDU) -> dict[str, str]:
    """An afw archive table's column names by lower-case key with "." as "_" (afw's field
    names as written by different versions: ``averagePosition_x``, ``dimensions.x``)."""
    return {c.lower().replace(".", "_"): c for c in table.data.names}


def _afw_psf(hdul: fits.HDUList, path: Any) -> Psf | None:
    """The PSF of a file written by LSST's afw when its archive holds a model diffstack has
    (``GaussianPsf``; ``DoubleGaussianPsf``, the PSF-matched warps' model PSF; ``PsfexPsf``, a
    calexp's measured PSF in LSST's PSFEx era), else None: Piff models and CoaddPsf/WarpedPsf
    need LSST's code to evaluate."""
    from .psf import DoubleGaussianPsf, GaussianPsf

    found = _afw_archive_record(hdul, "PSF_ID", path, "PSF")
    if found is None:
        return None
    name, record, table = found
    if name == "PsfexPsf":
        return _afw_psfex(hdul, path, record, table)
    if name not in ("GaussianPsf", "DoubleGaussianPsf"):
        return None
    cols = _column_keys(table)
    try:
        w, h = int(record[cols["dimensions_x"]]), int(record[cols["dimensions_y"]])
        if name == "GaussianPsf":
            sigma = float(record[cols["sigma"]])
            psf: Psf = GaussianPsf(sigma, size=max(w, h))
        else:
            s1, s2, b = (float(record[cols[k]]) for k in ("sigma1", "sigma2", "b"))
            if b == 0.0 and s2 == 0.0:
                s2 = 1.0  # afw's own guard against 0/0 at the centre
            # LSST's b is the wing's central amplitude relative to the core's, as wing_amplitude
            psf = DoubleGaussianPsf(s1 * 2.3548, wing_fwhm_factor=s2 / s1, wing_amplitude=b, size=max(w, h))
    except (KeyError, TypeError, ValueError, ZeroDivisionError, InputError) as exc:
        warn(f"{path}: cannot read the {name} in its afw archive ({type(exc).__name__}: {exc}); no PSF", UserWarning)
        return None
    if w != h or w % 2 == 0:
        warn(f"{path}: its {name} is realised on {w}x{h} pixels; diffstack's is {psf.size}x{psf.size}, centred alike", UserWarning)
    return psf


def _afw_psfex(hdul: fits.HDUList, path: Any, record: Any, table: fits.BinTableHDU) -> Psf | None:
    """meas_extensions_psfex's ``PsfexPsf`` from its two archive catalogs: the scalars
    (``ndim``, ``ngroup``, ``averagePosition``, ``_pixstep``) and the arrays (``degree``,
    ``_size`` = (w, h, n_terms), ``_comp`` = the basis images, term-major and row-major,
    ``_context_first``/``_context_second`` = the polynomial's offsets and scales in LSST's
    0-based pixel coordinates).  Only the position polynomial LSST fits (2 dimensions, one
    group) exists; anything else is named in a warning and read as no PSF."""
    from .psf import PsfexPsf

    found = _afw_archive_record(hdul, "PSF_ID", path, "PSF", catalog=1)
    if found is None:
        return None
    arrays, table2 = found[1], found[2]
    c1, c2 = _column_keys(table), _column_keys(table2)

    def vec(key: str, dtype: Any) -> np.ndarray:
        return np.asarray(arrays[c2[key]], dtype=dtype).ravel()

    try:
        ndim, ngroup = int(record[c1["ndim"]]), int(record[c1["ngroup"]])
        if ndim != 2 or ngroup != 1:
            return _archive_unread(path, "PSF", f"its PsfexPsf has {ndim} context dimension(s) in {ngroup} group(s); only LSST's position polynomial (2 in 1) is understood")
        w, h, *rest = (int(v) for v in vec("_size", np.int64))
        n_terms = rest[0] if rest else 1
        comp = vec("_comp", np.float32)
        if comp.size != w * h * n_terms:
            return _archive_unread(path, "PSF", f"its PsfexPsf has {comp.size} basis pixels for {n_terms} images of {w}x{h}")
        avg = (float(record[c1["averageposition_x"]]), float(record[c1["averageposition_y"]]))
        return PsfexPsf(
            comp.reshape(n_terms, h, w), float(record[c1["_pixstep"]]), int(vec("degree", np.int64)[0]),
            vec("_context_first", np.float64)[:2], vec("_context_second", np.float64)[:2], origin=0.0, default_position=avg,
        )
    except (KeyError, IndexError, TypeError, ValueError, InputError) as exc:
        return _archive_unread(path, "PSF", f"{type(exc).__name__}: {exc}")


def _afw_archive_keys(hdul: fits.HDUList) -> set[str]:
    """Primary-header cards that point into an afw archive (``AR_HDU`` and the ``<COMPONENT>_ID``
    cards whose value is an id in its index) and afw's ``FLUXMAG0`` pair: they describe this
    file's own tables, so they are not metadata to carry into files diffstack writes, which
    have no archive (afw would follow them to HDUs that are not there)."""
    primary = hdul[0].header
    keys = {k for k in ("FLUXMAG0", "FLUXMAG0ERR") if k in primary}
    ar = primary.get("AR_HDU")
    if ar is None:
        return keys
    keys.add("AR_HDU")
    try:
        ids = {int(v) for v in hdul[int(ar) - 1].data["id"]}
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        ids = set()
    for key, value in primary.items():
        if key.endswith("_ID") and isinstance(value, int) and not isinstance(value, bool) and value in ids:
            keys.add(key)
    return keys


def is_afw_layout(path: str | os.PathLike) -> bool:
    """Whether a FITS file holds an Exposure in the afw layout (an ``IMAGE`` extension, as
    :func:`write_exposure` writes), rather than a plain image.  Reads the headers only.

    Raises
    ------
    FitsReadError
        If the file is missing or not FITS.
    """
    with _open_fits(path) as hdul:
        return "IMAGE" in [h.name for h in hdul]


def read_exposure(path: str | os.PathLike) -> Exposure:
    """Read an Exposure written by :func:`write_exposure` (or any afw-layout FITS file).

    A file written by LSST's afw keeps its photometric calibration in its archive (or, if old,
    as ``FLUXMAG0``): it is read from there (see :func:`_afw_photo_calib`), so that ZOGY's
    ``scaleByCalibration`` puts a calexp in ADU and a coadd in nJy on one scale, as LSST does.
    Its PSF is read from the archive when it is an analytic model diffstack has (GaussianPsf,
    or the DoubleGaussianPsf of LSST's PSF-matched warps); a measured model (Piff, PSFEx) or a
    CoaddPsf needs LSST's code, so such a file reads with ``psf=None``.

    Raises
    ------
    FitsReadError
        If the file is missing, not FITS, or lacks an ``IMAGE`` extension.
    """
    with _open_fits(path) as hdul:
        names = [h.name for h in hdul]
        if "IMAGE" not in names:
            raise FitsReadError(f"{path} has no IMAGE extension (found {names}); use read_plain_fits for single-image files")
        img_hdu = hdul["IMAGE"]
        image = np.asarray(img_hdu.data)  # big-endian as stored: Exposure makes it native
        if image.dtype.type not in (np.float32, np.float64):
            image = image.astype(np.float32)
        variance = None
        if "VARIANCE" in names:
            variance = np.asarray(hdul["VARIANCE"].data).astype(image.dtype)
        mask = None
        planes = None
        if "MASK" in names:
            mhdu = hdul["MASK"]
            mask = np.asarray(mhdu.data).astype(np.int32)
            planes = {k[3:]: int(v) for k, v in mhdu.header.items() if k.startswith("MP_")}
            # afw sorts MP_ cards alphabetically; restore bit order for a readable dictionary
            planes = dict(sorted(planes.items(), key=lambda kv: kv[1])) or None
        primary = hdul[0].header
        lsst_file = "PHOTOCAL" not in primary  # diffstack's files carry PHOTOCAL
        psf = _psf_from_hdu(hdul["PSF"], hdul) if "PSF" in names else (_afw_psf(hdul, path) if lsst_file else None)
        xy0 = _xy0(img_hdu.header)
        wcs = _read_wcs(img_hdu.header)
        if wcs is not None:
            wcs = shifted_wcs(wcs, *xy0)
        meta = _metadata_from_header(primary)
        if not lsst_file:
            photo_calib = float(primary["PHOTOCAL"])
        else:  # a file written by LSST keeps its calibration as afw does
            photo_calib = _afw_photo_calib(hdul, path) or 1.0
            for key in _afw_archive_keys(hdul):
                meta.pop(key, None)
        if "BUNIT" not in meta and "BUNIT" in img_hdu.header:
            meta["BUNIT"] = img_hdu.header["BUNIT"]  # afw writes it with the image, not the primary
        return Exposure(
            image,
            variance,
            mask,
            MaskPlanes(planes) if planes else None,
            psf=psf,
            photo_calib=photo_calib,
            wcs=wcs,
            xy0=xy0,
            metadata=meta,
            copy=False,
        )


def _image_shape(h: Any) -> tuple[int, ...] | None:
    """Shape of an image HDU's data (None for tables and empty HDUs)."""
    return np.shape(h.data) if getattr(h, "is_image", False) and h.data is not None else None


def _image_2d(h: Any) -> np.ndarray | None:
    """The HDU's data as a 2-D array: a plain image, or a cube whose extra axes all have length
    1 (NAXIS3 = 1, as some pipelines write single planes); None for anything else."""
    shape = _image_shape(h)
    if shape is None or len(shape) < 2 or any(n != 1 for n in shape[:-2]):
        return None
    return np.asarray(h.data).reshape(shape[-2:])


def _first_image(hdul: fits.HDUList, path: Any, hdu: int | str | None) -> tuple[np.ndarray, fits.Header, fits.Header]:
    if hdu is not None:
        try:
            h = hdul[hdu]
        except (KeyError, IndexError):
            raise FitsReadError(f"{path} has no HDU {hdu!r}") from None
        data = _image_2d(h)
        if data is None:
            shape = None if h.data is None else np.shape(h.data)
            raise FitsReadError(f"HDU {hdu!r} of {path} holds no 2-D image (data shape {shape})")
        return data, h.header, hdul[0].header
    cubes = []
    for h in hdul:
        data = _image_2d(h)
        if data is not None:
            return data, h.header, hdul[0].header
        shape = _image_shape(h)
        if shape is not None and len(shape) > 2:
            cubes.append(shape)
    hint = f" (only cubes of shape {', '.join(map(str, cubes))}: split them into 2-D images first)" if cubes else ""
    raise FitsReadError(f"{path} contains no 2-D image HDU{hint}")


def read_plain_fits(
    image_path: str | os.PathLike,
    variance: str | os.PathLike | None = None,
    inverse_variance: str | os.PathLike | None = None,
    sigma: str | os.PathLike | None = None,
    mask: str | os.PathLike | None = None,
    mask_plane: str = "BAD",
    hdu: int | str | None = None,
    psf: Psf | None = None,
    photo_calib: float | None = None,
    dtype: Any = np.float32,
) -> Exposure:
    """Read a single-image FITS file, with optional separate noise and mask maps.

    Exactly one of ``variance``, ``inverse_variance`` and ``sigma`` may be given; each names a
    FITS file whose first 2-D image is that quantity.  Pixels with a non-positive inverse
    variance get infinite variance.  A mask file's non-zero pixels set ``mask_plane``.  A file
    laid out as JWST's pipeline writes (the image in ``SCI``, its 1-sigma error in ``ERR``)
    brings its own noise map: with none given, ``ERR`` is read as ``sigma`` (metadata
    ``DSNOISE`` says so).  Without any noise map the variance plane is NaN-free ones and the
    header key ``DSNOVAR`` is set; use :func:`toolkit.real_data.load_image` to estimate it
    from the image instead.
    """
    given = [n for n, v in (("variance", variance), ("inverse_variance", inverse_variance), ("sigma", sigma)) if v is not None]
    if len(given) > 1:
        raise InputError(f"give at most one noise map, got {', '.join(given)}")
    own_err = None
    with _open_fits(image_path) as hdul:
        data, hdr, phdr = _first_image(hdul, image_path, hdu)
        image = np.array(data, dtype=dtype)
        meta = _metadata_from_header(phdr)
        meta.update(_metadata_from_header(hdr))
        wcs = _read_wcs(hdr) or _read_wcs(phdr)
        if not given and str(hdr.get("EXTNAME", "")).strip().upper() == "SCI" and "ERR" in hdul:
            err = _image_2d(hdul["ERR"])
            if err is not None and err.shape == image.shape:
                own_err = np.asarray(err, dtype=np.float64)
                meta["DSNOISE"] = "ERR"
    var = None
    for kind, p in (("variance", variance), ("inverse_variance", inverse_variance), ("sigma", sigma), ("sigma", own_err)):
        if p is None:
            continue
        if isinstance(p, np.ndarray):  # the image file's own ERR extension
            arr = p
        else:
            with _open_fits(p) as h2:
                arr, _, _ = _first_image(h2, p, None)
                arr = np.asarray(arr, dtype=np.float64)
        if arr.shape != image.shape:
            raise InputError(f"{kind} map {p} has shape {arr.shape}, image {image_path} has {image.shape}")
        with np.errstate(divide="ignore", invalid="ignore"):
            if kind == "variance":
                var = arr
            elif kind == "sigma":
                var = arr**2
            else:
                var = np.where(arr > 0, 1.0 / arr, np.inf)
        var = var.astype(dtype)
    msk = None
    planes = MaskPlanes()
    if mask is not None:
        with _open_fits(mask) as h3:
            m, _, _ = _first_image(h3, mask, None)
        if m.shape != image.shape:
            raise InputError(f"mask {mask} has shape {m.shape}, image {image_path} has {image.shape}")
        planes.add(mask_plane)
        msk = np.where(np.asarray(m) != 0, np.int32(planes.bitmask([mask_plane])), np.int32(0))
    if var is None:
        meta["DSNOVAR"] = True
    pc = photo_calib if photo_calib is not None else float(meta.get("PHOTOCAL", 1.0))
    return Exposure(image, var, msk, planes, psf=psf, photo_calib=pc, wcs=wcs, metadata=meta, copy=False)


def read_mask_fits(path: str | os.PathLike) -> tuple[np.ndarray, MaskPlanes]:
    """Read a mask-only file (as written for per-epoch artifact masks): array and plane dictionary."""
    with _open_fits(path) as hdul:
        for h in hdul:
            if h.data is not None and np.ndim(h.data) == 2:
                data = np.asarray(h.data)
                if data.dtype.kind not in "iub":
                    raise FitsReadError(f"{path}: a mask must hold integer bits, found {data.dtype} data")
                planes = {k[3:]: int(v) for k, v in h.header.items() if k.startswith("MP_")}
                return data.astype(np.int32), MaskPlanes(dict(sorted(planes.items(), key=lambda kv: kv[1])) or None)
    raise FitsReadError(f"{path} holds no mask image")
