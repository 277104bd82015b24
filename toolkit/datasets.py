"""The real images shipped with diffstack (see ``toolkit/data/README.md`` for provenance and
license): ten registered DECam exposures in two epochs of five, and a JWST NIRCam F200W pair with
noise maps and model PSFs."""

from __future__ import annotations

from pathlib import Path

from .exposure import Exposure

__all__ = ["DATA_DIR", "decam_paths", "load_decam", "jwst_paths", "load_jwst_pair"]

DATA_DIR = Path(__file__).parent / "data"
_JWST = {
    "template": "jw01324001001-01324-o001_t001_nircam_clear-f200w_i2d_stamp",  # MJD 59759
    "science": "jw02561001002-02561-o001_t003_nircam_clear-f200w_i2d_stamp",  # MJD 59885
}


def decam_paths() -> dict[str, list[Path]]:
    """``{"OBS04": [5 paths], "OBS18": [5 paths]}``: the two epochs of the DECam HiTS field."""
    d = DATA_DIR / "decam-hits-n6"
    return {g: sorted(d.glob(f"DEC-{g}?.mini.fits")) for g in ("OBS04", "OBS18")}


def load_decam(psf_size: int = 31, psf_method: str = "auto") -> dict[str, list[Exposure]]:
    """Both DECam epochs as Exposures with estimated variance, SAT/NO_DATA masks and measured
    PSFs (:func:`toolkit.real_data.load_image`); fluxes are as in the files (see
    :func:`toolkit.real_data.photometric_scales` to put them on one scale)."""
    from .real_data import load_image

    return {g: [load_image(p, psf_size=psf_size, psf_method=psf_method) for p in paths] for g, paths in decam_paths().items()}


def jwst_paths() -> dict[str, dict[str, Path]]:
    """``{"science"|"template": {"image", "noise", "psf"}}`` of the JWST pair."""
    d = DATA_DIR / "jwst-nircam-f200w"
    return {role: {"image": d / f"{stem}.fits", "noise": d / f"{stem}.noise.fits", "psf": d / f"{stem}.WebbPSF.fits"} for role, stem in _JWST.items()}


def load_jwst_pair(psf_size: int = 101) -> tuple[Exposure, Exposure]:
    """``(science, template)``: the later and earlier NIRCam F200W epochs, variance from their
    ``ERR`` maps, PSFs from their WebbPSF models cropped to ``psf_size`` (odd)."""
    from .real_data import load_image

    paths = jwst_paths()
    out = []
    for role in ("science", "template"):
        p = paths[role]
        out.append(load_image(p["image"], noise=p["noise"], noise_kind="sigma", psf=p["psf"], psf_size=psf_size))
    return out[0], out[1]
