"""Analytic field perturbations of the cross-simulator's susceptibility sources.

All fields are in ppm of B0 (``dB / B0 * 1e6``), for B0 along scanner +z, Lorentz-corrected:

- sphere of radius ``a`` and susceptibility ``chi`` (relative to its surroundings):
  ``chi/3 (a/r)^3 (3 cos^2 theta - 1)`` outside, 0 inside;
- infinite cylinder of radius ``a`` whose axis makes the angle ``theta`` with B0:
  ``chi (3 cos^2 theta - 1) / 6`` inside and ``chi sin^2 theta (a/r)^2 cos 2 phi / 2``
  outside (``phi`` the azimuth about the axis from B0's projection). A vein is a chain
  of straight segments, each given the cylinder's field times a smooth window along its
  axis: at a joint the windows of the two segments sum to one (a straight vein cut into
  pieces keeps its field); past a free end the field fades over about a radius.

Every source is evaluated only within its reach (:func:`sphere_reach`,
:func:`cylinder_reach`), where its phase falls below a few hundredths of a radian, and
tapered to zero at the edge of it, so that no source needs a whole-volume computation.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "GAMMA_RAD_PER_S_T",
    "rad_per_ppm",
    "sphere_field",
    "sphere_field_gradient",
    "cylinder_field",
    "sphere_reach",
    "cylinder_reach",
    "polynomial_field",
    "polynomial_gradient",
    "n_polynomial_terms",
]

GAMMA_RAD_PER_S_T = 2 * np.pi * 42.577478e6
_PHASE_FLOOR = 0.04  # rad: a source's reach ends where its phase falls below this


def rad_per_ppm(b0: float, te: float) -> float:
    """Phase (rad) per ppm of field at field ``b0`` (T) and echo time ``te`` (s).

    >>> round(rad_per_ppm(3.0, 0.02), 3)
    16.051
    """
    return GAMMA_RAD_PER_S_T * b0 * te * 1e-6


def _taper(x: np.ndarray, start: float, stop: float) -> np.ndarray:
    """1 below ``start``, 0 above ``stop``, smoothstep between."""
    t = np.clip((stop - x) / max(stop - start, 1e-9), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def sphere_field(
    d: np.ndarray, radius: float, chi: float, reach: float | None = None
) -> np.ndarray:
    """Field (ppm) at displacements ``d`` (N, 3; mm) from the centre of a sphere.

    >>> f = sphere_field(np.array([[0.0, 0.0, 2.0], [2.0, 0.0, 0.0], [0.1, 0.0, 0.0]]), 1.0, 0.9)
    >>> np.round(f, 4).tolist()  # on the B0 axis 2 chi/3 (a/r)^3, in the equator -chi/3 (a/r)^3, 0 inside
    [0.075, -0.0375, 0.0]
    """
    d = np.asarray(d, float)
    r2 = np.einsum("ij,ij->i", d, d)
    r = np.sqrt(r2)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (chi / 3.0) * radius**3 * (3.0 * d[:, 2] ** 2 - r2) / (r2 * r2 * r)
    f = np.where(r > radius, f, 0.0)
    if reach is not None:
        f = f * _taper(r, 0.7 * reach, reach)
    return f


def sphere_field_gradient(d: np.ndarray, radius: float, chi: float) -> np.ndarray:
    """Spatial gradient (ppm/mm, N x 3) of :func:`sphere_field` (0 inside)."""
    d = np.asarray(d, float)
    r2 = np.einsum("ij,ij->i", d, d)
    outside = r2 > radius**2
    r2 = np.where(outside, r2, 1.0)
    k = (chi / 3.0) * radius**3
    num = 3.0 * d[:, 2] ** 2 - r2
    g = -2.0 * d / r2[:, None] ** 2.5 - 5.0 * (num / r2**3.5)[:, None] * d
    g[:, 2] += 6.0 * d[:, 2] / r2**2.5
    return np.where(outside[:, None], k * g, 0.0)


def _end_window(s: np.ndarray, h: float, free: bool) -> np.ndarray:
    """Window at one end of a segment, ``s`` the axial distance into the segment (mm)."""
    if free:  # full at the end, gone a distance h past it
        return _taper(-s, 0.0, h)
    return _taper(-s, -h, h)  # joint: 0.5 at the end, complementary to the next segment's window


def cylinder_field(
    p: np.ndarray,
    start,
    end,
    radius: float,
    chi: float,
    free_start: bool = True,
    free_end: bool = True,
    reach: float | None = None,
    joint_mm: float | None = None,
) -> np.ndarray:
    """Field (ppm) at points ``p`` (N, 3) of a straight vessel segment from ``start`` to ``end``.

    >>> p = np.array([[1.5, 0.0, 5.0], [0.0, 1.5, 5.0], [0.0, 0.0, 5.0]])
    >>> np.round(cylinder_field(p, [0, 0, -50], [0, 0, 50], 0.5, 0.4), 4).tolist()  # along B0: none outside
    [0.0, 0.0, 0.1333]
    >>> q = np.array([[1.5, 0.0, 5.0], [0.0, 0.0, 6.5]])
    >>> np.round(cylinder_field(q, [0, -50, 5], [0, 50, 5], 0.5, 0.4), 4).tolist()  # across B0: cos 2 phi
    [-0.0222, 0.0222]
    """
    p = np.asarray(p, float)
    start, end = np.asarray(start, float), np.asarray(end, float)
    axis = end - start
    length = float(np.linalg.norm(axis))
    d = axis / max(length, 1e-12)
    v = p - start
    s = v @ d
    perp = v - s[:, None] * d
    rho2 = np.einsum("ij,ij->i", perp, perp)
    cos_t = d[2]
    sin2 = 1.0 - cos_t**2
    b_perp = np.array([0.0, 0.0, 1.0]) - cos_t * d  # B0 projected on the plane normal to the axis
    pb = perp @ b_perp
    inside = rho2 < radius**2
    with np.errstate(divide="ignore", invalid="ignore"):
        outside = 0.5 * chi * radius**2 * (2.0 * pb**2 / rho2 - sin2) / rho2
    f = np.where(inside, chi * (3.0 * cos_t**2 - 1.0) / 6.0, outside)
    h = radius if joint_mm is None else joint_mm
    f = f * _end_window(s, h, free_start) * _end_window(length - s, h, free_end)
    if reach is not None:
        f = f * _taper(np.sqrt(rho2), 0.7 * reach, reach)
    return f


def sphere_reach(radius: float, chi: float, rad_ppm: float, cap_mm: float = 15.0) -> float:
    """Distance (mm) from the centre beyond which a sphere's phase is negligible."""
    amp = abs(chi) * 2.0 / 3.0 * rad_ppm
    return float(
        np.clip(radius * (amp / _PHASE_FLOOR) ** (1 / 3), 2.0 * radius, max(cap_mm, 2.0 * radius))
    )


def cylinder_reach(
    radius: float, chi: float, sin2: float, rad_ppm: float, cap_mm: float = 8.0
) -> float:
    """Distance (mm) from the axis beyond which a vessel's phase is negligible."""
    amp = abs(chi) * sin2 / 2.0 * rad_ppm
    return float(
        np.clip(
            radius * np.sqrt(max(amp, 1e-12) / _PHASE_FLOOR),
            2.5 * radius,
            max(cap_mm, 2.5 * radius),
        )
    )


_POWERS = np.array(
    [
        (1, 0, 0),
        (0, 1, 0),
        (0, 0, 1),
        (2, 0, 0),
        (0, 2, 0),
        (0, 0, 2),
        (1, 1, 0),
        (1, 0, 1),
        (0, 1, 1),
        (0, 0, 3),
        (1, 0, 2),
        (0, 1, 2),
    ]
)


def polynomial_field(
    p: np.ndarray, coeffs: np.ndarray, centre, scale_mm: float = 100.0
) -> np.ndarray:
    """Smooth background field (ppm): a polynomial in ``(p - centre) / scale_mm`` (orders 1-3)."""
    x = (np.asarray(p, float) - centre) / scale_mm
    out = np.zeros(len(x))
    for c, (i, j, k) in zip(coeffs, _POWERS):
        out += c * x[:, 0] ** i * x[:, 1] ** j * x[:, 2] ** k
    return out


def polynomial_gradient(
    p: np.ndarray, coeffs: np.ndarray, centre, scale_mm: float = 100.0
) -> np.ndarray:
    x = (np.asarray(p, float) - centre) / scale_mm
    g = np.zeros((len(x), 3))
    for c, pw in zip(coeffs, _POWERS):
        for axis in range(3):
            if pw[axis] == 0:
                continue
            q = pw.copy()
            q[axis] -= 1
            g[:, axis] += c * pw[axis] * x[:, 0] ** q[0] * x[:, 1] ** q[1] * x[:, 2] ** q[2]
    return g / scale_mm


def n_polynomial_terms() -> int:
    return len(_POWERS)
