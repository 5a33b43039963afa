"""Head model in MNI space: tissue priors, iron-rich nuclei, skull, sinuses and veins.

Built once per resolution from the packaged template and atlases
(:mod:`cmb.template`), then turned into per-subject maps of proton density,
R2* and susceptibility with contrast randomized around literature values for
T2*-weighted gradient echo.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage as ndi

from cmb.cache import load_arrays, save_arrays
from cmb.mars_region import MARS_MAP_VERSION, build_mars_map
from cmb.template import load_mni

__all__ = ["HeadModel", "TissueContrast", "build_head_model", "parameter_maps", "t1w_map"]

PAD_MM = 24.0

# Ellipsoid nuclei the Desikan-Killiany atlas does not label (MNI mm centre, radii mm).
EXTRA_NUCLEI = {
    "red_nucleus": [((-5, -20, -8), (3.0, 3.5, 3.5)), ((5, -20, -8), (3.0, 3.5, 3.5))],
    "substantia_nigra": [((-10, -17, -12), (3.0, 6.0, 2.5)), ((10, -17, -12), (3.0, 6.0, 2.5))],
    "dentate": [((-15, -56, -34), (6.0, 8.0, 5.0)), ((15, -56, -34), (6.0, 8.0, 5.0))],
}
DK_NUCLEI = {
    "caudate": ("Caudate",),
    "putamen": ("Putamen",),
    "pallidum": ("Pallidum",),
    "thalamus": ("Thalamus-Proper", "Thalamus"),
}
# Air cavities (outside the brain), MNI mm centre and radii.
AIR_CAVITIES = {
    "frontal_sinus": ((0, 80, 2), (15, 7, 12)),
    "ethmoid_sphenoid_sinus": ((0, 35, -40), (12, 25, 8)),
    "mastoid_left": ((-50, -35, -42), (10, 12, 10)),
    "mastoid_right": ((50, -35, -42), (10, 12, 10)),
}
# Extracerebral layers by distance (mm) outside the brain mask.
LAYERS = (("csf", 2.0), ("bone", 4.0), ("marrow", 6.0), ("bone", 7.5), ("scalp", 13.0))
HEAD_CLASSES = ("air", "brain", "csf", "bone", "marrow", "scalp", "cavity")


@dataclass(frozen=True)
class TissueContrast:
    """Proton density, R2* at 3 T (1/s) and susceptibility (ppm, relative to CSF) per tissue."""

    pd: dict = field(
        default_factory=lambda: {
            "csf": 1.0,
            "gm": 0.86,
            "wm": 0.72,
            "bone": 0.05,
            "marrow": 0.9,
            "scalp": 0.8,
            "air": 0.0,
            "cavity": 0.0,
            "vein": 0.75,
        }
    )
    r2s: dict = field(
        default_factory=lambda: {
            "csf": 3.0,
            "gm": 17.0,
            "wm": 21.0,
            "bone": 400.0,
            "marrow": 70.0,
            "scalp": 35.0,
            "air": 0.0,
            "cavity": 0.0,
            "vein": 45.0,
            "caudate": 24.0,
            "putamen": 30.0,
            "pallidum": 48.0,
            "thalamus": 20.0,
            "red_nucleus": 38.0,
            "substantia_nigra": 45.0,
            "dentate": 38.0,
        }
    )
    chi: dict = field(
        default_factory=lambda: {
            "csf": 0.0,
            "gm": 0.01,
            "wm": -0.03,
            "bone": -2.0,
            "marrow": -0.5,
            "scalp": 0.0,
            "air": 0.0,
            "cavity": 9.4,
            "vein": 0.35,
            "caudate": 0.05,
            "putamen": 0.05,
            "pallidum": 0.16,
            "thalamus": 0.01,
            "red_nucleus": 0.12,
            "substantia_nigra": 0.15,
            "dentate": 0.10,
        }
    )

    def jittered(self, rng: np.random.Generator, scale: float = 1.0) -> TissueContrast:
        """Per-subject contrast: every parameter scaled by a random factor around 1."""

        def jit(d, sd):
            return {
                k: float(v * max(0.5, 1 + scale * sd * rng.standard_normal())) for k, v in d.items()
            }

        return replace(
            self, pd=jit(self.pd, 0.04), r2s=jit(self.r2s, 0.10), chi=jit(self.chi, 0.15)
        )


@dataclass(frozen=True, eq=False)  # hashed by identity, so lru_cache can key on it
class HeadModel:
    """MNI-space head model on a padded reference grid (all arrays share ``affine``)."""

    affine: np.ndarray
    step: int
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    t1: np.ndarray
    dk: np.ndarray
    dk_names: dict
    mars: np.ndarray
    head: np.ndarray  # uint8 index into HEAD_CLASSES
    nuclei: dict  # name -> soft mask float32
    veins: np.ndarray  # soft mask of dural sinuses and deep veins
    vein_paths: dict  # name -> (points MNI mm, radius)
    ventricles: np.ndarray  # bool

    @property
    def shape(self):
        return self.gm.shape

    @property
    def spacing(self) -> float:
        return float(self.step)

    def mni_to_index(self, xyz: np.ndarray) -> np.ndarray:
        inv = np.linalg.inv(self.affine)
        return np.asarray(xyz) @ inv[:3, :3].T + inv[:3, 3]

    def index_to_mni(self, ijk: np.ndarray) -> np.ndarray:
        return np.asarray(ijk) @ self.affine[:3, :3].T + self.affine[:3, 3]


def _pad(a: np.ndarray, n: int, value=0):
    return np.pad(a, n, mode="constant", constant_values=value)


def _ellipsoid(model_affine, shape, centre, radii) -> np.ndarray:
    inv = np.linalg.inv(model_affine)
    c = inv[:3, :3] @ np.asarray(centre, float) + inv[:3, 3]
    step = np.abs(np.diag(model_affine)[:3])
    r = np.asarray(radii, float) / step
    lo = np.maximum(np.floor(c - r - 1).astype(int), 0)
    hi = np.minimum(np.ceil(c + r + 2).astype(int), shape)
    out = np.zeros(shape, dtype=np.float32)
    g = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij", sparse=True)
    d = np.sqrt(sum(((gi - ci) / ri) ** 2 for gi, ci, ri in zip(g, c, r)))
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = np.clip((1.0 - d) * r.min() + 0.5, 0, 1)
    return out


def _render_tube(mask: np.ndarray, affine, points: np.ndarray, radius: float) -> None:
    """Max-composite a soft tube along a polyline (MNI mm) into ``mask`` in place."""
    inv = np.linalg.inv(affine)
    step = abs(affine[0, 0])
    lo = np.maximum(
        np.floor((points.min(0) - radius - 2) @ inv[:3, :3].T + inv[:3, 3]).astype(int), 0
    )
    hi_i = np.ceil((points.max(0) + radius + 2) @ inv[:3, :3].T + inv[:3, 3]).astype(int) + 1
    hi = np.minimum(hi_i, mask.shape)
    if np.any(hi <= lo):
        return
    idx = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
    xyz = idx @ affine[:3, :3].T + affine[:3, 3]
    best = np.full(idx.shape[:-1], np.inf)
    for a, b in zip(points[:-1], points[1:]):
        ab = b - a
        t = np.clip(((xyz - a) @ ab) / max(ab @ ab, 1e-9), 0, 1)
        best = np.minimum(best, np.linalg.norm(xyz - (a + t[..., None] * ab), axis=-1))
    soft = np.clip(0.5 + (radius - best) / step, 0, 1).astype(np.float32)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    np.maximum(mask[sl], soft, out=mask[sl])


def _surface_arc(
    brain: np.ndarray, affine, centre, angles_deg, plane: str, offset_mm: float, x: float = 0.0
):
    """Points just outside the brain along rays from ``centre`` in a sagittal or axial plane."""
    inv = np.linalg.inv(affine)
    pts = []
    for ang in np.deg2rad(angles_deg):
        if plane == "sagittal":  # angle from +y (anterior) towards +z (superior)
            d = np.array([0.0, np.cos(ang), np.sin(ang)])
            origin = np.array([x, centre[1], centre[2]], float)
        else:  # axial-ish: angle from -y (posterior) towards +x (right), x sign from `x`
            d = np.array([np.sign(x) * np.sin(ang), -np.cos(ang), -0.25 * np.sin(ang)])
            d /= np.linalg.norm(d)
            origin = np.array(centre, float)
        last = None
        for t in np.arange(0, 140, 1.0):
            p = origin + t * d
            ijk = np.round(inv[:3, :3] @ p + inv[:3, 3]).astype(int)
            if np.any(ijk < 0) or np.any(ijk >= brain.shape):
                break
            if brain[tuple(ijk)]:
                last = t
        if last is not None:
            pts.append(origin + (last + offset_mm) * d)
    return np.array(pts)


_ARRAYS = ("affine", "gm", "wm", "csf", "brain", "t1", "dk", "mars", "head", "veins", "ventricles")


@functools.lru_cache(maxsize=2)
def build_head_model(step: int = 1) -> HeadModel:
    """The MNI head model at ``step`` mm, from the on-disk cache when possible."""
    key = f"headmodel-step{step}-mars{MARS_MAP_VERSION}"
    cached = load_arrays(key)
    if cached is not None:
        arrays, meta = cached
        nuclei = {
            k.removeprefix("nucleus_"): v for k, v in arrays.items() if k.startswith("nucleus_")
        }
        return _column_major(
            HeadModel(
                step=step,
                nuclei=nuclei,
                dk_names={int(k): v for k, v in meta["dk_names"].items()},
                vein_paths={k: (np.array(p), r) for k, (p, r) in meta["vein_paths"].items()},
                **{k: arrays[k] for k in _ARRAYS},
            )
        )
    model = _column_major(_assemble_head_model(step))
    arrays = {k: getattr(model, k) for k in _ARRAYS}
    arrays.update({f"nucleus_{k}": v for k, v in model.nuclei.items()})
    meta = {
        "dk_names": {str(k): v for k, v in model.dk_names.items()},
        "vein_paths": {k: (np.asarray(p).tolist(), r) for k, (p, r) in model.vein_paths.items()},
    }
    save_arrays(key, arrays, meta)
    return model


def _column_major(model: HeadModel) -> HeadModel:
    """Store volumes column-major (as NIfTI does), the layout the sampler reads fastest."""
    vols = {k: np.asfortranarray(getattr(model, k)) for k in _ARRAYS if k != "affine"}
    return replace(model, nuclei={k: np.asfortranarray(v) for k, v in model.nuclei.items()}, **vols)


def _assemble_head_model(step: int) -> HeadModel:
    mni = load_mni(step)
    mars = build_mars_map(mni).labels
    n = int(round(PAD_MM / step))
    affine = mni.affine.copy()
    affine[:3, 3] -= n * step
    gm, wm, csf, t1 = (_pad(a, n) for a in (mni.gm, mni.wm, mni.csf, mni.t1))
    brain = _pad(mni.brain, n, False)
    dk = _pad(mni.dk, n)
    mars = _pad(mars, n)
    shape = gm.shape

    dist_out = ndi.distance_transform_edt(~brain, sampling=step)
    head = np.zeros(shape, dtype=np.uint8)
    head[brain] = HEAD_CLASSES.index("brain")
    lower = 0.0
    for name, upper in LAYERS:
        head[(dist_out > lower) & (dist_out <= upper)] = HEAD_CLASSES.index(name)
        lower = upper
    near_brain = dist_out <= 2.5
    for centre, radii in AIR_CAVITIES.values():
        cav = (_ellipsoid(affine, shape, centre, radii) > 0.5) & ~near_brain
        head[cav] = HEAD_CLASSES.index("cavity")

    nuclei = {}
    for name, suffixes in DK_NUCLEI.items():
        values = [v for v, nm in mni.dk_names.items() if nm.endswith(suffixes)]
        m = np.isin(dk, values).astype(np.float32)
        nuclei[name] = ndi.gaussian_filter(m, 0.6 / step)
    for name, ells in EXTRA_NUCLEI.items():
        m = np.zeros(shape, dtype=np.float32)
        for centre, radii in ells:
            np.maximum(m, _ellipsoid(affine, shape, centre, radii), out=m)
        nuclei[name] = m * brain

    ventricles = np.isin(
        dk,
        [
            v
            for v, nm in mni.dk_names.items()
            if nm.endswith(("Lateral-Ventricle", "3rd-Ventricle"))
        ],
    )

    # Dural sinuses just outside the brain, and the deep veins inside it.
    centre = (0.0, -20.0, 15.0)
    sss = _surface_arc(brain, affine, centre, np.linspace(15, 205, 40), "sagittal", 2.5)
    torcula = sss[-1] if len(sss) else np.array([0.0, -100.0, 0.0])
    paths = {"superior_sagittal_sinus": (sss, 3.0)}
    for side, x in (("left", -1.0), ("right", 1.0)):
        arc = _surface_arc(
            brain,
            affine,
            (0.0, -55.0, float(torcula[2])),
            np.linspace(0, 80, 16),
            "axial",
            2.5,
            x=x,
        )
        if len(arc):
            sigmoid = arc[-1] + np.array([0.0, 12.0, -25.0])
            paths[f"transverse_sigmoid_sinus_{side}"] = (np.vstack([torcula, arc, sigmoid]), 3.5)
    paths["straight_sinus"] = (
        np.array(
            [[0, -52, 8], [0, -75, 10], [float(torcula[0]), float(torcula[1]), float(torcula[2])]]
        ),
        2.5,
    )
    for side, x in (("left", -2.5), ("right", 2.5)):
        paths[f"internal_cerebral_vein_{side}"] = (
            np.array([[x, -5, 16], [x, -25, 17], [x * 0.5, -45, 12], [0, -52, 8]]),
            1.2,
        )
    veins = np.zeros(shape, dtype=np.float32)
    for pts, radius in paths.values():
        if len(pts) > 1:
            _render_tube(veins, affine, np.asarray(pts, float), radius)

    return HeadModel(
        affine=affine,
        step=step,
        gm=gm,
        wm=wm,
        csf=csf,
        brain=brain,
        t1=t1,
        dk=dk,
        dk_names=mni.dk_names,
        mars=mars,
        head=head,
        nuclei=nuclei,
        veins=veins,
        vein_paths=paths,
        ventricles=ventricles,
    )


def _r2s_at_field(r2s_3t: float, b0: float) -> float:
    # Iron-related R2* scales roughly linearly with field; about a third does not.
    return r2s_3t * (0.35 + 0.65 * b0 / 3.0)


@functools.lru_cache(maxsize=4)
def _nucleus_boxes(model: HeadModel) -> dict:
    """Each nucleus' soft mask cropped to its bounding box (they are small; the volume is not)."""
    out = {}
    for name, m in model.nuclei.items():
        nz = np.nonzero(m > 1e-3)
        if len(nz[0]):
            box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)
            out[name] = (box, m[box])
    return out


def parameter_maps(model: HeadModel, contrast: TissueContrast, b0: float) -> np.ndarray:
    """Stack of (PD, R2*, chi) maps, float32, shape ``(3, Z, Y, X)`` (see :func:`cmb.synth.scan.sample_model`).

    The model arrays are column-major, so ``out[c] = vals.T`` is a plain copy.
    """
    out = np.empty((3,) + model.shape[::-1], dtype=np.float32)
    for c, table in enumerate((contrast.pd, contrast.r2s, contrast.chi)):
        conv = (lambda v: _r2s_at_field(v, b0)) if c == 1 else float
        brain = (
            model.gm * conv(table["gm"])
            + model.wm * conv(table["wm"])
            + model.csf * conv(table["csf"])
        )
        for name, (box, m) in _nucleus_boxes(model).items():
            if name in table:
                brain[box] += m * (conv(table[name]) - brain[box])
        lut = np.array([conv(table.get(name, 0.0)) for name in HEAD_CLASSES], dtype=np.float32)
        lut[HEAD_CLASSES.index("brain")] = 0.0
        vals = np.where(model.brain, brain, lut[model.head])
        vals = vals + model.veins * (conv(table["vein"]) - vals)
        out[c] = vals.T
    return out


def t1w_map(model: HeadModel) -> np.ndarray:
    """T1-weighted intensity (MPRAGE-like), shape ``(1, Z, Y, X)`` like :func:`parameter_maps`."""
    lut = np.array([0.0, 0.0, 0.12, 0.04, 0.85, 0.7, 0.0], dtype=np.float32)
    t1 = np.where(model.brain, model.t1, lut[model.head]).astype(np.float32) * (
        1 - 0.6 * model.veins
    )
    return np.ascontiguousarray(t1.T)[None]
