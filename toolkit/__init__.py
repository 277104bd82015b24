"""diffstack's engine: LSST CompareWarp coadds and ZOGY image subtraction in numpy/scipy/astropy.

No UI imports here; the widgets live in the ``widgets`` package.
"""

from .errors import ConfigError, DiffstackError, FitsReadError, InputError
from .exposure import Exposure
from .geom import Box
from .masks import DEFAULT_MASK_PLANES, MaskPlanes
from .psf import CoaddPsf, DoubleGaussianPsf, GaussianPsf, ImagePsf, VaryingGaussianPsf

__version__ = "0.1.0"

__all__ = [
    "Box",
    "CoaddPsf",
    "ConfigError",
    "DEFAULT_MASK_PLANES",
    "DiffstackError",
    "DoubleGaussianPsf",
    "Exposure",
    "FitsReadError",
    "GaussianPsf",
    "ImagePsf",
    "InputError",
    "MaskPlanes",
    "VaryingGaussianPsf",
    "__version__",
]
