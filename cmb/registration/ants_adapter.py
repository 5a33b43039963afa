"""The thin layer over ANTsPy: images, transform files, threads, seeds and temporary folders.

Everything that touches ITK/ANTs conventions lives here: ANTs images and points
are in LPS millimetres, NIfTI (and the rest of ``cmb``) in RAS. The helpers
:func:`to_ants` and :func:`from_ants` convert images exactly (no resampling, the
direction cosines of oblique grids are kept).

ANTsPy writes its transforms to ``$TMPDIR`` and never deletes them; every ANTs call
of :mod:`cmb.registration` runs inside :func:`ants_tempdir`, a private temporary
folder removed on exit.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from cmb.atomic import atomic_path, save_nifti
from cmb.layout import SOURCE_SPACE
from cmb.template import TEMPLATE_NAME

__all__ = [
    "LPS",
    "LPS4",
    "ANTS_RANDOM_SEED",
    "SOURCE_SPACE",
    "XfmPaths",
    "xfm_paths",
    "set_threads",
    "import_ants",
    "to_ants",
    "from_ants",
    "ants_affine",
    "ants_tempdir",
    "affine_matrix",
    "write_affine",
    "write_identity_warp",
    "map_points",
]


#: RAS <-> LPS flip of world coordinates (its own inverse); :data:`LPS4` is the 4x4 form.
LPS = np.diag([-1.0, -1.0, 1.0])
LPS4 = np.diag([-1.0, -1.0, 1.0, 1.0])


# --------------------------------------------------------------------------- naming


@dataclass(frozen=True)
class XfmPaths:
    """The four files of a subject<->template transform, in ANTs formats.

    ``fwd_*`` resample a subject image into the template (``from-<source>_to-<target>``);
    ``inv_*`` resample a template image into the subject (``from-<target>_to-<source>``).
    The inverse affine is stored already inverted, so each direction is a plain list
    for ``antsApplyTransforms``::

        antsApplyTransforms -d 3 -r MNI.nii.gz -i swi.nii.gz -t fwd_warp -t fwd_affine
        antsApplyTransforms -d 3 -r swi.nii.gz -i MNI.nii.gz -t inv_affine -t inv_warp
    """

    fwd_affine: Path
    fwd_warp: Path
    inv_affine: Path
    inv_warp: Path

    @property
    def to_target(self) -> list[str]:
        """Transform list resampling a subject image onto the template grid."""
        return [str(self.fwd_warp), str(self.fwd_affine)]

    @property
    def to_source(self) -> list[str]:
        """Transform list resampling a template image onto the subject grid."""
        return [str(self.inv_affine), str(self.inv_warp)]

    def all(self) -> list[Path]:
        return [self.fwd_affine, self.fwd_warp, self.inv_affine, self.inv_warp]

    def exist(self) -> bool:
        return all(p.is_file() for p in self.all())


def xfm_paths(
    prefix: str | os.PathLike, source: str = SOURCE_SPACE, target: str = TEMPLATE_NAME
) -> XfmPaths:
    """BIDS-style names of a transform pair under ``prefix`` (e.g. ``.../anat/sub-01``).

    >>> p = xfm_paths("out/sub-01")
    >>> p.fwd_affine.name
    'sub-01_from-SWI_to-MNI152NLin2009cAsym_mode-image_xfm.mat'
    >>> p.inv_warp.name
    'sub-01_from-MNI152NLin2009cAsym_to-SWI_mode-image_xfm.nii.gz'
    """
    prefix = str(prefix)
    fwd = f"{prefix}_from-{source}_to-{target}_mode-image_xfm"
    inv = f"{prefix}_from-{target}_to-{source}_mode-image_xfm"
    return XfmPaths(
        Path(fwd + ".mat"), Path(fwd + ".nii.gz"), Path(inv + ".mat"), Path(inv + ".nii.gz")
    )


# --------------------------------------------------------------------------- ANTs plumbing


def set_threads(n: int | None) -> None:
    """Number of ITK threads for ANTs calls made after this (``None``: leave as is).

    ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` when ANTsPy is first used,
    so call this before the first registration of the process.
    """
    if n:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(n))


#: Seed of ANTs' random metric sampling: the same inputs give the same registration.
ANTS_RANDOM_SEED = 20240917


def import_ants():
    """The ``ants`` module (ANTsPy), imported on first use with its random seed set (:data:`ANTS_RANDOM_SEED`)."""
    # lazy: antspyx takes ~5 s to import, and ITK's thread count must be set before it is
    import ants

    if ants.config._random_seed is None:
        # the public setter; on=False leaves the thread count alone (cmb sets it per job)
        ants.config.set_ants_deterministic(on=False, seed_value=ANTS_RANDOM_SEED)
    return ants


def to_ants(img: nib.Nifti1Image, data: np.ndarray | None = None):
    """ANTs image (float32) of a NIfTI image, geometry converted RAS -> LPS exactly.

    ``data`` replaces the image's own voxels (same shape) when given.

    >>> img = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    >>> a = to_ants(img)
    >>> a.spacing, np.allclose(from_ants(a).affine, img.affine)
    ((2.0, 2.0, 3.0), True)
    """
    ants = import_ants()
    arr = np.asanyarray(img.dataobj if data is None else data)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    m = LPS @ img.affine[:3, :3]
    spacing = np.sqrt((m**2).sum(0))
    return ants.from_numpy(
        arr,
        origin=tuple(map(float, LPS @ img.affine[:3, 3])),
        spacing=tuple(map(float, spacing)),
        direction=m / spacing,
    )


def ants_affine(image) -> np.ndarray:
    """RAS voxel-to-world affine of an ANTs image."""
    aff = np.eye(4)
    aff[:3, :3] = LPS @ (np.asarray(image.direction) * np.asarray(image.spacing))
    aff[:3, 3] = LPS @ np.asarray(image.origin)
    return aff


def from_ants(image, dtype=np.float32) -> nib.Nifti1Image:
    """NIfTI image of an ANTs image (LPS -> RAS)."""
    out = nib.Nifti1Image(image.numpy().astype(dtype), ants_affine(image))
    out.header.set_xyzt_units("mm")
    return out


@contextlib.contextmanager
def ants_tempdir():
    """Run ANTsPy calls with ``$TMPDIR`` (and :mod:`tempfile`) pointing to a private folder.

    ANTsPy writes transforms and warped images under the temporary folder and
    never removes them (about 185 MB per 1 mm SyN); the folder is deleted on exit.

    >>> with ants_tempdir() as d:
    ...     same = tempfile.gettempdir() == str(d)
    >>> same, d.exists()
    (True, False)
    """
    old_env, old_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="cmb-ants-") as d:
        os.environ["TMPDIR"] = d
        tempfile.tempdir = d
        try:
            yield Path(d)
        finally:
            tempfile.tempdir = old_tempdir
            if old_env is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = old_env


# --------------------------------------------------------------------------- transforms


def affine_matrix(tx) -> np.ndarray:
    """4x4 LPS point matrix of an ANTs affine transform."""
    p = np.asarray(tx.parameters, float)
    c = np.asarray(tx.fixed_parameters, float)
    m = p[:9].reshape(3, 3)
    out = np.eye(4)
    out[:3, :3] = m
    out[:3, 3] = p[9:12] + c - m @ c
    return out


def write_affine(matrix: np.ndarray, path: str | os.PathLike) -> None:
    """Write a 4x4 LPS point matrix as an ANTs ``AffineTransform_float_3_3`` .mat (atomic)."""
    ants = import_ants()
    tx = ants.create_ants_transform(
        transform_type="AffineTransform",
        precision="float",
        dimension=3,
        matrix=matrix[:3, :3],
        translation=matrix[:3, 3],
        center=np.zeros(3),
    )
    with atomic_path(path) as tmp:
        ants.write_transform(tx, str(tmp))


def write_identity_warp(reference, path) -> None:
    """An identity displacement field (ANTs vector NIfTI) on ``reference``'s grid."""
    shape = tuple(reference.shape) + (1, 3)
    img = nib.Nifti1Image(np.zeros(shape, np.float32), ants_affine(reference))
    img.header.set_intent("vector")
    save_nifti(img, path)


def map_points(points_ras: np.ndarray, transforms: list[str]) -> np.ndarray:
    """(n, 3) RAS mm points through a list of ANTs transform files (applied as listed, none inverted)."""
    ants = import_ants()
    pts = np.atleast_2d(np.asarray(points_ras, dtype=float))
    if pts.size == 0:
        return pts.reshape(0, 3)
    df = pd.DataFrame(pts @ LPS, columns=["x", "y", "z"])
    with ants_tempdir():
        out = ants.apply_transforms_to_points(
            3, df, transforms, whichtoinvert=[False] * len(transforms)
        )
    return out[["x", "y", "z"]].to_numpy() @ LPS
