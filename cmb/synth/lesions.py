"""Microbleeds and their mimics (veins, calcifications), placed on the MNI head model.

Positions are drawn in MNI space, where the anatomy is known;
:func:`to_subject_space` then maps every source point into subject anatomy space
(see :mod:`cmb.synth.geometry`) in one batch, and the scan simulation moves them
into scanner space with the head pose.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from cmb.cache import load_arrays, save_arrays
from cmb.mars_region import (
    CSF_LABEL,
    MARS_MAP_VERSION,
    MarsMap,
    build_mars_map,
    decode_label,
    label_table,
)
from cmb.synth.anatomy import HeadModel
from cmb.synth.geometry import SubjectWarp, vein_clearance
from cmb.synth.physics import Source, rad_per_ppm
from cmb.template import load_mni

__all__ = [
    "LOCATION_PRIORS",
    "COUNT_PROFILES",
    "CMB_SIZE_MODELS",
    "TOUCH_MARGIN_MM",
    "Lesion",
    "draw_cmb_count",
    "draw_cmb_size",
    "place_cmbs",
    "place_veins",
    "place_calcifications",
    "to_subject_space",
    "parse_location_prior",
    "blooming_factor",
    "truth_mars_map",
    "labels_at",
    "vein_paths",
]

LOCATION_PRIORS = {
    "mixed": {"lobar": 0.5, "deep": 0.35, "infratentorial": 0.15},
    "caa": {"lobar": 0.9, "deep": 0.05, "infratentorial": 0.05},
    "hypertensive": {"lobar": 0.25, "deep": 0.55, "infratentorial": 0.2},
}


def parse_location_prior(spec: str) -> dict[str, float]:
    """A named prior, or weights such as ``"lobar=0.6,deep=0.3,infratentorial=0.1"``.

    >>> parse_location_prior("lobar=3,deep=1")
    {'lobar': 0.75, 'deep': 0.25, 'infratentorial': 0.0}
    >>> parse_location_prior("caa")["lobar"]
    0.9
    """
    if spec in LOCATION_PRIORS:
        return dict(LOCATION_PRIORS[spec])
    weights = {"lobar": 0.0, "deep": 0.0, "infratentorial": 0.0}
    try:
        for item in spec.split(","):
            key, value = item.split("=")
            key = key.strip()
            if key not in weights:
                raise ValueError(key)
            weights[key] = float(value)
    except ValueError:
        raise ValueError(
            f"unknown location prior {spec!r}; use one of {', '.join(LOCATION_PRIORS)} "
            "or weights like lobar=0.6,deep=0.3,infratentorial=0.1"
        ) from None
    total = sum(weights.values())
    if total <= 0 or any(v < 0 for v in weights.values()):
        raise ValueError(f"location prior {spec!r}: weights must be >= 0 and not all zero")
    return {k: v / total for k, v in weights.items()}


# A CMB touches a vein when its centre is within its radius + the vein's radius + this of the vein's axis.
TOUCH_MARGIN_MM = 0.5

#: How the apparent (blooming) diameter of a CMB is drawn, in mm. ``typical``: log-normal around
#: 3.3 mm, as in most cohorts (3% above 6 mm); ``wide``: log-uniform over the whole 2-10 mm of the
#: definition (40% above 5 mm), so that a network also sees the large ones
#: (a detector trained on ``typical`` alone rejected the 7-8 mm CMBs of ``cmb crosssim``).
CMB_SIZE_MODELS = {"typical": ("lognormal", 3.3, 0.35), "wide": ("loguniform", 2.0, 10.0)}


def draw_cmb_size(
    rng: np.random.Generator, chi_ppm: float, b0: float, te: float, size_model: str = "typical"
) -> tuple[float, float]:
    """``(apparent diameter, physical radius)`` in mm of one CMB (:data:`CMB_SIZE_MODELS`).

    >>> rng = np.random.default_rng(0)
    >>> sizes = [draw_cmb_size(rng, 1.0, 3.0, 0.02, "wide")[0] for _ in range(2000)]
    >>> 2.0 <= min(sizes) and max(sizes) <= 10.0, round(float(np.mean(np.array(sizes) > 5.0)), 1)
    (True, 0.4)
    """
    kind, a, b = CMB_SIZE_MODELS[size_model]
    if kind == "lognormal":
        apparent = float(np.clip(rng.lognormal(np.log(a), b), 2.0, 10.0))
    else:
        apparent = float(np.exp(rng.uniform(np.log(a), np.log(b))))
    radius = float(np.clip(apparent / 2 / blooming_factor(chi_ppm, b0, te), 0.25, 3.0))
    return apparent, radius


# (probability, low, high) of the per-subject CMB count.
COUNT_PROFILES = {
    "population": ((0.40, 0, 0), (0.42, 1, 3), (0.12, 4, 9), (0.06, 10, 30)),
    "enriched": ((0.10, 0, 0), (0.50, 1, 3), (0.25, 4, 9), (0.15, 10, 30)),
}


@dataclass
class Lesion:
    """A source with its MNI centre and anatomical labels (for the truth tables)."""

    source: Source  # points in subject space
    mni: np.ndarray  # (3,) centre in MNI mm
    mars_category: str
    mars_region: str
    hemisphere: str
    atlas_label: str


def draw_cmb_count(rng: np.random.Generator, profile: str = "population") -> int:
    """Number of CMBs of one subject: many with none, most 1-3, a few with 10-30.

    >>> counts = [draw_cmb_count(np.random.default_rng(s)) for s in range(400)]
    >>> 0.3 < counts.count(0) / 400 < 0.5 and max(counts) <= 30
    True
    """
    table = COUNT_PROFILES[profile]
    k = rng.choice(len(table), p=[t[0] for t in table])
    return int(rng.integers(table[k][1], table[k][2] + 1))


@functools.lru_cache(maxsize=4)
def _parenchyma_sites(model: HeadModel) -> dict[str, np.ndarray]:
    """Voxel indices, per MARS category, safely inside parenchyma (away from CSF and veins)."""
    tissue = (model.gm + model.wm) >= 0.9
    parenchyma = tissue & (model.mars > 0) & (model.mars != CSF_LABEL) & (model.veins < 0.05)
    parenchyma = ndi.binary_erosion(parenchyma, iterations=max(1, int(round(1.5 / model.step))))
    sites = {}
    lut = label_table()
    cats = np.full(int(lut["index"].max()) + 1, "", dtype=object)
    cats[lut["index"].to_numpy()] = lut["mars_category"].to_numpy()
    cat_map = cats[np.clip(model.mars, 0, len(cats) - 1)]
    for cat in ("lobar", "deep", "infratentorial"):
        sites[cat] = np.argwhere(parenchyma & (cat_map == cat))
    return sites


@functools.lru_cache(maxsize=1)
def truth_mars_map() -> MarsMap:
    """The MARS map truth labels come from: 1 mm, default settings, as the workflow's default.

    Used whatever the head model's resolution (for a 1 mm model it is the model's own
    map), so that a coarse (2 mm) head model does not move a CMB across a region border
    on the truth side.
    """
    cached = load_arrays(f"mars{MARS_MAP_VERSION}-res1")
    if cached is not None:
        return MarsMap(cached[0]["labels"], cached[0]["affine"])
    mars = build_mars_map(load_mni(1))
    save_arrays(f"mars{MARS_MAP_VERSION}-res1", {"labels": mars.labels, "affine": mars.affine}, {})
    return mars


def labels_at(model: HeadModel, mni: np.ndarray) -> tuple[str, str, str, str]:
    """Truth labels of an MNI point: MARS category, region and hemisphere (:func:`truth_mars_map`), DK name."""
    ijk = tuple(np.round(model.mni_to_index(mni)).astype(int))
    mars = truth_mars_map()
    at = np.round(np.linalg.solve(mars.affine, np.append(mni, 1.0))[:3]).astype(int)
    at = tuple(np.clip(at, 0, np.array(mars.labels.shape) - 1))
    cat, region, hemi = decode_label(int(mars.labels[at]))
    return cat, region, hemi, model.dk_names.get(int(model.dk[ijk]), "Unknown")


def blooming_factor(chi_ppm: float, b0: float, te: float) -> float:
    """Apparent / physical radius of a paramagnetic sphere on a gradient-echo image.

    The sphere's field at distance R along B0 is ``2 chi / 3 (r / R)^3`` ppm; the
    signal is lost where that dephases by about a radian.

    >>> round(blooming_factor(1.0, 3.0, 0.02), 2), round(blooming_factor(1.0, 1.5, 0.02), 2)
    (2.2, 1.75)
    """
    return max(1.0, (2.0 * rad_per_ppm(b0, te) * chi_ppm / 3.0) ** (1.0 / 3.0))


def place_cmbs(
    model: HeadModel,
    warp: SubjectWarp,
    n: int,
    rng: np.random.Generator,
    prior: dict[str, float],
    b0: float = 3.0,
    te: float = 0.02,
    avoid_veins: list[Lesion] | None = None,
    existing: list[Lesion] = (),
    size_model: str = "typical",
) -> list[Lesion]:
    """Draw ``n`` microbleeds in parenchyma, by MARS category with probabilities ``prior``.

    The apparent diameter on an image at field ``b0`` and echo time ``te`` is drawn
    between 2 and 10 mm (:func:`draw_cmb_size`, by ``size_model``); the physical radius
    follows from the blooming.
    With ``avoid_veins`` (vein lesions, still in MNI space), a CMB is kept 1 mm
    further from their walls than touching (:data:`TOUCH_MARGIN_MM`), so that
    touching ones are only those placed to touch. CMBs in ``existing`` are kept
    clear of, and numbered after.
    """
    if avoid_veins:
        paths, radii = vein_paths(avoid_veins)
    sites = _parenchyma_sites(model)
    cats = [c for c in ("lobar", "deep", "infratentorial") if len(sites[c])]
    p = np.array([prior.get(c, 0.0) for c in cats], float)
    p /= p.sum()
    out: list[Lesion] = []
    tries = 0
    while len(out) < n and tries < 50 * max(n, 1):
        tries += 1
        cat = cats[rng.choice(len(cats), p=p)]
        ijk = sites[cat][rng.integers(len(sites[cat]))] + rng.uniform(-0.5, 0.5, 3)
        mni = model.index_to_mni(ijk)
        chi = float(rng.uniform(0.6, 2.0))
        _, radius = draw_cmb_size(rng, chi, b0, te, size_model)
        if any(
            np.linalg.norm(mni - o.mni) < 4.0 * (radius + o.source.radius_mm) + 2.0
            for o in (*existing, *out)
        ):
            continue
        if avoid_veins and vein_clearance(mni, paths, radii)[0] <= radius + TOUCH_MARGIN_MM + 1.0:
            continue
        labels = labels_at(model, mni)
        if labels[0] != cat:
            continue
        src = Source(
            kind="cmb",
            points=mni[None],
            radius_mm=radius,
            chi_ppm=chi,
            pd_scale=float(rng.uniform(0.6, 1.0)),
            r2s_extra=float(rng.uniform(50, 250)),
            label=len(existing) + len(out) + 1,
        )
        out.append(Lesion(src, mni, *labels))
    return out


def vein_paths(lesions: list[Lesion]) -> tuple[list[np.ndarray], list[float]]:
    """Axis (the whole path) and radius of each vein among ``lesions``, once per vein."""
    seen, paths, radii = set(), [], []
    for les in lesions:
        extra = les.source.extra
        if les.source.kind == "vein" and extra["vein_id"] not in seen:
            seen.add(extra["vein_id"])
            paths.append(extra["path"])
            radii.append(les.source.radius_mm)
    return paths, radii


def _polyline(start, end, rng, n=6, wiggle=1.5):
    t = np.linspace(0, 1, n)[:, None]
    pts = start + t * (end - start)
    d = end - start
    d = d / max(np.linalg.norm(d), 1e-6)
    perp = np.cross(d, rng.normal(size=3))
    perp /= max(np.linalg.norm(perp), 1e-6)
    bend = np.sin(np.pi * t) * rng.uniform(-wiggle, wiggle) * perp
    return pts + bend


def _chunks(points: np.ndarray, size: int = 5):
    """Split a polyline into overlapping pieces of ``size`` points (keeps fine-grid patches small)."""
    for i in range(0, len(points) - 1, size - 1):
        yield points[i : i + size]


def _surface_normal(brain: np.ndarray, ijk: np.ndarray, r: int = 4) -> np.ndarray:
    c = np.round(ijk).astype(int)
    lo = np.maximum(c - r, 0)
    hi = np.minimum(c + r + 1, brain.shape)
    patch = brain[tuple(slice(a, b) for a, b in zip(lo, hi))]
    outside = np.argwhere(~patch) + lo
    if not len(outside):
        return np.array([0.0, 0.0, 1.0])
    v = outside.mean(0) - ijk
    return v / max(np.linalg.norm(v), 1e-6)


@functools.lru_cache(maxsize=4)
def _vein_sites(model: HeadModel):
    """Start points of medullary veins (grey/white boundary of the lobes), the ventricles, and the lobar surface."""
    lobar = (model.mars > 0) & (model.mars % 100 <= 5)
    boundary = np.argwhere((model.wm > 0.4) & (model.gm > 0.3) & lobar)
    vent = np.argwhere(model.ventricles)
    surface = np.argwhere(model.brain & ~ndi.binary_erosion(model.brain) & lobar)
    return boundary, vent, cKDTree(vent), surface


def place_veins(
    model: HeadModel, warp: SubjectWarp, rng: np.random.Generator, n_medullary: int, n_pial: int
) -> list[Lesion]:
    """Medullary veins running towards the ventricles, and pial veins along the cortical surface."""
    out: list[Lesion] = []
    # Medullary veins: from the grey/white boundary towards the nearest ventricle.
    chi = lambda: float(rng.uniform(0.3, 0.45))  # noqa: E731  deoxygenated venous blood
    step = model.step
    boundary, vent, tree, surface = _vein_sites(model)
    for _ in range(n_medullary):
        start = boundary[rng.integers(len(boundary))].astype(float)
        _, k = tree.query(start)
        end = start + rng.uniform(0.45, 0.85) * (vent[k] - start)
        pts = model.index_to_mni(_polyline(start, end, rng, n=7, wiggle=1.0 / step))
        out.extend(
            _vein_lesions(
                model, warp, pts, float(rng.uniform(0.2, 0.45)), chi(), "vein_medullary", len(out)
            )
        )
    # Pial veins: a walk along the brain surface, a third of them starting head-to-foot.
    for _ in range(n_pial):
        p = surface[rng.integers(len(surface))].astype(float)
        normal = _surface_normal(model.brain, p)
        d = np.array([0.0, 0.0, 1.0]) if rng.random() < 0.35 else rng.normal(size=3)
        d -= normal * (d @ normal)
        d /= max(np.linalg.norm(d), 1e-6)
        pts = [p + normal * 0.5 / step]
        for _ in range(int(rng.uniform(15, 45) / 1.5)):
            d = d + rng.normal(scale=0.15, size=3)
            normal = _surface_normal(model.brain, pts[-1])
            d -= normal * (d @ normal)
            d /= max(np.linalg.norm(d), 1e-6)
            nxt = pts[-1] + d * 1.5 / step
            ijk = np.round(nxt).astype(int)
            if np.any(ijk < 0) or np.any(ijk >= model.shape):
                break
            # Stay on the surface: step out of the brain or back towards it.
            nxt = nxt + normal * (0.7 if model.brain[tuple(ijk)] else -0.7) / step
            pts.append(nxt)
        if len(pts) >= 4:
            pts = model.index_to_mni(np.array(pts))
            out.extend(
                _vein_lesions(
                    model, warp, pts, float(rng.uniform(0.35, 1.0)), chi(), "vein_pial", len(out)
                )
            )
    return out


def _vein_lesions(model, warp, pts_mni, radius, chi, kind, vein_id):
    """One lesion per short piece of the vein; pieces share ``vein_id`` and the whole path."""
    labels = labels_at(model, pts_mni[len(pts_mni) // 2])
    extra = {"type": kind, "vein_id": vein_id, "path": pts_mni}
    for piece in _chunks(pts_mni):
        src = Source(
            kind="vein",
            points=piece,
            radius_mm=radius,
            chi_ppm=chi,
            pd_scale=0.9,
            r2s_extra=30.0,
            extra=extra,
        )
        yield Lesion(src, pts_mni[len(pts_mni) // 2], *labels)


_CALC_SITES = {
    "calcification_choroid_plexus": [(-27.0, -42.0, 14.0), (27.0, -42.0, 14.0)],
    "calcification_pineal": [(0.0, -31.0, 3.0)],
    "calcification_basal_ganglia": [(-19.0, -3.0, 0.0), (19.0, -3.0, 0.0)],
}
_CALC_PROB = {
    "calcification_choroid_plexus": 0.5,
    "calcification_pineal": 0.4,
    "calcification_basal_ganglia": 0.12,
}


def place_calcifications(
    model: HeadModel, warp: SubjectWarp, rng: np.random.Generator
) -> list[Lesion]:
    """Diamagnetic calcifications at their usual sites: choroid plexus, pineal, globus pallidus."""
    out = []
    for kind, centres in _CALC_SITES.items():
        if rng.random() >= _CALC_PROB[kind]:
            continue
        for c in centres:
            mni = np.asarray(c) + rng.normal(scale=1.5, size=3)
            src = Source(
                kind="calcification",
                points=mni[None],
                radius_mm=float(rng.uniform(1.0, 2.3)),
                chi_ppm=float(-rng.uniform(0.4, 1.2)),
                pd_scale=float(rng.uniform(0.15, 0.4)),
                r2s_extra=80.0,
                extra={"type": kind},
            )
            out.append(Lesion(src, mni, *labels_at(model, mni)))
    return out


def to_subject_space(lesions: list[Lesion], warp: SubjectWarp) -> list[Lesion]:
    """Map the source points (and vein paths) of ``lesions`` from MNI to subject space, in place."""
    blocks = [les.source.points for les in lesions]
    paths = {
        id(les.source.extra["path"]): les.source.extra["path"]
        for les in lesions
        if "path" in les.source.extra
    }
    blocks += list(paths.values())
    if not blocks:
        return lesions
    mapped = warp.from_mni(np.vstack(blocks))
    out, start = [], 0
    for b in blocks:
        out.append(mapped[start : start + len(b)])
        start += len(b)
    new_paths = dict(zip(paths, out[len(lesions) :]))
    for les, pts in zip(lesions, out):
        les.source.points = pts
        if "path" in les.source.extra:
            les.source.extra = {**les.source.extra, "path": new_paths[id(les.source.extra["path"])]}
    return lesions
