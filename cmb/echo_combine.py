"""Multi-echo gradient echo: combine the magnitudes, pick one echo's phase.

Inputs are either one 4D file (echo on the 4th axis) or a list of 3D files in
echo order (BIDS ``echo-<n>``). Every file is checked with
:func:`cmb.image_checks.load_image` and all echoes must share one grid.

- Magnitude: root mean square over echoes, ``sqrt(mean_e(m_e ** 2))``
  (``method="rms"``, the default), or ``"mean"``.
- Phase: one echo, chosen by ``phase_echo`` (1-based, as BIDS numbers echoes;
  negative counts from the end, so -1 is the last echo). ``None`` chooses the
  echo whose echo time is closest to :data:`TARGET_PHASE_TE_S` (20 ms, a usual
  SWI echo time at 3T) when echo times are known, otherwise the last echo
  (longest TE, most susceptibility contrast).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from cmb.failures import InputDataError
from cmb.image_checks import check_same_grid, load_image

__all__ = [
    "TARGET_PHASE_TE_S",
    "EchoCombination",
    "EchoStack",
    "choose_phase_echo",
    "combine_echoes",
    "load_echoes",
    "rms_combine",
]

#: Echo time (s) aimed at when ``phase_echo`` is ``None`` and echo times are known.
TARGET_PHASE_TE_S = 0.020


@dataclass
class EchoStack:
    """Echoes of one image type on one grid.

    Attributes
    ----------
    data : (X, Y, Z, E) ndarray of float32
    reference : nibabel.Nifti1Image
        The first file's checked image (affine and header to write with).
    paths : list of str
        The files read, in echo order.
    messages : list of str
        Fixes and warnings from the checks.
    """

    data: np.ndarray
    reference: nib.Nifti1Image
    paths: list[str]
    messages: list[str] = field(default_factory=list)

    @property
    def n_echoes(self) -> int:
        return self.data.shape[3]


def load_echoes(
    paths: str | os.PathLike | Sequence[str | os.PathLike], *, allow_4d: bool = True, **check_kw
) -> EchoStack:
    """Read echoes from one 4D (or 3D) file or a list of 3D files.

    Parameters
    ----------
    paths : path or sequence of path
        One file (4D: echo on the 4th axis; 3D: a single echo) or several 3D files
        in echo order.
    allow_4d : bool, optional
        Accept a single 4D file. ``False`` demands 3D files (a single-echo
        acquisition): a 4D file is then an error.
    **check_kw
        Passed to :func:`cmb.image_checks.load_image`.

    Returns
    -------
    EchoStack
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("no echo files given")
    if len(paths) == 1:
        img, messages = load_image(paths[0], allow_4d=allow_4d, **check_kw)
        data = np.asanyarray(img.dataobj, dtype=np.float32)
        if data.ndim == 3:
            data = data[..., None]
        return EchoStack(data, img, paths, messages)
    ref, messages = load_image(paths[0], **check_kw)
    volumes = [np.asanyarray(ref.dataobj, dtype=np.float32)]
    for p in paths[1:]:
        img, more = load_image(p, **check_kw)
        check_same_grid(ref, img, paths[0], p)
        volumes.append(np.asanyarray(img.dataobj, dtype=np.float32))
        messages += more
    return EchoStack(np.stack(volumes, axis=-1), ref, paths, messages)


def rms_combine(data: np.ndarray, method: str = "rms") -> np.ndarray:
    """Combine echoes (last axis) voxel by voxel, computed in float64.

    Parameters
    ----------
    data : (..., E) ndarray
    method : {"rms", "mean"}

    Returns
    -------
    ndarray of float32, shape ``data.shape[:-1]``

    Examples
    --------
    >>> rms_combine(np.array([[3.0, 4.0, 0.0]])).astype(float).round(4).tolist()
    [2.8868]
    """
    x = np.asarray(data, dtype=np.float64)
    if method == "rms":
        return np.sqrt(np.mean(x * x, axis=-1)).astype(np.float32)
    if method == "mean":
        return np.mean(x, axis=-1).astype(np.float32)
    raise ValueError(f"method must be 'rms' or 'mean', not {method!r}")


def choose_phase_echo(
    n_echoes: int, echo_times: Sequence[float] | None = None, phase_echo: int | None = None
) -> tuple[int, str]:
    """The 1-based echo to take the phase from, and why.

    Examples
    --------
    >>> choose_phase_echo(3, [0.004, 0.008, 0.012])
    (3, 'phase from echo 3 of 3 (TE 12 ms, closest to 20 ms)')
    >>> choose_phase_echo(4, phase_echo=2)[0], choose_phase_echo(4, phase_echo=-1)[0]
    (2, 4)
    >>> choose_phase_echo(3)[1]
    'phase from echo 3 of 3 (the last: echo times unknown)'
    """
    known = (
        echo_times is not None
        and len(echo_times) == n_echoes
        and all(t is not None for t in echo_times)
    )

    def te(i):
        return f"TE {1000 * echo_times[i - 1]:g} ms, " if known else ""

    if phase_echo is not None:
        e = int(phase_echo)
        index = e if e > 0 else n_echoes + 1 + e
        if not 1 <= index <= n_echoes:
            raise InputDataError(
                f"ingest.phase_echo is {phase_echo} but the phase has {n_echoes} echo(es); "
                f"set it within 1..{n_echoes} (or -1 for the last), or null for the TE "
                f"closest to 20 ms"
            )
        return index, f"phase from echo {index} of {n_echoes} ({te(index)}as configured)"
    if known:
        index = int(np.argmin([abs(t - TARGET_PHASE_TE_S) for t in echo_times])) + 1
        return index, (
            f"phase from echo {index} of {n_echoes} ({te(index)[:-2]}, closest to "
            f"{1000 * TARGET_PHASE_TE_S:g} ms)"
        )
    return n_echoes, f"phase from echo {n_echoes} of {n_echoes} (the last: echo times unknown)"


@dataclass
class EchoCombination:
    """Result of :func:`combine_echoes`."""

    magnitude: nib.Nifti1Image
    phase: nib.Nifti1Image | None
    phase_echo: int | None
    phase_all_echoes: np.ndarray | None
    messages: list[str]
    n_echoes: int = 1


def combine_echoes(
    magnitude: str | os.PathLike | Sequence[str | os.PathLike],
    phase: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    *,
    echo_times: Sequence[float] | None = None,
    phase_echo: int | None = None,
    method: str = "rms",
    allow_4d: bool = True,
    grid_atol_mm: float = 0.01,
    **check_kw,
) -> EchoCombination:
    """Combine multi-echo magnitudes and select one echo of the phase.

    Parameters
    ----------
    magnitude, phase : path or sequence of path
        See :func:`load_echoes`. The phase must have the magnitude's grid and
        echo count.
    echo_times : sequence of float, optional
        Seconds, one per echo; used to choose the phase echo.
    phase_echo : int, optional
        See :func:`choose_phase_echo`.
    method : {"rms", "mean"}
        Magnitude combination.
    allow_4d : bool, optional
        See :func:`load_echoes`.
    grid_atol_mm : float, optional
        Tolerance of the magnitude/phase grid comparison
        (:func:`cmb.image_checks.check_same_grid`).
    **check_kw
        Passed to :func:`cmb.image_checks.load_image`.

    Returns
    -------
    EchoCombination
        ``magnitude`` and ``phase`` are 3D float32 images on the input grid;
        ``phase_all_echoes`` (X, Y, Z, E) is kept for phase-unit detection; the
        phase is still in its stored units.
    """
    mag = load_echoes(magnitude, allow_4d=allow_4d, **check_kw)
    messages = list(mag.messages)
    combined = rms_combine(mag.data, method)
    if mag.n_echoes > 1:
        messages.append(f"{mag.n_echoes} magnitude echoes combined by {method}")
    if not np.all(np.isfinite(combined)):
        raise InputDataError(f"{mag.paths[0]}: echo combination gave non-finite values")
    mag_img = _like(mag.reference, combined)
    if phase is None:
        return EchoCombination(mag_img, None, None, None, messages, mag.n_echoes)
    ph = load_echoes(phase, allow_4d=allow_4d, **check_kw)
    messages += ph.messages
    check_same_grid(mag.reference, ph.reference, mag.paths[0], ph.paths[0], grid_atol_mm)
    if ph.n_echoes != mag.n_echoes:
        raise InputDataError(
            f"{ph.paths[0]}: phase has {ph.n_echoes} echo(es) but the magnitude "
            f"{mag.paths[0]} has {mag.n_echoes}"
        )
    index, why = choose_phase_echo(ph.n_echoes, echo_times, phase_echo)
    if ph.n_echoes > 1:
        messages.append(why)
    return EchoCombination(
        mag_img,
        _like(ph.reference, ph.data[..., index - 1]),
        index,
        ph.data,
        messages,
        mag.n_echoes,
    )


def _like(reference: nib.Nifti1Image, data: np.ndarray) -> nib.Nifti1Image:
    hdr = reference.header.copy()
    hdr.set_data_dtype(np.float32)
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), reference.affine, hdr)
    img.header.set_slope_inter(1.0, 0.0)
    return img
