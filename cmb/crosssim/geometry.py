"""Procedural head of the cross-simulator: anatomy from implicit functions, no template.

The head is defined in its own frame (mm; x right, y anterior, z superior; origin at
the centre of the cerebrum) by functions that can be evaluated at any point, so the
forward model samples tissue at random sub-voxel positions rather than resampling a
voxel model:

- cerebrum: an ellipsoid whose radius is deformed by low-frequency noise, minus the
  infratentorial compartment (cerebellum and brainstem, each with a CSF gap);
- cortex: a grey-matter ribbon under the pial surface, folded by sulci. A sulcus is a
  radial sheet of CSF along the zero set of band-limited noise on the sphere (so the
  sulci form a random connected network on the surface), of varying depth, lined with
  grey matter: the grey/white boundary follows the sulci inwards. An interhemispheric
  fissure (down to the corpus callosum, through at the poles) with its medial cortex;
- lateral ventricles (bent, deformed ellipsoids), a third ventricle, deep grey nuclei
  (caudate, putamen, pallidum, thalamus, red nucleus, dentate; the iron-rich ones are
  darker and carry a susceptibility), a cerebellum (cortex with concentric folia around
  a white core) and a brainstem;
- a CSF shell, the skull and the scalp as layers over the intracranial envelope, and air
  cavities (frontal sinus, mastoids, sometimes the sphenoid sinus) just outside it.

Distances to the ellipsoidal parts are first-order estimates (exact for spheres) and
depths below the cerebral surface are radial; both are good to a fraction of a
millimetre within the few millimetres where they decide a tissue class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from cmb.config import default

__all__ = [
    "CLASSES",
    "PARENCHYMA",
    "PlaneWaves",
    "DirectionMaps",
    "Blob",
    "Head",
    "random_head",
    "random_pose",
]

#: Tissue classes (index = class id). ``vein``, ``cmb`` and ``calcification`` are set
#: by the forward model where those sources are.
CLASSES = (
    "air",
    "scalp",
    "skull",
    "csf",
    "ventricle",
    "cortex",
    "white_matter",
    "caudate",
    "putamen",
    "pallidum",
    "thalamus",
    "red_nucleus",
    "dentate",
    "cerebellar_cortex",
    "cerebellar_white_matter",
    "brainstem",
    "cavity",
    "vein",
    "cmb",
    "calcification",
)
_C = {name: i for i, name in enumerate(CLASSES)}
#: Brain tissue where a microbleed can be (not CSF, ventricles or outside the brain).
PARENCHYMA = tuple(
    _C[n]
    for n in (
        "cortex",
        "white_matter",
        "caudate",
        "putamen",
        "pallidum",
        "thalamus",
        "red_nucleus",
        "dentate",
        "cerebellar_cortex",
        "cerebellar_white_matter",
        "brainstem",
    )
)
#: MARS's juxtacortical (subcortical) white matter, lobar: within this distance of the cortex. The
#: workflow's definition of the label being scored (``mars.juxtacortical_mm``); the anatomy it is
#: measured on is this simulator's own.
JUXTACORTICAL_MM = default("mars", "juxtacortical_mm")
#: 256 near-uniform unit vectors (a Fibonacci sphere) for the cortex-distance search.
_k = np.arange(256) + 0.5
_SEARCH_DIRECTIONS = np.stack(
    [
        np.cos(np.pi * (1 + 5**0.5) * _k) * np.sqrt(1 - (1 - 2 * _k / 256) ** 2),
        np.sin(np.pi * (1 + 5**0.5) * _k) * np.sqrt(1 - (1 - 2 * _k / 256) ** 2),
        1 - 2 * _k / 256,
    ],
    1,
)
del _k
_DEEP_NUCLEI = ("caudate", "putamen", "pallidum", "thalamus")
_R0 = 70.0  # radius (mm) of the sphere on which direction-dependent noise is sampled


@dataclass(frozen=True)
class PlaneWaves:
    """Band-limited random field: a sum of plane waves ``sum a cos(k.p + phase)`` (unit variance)."""

    k: np.ndarray  # (n, 3) wave vectors, rad/mm
    phase: np.ndarray  # (n,)

    @classmethod
    def random(
        cls, rng: np.random.Generator, wavelength_mm: tuple[float, float], n: int = 48
    ) -> PlaneWaves:
        d = rng.standard_normal((n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        lam = rng.uniform(*wavelength_mm, n)
        return cls(d * (2 * np.pi / lam)[:, None], rng.uniform(0, 2 * np.pi, n))

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return np.sqrt(2.0 / len(self.phase)) * np.cos(np.asarray(p) @ self.k.T + self.phase).sum(
            -1
        )

    def gradient(self, p: np.ndarray) -> np.ndarray:
        s = -np.sqrt(2.0 / len(self.phase)) * np.sin(np.asarray(p) @ self.k.T + self.phase)
        return s @ self.k


@dataclass(frozen=True)
class DirectionMaps:
    """Functions of the direction from the head centre, tabulated on a (theta, phi) grid.

    Layers (index): ``0`` radius of the pial surface (mm), ``1`` signed distance to the
    nearest sulcal midplane on the 70 mm sphere (mm), ``2`` sulcal depth (mm), ``3``
    cortical thickness (mm), ``4`` CSF shell, ``5`` skull and ``6`` scalp thickness (mm),
    ``7-9`` a tangential vector field that slants the sulci with depth.
    """

    maps: np.ndarray  # (10, n_theta, n_phi) float32

    NAMES = (
        "pial_radius",
        "sulcus_distance",
        "sulcal_depth",
        "cortex_thickness",
        "csf_shell",
        "skull",
        "scalp",
        "slant_x",
        "slant_y",
        "slant_z",
    )

    @staticmethod
    def directions(n_theta: int = 361, n_phi: int = 721) -> np.ndarray:
        theta = np.linspace(0.0, np.pi, n_theta)
        phi = np.linspace(-np.pi, np.pi, n_phi)
        t, p = np.meshgrid(theta, phi, indexing="ij")
        return np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1)

    def lookup(self, u: np.ndarray, layers=slice(None)) -> np.ndarray:
        """Bilinear values of the layers at unit directions ``u`` (N, 3); returns (n_layers, N)."""
        n_layers, n_t, n_p = self.maps[layers].shape
        t = np.arccos(np.clip(u[:, 2], -1.0, 1.0)) * ((n_t - 1) / np.pi)
        p = (np.arctan2(u[:, 1], u[:, 0]) + np.pi) * ((n_p - 1) / (2 * np.pi))
        i0 = np.minimum(t.astype(np.int64), n_t - 2)
        j0 = np.minimum(p.astype(np.int64), n_p - 2)
        ft, fp = (t - i0).astype(np.float32), (p - j0).astype(np.float32)
        flat = self.maps[layers].reshape(n_layers, -1)
        f = i0 * n_p + j0
        top = flat[:, f] * (1 - fp) + flat[:, f + 1] * fp
        bottom = flat[:, f + n_p] * (1 - fp) + flat[:, f + n_p + 1] * fp
        return top * (1 - ft) + bottom * ft


@dataclass(frozen=True)
class Blob:
    """A deformed ellipsoid: rotated half-axes, optional bend and a noisy surface.

    ``bend`` lifts the local third axis by ``bend * (second axis)^2`` (mm^-1), which gives
    the lateral ventricles their arc; ``roughness`` scales the normalized radius by
    ``1 + roughness * noise``.
    """

    centre: np.ndarray
    half_axes: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    bend: float = 0.0
    roughness: float = 0.0
    noise: PlaneWaves | None = None

    def local(self, q: np.ndarray) -> np.ndarray:
        d = (np.asarray(q) - self.centre) @ self.rotation
        if self.bend:
            d[:, 2] = d[:, 2] - self.bend * d[:, 1] ** 2
        return d / self.half_axes

    def _roughen(self, q: np.ndarray, r: np.ndarray) -> np.ndarray:
        """``r * (1 + roughness * noise)``, the noise evaluated only where it can move the surface."""
        if not self.roughness or self.noise is None:
            return r
        reach = 3.0 * self.roughness  # the noise stays within about +-3
        near = np.flatnonzero((r > 1.0 / (1.0 + reach)) & (r < 1.0 / max(1.0 - reach, 0.05)))
        r = r.copy()
        r[near] *= 1.0 + self.roughness * np.clip(self.noise(np.asarray(q)[near]), -3.0, 3.0)
        return r

    def radius(self, q: np.ndarray) -> np.ndarray:
        """Normalized radius: < 1 inside."""
        return self._roughen(q, np.linalg.norm(self.local(q), axis=1))

    def inside(self, q: np.ndarray) -> np.ndarray:
        return self.radius(q) < 1.0

    def distance(self, q: np.ndarray) -> np.ndarray:
        """Signed distance estimate (mm, negative inside): exact for a sphere."""
        p = self.local(q)
        r = np.linalg.norm(p, axis=1)
        grad = np.linalg.norm(p / self.half_axes, axis=1)
        r = self._roughen(q, r)
        return (r - 1.0) * r / np.maximum(grad, 1e-9)

    @property
    def volume_mm3(self) -> float:
        return float(4.0 / 3.0 * np.pi * np.prod(self.half_axes))

    def box(self, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        ext = np.abs(self.rotation) @ self.half_axes * (1.0 + 2 * self.roughness) + margin
        if self.bend:
            ext = ext + abs(self.bend) * float(self.half_axes[1]) ** 2
        return self.centre - ext, self.centre + ext


@dataclass(frozen=True)
class Head:
    """One subject's head: anatomy in the head frame and its pose in the scanner.

    ``scanner = rotation @ head + translation`` (mm, RAS, B0 along scanner +z).
    """

    rotation: np.ndarray
    translation: np.ndarray
    half_axes: np.ndarray  # cerebrum ellipsoid (a, b, c)
    maps: DirectionMaps
    cerebellum: Blob
    brainstem: Blob
    nuclei: dict  # name -> list of Blob (left, right)
    ventricles: tuple  # Blob, ...
    cavities: tuple  # (name, centre (head frame), radius_mm), ...
    sulcus_halfwidth: float  # mm, half-width of the CSF in a sulcus
    fissure_halfwidth: float
    callosum_top: float  # z (mm) down to which the interhemispheric fissure reaches
    tentorial_gap: float  # CSF between cerebrum and cerebellum/brainstem, mm
    folia_period: float  # mm
    folia_noise: PlaneWaves
    cerebellar_cortex: float  # depth of the cerebellar cortex, mm

    # ----------------------------------------------------------------- frames
    def to_head(self, p_scanner: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(p_scanner) - self.translation) @ self.rotation

    def to_scanner(self, q: np.ndarray) -> np.ndarray:
        return np.atleast_2d(q) @ self.rotation.T + self.translation

    # ----------------------------------------------------------------- tissue
    def classify(self, p_scanner: np.ndarray, chunk: int = 1_000_000) -> np.ndarray:
        """Tissue class (index into :data:`CLASSES`) of scanner points (N, 3)."""
        p = np.atleast_2d(p_scanner)
        out = np.empty(len(p), np.uint8)
        for s in range(0, len(p), chunk):
            out[s : s + chunk] = self._classify_head(self.to_head(p[s : s + chunk]))[0]
        return out

    def depth(self, p_scanner: np.ndarray) -> np.ndarray:
        """Depth below the cerebral surface (mm; radial, or to the tentorium)."""
        return self._classify_head(self.to_head(p_scanner))[1]

    def _classify_head(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(q, np.float64)
        rho = np.sqrt(np.einsum("ij,ij->i", q, q))
        cls = np.zeros(len(q), np.uint8)
        depth = np.zeros(len(q))
        # most of a field of view is air: only points near the head are classified
        near = rho < self._outer_radius
        for blob in (self.cerebellum, self.brainstem):
            lo, hi = blob.box(margin=self._outer_margin)
            near |= np.all((q > lo) & (q < hi), axis=1)
        idx = np.flatnonzero(near)
        if len(idx):
            cls[idx], depth[idx] = self._classify_near(q[idx], rho[idx])
        return cls, depth

    @property
    def _outer_radius(self) -> float:
        m = self.maps.maps
        return float((m[0] + m[4] + m[5] + m[6]).max()) + 1.0

    @property
    def _outer_margin(self) -> float:
        m = self.maps.maps
        return float((m[4] + m[5] + m[6]).max()) + 1.0

    def _classify_near(self, q: np.ndarray, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = q / np.maximum(rho, 1e-6)[:, None]
        pial, sulc, sdepth, thick, csf, skull, scalp, *slant = self.maps.lookup(u)
        d_cb = self.cerebellum.distance(q)
        d_bs = self.brainstem.distance(q)
        d_inf = np.minimum(d_cb, d_bs)
        outer = rho - pial  # > 0 outside the pial surface
        d_icv = np.minimum(outer, d_inf) - csf
        cls = np.zeros(len(q), np.uint8)
        cls[d_icv < skull + scalp] = _C["scalp"]
        cls[d_icv < skull] = _C["skull"]
        cls[d_icv <= 0] = _C["csf"]

        cerebrum = (outer < 0) & (d_inf > self.tentorial_gap)
        depth = np.minimum(-outer, d_inf - self.tentorial_gap)
        below = -outer
        # sulci are not radial: the sheet drifts sideways with depth (and bends, where the slant varies)
        deep = np.flatnonzero((below > 0) & (below < sdepth + thick + 1.0))
        if len(deep):
            tilt = np.stack([sl[deep] for sl in slant], -1) * (below[deep] / _R0)[:, None]
            v = u[deep] + tilt
            sulc = sulc.copy()
            sulc[deep] = self.maps.lookup(
                v / np.linalg.norm(v, axis=1, keepdims=True), slice(1, 2)
            )[0]
        sulcus_mm = np.abs(sulc) * rho / _R0
        in_sulcus = (sulcus_mm < self.sulcus_halfwidth) & (below < sdepth)
        lined = (sulcus_mm < self.sulcus_halfwidth + thick) & (below < sdepth + thick)
        # the fissure reaches down to the corpus callosum, an arch; in front of and behind it, to the base
        half_cc = 0.40 * self.half_axes[1]
        beyond = np.maximum(np.abs(q[:, 1] - 0.04 * self.half_axes[1]) - half_cc, 0.0)
        floor = self.callosum_top - 0.004 * q[:, 1] ** 2 - 0.08 * beyond**2
        ax = np.abs(q[:, 0])
        in_fissure = (ax < self.fissure_halfwidth) & (q[:, 2] > floor)
        medial = (ax < self.fissure_halfwidth + thick) & (q[:, 2] > floor - thick)
        grey = (depth < thick) | lined | medial
        cls[cerebrum] = _C["white_matter"]
        cls[cerebrum & grey] = _C["cortex"]
        cls[cerebrum & (in_sulcus | in_fissure)] = _C["csf"]

        self._deep(q, cls, cerebrum)
        self._infratentorial(q, cls, d_cb, d_bs)
        for _, centre, radius in self.cavities:
            inside = np.sum((q - centre) ** 2, axis=1) < radius**2
            cls[inside & ((cls == _C["skull"]) | (cls == _C["scalp"]))] = _C["cavity"]
        return cls, np.where(cerebrum, depth, np.where(d_inf < 0, -d_inf, 0.0))

    def _deep(self, q, cls, cerebrum) -> None:
        a, b, c = self.half_axes
        sel = np.flatnonzero(
            cerebrum
            & (np.abs(q[:, 0]) < 0.62 * a)
            & (np.abs(q[:, 1]) < 0.62 * b)
            & (np.abs(q[:, 2]) < 0.55 * c)
        )
        if not len(sel):
            return
        qs = q[sel]
        sub = cls[sel]
        for name in _DEEP_NUCLEI + ("red_nucleus",):
            for blob in self.nuclei[name]:
                sub[blob.inside(qs)] = _C[name]
        for blob in self.ventricles:
            sub[blob.inside(qs)] = _C["ventricle"]
        cls[sel] = sub

    def _infratentorial(self, q, cls, d_cb, d_bs) -> None:
        cb = np.flatnonzero(d_cb < 0)
        if len(cb):
            depth = -d_cb[cb]
            sub = np.full(len(cb), _C["cerebellar_cortex"], np.uint8)
            qs = q[cb]
            core = depth > self.cerebellar_cortex * (1.0 + 0.25 * self.folia_noise(qs * 0.5))
            sub[core] = _C["cerebellar_white_matter"]
            wave = np.cos(2 * np.pi * depth / self.folia_period + 1.5 * self.folia_noise(qs))
            sub[(wave > 0.7) & ~core & (depth > 0.6)] = _C["csf"]
            for blob in self.nuclei["dentate"]:
                sub[blob.inside(qs)] = _C["dentate"]
            cls[cb] = sub
        bs = np.flatnonzero(d_bs < 0)
        if len(bs):
            sub = np.full(len(bs), _C["brainstem"], np.uint8)
            for blob in self.nuclei["red_nucleus"]:
                sub[blob.inside(q[bs])] = _C["red_nucleus"]
            cls[bs] = sub

    # ----------------------------------------------------------------- anatomy labels
    def placement_zone(self, p_scanner: np.ndarray) -> np.ndarray:
        """The stratum that :func:`cmb.crosssim.sources.place_microbleeds` draws CMB sites from
        (``CATEGORY_PRIOR``): ``lobar`` (cortex, and white matter within 15 mm of the cerebral
        surface, the zone of the sulci), ``deep``, ``infratentorial``, or ``n/a`` outside
        parenchyma. A placement prior only: the truth's label is :meth:`mars_category`."""
        q = self.to_head(p_scanner)
        cls, depth = self._classify_head(q)
        out = np.full(len(q), "n/a", dtype=object)
        out[np.isin(cls, PARENCHYMA)] = "deep"
        out[(cls == _C["cortex"]) | ((cls == _C["white_matter"]) & (depth < 15.0))] = "lobar"
        out[self._infratentorial_mask(q, cls)] = "infratentorial"
        return out

    def mars_category(
        self, p_scanner: np.ndarray, juxtacortical_mm: float = JUXTACORTICAL_MM
    ) -> np.ndarray:
        """MARS category of scanner points: ``lobar`` (cortex, and white matter within
        ``juxtacortical_mm`` of the nearest cortex: the outer surface, a sulcus's lining or the
        medial surface), ``deep`` (deeper white matter, the nuclei), ``infratentorial``
        (cerebellum, brainstem), or ``n/a`` outside parenchyma."""
        p_scanner = np.atleast_2d(np.asarray(p_scanner, np.float64))
        q = self.to_head(p_scanner)
        cls, _ = self._classify_head(q)
        out = np.full(len(q), "n/a", dtype=object)
        out[np.isin(cls, PARENCHYMA)] = "deep"
        out[cls == _C["cortex"]] = "lobar"
        for i in np.flatnonzero(cls == _C["white_matter"]):
            if self.cortex_distance(p_scanner[i], juxtacortical_mm) <= juxtacortical_mm:
                out[i] = "lobar"
        out[self._infratentorial_mask(q, cls)] = "infratentorial"
        return out

    def cortex_distance(self, p_scanner: np.ndarray, max_mm: float, step_mm: float = 0.25) -> float:
        """Distance (mm) from one scanner point to the nearest cerebral cortex, searched on
        spheres of growing radius (:data:`_SEARCH_DIRECTIONS`, ``step_mm`` apart); ``inf`` past
        ``max_mm``."""
        radii = np.arange(step_mm, max_mm + step_mm / 2, step_mm)
        pts = (
            np.asarray(p_scanner, np.float64).reshape(1, 1, 3)
            + radii[:, None, None] * _SEARCH_DIRECTIONS
        )
        hit = (self.classify(pts.reshape(-1, 3)) == _C["cortex"]).reshape(len(radii), -1).any(1)
        return float(radii[np.argmax(hit)]) if hit.any() else float("inf")

    def _infratentorial_mask(self, q: np.ndarray, cls: np.ndarray) -> np.ndarray:
        infra = np.isin(
            cls,
            [
                _C[n]
                for n in ("cerebellar_cortex", "cerebellar_white_matter", "dentate", "brainstem")
            ],
        )
        return infra | ((cls == _C["red_nucleus"]) & self.brainstem.inside(q))

    def hemisphere(self, p_scanner: np.ndarray) -> np.ndarray:
        """``L``, ``R`` or ``midline`` (within 1 mm of the head's mid-sagittal plane)."""
        x = self.to_head(p_scanner)[:, 0]
        return np.where(np.abs(x) < 1.0, "midline", np.where(x > 0, "R", "L")).astype(object)

    def icv_box(self) -> tuple[np.ndarray, np.ndarray]:
        """Head-frame bounds of the intracranial volume (mm)."""
        lo = np.minimum(-self.half_axes * 1.1, self.cerebellum.box()[0])
        hi = np.maximum(self.half_axes * 1.1, self.cerebellum.box()[1])
        return lo, hi


def _mirror(centre, half_axes, rng, scale, rough_noise, roughness=0.08, jitter=1.5) -> list[Blob]:
    """A left/right pair of nuclei with independent jitter (centre given for the right one)."""
    out = []
    for side in (-1.0, 1.0):
        c = np.asarray(centre, float) * scale * np.array([side, 1.0, 1.0]) + rng.normal(
            0, jitter, 3
        )
        h = np.asarray(half_axes, float) * scale * rng.uniform(0.88, 1.12, 3)
        rot = Rotation.from_euler("xyz", rng.normal(0, 6, 3), degrees=True).as_matrix()
        out.append(Blob(c, h, rot, roughness=roughness, noise=rough_noise))
    return out


def random_pose(
    rng: np.random.Generator, max_rotation_deg: float = 15.0, max_shift_mm: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """Head rotation (random axis, angle up to ``max_rotation_deg``) and translation."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rng.uniform(0.0, max_rotation_deg))
    return Rotation.from_rotvec(axis * angle).as_matrix(), rng.uniform(
        -max_shift_mm, max_shift_mm, 3
    )


def random_head(rng: np.random.Generator, pose: bool = True, map_shape=(361, 721)) -> Head:
    """A random procedural head (size, shape, folding, nuclei, ventricles, cavities, pose)."""
    scale = rng.uniform(0.92, 1.04)
    # an ellipsoid of about 1.25 L (1.5 L with CSF and the posterior fossa); the positions of the inner
    # structures below are given for a 68 x 87 x 62 mm cerebrum and scaled along
    abc = np.array([65.0, 83.0, 55.0]) * scale * rng.uniform(0.96, 1.04, 3)
    s3 = abc / np.array([68.0, 87.0, 62.0])

    u = DirectionMaps.directions(*map_shape).reshape(-1, 3)
    ell = 1.0 / np.sqrt(((u / abc) ** 2).sum(1))
    low = [PlaneWaves.random(rng, (90.0, 220.0), n=12) for _ in range(7)]
    pts = u * _R0
    pial = ell * (1.0 + 0.035 * low[0](pts))
    gyri = PlaneWaves.random(rng, (19.0, 30.0), n=96)
    n = gyri(pts)
    g = gyri.gradient(pts)
    g_t = g - (g * u).sum(1, keepdims=True) * u
    sulc = np.clip(n / np.maximum(np.linalg.norm(g_t, axis=1), 1e-6), -30.0, 30.0)
    sdepth = rng.uniform(9.0, 15.0) * (1.0 + 0.3 * low[1](pts))
    thick = rng.uniform(2.2, 2.9) * (1.0 + 0.15 * low[2](pts))
    csf = rng.uniform(1.5, 3.8) * np.clip(1.0 + 0.3 * low[3](pts), 0.4, None)
    skull = (
        rng.uniform(5.0, 7.5) * (1.0 + 0.15 * low[4](pts)) * (1.0 + 0.25 * np.clip(-u[:, 1], 0, 1))
    )
    scalp = rng.uniform(4.0, 7.0) * (1.0 + 0.15 * low[5](pts))
    slant = np.stack(
        [w(pts) for w in (PlaneWaves.random(rng, (40.0, 100.0), n=12) for _ in range(3))], -1
    )
    slant = 0.9 * (slant - (slant * u).sum(1, keepdims=True) * u)
    maps = DirectionMaps(
        np.concatenate([np.stack([pial, sulc, sdepth, thick, csf, skull, scalp]), slant.T])
        .astype(np.float32)
        .reshape(10, *map_shape)
    )

    rough = PlaneWaves.random(rng, (25.0, 60.0), n=8)
    tilt = Rotation.from_euler("x", rng.uniform(-10, 10), degrees=True).as_matrix()
    cerebellum = Blob(
        np.array([0.0, -43.0, -47.0]) * s3 + rng.normal(0, 1.5, 3),
        np.array([48.0, 27.0, 20.0]) * s3 * rng.uniform(0.92, 1.08, 3),
        tilt,
        roughness=0.03,
        noise=rough,
    )
    brainstem = Blob(
        np.array([0.0, -15.0, -43.0]) * s3 + rng.normal(0, 1.0, 3),
        np.array([12.0, 12.5, 28.0]) * s3 * rng.uniform(0.92, 1.08, 3),
        Rotation.from_euler("x", rng.uniform(12, 25), degrees=True).as_matrix(),
    )
    nuc_noise = PlaneWaves.random(rng, (12.0, 30.0), n=8)
    nuclei = {
        "caudate": _mirror((12.5, 24.0, 0.0), (4.5, 11.0, 6.0), rng, s3, nuc_noise),
        "putamen": _mirror((24.0, 17.0, -10.0), (5.0, 13.0, 9.0), rng, s3, nuc_noise),
        "pallidum": _mirror((18.5, 12.0, -11.0), (3.2, 7.5, 5.0), rng, s3, nuc_noise),
        "thalamus": _mirror((10.5, -3.0, -4.0), (7.5, 13.0, 8.0), rng, s3, nuc_noise),
        "red_nucleus": _mirror((4.5, -4.0, -20.0), (2.8, 3.2, 3.2), rng, s3, nuc_noise, jitter=0.5),
        "dentate": _mirror((14.0, -41.0, -45.0), (6.5, 4.5, 4.0), rng, s3, nuc_noise, jitter=1.0),
    }
    vent_scale = rng.uniform(0.8, 1.6)
    vent_noise = PlaneWaves.random(rng, (20.0, 50.0), n=8)
    ventricles = []
    for side in (-1.0, 1.0):
        c = np.array([side * 8.5, 4.0, 8.0]) * s3 + rng.normal(0, 1.0, 3)
        h = np.array([4.5 * vent_scale, 29.0, 6.5 * vent_scale]) * s3 * rng.uniform(0.9, 1.1, 3)
        rot = Rotation.from_euler("z", side * rng.uniform(3, 9), degrees=True).as_matrix()
        ventricles.append(Blob(c, h, rot, bend=-0.010, roughness=0.06, noise=vent_noise))
    ventricles.append(
        Blob(np.array([0.0, 4.0, -10.0]) * s3, np.array([1.2 * vent_scale, 12.0, 9.0]) * s3)
    )

    cavities = []
    for name, direction, radius, prob in (
        ("frontal_sinus", (0.0, 0.92, -0.38), (8.0, 12.0), 1.0),
        ("mastoid_left", (-0.72, -0.22, -0.66), (7.0, 10.0), 1.0),
        ("mastoid_right", (0.72, -0.22, -0.66), (7.0, 10.0), 1.0),
        ("sphenoid_sinus", (0.0, 0.45, -0.89), (8.0, 11.0), 0.5),
    ):
        if rng.random() >= prob:
            continue
        d = np.asarray(direction) + rng.normal(0, 0.04, 3)
        d /= np.linalg.norm(d)
        r = rng.uniform(*radius)
        layers = maps.lookup(d[None])[:, 0]
        rim = float(layers[0] + layers[4])
        cavities.append((name, d * (rim + r + rng.uniform(0.5, 2.5)), r))

    rotation, translation = random_pose(rng) if pose else (np.eye(3), np.zeros(3))
    return Head(
        rotation=rotation,
        translation=translation,
        half_axes=abc,
        maps=maps,
        cerebellum=cerebellum,
        brainstem=brainstem,
        nuclei=nuclei,
        ventricles=tuple(ventricles),
        cavities=tuple(cavities),
        sulcus_halfwidth=rng.uniform(0.35, 1.0),
        fissure_halfwidth=rng.uniform(0.6, 1.4),
        callosum_top=rng.uniform(8.0, 14.0) * s3[2],
        tentorial_gap=rng.uniform(1.5, 3.0),
        folia_period=rng.uniform(3.0, 4.2),
        folia_noise=PlaneWaves.random(rng, (15.0, 40.0), n=8),
        cerebellar_cortex=rng.uniform(7.0, 10.0),
    )
