"""Susceptibility sources of the cross-simulator: veins, microbleeds and calcifications.

Everything here is in scanner coordinates (mm, RAS, B0 along +z), since the angle of a
vein to B0 is what decides whether it looks like a microbleed.

Veins are drawn as the false positives of a real cohort look: nearly half run within
20 degrees of B0, straight, 10-35 mm long (through-plane on axial slices, a round dark
dot on each slice); the others are straight at any orientation, circular arcs, or
trees with one or two branches. All of them end inside the brain. Deoxygenated blood
is +0.25 to +0.5 ppm relative to tissue.

Microbleeds are spheres or slightly elongated ellipsoids in parenchyma, 0.4-2.5 mm in
radius, +0.5 to +2 ppm; about a quarter are put against a vein (``touches_vein``: the
centre within radius + vein radius + 0.5 mm of the vein's axis), the hard case where a
detector that rejects tubular structures loses a true microbleed. Calcifications are
small diamagnetic spheres in the pallidum, the choroid plexus or the pineal gland.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from cmb.crosssim.geometry import CLASSES, PARENCHYMA, Head

__all__ = [
    "Vein",
    "Microbleed",
    "Calcification",
    "VEIN_KINDS",
    "place_veins",
    "place_microbleeds",
    "place_calcifications",
    "segment_distance",
]

#: Vein kinds and their share of a subject's veins.
VEIN_KINDS = {"along_b0": 0.45, "oblique": 0.2, "curved": 0.2, "branching": 0.15}
#: MARS category prior of the microbleeds.
CATEGORY_PRIOR = {"lobar": 0.5, "deep": 0.3, "infratentorial": 0.2}
_FORBIDDEN = tuple(CLASSES.index(n) for n in ("air", "scalp", "skull", "cavity", "ventricle"))
_Z = np.array([0.0, 0.0, 1.0])


@dataclass(frozen=True)
class Vein:
    """One vein: a trunk and optional branches, each a polyline with its radius.

    ``branches`` holds ``(points (m, 3), radius_mm, free_start, free_end)``: a branch
    starts on the trunk (not a free end); every other polyline end is a free end.
    """

    vein_id: int
    kind: str
    chi_ppm: float
    branches: tuple

    @property
    def radius_mm(self) -> float:
        return float(self.branches[0][1])

    def segments(self) -> list[dict]:
        """One row per straight segment (the ``*_veins.tsv`` of the truth)."""
        rows = []
        for b, (pts, radius, free_start, free_end) in enumerate(self.branches):
            for i in range(len(pts) - 1):
                d = pts[i + 1] - pts[i]
                angle = np.degrees(np.arccos(min(1.0, abs(d[2]) / max(np.linalg.norm(d), 1e-12))))
                rows.append(
                    {
                        "vein_id": self.vein_id,
                        "segment": len(rows) + 1,
                        "branch": b,
                        "kind": self.kind,
                        "start": pts[i],
                        "end": pts[i + 1],
                        "radius_mm": float(radius),
                        "angle_to_b0_deg": float(angle),
                        "is_vein_end_start": bool(free_start and i == 0),
                        "is_vein_end_end": bool(free_end and i == len(pts) - 2),
                        "chi_ppm": self.chi_ppm,
                    }
                )
        return rows

    def pieces(self, max_mm: float = 5.0) -> list[tuple]:
        """Segments cut into pieces of at most ``max_mm`` for the field computation:
        ``(start, end, radius, free_start, free_end)``; cuts are joints, not ends."""
        out = []
        for row in self.segments():
            a, b = row["start"], row["end"]
            n = max(1, int(np.ceil(np.linalg.norm(b - a) / max_mm)))
            for i in range(n):
                out.append(
                    (
                        a + (b - a) * i / n,
                        a + (b - a) * (i + 1) / n,
                        row["radius_mm"],
                        row["is_vein_end_start"] and i == 0,
                        row["is_vein_end_end"] and i == n - 1,
                    )
                )
        return out

    def axis_distance(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distance (mm) of points (N, 3) to the nearest segment axis, and that segment's radius."""
        best = np.full(len(p), np.inf)
        radius = np.zeros(len(p))
        for row in self.segments():
            d = segment_distance(p, row["start"], row["end"])
            closer = d < best
            best[closer], radius[closer] = d[closer], row["radius_mm"]
        return best, radius


@dataclass(frozen=True)
class Microbleed:
    label: int
    centre: np.ndarray
    radius_mm: float  # equivalent-volume sphere radius
    half_axes: np.ndarray
    rotation: np.ndarray
    chi_ppm: float
    touches_vein: bool
    mars_category: str
    hemisphere: str

    def inside(self, p: np.ndarray) -> np.ndarray:
        local = ((np.asarray(p) - self.centre) @ self.rotation) / self.half_axes
        return np.einsum("ij,ij->i", local, local) < 1.0


@dataclass(frozen=True)
class Calcification:
    centre: np.ndarray
    radius_mm: float
    chi_ppm: float
    site: str

    def inside(self, p: np.ndarray) -> np.ndarray:
        d = np.asarray(p) - self.centre
        return np.einsum("ij,ij->i", d, d) < self.radius_mm**2


def segment_distance(p: np.ndarray, a, b) -> np.ndarray:
    """Distance of points (N, 3) to the segment [a, b].

    >>> segment_distance(np.array([[0.0, 3.0, 0.0], [0.0, 0.0, 7.0]]), [0, 0, 0], [0, 0, 5]).tolist()
    [3.0, 2.0]
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    t = np.clip(((np.atleast_2d(p) - a) @ d) / max(d @ d, 1e-12), 0.0, 1.0)
    return np.linalg.norm(np.atleast_2d(p) - (a + t[:, None] * d), axis=1)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def _random_unit(rng) -> np.ndarray:
    return _unit(rng.standard_normal(3))


def _near_b0(rng, max_deg: float) -> np.ndarray:
    """Uniform on the spherical cap within ``max_deg`` of +-B0."""
    cos_t = rng.uniform(np.cos(np.radians(max_deg)), 1.0)
    phi = rng.uniform(0, 2 * np.pi)
    s = np.sqrt(1 - cos_t**2)
    return np.array([s * np.cos(phi), s * np.sin(phi), cos_t]) * rng.choice([-1.0, 1.0])


def _perpendicular(d, rng) -> np.ndarray:
    n = np.cross(d, _random_unit(rng))
    return _unit(n)


def _arc(start, tangent, normal, curvature_radius, length, step=2.5) -> np.ndarray:
    n = max(2, int(np.ceil(length / step)))
    s = np.linspace(0.0, length, n + 1)[:, None]
    return (
        start
        + curvature_radius * np.sin(s / curvature_radius) * tangent
        + curvature_radius * (1 - np.cos(s / curvature_radius)) * normal
    )


def _dense(pts: np.ndarray, step: float = 1.0) -> np.ndarray:
    out = [pts[:1]]
    for a, b in zip(pts[:-1], pts[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        out.append(a + (b - a) * (np.arange(1, n + 1) / n)[:, None])
    return np.vstack(out)


def _inside_brain(head: Head, pts: np.ndarray, min_parenchyma: float = 0.85) -> bool:
    cls = head.classify(_dense(pts))
    return not np.isin(cls, _FORBIDDEN).any() and np.isin(cls, PARENCHYMA).mean() >= min_parenchyma


def parenchyma_pool(
    head: Head, rng: np.random.Generator, n: int = 40_000
) -> tuple[np.ndarray, np.ndarray]:
    """Random scanner points in parenchyma and their placement zones (``Head.placement_zone``)."""
    lo, hi = head.icv_box()
    q = rng.uniform(lo, hi, (n, 3))
    p = head.to_scanner(q)
    keep = np.isin(head.classify(p), PARENCHYMA)
    p = p[keep]
    return p, head.placement_zone(p)


def _draw_vein(kind, centre, rng) -> tuple:
    radius = rng.uniform(0.3, 0.9)
    if kind in ("along_b0", "oblique"):
        d = _near_b0(rng, 20.0) if kind == "along_b0" else _random_unit(rng)
        half = rng.uniform(10.0, 35.0) / 2
        return ((np.stack([centre - half * d, centre + half * d]), radius, True, True),)
    if kind == "curved":
        t = _near_b0(rng, 35.0) if rng.random() < 0.4 else _random_unit(rng)
        length = rng.uniform(12.0, 35.0)
        pts = _arc(
            centre - t * length / 2, t, _perpendicular(t, rng), rng.uniform(12.0, 40.0), length
        )
        return ((pts, radius, True, True),)
    # branching: a (possibly bent) trunk and one or two branches leaving it
    t = _near_b0(rng, 25.0) if rng.random() < 0.5 else _random_unit(rng)
    length = rng.uniform(15.0, 35.0)
    bend = rng.uniform(25.0, 80.0) if rng.random() < 0.5 else 1e6
    trunk = _arc(centre - t * length / 2, t, _perpendicular(t, rng), bend, length, step=length / 4)
    out = [(trunk, radius, True, True)]
    for _ in range(int(rng.integers(1, 3))):
        root = trunk[int(rng.integers(1, len(trunk) - 1))]
        seg = trunk[1] - trunk[0]
        angle = np.radians(rng.uniform(30.0, 70.0))
        d = _unit(
            np.cos(angle) * _unit(seg) * rng.choice([-1.0, 1.0])
            + np.sin(angle) * _perpendicular(seg, rng)
        )
        blen = rng.uniform(6.0, 15.0)
        out.append(
            (np.stack([root, root + d * blen]), radius * rng.uniform(0.55, 0.8), False, True)
        )
    return tuple(out)


def place_veins(
    head: Head,
    rng: np.random.Generator,
    n: int,
    pool: np.ndarray | None = None,
    max_tries: int = 60,
) -> list[Vein]:
    """``n`` veins inside the brain (each polyline vertex and every mm between in brain tissue)."""
    if pool is None:
        pool = parenchyma_pool(head, rng)[0]
    kinds = list(VEIN_KINDS)
    veins = []
    for vid in range(1, n + 1):
        kind = kinds[rng.choice(len(kinds), p=list(VEIN_KINDS.values()))]
        for _ in range(max_tries):
            centre = pool[rng.integers(len(pool))]
            branches = _draw_vein(kind, centre, rng)
            if all(_inside_brain(head, b[0]) for b in branches):
                veins.append(Vein(vid, kind, float(rng.uniform(0.25, 0.5)), branches))
                break
    return veins


def _vein_clearance(p: np.ndarray, veins) -> np.ndarray:
    """For points (N, 3): the smallest (distance to a vein axis - that vein's radius)."""
    best = np.full(len(p), np.inf)
    for v in veins:
        d, r = v.axis_distance(p)
        best = np.minimum(best, d - r)
    return best


def _surface_points(centre, half_axes, rotation, margin=0.3) -> np.ndarray:
    dirs = np.array(
        [
            [1, 0, 0],
            [-1, 0, 0],
            [0, 1, 0],
            [0, -1, 0],
            [0, 0, 1],
            [0, 0, -1],
            [1, 1, 1],
            [1, 1, -1],
            [1, -1, 1],
            [1, -1, -1],
            [-1, 1, 1],
            [-1, 1, -1],
            [-1, -1, 1],
            [-1, -1, -1],
        ],
        float,
    )
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return centre + (dirs * (half_axes + margin)) @ rotation.T


def place_microbleeds(
    head: Head,
    rng: np.random.Generator,
    n: int,
    veins,
    calcifications=(),
    pool: tuple | None = None,
    touching_fraction: float = 0.25,
    max_tries: int = 400,
) -> list[Microbleed]:
    """``n`` microbleeds in parenchyma (fewer if the head has no room), labels 1..n."""
    points, categories = pool if pool is not None else parenchyma_pool(head, rng)
    by_cat = {c: points[categories == c] for c in CATEGORY_PRIOR}
    cats = [c for c in CATEGORY_PRIOR if len(by_cat[c])]
    weights = np.array([CATEGORY_PRIOR[c] for c in cats])
    segments = [row for v in veins for row in v.segments()]
    lengths = np.array([np.linalg.norm(r["end"] - r["start"]) for r in segments])
    out: list[Microbleed] = []
    for _ in range(n):
        radius = float(np.exp(rng.uniform(np.log(0.4), np.log(2.5))))
        if rng.random() < 0.3:
            f = rng.uniform(0.8, 1.0, 2)
            half = radius * np.array([f[0], f[1], 1.0 / (f[0] * f[1])])
        else:
            half = np.full(3, radius)
        rot = Rotation.random(random_state=rng).as_matrix()
        chi = float(rng.uniform(0.5, 2.0))
        touching = bool(segments) and rng.random() < touching_fraction
        cat = cats[
            rng.choice(len(cats), p=weights / weights.sum())
        ]  # once: a retry must not change the prior
        for _ in range(max_tries):
            if touching:
                row = segments[rng.choice(len(segments), p=lengths / lengths.sum())]
                axis = row["end"] - row["start"]
                foot = row["start"] + axis * rng.uniform(0.15, 0.85)
                dist = max(
                    row["radius_mm"] + 0.2,
                    row["radius_mm"] + radius + rng.uniform(-0.5 * radius, 0.5),
                )
                centre = foot + dist * _perpendicular(axis, rng)
            else:
                centre = by_cat[cat][rng.integers(len(by_cat[cat]))] + rng.uniform(-0.5, 0.5, 3)
            probe = np.vstack([centre, _surface_points(centre, half, rot)])
            if not np.isin(head.classify(probe), PARENCHYMA).all():
                continue
            if any(np.linalg.norm(centre - m.centre) < m.radius_mm + radius + 4.0 for m in out):
                continue
            if any(
                np.linalg.norm(centre - c.centre) < c.radius_mm + radius + 3.0
                for c in calcifications
            ):
                continue
            clearance = _vein_clearance(centre[None], veins)[0] - radius if veins else np.inf
            if not touching and clearance < 1.5:
                continue
            out.append(
                Microbleed(
                    label=len(out) + 1,
                    centre=centre,
                    radius_mm=radius,
                    half_axes=half,
                    rotation=rot,
                    chi_ppm=chi,
                    touches_vein=bool(clearance <= 0.5),
                    mars_category=str(head.mars_category(centre[None])[0]),
                    hemisphere=str(head.hemisphere(centre[None])[0]),
                )
            )
            break
    return out


def place_calcifications(
    head: Head, rng: np.random.Generator, n: int | None = None
) -> list[Calcification]:
    """One to four calcifications in the pallidum, the choroid plexus or the pineal gland."""
    n = int(rng.integers(1, 5)) if n is None else n
    sites = []
    for side, blob in zip("LR", head.nuclei["pallidum"]):
        sites.append((f"pallidum_{side}", blob.centre + rng.uniform(-0.4, 0.4, 3) * blob.half_axes))
    for side, blob in zip("LR", head.ventricles[:2]):  # choroid plexus in the trigone
        d = np.array([0.0, -0.72 * blob.half_axes[1], 0.0])
        d[2] += blob.bend * d[1] ** 2
        sites.append((f"choroid_plexus_{side}", blob.centre + blob.rotation @ d))
    third = head.ventricles[2]
    sites.append(("pineal", third.centre + np.array([0.0, -third.half_axes[1] - 3.0, 3.0])))
    out = []
    for i in rng.permutation(len(sites))[:n]:
        name, q = sites[i]
        out.append(
            Calcification(
                head.to_scanner(q)[0],
                float(rng.uniform(0.5, 2.0)),
                float(rng.uniform(-1.0, -0.3)),
                name,
            )
        )
    return out
