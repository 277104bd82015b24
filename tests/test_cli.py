import shutil
import subprocess
import sys

import numpy as np

from toolkit.cli import main
from toolkit.io import read_exposure


def test_simulate_writes_readable_dataset(tmp_path):
    assert main(["simulate", "--kind", "stack", "--size", "64", "--epochs", "3", "--seed", "1", "--out", str(tmp_path / "s")]) == 0
    warps = sorted((tmp_path / "s").glob("direct_warp_*.fits"))
    assert len(warps) == 3
    e = read_exposure(warps[0])
    assert e.shape == (64, 64) and e.psf is not None and e.metadata["BUNIT"] == "nJy"
    assert main(["simulate", "--kind", "pair", "--size", "128", "--out", str(tmp_path / "p")]) == 0
    assert read_exposure(tmp_path / "p" / "science.fits").photo_calib != 1.0


def test_console_script_installed(tmp_path):
    exe = shutil.which("diffstack") or str(__import__("pathlib").Path(sys.executable).parent / "diffstack")
    r = subprocess.run([exe, "simulate", "--size", "48", "--epochs", "2", "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert np.isfinite(read_exposure(tmp_path / "direct_warp_000.fits").image).any()


def test_bad_input_one_line_error(tmp_path, capsys):
    assert main(["simulate", "--size", "8", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and "size must be at least" in err[-1]
