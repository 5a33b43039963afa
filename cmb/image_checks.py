"""Load a NIfTI image and check that it is usable, or say clearly why not.

:func:`load_image` runs the checks below in order. Each failure raises
:class:`cmb.failures.InputDataError` with one line that starts with the file's
path. Where a fix is well defined it is applied and reported in the returned
list of messages instead.

==================================  =========================================================
problem                             outcome
==================================  =========================================================
missing file                        error ``file not found``
broken symlink                      error: DataLad/git-annex content not fetched
git-annex pointer file, empty file  error: content not fetched / empty file
unreadable header, not NIfTI        error ``cannot read NIfTI header``
truncated or corrupt data           error ``cannot read voxel data (truncated or corrupt?)``
complex or RGB voxels               error
2D image (fewer than 3 dims, or a   error ``2D image``
spatial dimension of size 1)
4D with one volume                  fix: squeezed to 3D
4D where 3D is expected             error (``allow_4d=True`` accepts it, e.g. multi-echo)
5D or more                          error
no sform and no qform (codes 0)     error
non-finite, singular affine or      error ``degenerate affine``
zero voxel size
qform and sform of opposite         error ``qform and sform disagree in handedness``
handedness
qform and sform differ otherwise    warning: the sform is used, as by every NIfTI reader
voxel larger than ``max_voxel_mm``  error
extent below ``min_fov_mm``         error ``partial field of view``
NaN/Inf voxels                      fix if fewer than ``max_nonfinite_fraction``: set to 0,
                                    else error
all voxels zero / all equal         error
==================================  =========================================================

:func:`ghosting_index` scores an image's motion ghosting, to choose among repeats.

:func:`check_same_grid` compares two images (magnitude and phase, or echoes):
different shapes, or affines differing by more than ``atol_mm``, are an error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from cmb.config import default
from cmb.failures import InputDataError, one_line

__all__ = ["check_same_grid", "ghosting_index", "load_image", "voxel_sizes"]

_log = logging.getLogger(__name__)

_ANNEX_MARKERS = (b"/annex/objects/", b".git/annex/objects/")


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths (mm) of an affine: the norms of its first three columns.

    >>> voxel_sizes(np.diag([0.5, -0.5, 2.0, 1.0])).tolist()
    [0.5, 0.5, 2.0]
    """
    return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)


def _fail(path, what: str) -> InputDataError:
    return InputDataError(one_line(f"{path}: {what}"))


def _check_file(path: Path) -> None:
    if not os.path.lexists(path):
        raise _fail(path, "file not found")
    if path.is_symlink() and not path.exists():
        target = os.readlink(path)
        raise _fail(
            path,
            f"broken symlink to {target} (DataLad/git-annex content not fetched? "
            "run `datalad get` on it)",
        )
    if path.is_dir():
        raise _fail(path, "is a directory, not a NIfTI file")
    size = path.stat().st_size
    if size == 0:
        raise _fail(path, "empty file (0 bytes)")
    if size < 1024:
        with open(path, "rb") as f:
            head = f.read(1024)
        if any(m in head for m in _ANNEX_MARKERS):
            raise _fail(
                path, "git-annex pointer file: content not fetched (run `datalad get` on it)"
            )


def _load_header(path: Path):
    try:
        img = nib.load(path, mmap=False)  # never map the input: we may edit the array
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise _fail(path, f"cannot read NIfTI header ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise _fail(path, f"not a NIfTI image (read as {type(img).__name__})")
    return img


def _check_shape(path, shape, allow_4d: bool) -> list[str]:
    notes = []
    if len(shape) < 3 or min(shape[:3]) == 1:
        raise _fail(path, f"2D image (shape {tuple(shape)}); a 3D volume is required")
    if len(shape) > 4 or (len(shape) == 4 and not allow_4d and shape[3] > 1):
        if len(shape) > 4:
            raise _fail(
                path, f"{len(shape)}D image (shape {tuple(shape)}); a 3D volume is required"
            )
        raise _fail(
            path,
            f"4D image with {shape[3]} volumes (shape {tuple(shape)}) where a 3D "
            "volume is expected",
        )
    if len(shape) == 4 and shape[3] == 1:
        notes.append(f"{path}: singleton 4th dimension squeezed to 3D")
    return notes


def _check_affine(path, img) -> list[str]:
    hdr = img.header
    qform, qcode = hdr.get_qform(coded=True)
    sform, scode = hdr.get_sform(coded=True)
    if not qcode and not scode:
        raise _fail(
            path,
            "no orientation: sform_code and qform_code are both 0, so the voxel-to-world "
            "affine is unknown",
        )
    affine = img.affine
    if not np.all(np.isfinite(affine)):
        raise _fail(path, "degenerate affine: non-finite values")
    zooms = voxel_sizes(affine)
    if np.any(zooms < 1e-6):
        raise _fail(path, f"degenerate affine: zero voxel size {_mm(zooms)}")
    det = np.linalg.det(affine[:3, :3])
    if abs(det) < 1e-6 * float(np.prod(zooms)):
        raise _fail(path, "degenerate affine: singular (its columns are not independent)")
    notes = []
    if qcode and scode:
        dq, ds = np.linalg.det(qform[:3, :3]), np.linalg.det(sform[:3, :3])
        if np.sign(dq) != np.sign(ds):
            raise _fail(
                path,
                f"qform and sform disagree in handedness (det {dq:+.3g} vs {ds:+.3g}): "
                "left and right cannot be told apart",
            )
        diff = float(np.abs(qform - sform).max())
        if diff > 1e-2:
            notes.append(
                f"{path}: qform and sform differ by up to {diff:.3g} mm; the sform is used"
            )
    return notes


def _mm(values) -> str:
    return " x ".join(f"{v:.3g}" for v in values) + " mm"


def load_image(
    path: str | os.PathLike,
    *,
    allow_4d: bool = False,
    max_voxel_mm: float = default("ingest", "max_voxel_mm"),
    min_fov_mm: float | None = default("ingest", "min_fov_mm"),
    max_nonfinite_fraction: float = default("ingest", "max_nonfinite_fraction"),
) -> tuple[nib.Nifti1Image, list[str]]:
    """Load, check and, where well defined, fix one NIfTI image.

    Parameters
    ----------
    path : path
        A ``.nii`` or ``.nii.gz`` file (symlinks are followed).
    allow_4d : bool, optional
        Accept a 4D image (multi-echo). A singleton 4th dimension is always squeezed.
    max_voxel_mm : float, optional
        Largest accepted voxel edge.
    min_fov_mm : float or None, optional
        Smallest accepted physical extent along every voxel axis; ``None`` or 0
        disables the partial-field-of-view check (e.g. for small crops).
    max_nonfinite_fraction : float, optional
        NaN/Inf voxels are set to 0 if they are fewer than this fraction of all
        voxels; more is an error.

    Returns
    -------
    img : nibabel.Nifti1Image
        float32 voxels in memory, the original affine and header (qform/sform
        codes kept), with the fixes applied.
    messages : list of str
        One line per fix or warning, each naming the file.

    Raises
    ------
    cmb.failures.InputDataError
        One line naming the file and the problem (see the module docstring).
    """
    path = Path(path)
    _check_file(path)
    img = _load_header(path)
    shape = img.shape
    messages = _check_shape(path, shape, allow_4d)
    messages += _check_affine(path, img)
    zooms = voxel_sizes(img.affine)
    if np.any(zooms > max_voxel_mm + 1e-3):
        raise _fail(
            path,
            f"voxels of {_mm(zooms)} are larger than {max_voxel_mm:g} mm; "
            f"to accept them (e.g. thick-slice 2D GRE), raise ingest.max_voxel_mm",
        )
    if min_fov_mm:
        extent = np.asarray(shape[:3]) * zooms
        if np.any(extent < min_fov_mm):
            raise _fail(
                path,
                f"partial field of view: {shape[0]} x {shape[1]} x {shape[2]} voxels "
                f"cover {_mm(extent)}, less than {min_fov_mm:g} mm in some axis; "
                f"ingest.min_fov_mm sets the limit (null disables it)",
            )
    dtype = img.get_data_dtype()
    if dtype.kind == "c" or dtype.fields is not None:
        raise _fail(
            path,
            f"unsupported voxel type {dtype} (complex or RGB); store magnitude and "
            "phase as separate real images",
        )
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # EOFError, zlib.error, OSError, ValueError...
        raise _fail(
            path,
            f"cannot read voxel data (file truncated or corrupt?): {type(exc).__name__}: {exc}",
        ) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    bad = ~np.isfinite(data)
    n_bad = int(bad.sum())
    if n_bad:
        fraction = n_bad / data.size
        if fraction >= max_nonfinite_fraction:
            raise _fail(
                path,
                f"{n_bad} NaN/Inf voxels ({100 * fraction:.2g}% of the image, limit "
                f"{100 * max_nonfinite_fraction:g}%, set by ingest.max_nonfinite_fraction)",
            )
        data[bad] = 0
        messages.append(f"{path}: {n_bad} NaN/Inf voxels ({100 * fraction:.2g}%) set to 0")
    if data.size and not np.any(data):
        raise _fail(path, "all voxels are zero")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise _fail(path, f"constant image: every voxel = {lo:g}")
    hdr = img.header.copy()
    hdr.set_data_dtype(np.float32)
    out = (
        nib.Nifti1Image(data, img.affine, hdr)
        if isinstance(img, nib.Nifti1Image)
        else nib.Nifti2Image(data, img.affine, hdr)
    )
    out.header.set_slope_inter(1.0, 0.0)
    for m in messages:
        _log.warning(m)
    return out, messages


def check_same_grid(img_a, img_b, name_a: str, name_b: str, atol_mm: float = 0.01) -> None:
    """Raise unless two images share their voxel grid.

    Spatial shapes (and the 4th dimension when both are 4D) must be equal and the
    affines equal within ``atol_mm`` (element-wise, mm).

    Raises
    ------
    cmb.failures.InputDataError
        Naming ``name_b`` and ``name_a`` and how they differ.

    Examples
    --------
    >>> a = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    >>> b = nib.Nifti1Image(np.zeros((4, 4, 5), np.float32), np.eye(4))
    >>> check_same_grid(a, b, "mag.nii", "phase.nii")
    Traceback (most recent call last):
    ...
    cmb.failures.InputDataError: phase.nii: grid differs from mag.nii: shape (4, 4, 5) vs (4, 4, 4)
    """
    sa, sb = tuple(img_a.shape), tuple(img_b.shape)
    if sa[:3] != sb[:3] or (len(sa) == 4 and len(sb) == 4 and sa[3] != sb[3]):
        raise _fail(name_b, f"grid differs from {name_a}: shape {sb} vs {sa}")
    diff = float(np.abs(np.asarray(img_a.affine) - np.asarray(img_b.affine)).max())
    if diff > atol_mm:
        raise _fail(
            name_b,
            f"grid differs from {name_a}: affines differ by up to {diff:.3g} mm "
            f"(tolerance {atol_mm:g} mm)",
        )


def ghosting_index(data: np.ndarray, voxel_mm, margin_mm: float = 8.0) -> float | None:
    """Signal in the air around the head, as a fraction of the signal in it.

    Motion during a scan replicates the head along the phase-encoding direction
    as ghosts in the background (the idea of MRIQC's ghost-to-signal ratio and of
    its background-based quality measures); noise and ringing raise it too. Lower
    is better. The head is the largest part of the smoothed image above its Otsu threshold, holes
    filled, grown by ``margin_mm`` (the Otsu threshold
    between air and head stays above ghosts of less than about half the signal); the background is every other voxel that is
    not exactly 0 (zero-filled padding is not air).

    Returns ``None`` when the background is under 5% of the field of view (a tight
    crop), where the index would measure too little.

    >>> rng = np.random.default_rng(0)
    >>> head = np.zeros((40, 40, 20)); head[10:30, 10:30, 5:15] = 100.0
    >>> clean = head + rng.rayleigh(2.0, head.shape)
    >>> ghosted = clean + 0.2 * np.roll(head, 20, axis=1)
    >>> ghosting_index(clean, (1, 1, 1)) < ghosting_index(ghosted, (1, 1, 1))
    True
    """
    # lazy: scipy.ndimage and skimage.filters take ~0.6 s to import; every ingest job imports
    # this module, and only the choice between alternative scans needs these two
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    data = np.nan_to_num(np.asarray(data, dtype=np.float32))
    if data.ndim == 4:
        data = data[..., 0]
    voxel_mm = np.asarray(voxel_mm, dtype=float)[:3]
    smooth = ndimage.gaussian_filter(data, sigma=1.0 / voxel_mm)
    sample = smooth[smooth > 0]
    if sample.size < 100:
        return None
    rng = np.random.default_rng(0)
    sample = rng.choice(sample, size=min(sample.size, 200_000), replace=False)
    head = smooth > threshold_otsu(sample)
    labels, n = ndimage.label(head)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(head, labels, index=np.arange(1, n + 1))
    head = labels == (1 + int(np.argmax(sizes)))
    head = ndimage.binary_fill_holes(head)
    air = (ndimage.distance_transform_edt(~head, sampling=voxel_mm) > margin_mm) & (data != 0)
    if air.sum() < 0.05 * data.size:
        return None
    inside = float(np.median(data[head]))
    return float(np.mean(data[air]) / inside) if inside > 0 else None
