"""Patches around candidates, resampled to one working resolution whatever the acquisition.

One model serves SWI at 0.5x0.5x2 mm and GRE at 1x1x5 mm: every patch is sampled
on the same grid in millimetres (axes of the image, spacing ``spacing_mm``), so
the network always sees a lesion at the same physical size. Positions stay in the
image's own voxel indices; nothing else is resampled.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["extract_patches", "input_channels"]


def input_channels(magnitude: np.ndarray, phase: np.ndarray | None) -> np.ndarray:
    """Stack network inputs: magnitude, phase / pi (0 when absent), phase-present flag.

    >>> input_channels(np.ones((2, 2, 2)), None).shape
    (3, 2, 2, 2)
    """
    mag = magnitude.astype(np.float32)
    if phase is None:
        ph = np.zeros_like(mag)
        present = np.zeros_like(mag)
    else:
        ph = (phase / np.pi).astype(np.float32)
        present = np.ones_like(mag)
    return np.stack([mag, ph, present])


def extract_patches(volume: np.ndarray, zooms, centres_ijk: np.ndarray, size: int = 24,
                    spacing_mm: float = 1.0) -> torch.Tensor:
    """Sample ``(N, C, size, size, size)`` patches centred on voxel positions ``centres_ijk``.

    Parameters
    ----------
    volume : (C, X, Y, Z) ndarray
        Channels on the image grid (:func:`input_channels`).
    zooms : sequence of 3 float
        Voxel size of the image (mm).
    centres_ijk : (N, 3) ndarray
        Patch centres in (fractional) voxel indices.
    size, spacing_mm
        Patch edge in samples, and the sample spacing in mm along each image axis.

    Returns
    -------
    torch.Tensor
        Trilinear samples, zero outside the image.

    Examples
    --------
    >>> vol = np.arange(4 * 4 * 4, dtype=np.float32).reshape(1, 4, 4, 4)
    >>> p = extract_patches(vol, (2, 2, 2), np.array([[1.0, 2.0, 1.0]]), size=3, spacing_mm=2.0)
    >>> bool(round(float(p[0, 0, 1, 1, 1]), 4) == vol[0, 1, 2, 1])
    True
    >>> [round(float(v), 4) for v in p[0, 0, :, 1, 1]]  # along i, one voxel (2 mm) apart
    [9.0, 25.0, 41.0]
    """
    vol = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None]  # (1, C, X, Y, Z)
    shape = np.array(volume.shape[1:], float)
    offsets = (np.arange(size) - (size - 1) / 2.0) * spacing_mm
    steps = [offsets / z for z in zooms]  # offsets in voxels along each axis
    gi, gj, gk = np.meshgrid(*steps, indexing="ij")
    local = np.stack([gi, gj, gk], -1)  # (S, S, S, 3) in voxels
    centres = np.asarray(centres_ijk, float).reshape(-1, 1, 1, 1, 3)
    ijk = centres + local[None]
    norm = 2.0 * ijk / np.maximum(shape - 1.0, 1.0) - 1.0
    # grid_sample's last grid axis is (W, H, D) = (k, j, i) for a (D, H, W) = (X, Y, Z) volume.
    grid = torch.from_numpy(norm[..., ::-1].astype(np.float32).copy())
    n = grid.shape[0]
    out = F.grid_sample(vol.expand(n, -1, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    return out
