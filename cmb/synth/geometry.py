"""Subject geometry: a smooth nonlinear warp from MNI, a head pose in the scanner, an oblique grid.

Three spaces are involved:

- MNI (``x_mni``): the packaged template space;
- subject anatomy (``x_s``): ``x_mni = x_s + u(x_s)``, with ``u`` a smooth random
  displacement (cubic B-spline on a coarse control grid);
- scanner (``x_scan``, RAS mm, B0 along +z): ``x_scan = P x_s``, with ``P`` a rigid
  head pose with mild anisotropic scaling.

The acquired image grid is oblique in scanner space; its affine is the NIfTI
sform/qform of every image written for that scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

__all__ = [
    "SubjectWarp",
    "random_warp",
    "random_pose",
    "acquisition_affine",
    "distance_to_path",
    "vein_clearance",
]


@dataclass(frozen=True)
class SubjectWarp:
    """Smooth displacement ``u`` (mm) sampled on a control grid in subject space."""

    coeffs: np.ndarray  # (3, gx, gy, gz) B-spline coefficients (prefiltered)
    origin: np.ndarray  # control grid origin, mm
    spacing: float  # control grid spacing, mm

    def displacement(self, x_s: np.ndarray) -> np.ndarray:
        idx = ((np.asarray(x_s, float) - self.origin) / self.spacing).T
        return np.stack(
            [
                ndi.map_coordinates(c, idx, order=3, mode="nearest", prefilter=False)
                for c in self.coeffs
            ],
            -1,
        )

    def to_mni(self, x_s: np.ndarray) -> np.ndarray:
        x_s = np.atleast_2d(x_s)
        return x_s + self.displacement(x_s)

    def from_mni(self, x_mni: np.ndarray, iterations: int = 30) -> np.ndarray:
        """Invert ``x_mni = x_s + u(x_s)`` by fixed-point iteration (``u`` is small and smooth)."""
        x_mni = np.atleast_2d(np.asarray(x_mni, float))
        x_s = x_mni.copy()
        for _ in range(iterations):
            nxt = x_mni - self.displacement(x_s)
            done = np.abs(nxt - x_s).max() < 1e-5
            x_s = nxt
            if done:
                break
        return x_s


def random_warp(
    rng: np.random.Generator, amplitude_mm: float = 2.5, spacing_mm: float = 30.0
) -> SubjectWarp:
    """A random smooth displacement field over the head (about +-``amplitude_mm``).

    >>> w = random_warp(np.random.default_rng(0))
    >>> p = np.array([[10.0, -20.0, 30.0]])
    >>> bool(np.allclose(w.from_mni(w.to_mni(p)), p, atol=1e-3))
    True
    """
    origin = np.array([-130.0, -160.0, -110.0])
    n = np.ceil(np.array([260.0, 280.0, 240.0]) / spacing_mm).astype(int) + 1
    raw = rng.normal(0.0, amplitude_mm, size=(3, *n))
    # Fade to zero at the border so that far-away points are not displaced.
    taper = np.ones(n)
    for axis, m in enumerate(n):
        prof = np.ones(m)
        prof[0] = prof[-1] = 0.0
        shape = [1, 1, 1]
        shape[axis] = m
        taper = taper * prof.reshape(shape)
    coeffs = np.stack([ndi.spline_filter(r * taper, order=3) for r in raw])
    return SubjectWarp(coeffs=coeffs, origin=origin, spacing=spacing_mm)


def random_pose(
    rng: np.random.Generator,
    max_rotation_deg: float = 10.0,
    max_scale: float = 0.06,
    max_shift_mm: float = 10.0,
    centre_mni=(0.0, -18.0, 12.0),
) -> np.ndarray:
    """Head pose ``P`` (4x4): subject space to scanner space, head centred near the isocentre."""
    rot = Rotation.from_euler(
        "xyz", rng.uniform(-max_rotation_deg, max_rotation_deg, 3), degrees=True
    ).as_matrix()
    scale = np.diag(1.0 + rng.uniform(-max_scale, max_scale, 3))
    m = np.eye(4)
    m[:3, :3] = rot @ scale
    m[:3, 3] = -m[:3, :3] @ np.asarray(centre_mni) + rng.uniform(-max_shift_mm, max_shift_mm, 3)
    return m


def acquisition_affine(
    rng: np.random.Generator,
    voxel_mm,
    matrix,
    max_tilt_deg: float = 18.0,
    max_oblique_deg: float = 5.0,
    storage: str = "RAS",
    centre=(0.0, 0.0, 0.0),
) -> np.ndarray:
    """Affine of an oblique acquisition grid centred at ``centre`` (scanner mm).

    ``storage`` is the on-disk orientation of the array axes before the oblique
    rotation: "RAS" or "LPS" (x and y reversed, as many DICOM converters write).

    >>> a = acquisition_affine(np.random.default_rng(1), (0.5, 0.5, 2.0), (512, 448, 72))
    >>> np.round(np.linalg.norm(a[:3, :3], axis=0), 3).tolist()
    [0.5, 0.5, 2.0]
    """
    angles = [
        rng.uniform(-max_tilt_deg, max_tilt_deg),
        rng.uniform(-max_oblique_deg, max_oblique_deg),
        rng.uniform(-max_oblique_deg, max_oblique_deg),
    ]
    rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    flips = np.diag([-1.0, -1.0, 1.0]) if storage == "LPS" else np.eye(3)
    m = np.eye(4)
    m[:3, :3] = rot @ flips @ np.diag(voxel_mm)
    half = (np.asarray(matrix) - 1) / 2.0
    m[:3, 3] = np.asarray(centre) - m[:3, :3] @ half
    return m


def distance_to_path(points: np.ndarray, path: np.ndarray) -> np.ndarray:
    """Distance (mm) of each of ``points`` (n, 3) to the polyline ``path`` (m, 3).

    >>> distance_to_path(np.array([[0.0, 2.0, 5.0], [0.0, 0.0, 13.0]]), np.array([[0.0, 0, 0], [0, 0, 10]]))
    array([2., 3.])
    """
    points = np.atleast_2d(np.asarray(points, float))
    path = np.atleast_2d(np.asarray(path, float))
    if len(path) == 1:
        return np.linalg.norm(points - path[0], axis=1)
    a, ab = path[:-1], np.diff(path, axis=0)
    pa = points[:, None, :] - a[None]
    t = np.clip((pa * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    return np.linalg.norm(pa - t[..., None] * ab, axis=-1).min(1)


def vein_clearance(points: np.ndarray, paths, radii) -> np.ndarray:
    """Distance (mm) of each point to the nearest vein wall (negative inside a vein; inf without veins).

    ``paths`` are the veins' axes (polylines), ``radii`` their radii, all in one space.
    """
    points = np.atleast_2d(np.asarray(points, float))
    out = np.full(len(points), np.inf)
    for path, r in zip(paths, radii):
        np.minimum(out, distance_to_path(points, path) - r, out=out)
    return out
