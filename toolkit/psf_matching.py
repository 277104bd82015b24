"""PSF matching of a warp to a model PSF (LSST's PSF-matched warps).

LSST fits an Alard-Lupton kernel basis (``ModelPsfMatchTask``).  Here the matching kernel is
solved directly in Fourier space with a small Tikhonov (Wiener) regularisation,
``K^ = conj(P_in^) P_t^ / (|P_in^|^2 + lambda max|P_in^|^2)``, against the *untruncated* target
model rendered on the full FFT grid, then cropped to ``kernel_size`` and normalised to unit sum.
This reproduces the target to ~1e-4 of its peak for a well-sampled input without the fitting
machinery; a narrower target than the input (a deconvolution) is allowed but warned about.

When the input PSF varies across the exposure the kernel varies too, as LSST models it: each
kernel pixel is a Chebyshev polynomial (total degree 2 by default) in x and y fitted to kernels
solved on a grid of cells (:func:`spatial_matching_kernel`).

The image is convolved with ``K``, the variance with ``K**2`` (exact for independent pixels),
and each mask plane is OR-dilated over the kernel's core footprint (the bounding box of
``|K| >= core_threshold * max|K|``).  Pixels whose core footprint reaches a NaN/NO_DATA pixel or
the image edge become NO_DATA with a NaN image and infinite variance, which is the
"convolution is incomplete" border LSST's PSF-matched warps carry.  With ``array_edge="EDGE"``
the array's own edge is treated as the edge of a cutout instead: the planes are mirrored beyond
it, and the frame keeps its values with the EDGE bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence



import numba as nb
import numpy as np
import scipy.fft as sfft

from .errors import InputError, warn
from .exposure import Exposure
from .parallel import fft_workers, map_bands, map_row_blocks, one_blas_thread, worker_scratch
from .psf import Psf, DoubleGaussianPsf
from .stats import median_masked, native

__all__ = ["matching_kernel", "spatial_matching_kernel", "SpatialKernel", "match_to_psf", "auto_kernel_size", "fft_convolve", "PsfMatchingWarning"]


class PsfMatchingWarning(UserWarning):
    """The target PSF is narrower than the input PSF: matching is a deconvolution."""


def auto_kernel_size(target: Psf, tail: float = 1e-5) -> int:
    """Smallest odd box holding all but ``tail`` of the (untruncated) target PSF's flux."""
    big = 8 * target.size + 1
    img = target.compute_kernel_image(size=big)
    c = big // 2
    # cumulative flux in centred boxes of half-width h
    csum = img.cumsum(0).cumsum(1)

    def box(h: int) -> float:
        y0, y1, x0, x1 = c - h - 1, c + h, c - h - 1, c + h
        s = csum[y1, x1]
        if y0 >= 0:
            s -= csum[y0, x1]
        if x0 >= 0:
            s -= csum[y1, x0]
        if y0 >= 0 and x0 >= 0:
            s += csum[y0, x0]
        return s

    for h in range(target.size // 2, c):
        if 1.0 - box(h) <= tail:
            return 2 * h + 1
    return big


def _embed_origin(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Zero-pad a centred odd stamp to ``shape`` with its centre pixel at index (0, 0)."""
    z = np.zeros(shape)
    ny, nx = a.shape
    z[:ny, :nx] = a
    return np.roll(z, (-(ny // 2), -(nx // 2)), (0, 1))


def matching_kernel(
    input_psf: Psf,
    target_psf: Psf,
    kernel_size: int | None = None,
    position: tuple[float, float] | None = None,
    regularization: float = 1e-12,
) -> np.ndarray:
    """Kernel ``K`` (odd square, unit sum) such that ``input_psf (*) K ~= target_psf``.

    Parameters
    ----------
    input_psf, target_psf : Psf
    kernel_size : int, optional
        Odd kernel size; default :func:`auto_kernel_size` of the target.
    position : (x, y), optional
        Where to evaluate spatially varying PSFs.
    regularization : float
        Tikhonov term relative to ``max |P_in^|^2``.
    """
    ks = auto_kernel_size(target_psf) if kernel_size is None else int(kernel_size)
    if ks < 1 or ks % 2 == 0:
        raise InputError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    return _solve_kernels(input_psf, target_psf, ks, [position], regularization)[0]


def _solve_kernels(input_psf: Psf, target_psf: Psf, ks: int, positions: Sequence, regularization: float) -> np.ndarray:
    """:func:`matching_kernel` at each of ``positions`` (None: the PSFs' default), as one
    batch of transforms: ``(len(positions), ks, ks)``."""
    m = sfft.next_fast_len(2 * max(ks, input_psf.size, target_psf.size) + 1, real=True)
    n = m - 1 if m % 2 == 0 else m
    p_in = np.stack([_embed_origin(input_psf.compute_kernel_image(pos, size=n), (m, m)) for pos in positions])
    p_t = np.stack([_embed_origin(target_psf.compute_kernel_image(pos, size=n), (m, m)) for pos in positions])
    fi = sfft.rfft2(p_in)
    ft = sfft.rfft2(p_t)
    peak = np.abs(fi).max(axis=(1, 2), keepdims=True)
    k_hat = np.conj(fi) * ft / (np.abs(fi) ** 2 + regularization * peak**2)
    k = sfft.irfft2(k_hat, s=(m, m))
    k = np.roll(k, (ks // 2, ks // 2), (1, 2))[:, :ks, :ks]
    return k / k.sum(axis=(1, 2), keepdims=True)


class SpatialKernel:
    """A matching kernel that varies across the image as LSST's ``ModelPsfMatchTask`` models
    it: every kernel pixel a Chebyshev polynomial (of the first kind, total degree
    ``order``) in x and y, each mapped to [-1, 1] over the image's box, fitted by least
    squares to kernels solved at the centres of a grid of cells (LSST: ``sizeCellX`` =
    ``sizeCellY`` = 128, ``spatialKernelOrder`` = 2).

    The kernel at ``(x, y)`` is ``sum_t B_t(x, y) kernels[t]``; its sum is 1 everywhere,
    because each node's kernel sums to 1 and the constant is in the basis.  ``squares`` are
    the same fit of the nodes' squared kernels, for the variance plane.

    Parameters
    ----------
    terms : list of (int, int)
        The (x degree, y degree) of each basis function ``T_i(x) T_j(y)``.
    kernels, squares : ndarray, shape (n_terms, ks, ks)
        Coefficient kernels of K and of K**2.
    bbox : Box
        The parent-frame box the polynomials are mapped over.
    nodes : ndarray, shape (n_nodes, 2)
        The (x, y) positions the kernels were solved at.
    """

    def __init__(self, terms: list[tuple[int, int]], kernels: np.ndarray, squares: np.ndarray, bbox, nodes: np.ndarray) -> None:
        self.terms, self.kernels, self.squares, self.bbox, self.nodes = terms, kernels, squares, bbox, nodes

    @staticmethod
    def _chebyshev(coord: np.ndarray, lo: float, hi: float, degree: int) -> np.ndarray:
        """T_0..T_degree of ``coord`` mapped from [lo, hi] to [-1, 1] (LSST's chebyshev1)."""
        u = 2.0 * (np.asarray(coord, np.float64) - lo) / (hi - lo) - 1.0 if hi > lo else np.zeros(np.shape(coord))
        t = np.empty((degree + 1,) + u.shape)
        t[0] = 1.0
        if degree >= 1:
            t[1] = u
        for k in range(2, degree + 1):
            t[k] = 2.0 * u * t[k - 1] - t[k - 2]
        return t

    def axis_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-column and per-row Chebyshev factors over the box: ``(tx (deg+1, width),
        ty (deg+1, height))``, so ``B_t = ty[j][:, None] * tx[i][None, :]``."""
        b = self.bbox
        deg = max(max(i, j) for i, j in self.terms)
        tx = self._chebyshev(np.arange(b.x0, b.x1), b.x0, b.x1 - 1, deg)
        ty = self._chebyshev(np.arange(b.y0, b.y1), b.y0, b.y1 - 1, deg)
        return tx, ty

    @classmethod
    def basis(cls, terms: list[tuple[int, int]], bbox, x, y) -> np.ndarray:
        """The basis functions ``T_i(x) T_j(y)`` of ``terms`` at ``(x, y)``, mapped over ``bbox``."""
        deg = max(max(i, j) for i, j in terms)
        tx = cls._chebyshev(x, bbox.x0, bbox.x1 - 1, deg)
        ty = cls._chebyshev(y, bbox.y0, bbox.y1 - 1, deg)
        return np.array([tx[i] * ty[j] for i, j in terms])

    def _basis_at(self, x, y) -> np.ndarray:
        return self.basis(self.terms, self.bbox, x, y)

    def kernel_at(self, x: float, y: float) -> np.ndarray:
        """The model's kernel at parent-frame pixel ``(x, y)``."""
        return np.tensordot(self._basis_at(x, y), self.kernels, axes=1)

    def square_at(self, x: float, y: float) -> np.ndarray:
        """The model of the squared kernel at ``(x, y)`` (what the variance is convolved with)."""
        return np.tensordot(self._basis_at(x, y), self.squares, axes=1)


def spatial_matching_kernel(
    input_psf: Psf,
    target_psf: Psf,
    bbox,
    kernel_size: int | None = None,
    regularization: float = 1e-12,
    order: int = 2,
    cell_size: int = 128,
    max_cells: int = 8,
) -> SpatialKernel | None:
    """LSST ``ModelPsfMatchTask``'s spatially varying kernel: :func:`matching_kernel` solved at
    the centre of each ``cell_size`` cell of ``bbox`` and each kernel pixel fitted with a
    Chebyshev polynomial of total degree ``order`` (:class:`SpatialKernel`).

    Returns None when neither PSF varies over the cells' centres (their kernel images are
    identical there), so a constant PSF keeps its single kernel.

    Why only ``max_cells`` per axis: LSST uses every 128-px cell (32 x 32 for a 4k patch) with
    one PSF realisation each; a second-order polynomial fitted to 8 x 8 equal cells of the box
    is the same to well below the model's own error, at a sixteenth of the kernel solves.  A box with fewer
    than ``order + 1`` cells along an axis gets the degree that axis can support.
    """
    if int(order) != order or order < 0:
        raise InputError(f"the spatial kernel order must be an integer >= 0, got {order!r}")
    if int(cell_size) != cell_size or cell_size < 1:
        raise InputError(f"cell_size must be a positive integer, got {cell_size!r}")
    order = int(order)
    if input_psf.constant and target_psf.constant:
        return None
    ncx = min(max_cells, max(1, bbox.width // int(cell_size)))
    ncy = min(max_cells, max(1, bbox.height // int(cell_size)))
    if order == 0 or ncx * ncy == 1:
        return None
    # the centres of equal cells covering the box (LSST's 128-px cells up to 8 per axis)
    xs = bbox.x0 + (np.arange(ncx) + 0.5) * bbox.width / ncx - 0.5
    ys = bbox.y0 + (np.arange(ncy) + 0.5) * bbox.height / ncy - 0.5
    nodes = np.array([(x, y) for y in ys for x in xs])
    ks = auto_kernel_size(target_psf) if kernel_size is None else int(kernel_size)
    n = max(ks, input_psf.size, target_psf.size)
    n += 1 - n % 2
    ref_in = input_psf.compute_kernel_image(bbox.center, size=n)
    ref_t = target_psf.compute_kernel_image(bbox.center, size=n)
    varies = False
    for pos in nodes:
        if not (np.array_equal(input_psf.compute_kernel_image(tuple(pos), size=n), ref_in) and np.array_equal(target_psf.compute_kernel_image(tuple(pos), size=n), ref_t)):
            varies = True
            break
    if not varies:
        return None
    terms = [(i, s - i) for s in range(order + 1) for i in range(s, -1, -1) if i < ncx and s - i < ncy]
    k = _solve_kernels(input_psf, target_psf, ks, [tuple(pos) for pos in nodes], regularization)
    a = np.stack([SpatialKernel.basis(terms, bbox, x, y) for x, y in nodes])  # (n_nodes, n_terms)
    flat = k.reshape(len(nodes), -1)
    with one_blas_thread():  # LAPACK's threads would spin beside the epochs' threads
        coef, *_ = np.linalg.lstsq(a, np.concatenate([flat, flat * flat], axis=1), rcond=None)
    half = flat.shape[1]
    return SpatialKernel(terms, coef[:, :half].reshape(len(terms), ks, ks), coef[:, half:].reshape(len(terms), ks, ks), bbox, nodes)


def _irfft2(x: np.ndarray, shape: tuple[int, int], overwrite: bool = False, workers: int | None = -1) -> np.ndarray:
    """Inverse of ``rfft2`` over the last two axes.

    Why by hand: scipy's ``irfft2`` takes ~1.6-2x as long as a column ``ifft`` followed by a
    row ``irfft`` (40 against 24 ms at 2080^2 float32 on one core, 18 against 9 ms at 2160^2
    on two), with the same result to float round-off.
    """
    if workers is None or workers < 0:
        workers = fft_workers(x.size)  # every core (or DIFFSTACK_THREADS), one for a small cell
    y = sfft.ifft(x, axis=-2, workers=workers, overwrite_x=overwrite)
    return sfft.irfft(y, n=shape[1], axis=-1, workers=workers)


def _irfft2_into(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """:func:`_irfft2` of a 2-D half spectrum into an existing real array (``x`` is overwritten).

    Why: a new output plane costs its page faults, ~15-20 ms per 2160^2 float32 plane on this
    kind of machine, as much as the transform; ZOGY writes its outputs over the padded inputs,
    which are dead by then.  The row transforms use numpy's ``irfft(out=)`` on blocks of rows on
    two threads (it releases the GIL); the values are those of :func:`_irfft2`.
    """
    y = sfft.ifft(x, axis=-2, workers=fft_workers(x.size), overwrite_x=True)
    ny, nx = out.shape
    map_row_blocks(lambda sl: np.fft.irfft(y[sl], n=nx, axis=-1, out=out[sl]), ny)
    return out


try:  # scipy's pocketfft binding: its r2c/c2r take an output array (scipy.fft's wrappers do not)
    from scipy.fft._pocketfft import pypocketfft as _pocketfft
except ImportError:  # pragma: no cover - a scipy without it takes the blocked copy below
    _pocketfft = None


def _fft_cols(x: np.ndarray, inverse: bool = False) -> None:
    """Column transform (axis -2) of a complex array, in place (the inverse 1/n-normalised, as
    scipy's ``ifft``).  Straight through pocketfft's binding where scipy has it: scipy.fft's
    dispatch costs ~10-15 us a call, and the ZOGY band pass makes ~700 of them at 2048^2 while
    holding the GIL; otherwise through scipy, which writes into an aligned complex input when
    allowed to overwrite it (a strided band of a plane included)."""
    if _pocketfft is not None and x.dtype in (np.complex64, np.complex128):
        _pocketfft.c2c(x, (x.ndim - 2,), not inverse, 2 if inverse else 0, x, 1)
        return
    r = (sfft.ifft if inverse else sfft.fft)(x, axis=-2, overwrite_x=True, workers=1)
    if r.ctypes.data != x.ctypes.data or r.strides != x.strides:
        x[...] = r


def _fft_cols_into(src: np.ndarray, dst: np.ndarray) -> None:
    """Forward column transform (axis -2) of ``src`` written into ``dst`` (same shape, no
    overlap), ``src`` untouched.  For the stamps' spectra: their input bands stay zero outside
    the stamps' rows from band to band, so nothing is re-zeroed before each transform."""
    if _pocketfft is not None:
        _pocketfft.c2c(src, (src.ndim - 2,), True, 0, dst, 1)
    else:  # a scipy without the binding (tests mimic one)
        dst[...] = sfft.fft(src, axis=-2, workers=1)


def _rows_in_place(wide: np.ndarray, nx: int, inverse: bool, threads: int = 2) -> None:
    """Row rfft of the left ``nx`` floats of each row of ``wide``, written over the row as its
    half spectrum (or, ``inverse``, the 1/n-normalised irfft back), on ``threads`` threads.

    Why by hand: scipy.fft returns new arrays, whose pages cost as much as the transform;
    pocketfft itself writes into a given array, and each row's output overlaps only its own
    input, which it has read by then.  Without that binding, blocks of rows are transformed
    into small temporaries and copied back (the same values).
    """
    cdt = np.complex64 if wide.dtype == np.float32 else np.complex128
    c = wide.view(cdt)
    r = wide[:, :nx]
    threads = min(threads, fft_workers(wide.size))
    if _pocketfft is not None:
        out = _pocketfft.c2r(c, (1,), nx, False, 2, r, threads) if inverse else _pocketfft.r2c(r, (1,), True, 0, c, threads)
        if out.ctypes.data == (r if inverse else c).ctypes.data:
            return
        raise RuntimeError("pocketfft did not transform in place")  # pragma: no cover

    def blocks(sl: slice) -> None:  # pragma: no cover - see above
        for r0 in range(sl.start, sl.stop, 32):
            blk = slice(r0, min(r0 + 32, sl.stop))
            if inverse:
                r[blk] = sfft.irfft(c[blk], n=nx, axis=-1, workers=1)
            else:
                c[blk] = sfft.rfft(r[blk], axis=-1, workers=1)

    if threads > 1:
        map_row_blocks(blocks, wide.shape[0])
    else:
        blocks(slice(0, wide.shape[0]))


_CONV_BAND = 64  # complex columns per band of the kernel product: ~1 MB of kernel spectrum at 2160 rows


def _conv_shape(image_shape: tuple[int, int], kernel_shape: tuple[int, int]) -> tuple[int, int]:
    """The FFT-friendly cell of a linear (zero-padded) convolution."""
    return (sfft.next_fast_len(image_shape[0] + kernel_shape[0] - 1, real=True), sfft.next_fast_len(image_shape[1] + kernel_shape[1] - 1, real=True))


def _conv_buffer(cell: tuple[int, int], dtype) -> np.ndarray:
    """A (sy, 2 (sx // 2 + 1)) work array: each row's half spectrum fits in place."""
    return np.empty((cell[0], 2 * (cell[1] // 2 + 1)), dtype)


def _scratch_buffer(cell: tuple[int, int], dtype) -> np.ndarray:
    """A :func:`_conv_buffer` for work that is copied out before its next use: a worker
    thread's own (:func:`~toolkit.parallel.worker_scratch`), so ten warps matched on two
    threads fault in two work planes, not ten."""
    return worker_scratch("convolution", (cell[0], 2 * (cell[1] // 2 + 1)), dtype)


def _load(buf: np.ndarray, cell: tuple[int, int], image: np.ndarray) -> np.ndarray:
    """``image`` into the top-left of the cell in ``buf``, zeros in the rest of the cell;
    returns the image's view in ``buf`` (to be edited further before the transform)."""
    ny, nx = image.shape
    sy, sx = cell
    buf[:ny, :nx] = image
    buf[:ny, nx:sx] = 0
    buf[ny:sy, :sx] = 0
    return buf[:ny, :nx]


def _convolve_loaded(buf: np.ndarray, cell: tuple[int, int], kernel: np.ndarray, workers: int | None) -> None:
    """Circular convolution over ``cell`` of what :func:`_load` put in ``buf`` with ``kernel``
    (its [0, 0] at the cell's origin), in place.

    The rows are transformed in place (:func:`_rows_in_place`); then, band of columns by band,
    the column transforms, the kernel's column spectrum (made from its few transformed rows),
    the product and the inverse column transforms, while the band is in cache; then the rows
    back.  Why by hand: ``rfft2``/``irfft2`` return new planes, and the kernel's spectrum was a
    third; at 2160^2 those are 56 MB of fresh pages per convolution, which cost as much as the
    transforms on this kind of machine.  The values are those of ``irfft2(rfft2(a) rfft2(k))``.
    """
    sx = cell[1]
    threads = 2 if workers is None or workers < 0 or workers > 1 else 1
    _rows_in_place(buf, sx, False, threads)
    c = buf.view(np.complex64 if buf.dtype == np.float32 else np.complex128)
    _kernel_product_bands(c, None, kernel, cell, threads)
    _rows_in_place(buf, sx, True, threads)


def _kernel_product_bands(dst: np.ndarray, src: np.ndarray | None, kernel: np.ndarray, cell: tuple[int, int], threads: int) -> None:
    """Band of columns by band, ``dst <- ifft_cols(S fft_cols(kernel rows))`` with S the
    column transform of ``dst``'s row spectra (``src`` None: in place) or the full spectrum
    ``src``: the kernel's column spectrum is made from its few transformed rows per band."""
    sy, sx = cell
    ky = kernel.shape[0]
    cdt = dst.dtype
    krows = sfft.rfft(kernel.astype(dst.real.dtype), n=sx, axis=1)

    def run(group: Iterable[slice]) -> None:
        K_in = np.zeros((sy, _CONV_BAND), cdt)  # zero below the kernel's rows, band after band
        K = np.empty((sy, _CONV_BAND), cdt)
        for cols in group:
            w = cols.stop - cols.start
            K_in[:ky, :w] = krows[:, cols]
            k = K[:, :w]
            _fft_cols_into(K_in[:, :w], k)
            band = dst[:, cols]
            if src is None:
                _fft_cols(band)
                band *= k
            else:
                np.multiply(src[:, cols], k, out=band)
            _fft_cols(band, inverse=True)

    map_bands(run, sx // 2 + 1, _CONV_BAND, threads)


@nb.njit(cache=True, nogil=True)
def _add_term(acc, part, wx, wy, first):  # pragma: no cover - compiled
    """acc (=, or +=) part * wy[:, None] * wx[None, :] in one pass (numpy: two temporaries)."""
    for y in range(acc.shape[0]):
        a = acc[y]
        p = part[y]
        f = wy[y]
        if first:
            for x in range(a.size):
                a[x] = p[x] * wx[x] * f
        else:
            for x in range(a.size):
                a[x] += p[x] * wx[x] * f


def _convolve_loaded_terms(buf: np.ndarray, cell: tuple[int, int], kernels: Sequence[np.ndarray], emit, workers: int | None) -> None:
    """What :func:`_convolve_loaded` does, for several kernels of one plane: the plane's
    spectrum is made once, in place in ``buf``, and for each kernel its product with the
    kernel's spectrum is transformed back in a second work plane, which ``emit(t, plane)``
    reads before the next kernel overwrites it.  The values are those of
    :func:`_convolve_loaded` with each kernel; the forward transform is shared (a spatially
    varying kernel's six terms cost about four convolutions instead of six)."""
    sx = cell[1]
    threads = 2 if workers is None or workers < 0 or workers > 1 else 1
    cdt = np.complex64 if buf.dtype == np.float32 else np.complex128
    c = buf.view(cdt)
    _rows_in_place(buf, sx, False, threads)

    def forward(group: Iterable[slice]) -> None:
        for cols in group:
            _fft_cols(c[:, cols])

    map_bands(forward, sx // 2 + 1, _CONV_BAND, threads)
    # a second work plane of its own (``buf`` may be this thread's convolution scratch)
    work = worker_scratch("convolution terms", buf.shape, buf.dtype)
    w_c = work.view(cdt)
    for t, kernel in enumerate(kernels):
        _kernel_product_bands(w_c, c, kernel, cell, threads)
        _rows_in_place(work, sx, True, threads)
        emit(t, work)


def _convolved_mirrored(plane: np.ndarray, kernel: np.ndarray, dtype, workers: int | None) -> np.ndarray:
    """``plane`` convolved with an odd ``kernel`` as if it went on beyond its edges as its own
    mirror image (``numpy.pad(mode="symmetric")`` by the kernel's half-width), same shape."""
    buf, cell, (oy, ox) = _load_mirrored(plane, kernel.shape)
    _convolve_loaded(buf, cell, kernel, workers)
    ny, nx = plane.shape
    return np.array(buf[oy : oy + ny, ox : ox + nx], dtype=dtype)


def _load_mirrored(plane: np.ndarray, kernel_shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """``plane`` padded by the kernel's half-widths with its mirror image, loaded into a new
    work buffer: ``(buf, cell, (oy, ox))``, the same-size result then at ``[oy:, ox:]``."""
    py, px = kernel_shape[0] // 2, kernel_shape[1] // 2
    ext = np.pad(plane, ((py, py), (px, px)), mode="symmetric")
    cell = _conv_shape(ext.shape, kernel_shape)
    buf = _conv_buffer(cell, ext.dtype)
    _load(buf, cell, ext)
    return buf, cell, (2 * py, 2 * px)


def _cropped(buf: np.ndarray, image_shape: tuple[int, int], kernel_shape: tuple[int, int], dtype) -> np.ndarray:
    """The same-size part of the linear convolution in ``buf``, as a new contiguous array."""
    ky, kx = kernel_shape
    return np.array(buf[ky // 2 : ky // 2 + image_shape[0], kx // 2 : kx // 2 + image_shape[1]], dtype=dtype)


def fft_convolve(image: np.ndarray, kernel: np.ndarray, workers: int | None = -1) -> np.ndarray:
    """Convolve ``image`` with an odd ``kernel`` (output same shape; zeros outside the image).

    scipy.signal.fftconvolve would do, but this keeps float32 inputs in float32 transforms,
    uses two cores through ``workers`` and allocates one work plane (see
    :func:`_convolve_loaded`).
    """
    image, kernel = np.asarray(image), np.asarray(kernel)
    for name, a in (("image", image), ("kernel", kernel)):
        if a.ndim != 2 or a.dtype.kind not in "fiu" or a.size == 0:
            raise InputError(f"fft_convolve: the {name} must be a non-empty 2-D real array, got shape {a.shape} and dtype {a.dtype}")
    if not np.isfinite(kernel).all():
        raise InputError("fft_convolve: the kernel has NaN or infinite values")
    dtype = np.float32 if image.dtype == np.float32 else np.float64
    cell = _conv_shape(image.shape, kernel.shape)
    buf = _scratch_buffer(cell, dtype)
    _load(buf, cell, image)
    _convolve_loaded(buf, cell, kernel, workers)
    return _cropped(buf, image.shape, kernel.shape, image.dtype)


def or_box(mask: np.ndarray, h: int, outside: int = 0) -> np.ndarray:
    """Bitwise OR of ``mask`` over the (2h+1)^2 box around each pixel; ``outside`` beyond the edges.

    This is what afw's convolution does to a mask plane.  ``ndimage.maximum_filter`` would need
    one pass per bit plane; here every plane grows at once, in one compiled pass
    (:func:`_or_box_rows`): each row is ORed along x by doubling spans in a small buffer, kept in
    a ring of the last 2h+1 such rows, and each output row is the OR of the ring.  Why by hand:
    the numpy version (shifted slices of the whole plane) made five new planes per call, whose
    fresh pages cost more than the ORs.
    """
    mask = native(np.ascontiguousarray(mask))
    h = int(h)
    if h <= 0:
        return mask.copy()
    out = np.empty_like(mask)
    if mask.size:
        _or_box_rows(mask, h, mask.dtype.type(outside), out)
    return out


@nb.njit(cache=True, nogil=True)
def _or_pair(x, y, out):  # pragma: no cover - compiled
    # out = x | y over equal-length 1-D views.  Why a function of views: indexed by the loop
    # counter alone the loop vectorises; an index like i + span (which numba must check for
    # wraparound) kept it scalar, ~5x slower
    for i in range(out.size):
        out[i] = x[i] | y[i]


@nb.njit(cache=True, nogil=True)
def _or_row(row, h, outside, buf, tmp, dst):  # pragma: no cover - compiled
    # dst[x] = OR of ``row`` over [x - h, x + h], ``outside`` beyond its ends: spans that double,
    # ping-ponged between two buffers
    nx = row.size
    w = 2 * h + 1
    n = nx + 2 * h
    buf[:h] = outside
    buf[n - h:] = outside
    buf[h:h + nx] = row
    span = 1
    src, nxt = buf, tmp
    while 2 * span <= w:  # nxt[i] = OR over [i, i + 2 span)
        _or_pair(src[:n - span], src[span:n], nxt[:n - span])
        src, nxt = nxt, src
        span *= 2
    _or_pair(src[:nx], src[w - span:w - span + nx], dst)


@nb.njit(cache=True, nogil=True)
def _or_box_rows(a, h, outside, out):  # pragma: no cover - compiled
    ny, nx = a.shape
    w = 2 * h + 1
    buf = np.empty(nx + 2 * h, a.dtype)
    tmp = np.empty(nx + 2 * h, a.dtype)
    ring = np.empty((w, nx), a.dtype)  # x-ORed rows y - h .. y + h, row r in slot (r + h) % w
    acc = np.empty((2, nx), a.dtype)  # ping-pong: an OR written over its own input stays scalar
    for r in range(-h, ny + h):
        slot = (r + h) % w
        if 0 <= r < ny:
            _or_row(a[r], h, outside, buf, tmp, ring[slot])
        else:
            ring[slot, :] = outside
        y = r - h  # the ring now holds rows y - h .. y + h
        if y >= 0:
            _or_pair(ring[0], ring[1], acc[0])
            for k in range(2, w - 1):
                _or_pair(acc[k % 2], ring[k], acc[1 - k % 2])
            _or_pair(acc[(w - 1) % 2], ring[w - 1], out[y])


@nb.njit(cache=True, nogil=True)
def _finish_matched(img, var, mask, no_data, h, incomplete, use_plane):  # pragma: no cover - compiled
    """In place, one pass: the variance's FFT round-off below zero clipped to 0 (a variance of
    a convolution is a sum of non-negative terms), and where the convolution was incomplete
    (``incomplete`` if ``use_plane``, else the grown NO_DATA bit or the frame within ``h`` of
    the edge) NaN image, inf variance and NO_DATA; numpy took six passes and two temporaries."""
    ny, nx = img.shape
    nan = img.dtype.type(np.nan)
    inf = var.dtype.type(np.inf)
    zero = var.dtype.type(0.0)
    for y in range(ny):
        edge_row = y < h or y >= ny - h
        ir = img[y]
        vr = var[y]
        mr = mask[y]
        for x in range(nx):
            v = vr[x]
            if v < zero:
                vr[x] = zero
            if use_plane:
                inc = incomplete[y, x] != 0
            else:
                inc = edge_row or x < h or x >= nx - h or (mr[x] & no_data) != 0
            if inc:
                ir[x] = nan
                vr[x] = inf
                mr[x] |= no_data


@nb.njit(cache=True, nogil=True)
def _unusable(image, variance, mask, no_data):  # pragma: no cover - compiled
    """Pixels a convolution must not use (non-finite image or variance, or NO_DATA), how many,
    and how many of those lack the NO_DATA bit; one pass, where numpy took five."""
    ny, nx = image.shape
    out = np.empty((ny, nx), np.bool_)
    n_bad = 0
    n_unflagged = 0
    for i in range(ny):
        for j in range(nx):
            flagged = (mask[i, j] & no_data) != 0
            b = flagged or not (np.isfinite(image[i, j]) and np.isfinite(variance[i, j]))
            out[i, j] = b
            if b:
                n_bad += 1
                if not flagged:
                    n_unflagged += 1
    return out, n_bad, n_unflagged


def _core_half_width(kernel: np.ndarray, threshold: float) -> int:
    ys, xs = np.nonzero(np.abs(kernel) >= threshold * np.abs(kernel).max())
    c = kernel.shape[0] // 2
    return int(max(np.abs(ys - c).max(), np.abs(xs - c).max()))


def match_to_psf(
    exposure: Exposure,
    target_psf: Psf | None = None,
    kernel_size: int | None = None,
    mask_growth: int | None = 10,
    core_threshold: float = 1e-3,
    regularization: float = 1e-12,
    interpolate_planes: Sequence[str] = ("BAD", "SAT", "CR"),
    workers: int | None = -1,
    array_edge: str = "NO_DATA",
    spatial_order: int = 2,
    cell_size: int = 128,
) -> Exposure:
    """Return a PSF-matched copy of ``exposure`` (the input is not modified).

    Parameters
    ----------
    exposure : Exposure
        A direct warp with a PSF.
    target_psf : Psf, optional
        Default: LSST's model PSF, a double Gaussian of FWHM 7.7 px.
    kernel_size : int, optional
        Odd matching-kernel size; default from the target's flux extent.
    mask_growth : int or None
        Half-width (pixels) of the box over which every mask plane is OR-grown and around
        missing pixels the output is set to NO_DATA.  The default, 10, is what LSST's warps get:
        afw ORs the mask over the whole matching kernel, and ``matchingKernelSize`` is 21 by
        default (HSC and DECam use 29, i.e. 14).  diffstack's own kernel is larger (it matches the
        untruncated model exactly), so its far wings are not allowed to grow masks further.
        ``None`` uses the kernel core instead (``|K| >= core_threshold * max|K|``).
    core_threshold : float
        Defines the kernel core when ``mask_growth`` is None.
    regularization : float
        Tikhonov term of the kernel solution.
    interpolate_planes : sequence of str
        Mask planes whose pixels are replaced by a row-wise linear interpolation *before* the
        convolution (the masks themselves are kept and grown).  LSST's warps come from calexps
        whose defects, saturated cores and cosmic rays were already interpolated by ISR and
        repair (INTRP); raw values there (a hot column, say) would otherwise be spread by the
        kernel's wings far beyond the grown mask.  Pass ``()`` to convolve the pixels as given.
    workers : int or None
        Threads for the FFTs (scipy.fft's ``workers``; -1 = all cores).  Callers that match
        several warps side by side pass 1.
    array_edge : {"NO_DATA", "EDGE"}
        What the frame within the growth half-width of the array's edge becomes.  ``"NO_DATA"``
        (default): the convolution is incomplete there, so NaN image, inf variance and NO_DATA,
        as LSST's PSF-matched warps have at a CCD's edge.  ``"EDGE"``: the planes are extended
        beyond the edge by mirroring them (``numpy.pad(mode="symmetric")``) before the
        convolution, and the frame keeps those values with the EDGE bit.  For a warp cut from a
        larger patch, whose edge is not a CCD's: LSST would have had the data beyond it, and
        CompareWarp treats PSF-matched EDGE pixels as usable but flags the coadd there
        (SENSOR_EDGE | INEXACT_PSF) instead of dropping the direct pixels.  Missing pixels inside
        the array stay NO_DATA either way.
    spatial_order : int
        Total degree of the kernel's spatial variation when the exposure's PSF varies across it
        (LSST ``spatialKernelOrder``, 2): the kernel is solved at the centre of each
        ``cell_size`` cell and fitted per pixel with Chebyshev polynomials
        (:func:`spatial_matching_kernel`), the image is convolved with the local kernel and the
        variance with the same fit of the squared kernels.  A PSF that does not vary (or
        ``spatial_order=0``) gets the single kernel at the centre.  The six terms of order 2
        share one forward transform per plane: about five convolutions' time instead of one.
    cell_size : int
        LSST ``sizeCellX``/``sizeCellY`` (128): the spacing of the kernels the fit is made from
        (at most 8 per axis; see :func:`spatial_matching_kernel`).

    Returns
    -------
    Exposure
        Image convolved with K, variance with K**2, masks OR-grown, NO_DATA (NaN image, inf
        variance) where the convolution is incomplete; ``psf`` is the target, resized to the
        kernel's box when that is larger than the target's default stamp; the metadata key
        ``PSFMATCH`` records the kernel size and core half-width.
    """
    if array_edge not in ("NO_DATA", "EDGE"):
        raise InputError(f"array_edge must be 'NO_DATA' or 'EDGE', got {array_edge!r}")
    if exposure.psf is None:
        raise InputError("PSF matching needs the exposure's PSF (exposure.psf is None)")
    target = DoubleGaussianPsf(7.7) if target_psf is None else target_psf
    if not (0 < core_threshold < 1):
        raise InputError(f"core_threshold must be in (0, 1), got {core_threshold}")
    pos = exposure.bbox.center
    b = exposure.bbox
    # the centre and, for a PSF that may vary, the corners, where it is widest or narrowest
    varies = spatial_order and not (exposure.psf.constant and target.constant)
    where = [pos] + ([(b.x0, b.y0), (b.x1 - 1, b.y0), (b.x0, b.y1 - 1), (b.x1 - 1, b.y1 - 1)] if varies else [])
    radii = [(target.determinant_radius(p), exposure.psf.determinant_radius(p), p) for p in where]
    r_t, r_in, p_worst = min(radii, key=lambda r: r[0] - r[1])
    if r_t < r_in:
        at = "" if p_worst == pos else f" at ({p_worst[0]:g}, {p_worst[1]:g})"
        warn(
            f"target PSF (determinant radius {r_t:.2f} px) is narrower than the input PSF{at} "
            f"({r_in:.2f} px): PSF matching is a deconvolution and amplifies noise; choose a wider "
            "target (LSST recommends the 90th-99th percentile of the seeing)",
            PsfMatchingWarning,
        )
    k = matching_kernel(exposure.psf, target, kernel_size, pos, regularization)
    model = spatial_matching_kernel(exposure.psf, target, exposure.bbox, k.shape[0], regularization, spatial_order, cell_size) if spatial_order else None
    if mask_growth is None:
        h = _core_half_width(k, core_threshold)
    elif int(mask_growth) < 0:
        raise InputError(f"mask_growth must be >= 0, got {mask_growth}")
    else:
        h = int(mask_growth)
    planes = exposure.mask_planes.copy()
    planes.add("NO_DATA")
    no_data = planes.bitmask(["NO_DATA"])
    bad_input, n_bad, n_unflagged = _unusable(exposure.image, exposure.variance, exposure.mask, np.int32(no_data))
    any_bad = n_bad > 0
    # one work plane for both convolutions, filled in place (no zeroed copies of the planes)
    dtype = np.float32 if exposure.dtype == np.float32 else np.float64
    cell = _conv_shape(exposure.shape, k.shape)
    buf = _scratch_buffer(cell, dtype)
    img = _load(buf, cell, exposure.image)
    if any_bad:
        img[bad_input] = 0
    interp_bits = np.int32(planes.bitmask([p for p in interpolate_planes if p in planes], strict=False))
    if interp_bits:
        fix = ((exposure.mask & interp_bits) != 0) & ~bad_input
        if fix.any() and not (fix | bad_input).all():
            from .interp import _interp_rows

            good = ~(fix | bad_input)
            img[...] = _interp_rows(img, ~good, lambda: median_masked(img, ~good))
            img[bad_input] = 0
    extend = array_edge == "EDGE"

    def convolved(plane: np.ndarray, kern: np.ndarray) -> np.ndarray:
        if extend:
            return _convolved_mirrored(plane, kern, exposure.dtype, workers)
        _convolve_loaded(buf, cell, kern, workers)  # ``plane`` is the view _load left in buf
        return _cropped(buf, exposure.shape, k.shape, exposure.dtype)

    def convolved_spatially(plane: np.ndarray, coefs: np.ndarray) -> np.ndarray:
        # the sum over the terms of B_t(x, y) (plane (*) coefs[t]): each output pixel gets the
        # model's kernel at that pixel, as afw's convolve with a spatially varying kernel does
        tx, ty = (a.astype(exposure.dtype) for a in model.axis_weights())
        ny, nx = exposure.shape
        acc = np.empty((ny, nx), exposure.dtype)
        b, c, (oy, ox) = _load_mirrored(plane, k.shape) if extend else (buf, cell, (k.shape[0] // 2, k.shape[1] // 2))

        def emit(t: int, work: np.ndarray) -> None:
            i, j = model.terms[t]
            part = work[oy : oy + ny, ox : ox + nx]
            map_row_blocks(lambda sl: _add_term(acc[sl], part[sl], tx[i], ty[j][sl], t == 0), ny)

        _convolve_loaded_terms(b, c, coefs, emit, workers)
        return acc

    out_img = convolved(img, k) if model is None else convolved_spatially(img, model.kernels)
    var = _load(buf, cell, exposure.variance)
    if any_bad:
        var[bad_input] = 0
    out_var = convolved(var, k * k) if model is None else convolved_spatially(var, model.squares)
    buf = var = img = None  # the work plane can go before the masks are grown
    out_mask = or_box(exposure.mask, h)
    if extend:
        # mirrored data beyond the edge count as present: only missing pixels inside the array
        # make the convolution incomplete (a mirrored missing pixel lies within h of its
        # original, so the box around the original covers it)
        incomplete = or_box(bad_input.view(np.uint8), h) if any_bad else np.zeros(exposure.shape, np.uint8)
    elif n_unflagged:
        incomplete = or_box(bad_input.view(np.uint8), h, outside=1)
    else:
        # every unusable input pixel carries NO_DATA, which the grown mask has spread over the
        # same box already: only the frame within h of the edge (beyond it is outside) is added
        incomplete = np.zeros((0, 0), np.uint8)
    _finish_matched(out_img, out_var, out_mask, np.int32(no_data), h, incomplete, incomplete.size > 0)
    if extend and h > 0:
        planes.add("EDGE")
        edge_bit = np.int32(planes.bitmask(["EDGE"]))
        for sl in (np.s_[:h, :], np.s_[-h:, :], np.s_[:, :h], np.s_[:, -h:]):
            out_mask[sl] |= edge_bit
    meta = dict(exposure.metadata)
    meta["PSFMATCH"] = f"kernel {k.shape[0]}px core half-width {h}px" + ("" if model is None else f", spatial order {max(i + j for i, j in model.terms)} fitted to {len(model.nodes)} cells")
    # The data now have the target's profile out to the kernel's box, so the PSF they carry is
    # the target drawn on that box.  The model's own default stamp can be much smaller: LSST's
    # 7.7-px double Gaussian is 23 px, which leaves out 11 % of its flux (its wing holds 38 %),
    # and a PSF photometry or ZOGY that trusted it would see a PSF 13 % too peaked.  (LSST's
    # ModelPsfMatchTask likewise attaches the model resized to the box it matched in.)
    out_psf = target.resized(k.shape[0]) if k.shape[0] > target.size else target
    return Exposure(
        out_img, out_var, out_mask, planes, psf=out_psf, photo_calib=exposure.photo_calib,
        wcs=exposure.wcs, xy0=exposure.xy0, metadata=meta, copy=False,
    )


