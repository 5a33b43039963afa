"""Vessel evidence for CMB candidates: is the dark spot part of a vein?

A vein is paramagnetic and dark like a microbleed. One that runs along B0 has no
field outside itself, so on an axial slice it is a round dark dot with no dipole
pattern: only its continuation into the slices above and below gives it away.
This module measures that continuation, in millimetres on the scan's own
(anisotropic) voxels, for each candidate:

- **The dark structure the candidate belongs to.** Relative darkness
  ``1 - magnitude / background`` (background: a Gaussian mean over the brain, 4 mm),
  thresholded at a *lower* level than the candidate's blob (``level`` times the
  candidate's peak darkness), and the connected part of it that holds the candidate,
  within ``box_mm``. Its principal axes give ``vessel_length_mm`` (extent along the
  long axis), ``vessel_width_mm`` (the diameter of its median cross-section),
  ``vessel_elongation`` (length over width) and
  ``vessel_angle_b0_deg`` (angle of the long axis to the scanner's z axis, B0) and
  ``vessel_slices`` (how many slices the long axis runs through).
- **Bulge.** A microbleed that touches a vein belongs to the vein's dark structure,
  but it is a local thickening of it: ``vessel_bulge`` is the structure's
  cross-section area at the candidate over its median cross-section away from the
  candidate (about 1 along a vein, at a vein's end or bend; 4-10 for a CMB on a vein),
  and ``vessel_darkening`` its peak darkness at the candidate over the median peak
  darkness along it (about 1 along a vein; 2 or more at a CMB, whose blooming is darkest
  at its centre and fades along B0).
- **Tubularity.** Multi-scale Hessian analysis at the candidate's centre
  (``tubularity``): the Frangi vesselness ratios of a dark line, computed on a
  0.5 mm isotropic resampling of the neighbourhood (never in voxel units), at
  Gaussian scales of 0.5-1.5 mm with the blur of the acquired voxels equalized across
  axes: about 0.85 on the axis of a tube, 0.1 at the centre of a ball, 0 for a sheet
  or a bright spot.

The **vessel rule** (:func:`vessel_rule`) rejects a candidate as ``vessel`` when its
dark structure is long, elongated, thin, and neither thicker nor darker at the candidate. The rule's
settings are in :data:`DEFAULT_VESSEL_RULE`; a model card's ``vessel_rule`` entry
overrides them. With slices thicker than ``thick_slice_mm``, a through-plane structure
must span more slices before it is called a vein (a blooming CMB covers two 5 mm
slices), and the detect sidecar says that the evidence is less reliable.
"""

from __future__ import annotations

import cc3d
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

__all__ = [
    "DEFAULT_VESSEL_RULE",
    "VESSEL_COLUMNS",
    "measure_vessel_evidence",
    "vessel_rule",
    "tubularity",
    "evidence_reliable",
]

#: Settings of the vessel measurements and rule (one source; a model card's ``vessel_rule`` overrides).
DEFAULT_VESSEL_RULE = {
    "enabled": True,
    "level": 0.5,  # the dark structure: darkness above this fraction of the candidate's peak darkness
    "min_darkness": 0.08,  # ... and above this absolute relative darkness
    "background_mm": 4.0,
    "box_mm": 14.0,  # half-size of the neighbourhood searched
    "min_length_mm": 9.0,
    "min_elongation": 4.0,
    "max_width_mm": 4.0,
    "max_bulge": 2.5,
    "max_darkening": 1.8,
    "thick_slice_mm": 4.0,
    "min_slices": 3.0,  # a through-plane structure must span this many slices ...
    "thick_min_slices": 4.0,  # ... or this many, when slices are thicker than thick_slice_mm
    "min_confidence_fraction": 0.5,  # measured for candidates above this fraction of the threshold
}

#: Columns that :func:`measure_vessel_evidence` adds (NaN where not measured).
VESSEL_COLUMNS = [
    "vessel_length_mm",
    "vessel_width_mm",
    "vessel_elongation",
    "vessel_angle_b0_deg",
    "vessel_slices",
    "vessel_bulge",
    "vessel_darkening",
    "tubularity",
]

_TUBE_SCALES_MM = (0.5, 0.75, 1.0, 1.5)
_ISO_MM = 0.5


def evidence_reliable(zooms, settings: dict | None = None) -> bool:
    """Whether the slices are thin enough (``thick_slice_mm``) for the vessel evidence to be reliable."""
    s = {**DEFAULT_VESSEL_RULE, **(settings or {})}
    return float(max(zooms)) <= float(s["thick_slice_mm"])


def _darkness(
    mag: np.ndarray, mask: np.ndarray, zooms: np.ndarray, background_mm: float
) -> np.ndarray:
    """``1 - mag / background`` over ``mask`` (0 outside, and where brighter than the background)."""
    m = mask.astype(np.float32)
    sigma = background_mm / zooms
    bg = ndi.gaussian_filter(mag * m, sigma, mode="nearest", truncate=3.0)
    w = ndi.gaussian_filter(m, sigma, mode="nearest", truncate=3.0)
    smooth = ndi.gaussian_filter(mag, np.maximum(0.35 / zooms, 0.0) * (zooms < 1.0), mode="nearest")
    d = 1.0 - smooth / np.maximum(bg / np.maximum(w, 1e-3), 1e-6)
    return np.where(mask, np.clip(d, 0.0, None), 0.0).astype(np.float32)


def _structure_geometry(
    points_mm: np.ndarray,
    zooms: np.ndarray,
    centre_mm: np.ndarray,
    blob_radius_mm: float,
    darkness: np.ndarray | None = None,
) -> dict:
    """Length, width, elongation, long axis and bulge of a set of voxel centres (mm, voxel frame).

    The width is the diameter of the median cross-section (a disc of that area), so a
    CMB on a vein does not widen the vein.
    """
    cov = np.cov(points_mm.T, bias=True) if len(points_mm) > 1 else np.zeros((3, 3))
    _, v = np.linalg.eigh(cov + np.diag(zooms**2 / 12.0))  # a voxel is a box, not a point
    axis = v[:, -1]
    t = (points_mm - centre_mm) @ axis
    voxel_extent = float(np.abs(axis) @ zooms)  # one voxel's length along the axis
    length = float(t.max() - t.min()) + voxel_extent
    # Cross-section area along the axis: voxel counts in 0.5 mm bins, averaged over a
    # window at least 1.5 voxels long (an oblique structure is a staircase of slices).
    fine = 0.5
    bins = np.floor(t / fine + 0.5).astype(int)
    lo = bins.min()
    counts = np.bincount(bins - lo).astype(float) * float(np.prod(zooms)) / fine
    window = max(3, int(np.ceil(max(2.0, 1.5 * voxel_extent) / fine)) | 1)
    area = ndi.uniform_filter1d(counts, window, mode="constant")
    at = (np.arange(len(area)) + lo) * fine
    occupied = area > 0
    width = 2.0 * float(np.sqrt(np.median(area[occupied]) / np.pi))
    near = np.abs(at) <= max(1.0, blob_radius_mm)
    far = (np.abs(at) > blob_radius_mm + 2.5) & occupied
    bulge = (
        float(area[near].max() / np.median(area[far]))
        if near.any() and far.sum() >= 6
        else float("inf")
    )
    dark_bulge = float("inf")
    if darkness is not None and np.isfinite(bulge):
        peak = np.zeros(len(counts))
        np.maximum.at(peak, bins - lo, darkness)
        peak = ndi.maximum_filter1d(peak, window, mode="constant")
        dark_bulge = float(peak[near].max() / max(np.median(peak[far]), 1e-6))
    return {
        "length": length,
        "width": width,
        "elongation": length / max(width, 1e-6),
        "axis": axis,
        "bulge": bulge,
        "dark_bulge": dark_bulge,
    }


def tubularity(
    mag: np.ndarray, zooms, centre_vox, scales_mm=_TUBE_SCALES_MM, iso_mm: float = _ISO_MM
) -> float:
    """Frangi vesselness of a *dark* line at ``centre_vox``, best over Gaussian ``scales_mm``.

    In millimetres on any grid: the neighbourhood is resampled (cubic spline) to
    ``iso_mm`` isotropic voxels, and each axis is smoothed so that, with the blur of
    its acquired voxel (a box of variance ``voxel^2 / 12``), every axis has the same
    total blur. Without that equalization, a vein across 2 mm slices has a flattened
    cross-section, which Frangi's ratios read as a sheet (why Frangi filters fail on SWI).

    >>> x, y, z = np.mgrid[:40, :40, :40] * 0.5
    >>> tube = 1.0 - 0.8 * np.exp(-((x - 10) ** 2 + (y - 10) ** 2) / (2 * 0.6 ** 2))
    >>> ball = 1.0 - 0.8 * np.exp(-((x - 10) ** 2 + (y - 10) ** 2 + (z - 10) ** 2) / (2 * 1.2 ** 2))
    >>> round(tubularity(tube, (0.5,) * 3, (20, 20, 20)), 1), round(tubularity(ball, (0.5,) * 3, (20, 20, 20)), 1)
    (0.9, 0.1)
    """
    zooms = np.asarray(zooms, float)
    voxel_var = zooms**2 / 12.0
    widest = float(voxel_var.max())
    half_mm = 3.0 * np.sqrt(max(scales_mm) ** 2 + widest) + iso_mm
    n = int(np.ceil(half_mm / iso_mm))
    offsets = np.arange(-n, n + 1) * iso_mm
    grid = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"))  # mm, voxel frame
    c = np.asarray(centre_vox, float)
    lo = np.maximum(np.floor(c - (half_mm / zooms) - 3).astype(int), 0)
    hi = np.minimum(np.ceil(c + (half_mm / zooms) + 4).astype(int), np.asarray(mag.shape))
    crop = np.asarray(mag[tuple(slice(a, b) for a, b in zip(lo, hi))], np.float64)
    coords = (c - lo)[:, None, None, None] + grid / zooms[:, None, None, None]
    patch = ndi.map_coordinates(crop, coords.reshape(3, -1), order=3, mode="nearest").reshape(
        grid.shape[1:]
    )
    best, best_strength = 0.0, 0.0
    for s in scales_mm:
        total = s * s + widest  # the same total blur (mm^2) on every axis
        sigma_vox = np.sqrt(np.maximum(total - voxel_var, 0.0)) / iso_mm
        h = np.empty((3, 3))
        for a in range(3):
            for b in range(a, 3):
                order = [0, 0, 0]
                order[a] += 1
                order[b] += 1
                h[a, b] = h[b, a] = ndi.gaussian_filter(
                    patch, sigma_vox, order=order, mode="nearest"
                )[n, n, n]
        lam = np.linalg.eigvalsh(h * total / iso_mm**2)  # scale-normalized
        lam = lam[np.argsort(np.abs(lam))]
        l1, l2, l3 = lam
        strength = float(np.sqrt(l2 * l2 + l3 * l3))
        if l2 <= 0 or l3 <= 0 or strength <= best_strength:  # a dark line curves up across it
            continue
        ra, rb = abs(l2) / abs(l3), abs(l1) / np.sqrt(abs(l2 * l3))
        best = float((1 - np.exp(-ra * ra / 0.5)) * np.exp(-rb * rb / 0.5))
        best_strength = strength
    return best


def measure_vessel_evidence(
    magnitude: np.ndarray,
    mask: np.ndarray,
    zooms,
    affine: np.ndarray,
    table: pd.DataFrame,
    labels: np.ndarray,
    measure: np.ndarray | None = None,
    settings: dict | None = None,
) -> pd.DataFrame:
    """:data:`VESSEL_COLUMNS` for the candidates of ``table`` (rows where ``measure``; NaN elsewhere).

    Parameters
    ----------
    magnitude, mask : (X, Y, Z) ndarray
        Preprocessed magnitude and brain mask.
    zooms : sequence of 3 float
        Voxel size (mm).
    affine : (4, 4) ndarray
        Voxel to scanner RAS; B0 is the scanner's z axis.
    table : DataFrame
        ``i, j, k`` and ``radius_mm`` (the screen's blob radius) per candidate; row ``n``
        is labelled ``n + 1`` in ``labels``.
    labels : (X, Y, Z) ndarray of int
        The candidates' blobs.
    measure : (N,) bool, optional
        Which candidates to measure (all by default).
    """
    s = {**DEFAULT_VESSEL_RULE, **(settings or {})}
    zooms = np.asarray(zooms, float)
    n = len(table)
    out = pd.DataFrame({c: np.full(n, np.nan) for c in VESSEL_COLUMNS})
    rows = np.flatnonzero(np.ones(n, bool) if measure is None else np.asarray(measure, bool))
    if not len(rows):
        return out
    mag = np.asarray(magnitude, np.float32)
    mask = np.asarray(mask, bool)
    rot = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)  # voxel axes in scanner space
    half = np.ceil(float(s["box_mm"]) / zooms).astype(int)
    pad = np.ceil(3.0 * float(s["background_mm"]) / zooms).astype(int)
    shape = np.array(mag.shape)
    ijk = table[["i", "j", "k"]].to_numpy(int).reshape(-1, 3)
    radius = table["radius_mm"].to_numpy(float) if "radius_mm" in table else np.full(n, 1.0)
    for row in rows:
        c = ijk[row]
        lo, hi = np.maximum(c - half - pad, 0), np.minimum(c + half + pad + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        dark = _darkness(mag[box], mask[box], zooms, float(s["background_mm"]))
        inner = np.zeros(dark.shape, bool)
        ilo, ihi = np.maximum(c - half, 0) - lo, np.minimum(c + half + 1, shape) - lo
        inner[tuple(slice(a, b) for a, b in zip(ilo, ihi))] = True
        blob = labels[box] == row + 1
        local = tuple(c - lo)
        blob[local] = True
        peak = float(dark[blob].max())
        # Seeded at the centre voxel and its neighbours: the blob itself (half the screen's
        # peak response) can be wider than a thin vein and would widen it at the candidate.
        seed = np.zeros(dark.shape, bool)
        seed[tuple(slice(max(v - 1, 0), v + 2) for v in local)] = True
        fg = inner & (dark >= max(float(s["level"]) * peak, float(s["min_darkness"])))
        fg[local] = True
        cc = cc3d.connected_components(fg, connectivity=26)
        structure = np.isin(cc, np.setdiff1d(np.unique(cc[seed & fg]), [0]))
        pts = np.argwhere(structure)
        geo = _structure_geometry(
            pts * zooms, zooms, np.asarray(local) * zooms, float(radius[row]), dark[tuple(pts.T)]
        )
        axis_world = rot @ geo["axis"]
        angle = float(
            np.degrees(np.arccos(min(abs(axis_world[2]) / np.linalg.norm(axis_world), 1.0)))
        )
        slices = geo["length"] * abs(geo["axis"][2]) / zooms[2]  # slices the long axis runs through
        out.loc[row, VESSEL_COLUMNS] = [
            geo["length"],
            geo["width"],
            geo["elongation"],
            angle,
            slices,
            geo["bulge"],
            geo["dark_bulge"],
            tubularity(mag, zooms, c),
        ]
    return out


def vessel_rule(evidence: pd.DataFrame, zooms, settings: dict | None = None) -> np.ndarray:
    """``(N,)`` bool: the candidates whose dark structure is a vein (long, elongated, thin, neither
    thicker nor darker at the candidate).

    A structure that runs through the slices must also span ``min_slices`` of them
    (``thick_min_slices`` when slices are thicker than ``thick_slice_mm``).
    """
    s = {**DEFAULT_VESSEL_RULE, **(settings or {})}
    if not s["enabled"] or not len(evidence):
        return np.zeros(len(evidence), bool)
    e = evidence
    slices = e["vessel_slices"].to_numpy(float)
    through_plane = e["vessel_angle_b0_deg"].to_numpy(float) < 45.0
    need = float(s["min_slices"] if evidence_reliable(zooms, s) else s["thick_min_slices"])
    with np.errstate(invalid="ignore"):
        vein = (
            (e["vessel_length_mm"].to_numpy(float) >= float(s["min_length_mm"]))
            & (e["vessel_elongation"].to_numpy(float) >= float(s["min_elongation"]))
            & (e["vessel_width_mm"].to_numpy(float) <= float(s["max_width_mm"]))
            & (e["vessel_bulge"].to_numpy(float) <= float(s["max_bulge"]))
            & (e["vessel_darkening"].to_numpy(float) <= float(s["max_darkening"]))
            & (~through_plane | (slices >= need))
        )
    return np.asarray(vein, bool)
