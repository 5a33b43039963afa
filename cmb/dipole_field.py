"""The field of a susceptibility distribution: the unit dipole kernel and B0's direction on a grid.

The field perturbation (ppm of B0) of a susceptibility map (ppm) is its convolution
with the unit dipole kernel, computed in k-space: ``field = IFFT(D(k) FFT(chi))`` with
``D(k) = 1/3 - (k.b)^2 / |k|^2`` and ``b`` the unit B0 vector (scanner z) expressed in
the grid's index axes, so oblique grids are handled exactly. The kernel is real and
even, so the same convolution is its own adjoint: correlating a measured field with
the field of a candidate source is ``sum(source * field_from_chi(field))``.

Used by the simulator (:mod:`cmb.synth.physics`) and by the data-driven phase-sign
check (:mod:`cmb.phase_convention`).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft as sfft

__all__ = ["b0_in_index_frame", "dipole_kernel", "field_from_chi"]

_FFT_WORKERS = 2


def b0_in_index_frame(affine: np.ndarray) -> np.ndarray:
    """Unit B0 vector (world +z) expressed along the array axes of ``affine``.

    >>> b0_in_index_frame(np.diag([0.5, 0.5, 2.0, 1.0]))
    array([0., 0., 1.])
    """
    direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return direction.T @ np.array([0.0, 0.0, 1.0])


@functools.lru_cache(maxsize=64)
def _cached_kernel(shape, spacing, b0_dir) -> np.ndarray:
    return dipole_kernel(shape, spacing, b0_dir, real=True).astype(np.float32)


def dipole_kernel(shape, spacing, b0_dir, real: bool = True) -> np.ndarray:
    """Unit dipole kernel ``D(k)`` on an FFT grid (``rfftn`` layout if ``real``).

    The DC term is set to 0 (the mean field is not observable).

    >>> d = dipole_kernel((8, 8, 8), (1, 1, 1), (0, 0, 1), real=False)
    >>> float(d[0, 0, 1]), float(d[1, 0, 0]), float(d[0, 0, 0])
    (-0.6666666666666667, 0.3333333333333333, 0.0)
    """
    freqs = [np.fft.fftfreq(n, d) for n, d in zip(shape, spacing)]
    if real:
        freqs[-1] = np.fft.rfftfreq(shape[-1], spacing[-1])
    kx, ky, kz = np.meshgrid(*freqs, indexing="ij", sparse=True)
    kb = kx * b0_dir[0] + ky * b0_dir[1] + kz * b0_dir[2]
    k2 = kx**2 + ky**2 + kz**2
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 1.0 / 3.0 - kb**2 / k2
    d[0, 0, 0] = 0.0
    return d


def field_from_chi(chi: np.ndarray, spacing, b0_dir, pad_fraction: float = 0.25) -> np.ndarray:
    """Field offset (ppm) caused by a susceptibility map (ppm), by k-space dipole convolution.

    The volume is zero-padded by ``pad_fraction`` of its size on each side so that
    sources near one edge do not wrap around onto the other.

    >>> chi = np.zeros((32, 32, 32), np.float32); chi[16, 16, 16] = 1.0
    >>> f = field_from_chi(chi, (1, 1, 1), (0, 0, 1))
    >>> bool(f[16, 16, 18] > 0 > f[18, 16, 16])  # positive along B0, negative across it
    True
    """
    shape = [sfft.next_fast_len(int(n * (1 + 2 * pad_fraction)), real=True) for n in chi.shape]
    padded = np.zeros(shape, dtype=np.float32)
    offs = [(p - n) // 2 for p, n in zip(shape, chi.shape)]
    inner = tuple(slice(o, o + n) for o, n in zip(offs, chi.shape))
    padded[inner] = chi
    spectrum = sfft.rfftn(padded, workers=_FFT_WORKERS)
    key = (tuple(shape), tuple(np.round(spacing, 6)), tuple(np.round(b0_dir, 6)))
    spectrum *= _cached_kernel(*key)
    return sfft.irfftn(spectrum, shape, workers=_FFT_WORKERS)[inner].astype(np.float32)
