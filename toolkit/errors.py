"""Exception types raised by diffstack.

Every error that bad user input can trigger is one of these, with a message that names the
offending argument, so that a notebook user never sees a traceback from deep inside numpy.
"""

from __future__ import annotations

__all__ = ["DiffstackError", "InputError", "ConfigError", "FitsReadError"]


class DiffstackError(Exception):
    """Base class of all diffstack errors."""


class InputError(DiffstackError, ValueError):
    """An input array, exposure, PSF or file has the wrong shape, dtype or content."""


class ConfigError(DiffstackError, ValueError):
    """A configuration value is out of range, of the wrong type, or inconsistent."""


class FitsReadError(DiffstackError, OSError):
    """A file could not be read as the FITS layout that was asked for."""
