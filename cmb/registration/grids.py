"""Voxel grids: voxel sizes, block-average down- and upsampling, masks moved between grids.

All in RAS (nibabel affines); nothing here needs ANTs.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "voxel_sizes",
    "downsample_blocks",
    "upsample_blocks",
    "downsample_image",
    "resample_mask",
]


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel sizes (mm) of the three axes of a voxel-to-world affine.

    >>> voxel_sizes(np.diag([0.5, -0.5, 2.0, 1.0])).tolist()
    [0.5, 0.5, 2.0]
    """
    return np.sqrt((affine[:3, :3] ** 2).sum(0))


def downsample_blocks(
    data: np.ndarray, affine: np.ndarray, target_mm: float
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Block-average a volume to voxels of about ``target_mm``, keeping its orientation.

    Each axis is reduced by ``max(1, round(target_mm / voxel))`` (trailing voxels
    that do not fill a block are dropped). Block means are an anti-aliased,
    exact-geometry downsampling: the new affine places each voxel at its block centre.

    Returns
    -------
    small : ndarray of float32
    affine : (4, 4) ndarray
    factors : tuple of int

    >>> small, aff, f = downsample_blocks(np.ones((8, 8, 3)), np.diag([0.5, 0.5, 2, 1]), 2.0)
    >>> small.shape, f, float(aff[0, 0]), float(aff[0, 3])
    ((2, 2, 3), (4, 4, 1), 2.0, 0.75)
    """
    f = tuple(int(max(1, round(target_mm / z))) for z in voxel_sizes(affine))
    n = [s // k for s, k in zip(data.shape[:3], f)]
    x = np.asarray(data[: n[0] * f[0], : n[1] * f[1], : n[2] * f[2]], dtype=np.float32)
    # one axis at a time, each a sum over a contiguous middle axis (fast in numpy)
    x = x.reshape(n[0], f[0], -1).sum(1, dtype=np.float32)
    x = x.reshape(n[0], n[1], f[1], -1).sum(2, dtype=np.float32)
    x = x.reshape(n[0], n[1], n[2], f[2]).sum(3, dtype=np.float32)
    small = x / np.float32(np.prod(f))
    aff = affine.copy()
    aff[:3, :3] = affine[:3, :3] * np.asarray(f)
    aff[:3, 3] = affine[:3, :3] @ ((np.asarray(f) - 1) / 2) + affine[:3, 3]
    return small, aff, f


def upsample_blocks(small: np.ndarray, shape: Sequence[int], factors: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`downsample_blocks` geometry: separable linear interpolation.

    Values beyond the outermost block centres are held constant.

    >>> up = upsample_blocks(np.array([[[0.0]], [[4.0]]]), (4, 1, 1), (2, 1, 1))
    >>> up.ravel().tolist()
    [0.0, 1.0, 3.0, 4.0]
    """
    out = np.asarray(small, np.float32)
    for axis in range(3):
        n_out, n_in, k = int(shape[axis]), out.shape[axis], int(factors[axis])
        if n_out == n_in and k == 1:
            continue
        pos = np.clip((np.arange(n_out) - (k - 1) / 2) / k, 0, n_in - 1)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        w = (pos - lo).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        a = np.take(out, lo, axis=axis)
        out = a + w * (np.take(out, hi, axis=axis) - a)
    return np.ascontiguousarray(out, dtype=np.float32)


def downsample_image(
    img: nib.Nifti1Image, step_mm: float, mask: np.ndarray | None = None
) -> nib.Nifti1Image:
    """An image block-averaged to about ``step_mm`` (:func:`downsample_blocks`), optionally masked first (float32)."""
    data = np.asanyarray(img.dataobj).astype(np.float32)
    if mask is not None:
        data = data * mask
    small, aff, _ = downsample_blocks(data, img.affine, step_mm)
    return nib.Nifti1Image(small, aff)


def resample_mask(
    mask_img: nib.Nifti1Image,
    target: nib.Nifti1Image,
    src_to_target: np.ndarray,
    dilate_mm: float = 2.0,
) -> np.ndarray:
    """A mask resampled onto another grid through a RAS point matrix (source -> target).

    Linear interpolation of the mask at about 2 mm, then thresholded at 0.5 and dilated.
    """
    # target voxel -> target world -> source world -> source voxel
    vox = np.linalg.inv(mask_img.affine) @ np.linalg.inv(src_to_target) @ target.affine
    data = np.asanyarray(mask_img.dataobj).astype(np.float32)
    out = (
        ndi.affine_transform(data, vox[:3, :3], vox[:3, 3], output_shape=target.shape[:3], order=1)
        > 0.5
    )
    if dilate_mm > 0:
        z = voxel_sizes(target.affine)
        out = ndi.distance_transform_edt(~out, sampling=z) <= dilate_mm
    return out
