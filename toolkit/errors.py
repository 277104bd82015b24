"""Exception types raised by diffstack.

Every error that bad user input can trigger is one of these, with a message that names the
offending argument, so that a notebook user never sees a traceback from deep inside numpy.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DiffstackError", "InputError", "ConfigError", "FitsReadError", "collect_warnings"]


class DiffstackError(Exception):
    """Base class of all diffstack errors."""


class InputError(DiffstackError, ValueError):
    """An input array, exposure, PSF or file has the wrong shape, dtype or content."""


class ConfigError(DiffstackError, ValueError):
    """A configuration value is out of range, of the wrong type, or inconsistent."""


class FitsReadError(DiffstackError, OSError):
    """A file could not be read as the FITS layout that was asked for."""


# Where the standard library's frames come from (runpy, threading), and the site folders in it.
_STDLIB = ("<frozen", sysconfig.get_paths()["stdlib"] + os.sep)
_SITE = tuple({sysconfig.get_paths()[k] + os.sep for k in ("purelib", "platlib")})


def _in_stdlib(filename: str) -> bool:
    return filename.startswith(_STDLIB) and not filename.startswith(_SITE)


# The folders of diffstack's own code: a warning is attributed to the first caller outside them.
_OWN_DIRS = tuple({str(root / d) + os.sep for root in (Path(__file__).parent.parent, Path(__file__).resolve().parent.parent) for d in ("toolkit", "widgets")})


_collectors: list[list[str]] = []
_collect_lock = threading.Lock()


@contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """The messages (``"Category: message"``) of the warnings diffstack gives while the block
    runs, in any thread; they are also given as usual.

    Why not ``warnings.catch_warnings(record=True)``: that swaps the warnings module's global
    filters and ``showwarning``, which is unsafe while another thread does the same (a model
    computing in the background while a plot is drawn); this list only sees diffstack's own
    warnings, and changes nothing else.
    """
    got: list[str] = []
    with _collect_lock:
        _collectors.append(got)
    try:
        yield got
    finally:
        with _collect_lock:
            # by identity: two empty lists compare equal
            del _collectors[next(i for i, c in enumerate(_collectors) if c is got)]


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the user's line: the first frame outside diffstack.

    Why not a fixed ``stacklevel``: the same check runs behind different depths of diffstack
    calls (a pipeline's cached stages, a model, the CLI), so a fixed level points at a line
    inside diffstack (``value = compute()``), where a notebook user can do nothing with it;
    and Python's once-per-location filter then merges unrelated calls.  (Python 3.12's
    ``skip_file_prefixes`` does this; 3.11 is supported.)  A widget's callback has no user
    line above it at all: the models keep their warnings for the explorers to show
    (:func:`collect_warnings`).
    """
    frame = sys._getframe(1)
    level = 2  # warnings.warn's level of this function's caller
    while frame is not None and frame.f_code.co_filename.startswith(_OWN_DIRS):
        frame = frame.f_back
        level += 1
    if frame is None or _in_stdlib(frame.f_code.co_filename):
        # no user line above: the CLI run by ``python -m`` (runpy) or a worker thread's
        # step (threading): diffstack's own last line says more than the standard library's
        level -= 1
    with _collect_lock:
        for c in _collectors:
            c.append(f"{category.__name__}: {message}")
    warnings.warn(message, category, stacklevel=level)
