"""Susceptibility physics of gradient-echo MRI.

One susceptibility map drives both magnitude and phase:

- the field perturbation (ppm of B0) is the susceptibility convolved with the
  unit dipole kernel, computed in k-space: ``field = IFFT(D(k) FFT(chi))`` with
  ``D(k) = 1/3 - (k.b)^2 / |k|^2`` and ``b`` the unit B0 vector (scanner z)
  expressed in the grid's index axes, so oblique grids are handled exactly;
- the phase is ``gamma * dB * TE``;
- the magnitude loses signal where the field varies inside a voxel
  (intravoxel dephasing). Small sources (microbleeds, calcifications, veins) are
  simulated on a finer grid around each source and the complex signal is averaged
  into each acquired voxel, so that blooming grows with TE and B0 as on real scans.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from cmb.dipole_field import b0_in_index_frame, dipole_kernel, field_from_chi

__all__ = [
    "GAMMA_HZ_PER_T",
    "rad_per_ppm",
    "b0_in_index_frame",
    "dipole_kernel",
    "field_from_chi",
    "dephasing_attenuation",
    "homodyne_phase",
    "Source",
    "PatchEffect",
    "simulation_margin_mm",
    "simulate_sources",
]

GAMMA_HZ_PER_T = 42.577478e6


def rad_per_ppm(b0_tesla: float, te_s: float) -> float:
    """Phase (rad) accumulated at echo time ``te_s`` per ppm of field offset.

    >>> round(rad_per_ppm(3.0, 0.02), 2)
    16.05
    """
    return 2 * np.pi * GAMMA_HZ_PER_T * b0_tesla * te_s * 1e-6


def dephasing_attenuation(
    field_ppm: np.ndarray, rad_ppm: float, voxel_ratio=(1.0, 1.0, 1.0)
) -> np.ndarray:
    """Signal fraction left after dephasing across each voxel by the local field gradient.

    A linear phase ramp of ``dphi`` across a voxel leaves ``sinc(dphi / 2 pi)`` of
    the signal; the ramps along the three axes multiply. Gradients are taken per
    grid step and scaled by ``voxel_ratio`` (acquired voxel size / grid step), so
    thick slices lose more signal, as on real scans.

    >>> f = np.zeros((4, 4, 8), np.float32); f[..., :] = np.arange(8) * 0.05
    >>> a = dephasing_attenuation(f, rad_per_ppm(3.0, 0.02))
    >>> bool(0.5 < a[0, 0, 4] < 0.99) and bool(a[0, 0, 4] > dephasing_attenuation(f, rad_per_ppm(3.0, 0.04))[0, 0, 4])
    True
    """
    att = np.ones(field_ppm.shape, dtype=np.float32)
    for axis in range(3):
        if field_ppm.shape[axis] < 2:
            continue
        g = np.gradient(field_ppm, axis=axis) * np.float32(voxel_ratio[axis])
        att *= np.abs(np.sinc(g * (rad_ppm / (2 * np.pi)))).astype(np.float32)
    return att


def homodyne_phase(signal: np.ndarray, spacing, fwhm_mm: float = 12.0) -> np.ndarray:
    """High-pass (SWI-style) phase: divide by a low-pass filtered copy of the complex image.

    The low-pass filter is a Gaussian of ``fwhm_mm`` in image space, applied to the
    real and imaginary parts.
    """
    sigma = [fwhm_mm / 2.355 / s for s in spacing]
    low = ndi.gaussian_filter(signal.real, sigma) + 1j * ndi.gaussian_filter(signal.imag, sigma)
    return np.angle(signal * np.conj(low)).astype(np.float32)


@dataclass
class Source:
    """A small susceptibility source simulated on a fine grid.

    ``points`` is one centre (sphere) or a polyline (tube), in scanner mm.
    Inside the source, proton density is multiplied by ``pd_scale`` and
    ``r2s_extra`` (1/s) is added to R2*.

    A piece of a longer tube can carry ``extra["guards"] = (start, end)``: the
    first (last) point is then a guard, a point of the neighbouring piece, and
    the tube ends in a flat cut at the next point, on the plane halfway between
    the directions of the two pieces. Adjacent pieces so add up to one tube
    instead of doubling the susceptibility in a ball at every joint.
    """

    kind: str  # "cmb", "calcification", "vein"
    points: np.ndarray  # (n, 3) scanner mm
    radius_mm: float
    chi_ppm: float
    pd_scale: float = 1.0
    r2s_extra: float = 0.0
    label: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def is_tube(self) -> bool:
        return len(self.points) > 1


@dataclass
class PatchEffect:
    """Complex multiplicative factor of one source on a box of acquired voxels, per echo."""

    slices: tuple
    factors: list  # one complex64 array per echo
    occupancy: np.ndarray  # fraction of each voxel inside the source


def _distance_to_polyline(x: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Distance of points ``x`` (..., 3) to a polyline (or a single point)."""
    if len(pts) == 1:
        d = x - pts[0]
        return np.sqrt(np.einsum("...i,...i->...", d, d))
    best = np.full(x.shape[:-1], np.inf, dtype=np.float32)
    for a, b in zip(pts[:-1], pts[1:]):
        ab = (b - a).astype(np.float32)
        xa = x - a.astype(np.float32)
        t = np.clip((xa @ ab) / max(float(ab @ ab), 1e-9), 0, 1)
        xa -= t[..., None] * ab
        np.minimum(best, np.einsum("...i,...i->...", xa, xa), out=best)
    return np.sqrt(best)


def _occupancy(src: Source, affine, inv, lo, n, f, edge) -> np.ndarray:
    """Soft-edged fraction of each sub-voxel inside the source (sphere or tube).

    The distance to each segment is only evaluated in the part of the sub-grid
    that the segment's bounding box (grown by radius + edge) covers.
    """
    occ = np.zeros(tuple(n), dtype=np.float32)
    pts = src.points.astype(np.float32)
    cuts = _cut_planes(pts, src.extra.get("guards", (False, False)))
    if cuts:
        pts = pts[
            (1 if src.extra["guards"][0] else 0) : len(pts) - (1 if src.extra["guards"][1] else 0)
        ]
    segments = [(pts[0], pts[0])] if len(pts) == 1 else list(zip(pts[:-1], pts[1:]))
    reach = src.radius_mm + edge
    a32, t32 = affine[:3, :3].T.astype(np.float32), affine[:3, 3].astype(np.float32)
    for a, b in segments:
        lo_w, hi_w = np.minimum(a, b) - reach, np.maximum(a, b) + reach
        corners = np.array(
            [
                [x, y, z]
                for x in (lo_w[0], hi_w[0])
                for y in (lo_w[1], hi_w[1])
                for z in (lo_w[2], hi_w[2])
            ]
        )
        idx = corners @ inv[:3, :3].T + inv[:3, 3]  # acquired voxel indices
        sub = (idx - lo + 0.5) * f - 0.5  # sub-grid indices
        s_lo = np.clip(np.floor(sub.min(0)).astype(int), 0, n)
        s_hi = np.clip(np.ceil(sub.max(0)).astype(int) + 1, 0, n)
        if np.any(s_hi <= s_lo):
            continue
        axes = [lo[d] + (np.arange(s_lo[d], s_hi[d]) + 0.5) / f[d] - 0.5 for d in range(3)]
        world = np.stack(np.meshgrid(*axes, indexing="ij"), -1).astype(np.float32) @ a32 + t32
        dist = _distance_to_polyline(world, np.array([a]) if a is b else np.array([a, b]))
        box = tuple(slice(lo, hi) for lo, hi in zip(s_lo, s_hi))
        inside = np.clip(0.5 + (src.radius_mm - dist) / edge, 0, 1)
        for origin, normal in cuts:
            inside *= np.clip(0.5 + ((world - origin) @ normal) / edge, 0, 1)
        np.maximum(occ[box], inside, out=occ[box])
    return occ


def _cut_planes(pts: np.ndarray, guards) -> list[tuple[np.ndarray, np.ndarray]]:
    """(point, inward normal) of the flat cuts of a guarded tube piece (see :class:`Source`)."""

    def unit(v):
        return v / max(float(np.linalg.norm(v)), 1e-9)

    planes = []
    if guards[0]:
        planes.append((pts[1], unit(unit(pts[1] - pts[0]) + unit(pts[2] - pts[1]))))
    if guards[1]:
        planes.append((pts[-2], -unit(unit(pts[-2] - pts[-3]) + unit(pts[-1] - pts[-2]))))
    return planes


def _length(points: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum()) if len(points) > 1 else 0.0


def _guarded_volume(src: Source) -> float:
    """Volume of a guarded tube piece: its core length, and a half-ball cap at each end that is not cut."""
    start, end = src.extra["guards"]
    core = src.points[(1 if start else 0) : len(src.points) - (1 if end else 0)]
    caps = 2 - int(start) - int(end)
    return float(np.pi * src.radius_mm**2 * _length(core) + caps * 2 / 3 * np.pi * src.radius_mm**3)


def simulation_margin_mm(src: Source) -> float:
    """How far (mm) around a source its fine-grid patch reaches (:func:`simulate_sources`)."""
    # The dipole field of a sphere falls as (r/d)^3, of a cylinder as (r/d)^2:
    # beyond these margins it changes the phase by well under 0.2 rad.
    return (4.0 if not src.is_tube else 5.0) * src.radius_mm + 1.5


def simulate_sources(
    sources: list[Source],
    affine: np.ndarray,
    shape,
    b0_tesla: float,
    tes: list[float],
    subvoxel_mm: float = 0.25,
    max_subdivision: int = 6,
) -> list[PatchEffect | None]:
    """Simulate each small source on a fine grid and average it into acquired voxels.

    Returns one :class:`PatchEffect` per source (None for a source outside the
    grid); multiply the acquired complex signal by its factors (effects of several
    sources compose by product).
    """
    inv = np.linalg.inv(affine)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    b0_dir = b0_in_index_frame(affine)
    effects = []
    for src in sources:
        margin = simulation_margin_mm(src)
        lo_w = src.points.min(0) - margin
        hi_w = src.points.max(0) + margin
        corners = np.array(
            [
                [x, y, z, 1]
                for x in (lo_w[0], hi_w[0])
                for y in (lo_w[1], hi_w[1])
                for z in (lo_w[2], hi_w[2])
            ]
        )
        idx = (inv @ corners.T)[:3].T
        lo = np.maximum(np.floor(idx.min(0)).astype(int), 0)
        hi = np.minimum(np.ceil(idx.max(0)).astype(int) + 1, np.array(shape))
        if np.any(hi <= lo):
            effects.append(None)
            continue
        # Sub-voxels fine enough to resolve the near field, but never more than
        # max_subdivision per axis: the soft-edged occupancy keeps the source's
        # dipole moment right even when it is smaller than a sub-voxel.
        sub_mm = max(subvoxel_mm, zooms.min() / 3)
        f = np.clip(np.ceil(zooms / sub_mm).astype(int), 1, max_subdivision)
        n = (hi - lo) * f
        edge = float((zooms / f).min())
        occ = _occupancy(src, affine, inv, lo, n, f, edge)
        # Conserve the source volume when it is thinner than a sub-voxel.
        if "guards" in src.extra:
            expected = _guarded_volume(src)
        else:
            expected = (
                np.pi * src.radius_mm**2 * _length(src.points) + 4 / 3 * np.pi * src.radius_mm**3
            )
        got = occ.sum() * np.prod(zooms / f)
        if got > 0:
            occ *= np.float32(min(expected / got, 1.0 / max(occ.max(), 1e-6)))
        if not occ.any():
            effects.append(None)
            continue
        fld = field_from_chi(occ * np.float32(src.chi_ppm), zooms / f, b0_dir, pad_fraction=0.15)
        pd = 1.0 + (src.pd_scale - 1.0) * occ
        shape_blocks = (n[0] // f[0], f[0], n[1] // f[1], f[1], n[2] // f[2], f[2])
        factors = []
        for te in tes:
            s = (
                pd
                * np.exp(-te * src.r2s_extra * occ)
                * np.exp(1j * rad_per_ppm(b0_tesla, te) * fld)
            )
            factors.append(s.reshape(shape_blocks).mean(axis=(1, 3, 5)).astype(np.complex64))
        occupancy = occ.reshape(shape_blocks).mean(axis=(1, 3, 5))
        effects.append(
            PatchEffect(
                slices=tuple(slice(a, b) for a, b in zip(lo, hi)),
                factors=factors,
                occupancy=occupancy,
            )
        )
    return effects
